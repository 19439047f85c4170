"""Model API: prefill-then-decode equals one long prefill, generation and sampling, and bad inputs."""

import pytest
import torch

from reference import ContextTooLongError, load_model
from reference.check import check
from reference.hf_compare import compare_states
from reference.sampling import sample_next_token


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return load_model(tiny_checkpoint)


def test_prefill_then_decode_equals_decode_all_the_way(model):
    """Logits and states agree whether tokens arrive in one prefill or one at a time (chunked vs recurrent)."""
    ids = torch.randint(0, model.config.vocab_size, (70,), generator=torch.Generator().manual_seed(0)).tolist()
    full_logits, full_state = model.prefill(ids)
    logits, state = model.prefill(ids[:1])
    step_logits = [logits[0]]
    for t in ids[1:]:
        step_logits.append(model.decode_step(t, state))
    check("logits, all positions", full_logits, torch.stack(step_logits), 1e-5)
    compare_states(full_state, state, 1e-5)
    # and a second prefill continuing a state equals one long prefill
    _, s2 = model.prefill(ids[:30])
    more, s2 = model.prefill(ids[30:], state=s2)
    check("continued prefill", full_logits[30:], more, 1e-5)
    compare_states(full_state, s2, 1e-5)


def test_greedy_generate_is_the_argmax_loop(model):
    prompt = [5, 17, 300]
    out = model.generate(prompt, 12, stop_at_eos=False)
    logits, state = model.prefill(prompt)
    token, expected = int(logits[-1].argmax()), []
    for _ in range(12):
        expected.append(token)
        token = int(model.decode_step(token, state).argmax())
    assert out.dtype == torch.long and out.tolist() == expected


def test_sampling_is_seeded_and_respects_top_k_top_p(model):
    prompt = [1, 2, 3]
    a = model.generate(prompt, 16, temperature=1.0, top_k=50, top_p=0.9, seed=123, stop_at_eos=False)
    b = model.generate(prompt, 16, temperature=1.0, top_k=50, top_p=0.9, seed=123, stop_at_eos=False)
    c = model.generate(prompt, 16, temperature=1.0, seed=7, stop_at_eos=False)
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    greedy = model.generate(prompt, 8, stop_at_eos=False)
    assert model.generate(prompt, 8, temperature=0.8, top_k=1, seed=0, stop_at_eos=False).tolist() == greedy.tolist()
    logits = torch.tensor([0.0, 5.0, 4.0, -1.0])
    gen = torch.Generator().manual_seed(0)
    picks = {sample_next_token(logits, 1.0, top_k=2, generator=gen) for _ in range(200)}
    assert picks == {1, 2}
    picks = {sample_next_token(logits, 1.0, top_p=0.5, generator=gen) for _ in range(200)}
    assert picks == {1}  # token 1 alone holds > 50% of the mass


def test_generation_stops_at_eos(model):
    prompt = [9, 8, 7]
    free = model.generate(prompt, 10, stop_at_eos=False).tolist()
    eos = free[4]
    stopped = model.generate(prompt, 10, eos_token_id=eos).tolist()
    assert stopped == free[: free.index(eos) + 1]


def test_bad_inputs_are_refused_clearly(model, tiny_checkpoint):
    cfg = model.config
    with pytest.raises(ValueError, match="empty"):
        model.prefill([])
    with pytest.raises(ValueError, match=f"token id {cfg.vocab_size} is outside the vocabulary"):
        model.prefill([1, cfg.vocab_size])
    with pytest.raises(ValueError, match="batch size 2"):
        model.prefill(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="needs a state from prefill"):
        model.decode_step(1, model.new_state())
    with pytest.raises(ContextTooLongError, match="context too long"):
        model.prefill([1] * (cfg.max_position_embeddings + 1))
    with pytest.raises(ContextTooLongError, match="context too long"):
        model.generate([1, 2], cfg.max_position_embeddings)
    _, state = model.prefill([1] * (cfg.max_position_embeddings - 1))
    model.decode_step(1, state)  # the last position fits
    with pytest.raises(ContextTooLongError, match="context too long"):
        model.decode_step(1, state)
    for kwargs, msg in (({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_k": -2}, "top_k")):
        with pytest.raises(ValueError, match=msg):
            model.generate([1], 2, **kwargs)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            load_model(tiny_checkpoint, device="cuda")


def test_kv_cache_grows_past_its_initial_capacity(model):
    ids = list(range(1, 10))
    ref_logits, ref_state = model.prefill(ids + list(range(20)))
    _, state = model.prefill(ids, state=model.new_state(capacity=12))
    for t in range(20):  # decode past the initial capacity of 12 positions
        logits = model.decode_step(t, state)
    assert state.length == len(ids) + 20 and state.capacity >= state.length
    check("logits after growing the cache", ref_logits[-1], logits, 1e-5)
    compare_states(ref_state, state, 1e-5)
