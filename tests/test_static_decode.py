"""reference.static_decode: the shape-static decode step equals Qwen35Model.decode_step (logits and every state)."""

import pytest
import torch

from reference import ContextTooLongError, load_model
from reference.check import check
from reference.hf_compare import compare_states
from reference.static_decode import StaticDecoder

PROMPT = [5, 17, 300, 2]
CAPACITY = 16  # the prompt + 12 decode steps fill it exactly


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return load_model(tiny_checkpoint)


def _teacher_forced(model, dec, prompt, steps, tol):
    """Feed the reference's greedy tokens to both; check logits every step and every state after each step."""
    ref_logits, ref_state = model.prefill(prompt)
    logits, state = dec.prefill(prompt)
    check("prefill logits", ref_logits[-1], logits[-1], tol, verbose=False)
    token = int(ref_logits[-1].argmax())
    assert int(dec.token) == token  # prefill put the greedy token on the device
    for step in range(steps):
        ref = model.decode_step(token, ref_state)
        out = dec.decode_step(token, state)
        check(f"step {step} logits", ref, out, tol, verbose=False)
        compare_states(ref_state, state, tol, prefix=f"step {step} ")
        token = int(ref.argmax())
    return ref_state, state


def test_static_decode_equals_reference_fp32(model):
    dec = StaticDecoder(model, capacity=CAPACITY)
    assert dec.mode == "eager"
    _, state = _teacher_forced(model, dec, PROMPT, CAPACITY - len(PROMPT), 1e-5)
    assert state.length == CAPACITY and int(dec.position) == CAPACITY


def test_context_too_long_when_full(model):
    dec = StaticDecoder(model, capacity=CAPACITY)
    logits, state = dec.prefill(PROMPT)
    token = int(logits[-1].argmax())
    for _ in range(CAPACITY - len(PROMPT)):
        token = int(dec.decode_step(token, state).argmax())
    before = [t.clone() for t in dec._buffers()]
    with pytest.raises(ContextTooLongError, match="context too long"):
        dec.decode_step(token, state)
    with pytest.raises(ContextTooLongError, match="context too long"):
        dec.advance(1)
    assert state.length == CAPACITY  # a refused step changes nothing
    for a, b in zip(before, dec._buffers()):
        assert torch.equal(a, b)
    # a prompt longer than the capacity is refused before anything runs
    with pytest.raises(ContextTooLongError, match="context too long"):
        dec.prefill(list(range(CAPACITY + 1)))
    # and so is a capacity beyond the model's positions
    with pytest.raises(ContextTooLongError, match="context too long"):
        StaticDecoder(model, capacity=model.config.max_position_embeddings + 1)


def test_greedy_on_the_device_equals_generate(model):
    """advance() feeds each step's argmax back without the host; the tokens equal the reference's generate()."""
    dec = StaticDecoder(model, capacity=CAPACITY)
    expected = model.generate(PROMPT, CAPACITY - len(PROMPT) + 1, stop_at_eos=False).tolist()
    assert dec.greedy_tokens(PROMPT, len(expected)) == expected
    # the decoder can be reused: a new prefill resets position, states and the cache tail
    assert dec.greedy_tokens(PROMPT[:2], 5) == model.generate(PROMPT[:2], 5, stop_at_eos=False).tolist()


def test_kernel_oracle_mode_bf16_cache(tiny_checkpoint):
    """fp32 compute over bf16 weights with a bf16 KV cache (the kernels' oracle): the cache is read back in fp32."""
    model = load_model(tiny_checkpoint, dtype=torch.float32, weights_dtype=torch.bfloat16,
                       cache_dtype=torch.bfloat16)
    dec = StaticDecoder(model, capacity=12)
    assert dec.state.k_cache[3].dtype == torch.bfloat16
    _teacher_forced(model, dec, PROMPT, 8, 1e-5)


def test_bf16_model(tiny_checkpoint):
    model = load_model(tiny_checkpoint, dtype=torch.bfloat16)
    dec = StaticDecoder(model, capacity=12)
    _teacher_forced(model, dec, PROMPT, 8, 2e-2)  # bf16 rounding of sums blocked differently


def test_misuse_is_refused_clearly(model):
    dec = StaticDecoder(model, capacity=8)
    with pytest.raises(ValueError, match="needs a state from prefill"):
        dec.decode_step(3)
    with pytest.raises(ValueError, match="capacity"):
        StaticDecoder(model, capacity=0)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            dec.capture_cuda_graph()
    _, state = dec.prefill(PROMPT)
    with pytest.raises(ValueError, match="its own state"):
        dec.decode_step(3, model.new_state())


def test_step_traces_as_one_graph(model):
    """torch.compile can trace the whole step without a graph break (the 'eager' backend: no code generation)."""
    dynamo = pytest.importorskip("torch._dynamo")
    dynamo.reset()
    dec = StaticDecoder(model, capacity=CAPACITY)
    ref = StaticDecoder(model, capacity=CAPACITY)
    dec.compile(mode=None, backend="eager", fullgraph=True, warmup=1)
    assert dec.mode.startswith("torch.compile")
    assert dec.greedy_tokens(PROMPT, 8) == ref.greedy_tokens(PROMPT, 8)
    logits, state = dec.prefill(PROMPT)
    ref_logits, ref_state = ref.prefill(PROMPT)
    token = int(logits[-1].argmax())
    for _ in range(4):
        a, b = ref.decode_step(token, ref_state), dec.decode_step(token, state)
        check("compiled step logits", a, b, 1e-6, verbose=False)
        token = int(a.argmax())
