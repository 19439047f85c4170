"""megakernel.prefill on the CPU (torch; the LM-head kernel in the CUDA simulator) against the reference.

Oracle: the reference computing in fp32 from the same bf16 weights with a bf16 KV cache. Checked: logits at every
prompt position and every state after the prefill (conv, DeltaNet, KV cache), then greedy tokens decoded from it.

Tolerances (relative, max|err| / max|ref|):
* fp32 twin (the same code with fp32 matrix products): 1e-4 for logits and fp32 states, 1e-4 + 2^-8 for the bf16
  KV cache (one bf16 step where the two fp32 values straddle a rounding midpoint). Measured ~1e-5: summation
  order only, as the decode kernels (tests/test_layered.py uses the same 1e-4).
* bf16 (the fast path): 0.1. bf16 keeps 8 significant bits; every matrix product's input and output is rounded
  (2^-9 relative each, five or more per layer) and random-weight layers carry that to the logits. Measured:
  2-3e-2 on these configs (4 layers), 3-6e-2 at the real 0.8B shapes (24 layers, CPU, 16-200 tokens) against 5-8e-2
  for the reference's own bf16 mode on the same prompts. A real bug is O(1), and the fp32 twin pins the
  algorithm down at 1e-4.
"""

import pytest
import torch

from reference import ContextTooLongError, Qwen35Config, load_model
from reference.check import check
from reference.hf_compare import compare_states
from reference.ops.gated_delta_rule import chunked_gated_delta_rule, gated_delta_rule_step, l2_normalize

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TOL_FP32 = 1e-4
TOL_BF16 = 0.1
CPU = torch.device("cpu")


def _oracle(path):
    return load_model(path, dtype=torch.float32, weights_dtype=torch.bfloat16, cache_dtype=torch.bfloat16)


def _state(config, capacity=256):
    from megakernel.layout import DeviceState

    return DeviceState(config, CPU, capacity)


@pytest.fixture(scope="module")
def tiny(checkpoint_factory):
    from megakernel.layout import DeviceWeights

    ref = _oracle(checkpoint_factory("kernel_tiny", config=Qwen35Config.tiny(vocab_size=264)))
    return ref, DeviceWeights(ref.config, ref.weights, CPU)


# ------------------------------------------------------------------------------------------- the delta rule
def _recurrent_fp64(q, k, v, g, beta, state):
    """The gated delta rule token by token in fp64 (the reference's step, its normalisation and head mapping)."""
    Hk, Hv, Dk = k.shape[1], v.shape[1], k.shape[2]
    q = (l2_normalize(q.double()) / Dk**0.5).repeat_interleave(Hv // Hk, 1)
    k = l2_normalize(k.double()).repeat_interleave(Hv // Hk, 1)
    out, state = [], state.double()
    for t in range(k.shape[0]):
        o, state = gated_delta_rule_step(q[t], k[t], v[t].double(), g[t].double(), beta[t].double(), state)
        out.append(o)
    return torch.stack(out), state


@pytest.mark.parametrize("T, Hk, Hv, Dk, Dv", [(130, 2, 4, 12, 20), (64, 3, 3, 8, 24), (5, 1, 2, 16, 8)])
def test_batched_chunked_delta_rule_is_the_recurrence(T, Hk, Hv, Dk, Dv):
    """In fp64 the batched form equals the token-by-token recurrence to rounding (so the algebra is right); in
    fp32 it is as close to it as the reference's chunked form. Awkward sizes: a partial chunk, Hv = 2 Hk, a
    non-zero initial state, weak decay (so the state carries across chunks)."""
    from megakernel.prefill.delta_rule import chunked_delta_rule

    gen = torch.Generator().manual_seed(T)
    q, k = torch.randn(T, Hk, Dk, generator=gen), torch.randn(T, Hk, Dk, generator=gen)
    v, s0 = torch.randn(T, Hv, Dv, generator=gen), torch.randn(Hv, Dk, Dv, generator=gen)
    g, beta = -0.05 * torch.rand(T, Hv, generator=gen), torch.rand(T, Hv, generator=gen)
    o_true, s_true = _recurrent_fp64(q, k, v, g, beta, s0)
    final = torch.empty(Hv, Dk, Dv, dtype=torch.float64)
    o64, s64 = chunked_delta_rule(*(t.double() for t in (q, k, v, g, beta, s0)), final_state=final)
    check("fp64 output", o_true, o64, 1e-12, verbose=False)
    check("fp64 state", s_true, s64, 1e-12, verbose=False)
    assert torch.equal(final, s64)
    o32, s32 = chunked_delta_rule(q, k, v, g, beta, s0)
    o_ref, s_ref = chunked_gated_delta_rule(q, k, v, g, beta, s0)
    assert o32.dtype == torch.float32
    for name, mine, theirs, true in (("output", o32, o_ref, o_true), ("state", s32, s_ref, s_true)):
        ours = check(f"fp32 {name}", true, mine, 1e-5, verbose=False).rel
        reference = check(f"reference fp32 {name}", true, theirs, 1e-5, verbose=False).rel
        assert ours <= 4 * reference + 1e-7, f"{name}: {ours:.1e} vs the reference's {reference:.1e}"


def test_delta_rule_backends_and_shapes():
    from megakernel.prefill.delta_rule import BackendUnavailable, delta_rule, fla_delta_rule, fla_status

    q = k = torch.zeros(3, 2, 4)
    with pytest.raises(ValueError, match="shapes disagree"):
        delta_rule("torch", q, k, torch.zeros(3, 2, 4), torch.zeros(3, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="unknown delta-rule backend 'cuda'"):
        delta_rule("cuda", q, k, torch.zeros(3, 2, 4), torch.zeros(3, 2), torch.zeros(3, 2))
    with pytest.raises(BackendUnavailable, match="flash-linear-attention" if fla_status() else "CUDA GPU"):
        fla_delta_rule(q, k, torch.zeros(3, 2, 4), torch.zeros(3, 2), torch.zeros(3, 2))


# ------------------------------------------------------------------------------------------- the whole prefill
def _compare(ref_logits, ref_state, logits, state, tol, prefix=""):
    """Logits at every position and every state (the bf16 KV cache at bf16_storage_tol(tol)); returns the worst
    relative error of each kind."""
    T = ref_state.length
    worst = {"logits": check(prefix + "logits", ref_logits, logits, tol, verbose=False).rel}
    ours = state.to_reference()
    assert ours.length == T and int(state.position[0]) == T
    for r in compare_states(ref_state, ours, tol, prefix=prefix):
        kind = "conv" if "conv" in r.name else "DeltaNet" if "DeltaNet" in r.name else "KV"
        worst[kind] = max(worst.get(kind, 0.0), r.rel)
    return worst


@pytest.mark.parametrize("name", ["tiny", "odd_sizes_3_groups", "grouped_values_1_group"])
def test_fp32_twin_matches_the_reference(name, checkpoint_factory):
    """The same code in fp32: logits at every position and every state at summation-order distance. The prompt
    spans several chunks with a partial last one and runs in pieces of 48 tokens (each continuing the last)."""
    from megakernel.prefill import Prefill

    ref = _oracle(checkpoint_factory(name))
    prompt = torch.randint(0, ref.config.vocab_size, (150,), generator=torch.Generator().manual_seed(1)).tolist()
    ref_logits, ref_state = ref.prefill(prompt)
    for piece in (4096, 48):
        prefill = Prefill(ref, dtype=torch.float32, piece_tokens=piece, device=CPU)
        state = _state(ref.config)
        logits = prefill(prompt, state, logits="all")
        _compare(ref_logits, ref_state, logits, state, TOL_FP32, f"pieces {piece}: ")
        assert prefill.backend == "torch" and f"{-(-150 // piece)} piece" in prefill.last_run


def test_bf16_prefill_matches_the_reference_and_greedy_tokens_follow(tiny):
    """The fast path (bf16 products, fp32 states): logits at every position and every state within TOL_BF16, the
    last position's logits (the LM-head kernel) equal to the all-positions path's, and greedy tokens decoded from
    its state (by the reference, so only the prefill is under test) identical to decoding from the oracle's."""
    from megakernel.prefill import Prefill

    ref, weights = tiny
    prefill = Prefill(weights)
    for seed, T in ((0, 5), (1, 40), (2, 100)):
        prompt = torch.randint(0, 264, (T,), generator=torch.Generator().manual_seed(seed)).tolist()
        ref_logits, ref_state = ref.prefill(prompt)
        state = _state(ref.config)
        logits = prefill(prompt, state, logits="all")
        worst = _compare(ref_logits, ref_state, logits, state, TOL_BF16, f"T={T} ")
        assert worst["logits"] > 1e-3, "bf16 products should round: is the fast path computing in fp32?"
        last = prefill(prompt, _state(ref.config))
        check("last position: LM-head kernel vs fp32 slices", logits[-1:], last, 1e-5, verbose=False)
        tokens = {}
        for name, first, st in (("oracle", ref_logits[-1], ref_state), ("bf16", last[0], state.to_reference())):
            out = [int(first.argmax())]
            for _ in range(7):
                out.append(int(ref.decode_step(out[-1], st).argmax()))
            tokens[name] = out
        assert tokens["bf16"] == tokens["oracle"], f"T={T}"


def test_continuing_a_state_equals_one_prefill(tiny):
    """prefill(a) then prefill(b, continue_state=True) gives the logits and states of prefill(a + b)."""
    from megakernel.prefill import Prefill

    ref, weights = tiny
    prompt = torch.randint(0, 264, (90,), generator=torch.Generator().manual_seed(3)).tolist()
    prefill = Prefill(weights, dtype=torch.float32)
    whole = _state(ref.config)
    logits = prefill(prompt, whole, logits="all")
    parts = _state(ref.config)
    first = prefill(prompt[:70], parts, logits="all")
    second = prefill(prompt[70:], parts, logits="all", continue_state=True)
    check("logits", logits, torch.cat([first, second]), 1e-5, verbose=False)
    compare_states(whole.to_reference(), parts.to_reference(), 1e-5)


def test_layered_decoder_prefill_modes(tiny, checkpoint_factory):
    """LayeredDecoder.prefill: "bf16" (default) and "fp32" run megakernel.prefill into the decoder's state,
    "reference" copies the reference's; its greedy tokens (decode on the kernels) match the reference's."""
    from megakernel.layered import load

    ref, _ = tiny
    path = checkpoint_factory("kernel_tiny", config=Qwen35Config.tiny(vocab_size=264))
    layered = load(path, "layered", max_context=64)
    assert layered.prefill_mode == "bf16"
    prompt = [3, 141, 59, 26, 5, 77, 100]
    ref_logits, ref_state = ref.prefill(prompt)
    for mode, tol in (("fp32", TOL_FP32), ("bf16", TOL_BF16)):
        logits, state = layered.prefill(prompt, mode=mode)
        _compare(ref_logits, ref_state, logits, state, tol, mode + " ")
    logits, state = layered.prefill(prompt, mode="reference")
    assert torch.equal(logits, ref_logits)
    copied = state.to_reference()
    for i in ref_state.conv:
        assert torch.equal(copied.conv[i], ref_state.conv[i]) and torch.equal(copied.recurrent[i],
                                                                               ref_state.recurrent[i])
    for i in ref_state.k_cache:
        assert torch.equal(copied.k_cache[i], ref_state.keys(i)) and torch.equal(copied.v_cache[i],
                                                                                 ref_state.values(i))
    assert layered.greedy_tokens(prompt, 3) == ref.generate(prompt, 3, stop_at_eos=False).tolist()
    with pytest.raises(ValueError, match="unknown prefill_mode 'fast'"):
        layered.prefill(prompt, mode="fast")


def test_bad_input_is_refused(tiny, checkpoint_factory):
    from megakernel.layout import UnsupportedConfigError
    from megakernel.prefill import Prefill, prefill_into

    ref, weights = tiny
    prefill = Prefill(weights)
    with pytest.raises(ContextTooLongError, match="capacity 16"):
        prefill(list(range(17)), _state(ref.config, 16))
    state = _state(ref.config, 16)
    prefill(list(range(10)), state, logits="all")
    with pytest.raises(ContextTooLongError, match="10 \\+ 7 prompt tokens exceed"):
        prefill(list(range(7)), state, logits="all", continue_state=True)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        prefill([1, 264], state)
    with pytest.raises(ValueError, match="logits must be one of"):
        prefill([1], state, logits="first")
    with pytest.raises(ValueError, match="dtype must be"):
        Prefill(weights, dtype=torch.float16)
    with pytest.raises(ValueError, match="unknown delta-rule backend"):
        Prefill(weights, backend="triton")
    with pytest.raises(ValueError, match="fla"):
        Prefill(weights, backend="fla")  # no GPU here (and fla may not import)
    with pytest.raises(ValueError, match="piece_tokens"):
        Prefill(weights, piece_tokens=0)
    with pytest.raises(TypeError, match="DeviceWeights or a reference Qwen35Model"):
        Prefill({"embed_tokens.weight": torch.zeros(1)})
    with pytest.raises(UnsupportedConfigError, match="attention_bias"):
        Prefill(load_model(checkpoint_factory("attention_first_bias")))
    # one runner per (weights, options), kept on the weights
    a = prefill_into(weights, _state(ref.config), [1, 2, 3], logits="all")
    b = prefill_into(weights, _state(ref.config), [1, 2, 3], logits="all")
    assert torch.equal(a, b) and len(vars(weights)["_prefill_runners"]) == 1


def test_benchmark_prefill_check_passes_and_catches_a_wrong_state(tiny, checkpoint_factory):
    """megakernel.bench's check of a kernel stage's prefill rows (run on the GPU before timing ppN): it passes on
    the real prefill and fails on one that leaves a wrong DeltaNet state behind (logits alone would hide it)."""
    from megakernel.bench.systems import check_prefill
    from megakernel.layered import load

    ref, _ = tiny
    layered = load(checkpoint_factory("kernel_tiny", config=Qwen35Config.tiny(vocab_size=264)), "layered",
                   max_context=64)
    prompt = torch.randint(0, 264, (20,), generator=torch.Generator().manual_seed(4)).tolist()
    good = check_prefill(layered, ref, prompt, greedy_steps=2)
    assert good.passed, good.detail
    assert "fp32 twin" in good.detail and good.short.endswith("tokens 2/2")
    real = layered.prefill

    def wrong_state(*args, **kwargs):
        logits, state = real(*args, **kwargs)
        state.rec[-1] *= 1.5
        return logits, state

    layered.prefill = wrong_state
    bad = check_prefill(layered, ref, prompt)
    assert not bad.passed and "DeltaNet state" in bad.detail
