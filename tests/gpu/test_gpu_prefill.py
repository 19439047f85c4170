"""megakernel.prefill on the GPU at the real Qwen3.5-0.8B shapes (synthetic checkpoint), against its oracle.

Oracle: the reference on the same GPU computing in fp32 from the same bf16 weights with a bf16 KV cache (the
decode kernels' arithmetic). Checked: logits at every prompt position and every state (conv, DeltaNet, KV cache)
after the prefill, then greedy decoding on the layered kernels from that state.

Tolerances (relative, max|err| / max|ref|):
* fp32 twin (the same code, fp32 products): 1e-3 for logits and fp32 states, 1e-3 + 2^-8 for the bf16 KV cache
  (as tests/gpu/test_gpu_layered.py). Per layer the twin agrees to ~1e-7 given the same input (CPU, real
  shapes); chained through 24 layers it measured 1-3e-4, because a 1e-7 difference can flip the bf16 rounding of
  a KV-cache entry (2^-8 of that entry) which the next tokens' attention reads.
* bf16 (the fast path): 0.1. Measured 3-6e-2 at these shapes (CPU, 16-200 tokens) for logits and states, 0.6-0.75x
  of the reference's own bf16 mode on the same prompts (5-8e-2); see tests/test_prefill.py.
* greedy tokens after a bf16 prefill: identical to the reference's, or a first difference at a near tie (the
  reference's top-2 gap at that step at most twice the measured logit error), as the benchmark's check.

Run: ``pytest -m gpu tests/gpu/test_gpu_prefill.py -s`` (``-s`` prints the measured errors and speeds).
"""

import time

import pytest
import torch

from megakernel.launch import gpu_available
from reference.check import bf16_storage_tol, check
from reference.hf_compare import compare_states

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not gpu_available(), reason="needs a CUDA GPU")]

TOL_FP32 = 1e-3
TOL_BF16 = 0.1
TOL_BF16_STATE = 0.15  # per element against its head's max (megakernel.bench.systems.TOL_PREFILL_BF16_STATE)


def _prompt(n: int, seed: int) -> list[int]:
    from megakernel.bench.decode import prompt_ids

    return prompt_ids(n, 248320, seed)


PROMPTS = [_prompt(16, 1), _prompt(512, 0), _prompt(1000, 7)]  # the bench's check prompt, pp512, a partial chunk


@pytest.fixture(scope="module")
def stages():
    from megakernel.layered import load
    from reference import ensure_synthetic_checkpoint

    path = ensure_synthetic_checkpoint()
    return load(path, "reference"), load(path, "layered", max_context=4096)


def _state(decoder, capacity):
    from megakernel.layout import DeviceState

    return DeviceState(decoder.config, decoder.device, capacity)


def _errors(ref_logits, ref_state, logits, state, tol, prefix):
    worst = {"logits": check(prefix + "logits", ref_logits, logits, tol, verbose=False).rel}
    state_tol = TOL_BF16_STATE if tol == TOL_BF16 else tol
    for r in compare_states(ref_state, state.to_reference(), state_tol, prefix=prefix):
        kind = "conv" if "conv" in r.name else "DeltaNet" if "DeltaNet" in r.name else "KV"
        worst[kind] = max(worst.get(kind, 0.0), r.rel)
    return worst


def test_logits_at_every_position_and_every_state(stages, capsys):
    """fp32 twin at TOL_FP32, the bf16 prefill at TOL_BF16, on three prompts (16, 512 and 1000 tokens)."""
    ref, layered = stages
    lines = []
    for prompt in PROMPTS:
        ref_logits, ref_state = ref.prefill(prompt)
        for mode, tol in (("fp32", TOL_FP32), ("bf16", TOL_BF16)):
            logits, state = layered.prefill(prompt, state=_state(layered, len(prompt)), mode=mode)
            worst = _errors(ref_logits, ref_state, logits, state, tol, f"{mode} T={len(prompt)} ")
            lines.append(f"  {mode} T={len(prompt):>4}: " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
            del logits, state
        del ref_logits, ref_state
        torch.cuda.empty_cache()
    with capsys.disabled():
        print(f"\nprefill vs reference (fp32 compute, bf16 weights/KV), worst relative error (tol {TOL_FP32:.0e} fp32 "
              f"twin, KV {bf16_storage_tol(TOL_FP32):.1e}; {TOL_BF16:.0e} bf16; delta rule: "
              f"{layered.prefiller('bf16').backend_note}):\n" + "\n".join(lines))


def test_greedy_tokens_after_the_bf16_prefill(stages, capsys):
    """Decode 32 greedy tokens on the layered kernels from the bf16 prefill's state: the reference's tokens (from
    its own prefill), or a first difference at a near tie."""
    from megakernel.bench.systems import DecodeAfterPrefill, check_system, make_oracle

    ref, layered = stages
    lines = []
    for prompt in PROMPTS:
        oracle = make_oracle("reference", ref, prompt, 32, TOL_BF16)
        outcome = check_system(DecodeAfterPrefill(layered, "bf16"), oracle, prompt)
        assert outcome.passed, outcome.detail
        lines.append(f"  T={len(prompt):>4}: {outcome.detail}")
    with capsys.disabled():
        print("\ngreedy decoding after the bf16 prefill vs the reference:\n" + "\n".join(lines))


def test_cuda_graph_replay_equals_the_eager_run(stages):
    """The first prefill of a length runs eagerly, the second captures a CUDA graph, later ones replay it: the
    replay's logits and states equal the eager run's (same kernels), into any state."""
    _, layered = stages
    prefill = layered.prefiller("bf16")
    prompt = _prompt(384, 3)
    first = _state(layered, 384)
    eager, _ = layered.prefill(prompt, state=first, last_only=True)
    assert prefill.last_run.startswith("eager")
    for _ in range(2):
        replayed, state = layered.prefill(prompt, state=_state(layered, 512), last_only=True)
    assert prefill.last_run.startswith("one CUDA graph replay"), prefill.graph_note
    check("graph vs eager logits", eager, replayed, 1e-6)
    compare_states(first.to_reference(), state.to_reference(), 1e-6)


def test_a_32k_prompt_in_pieces(stages, capsys):
    """32,768 tokens in pieces of 8,192 (each continuing the last one's states): the last position's logits and
    every state against the reference (itself in pieces of 4,096), the fp32 twin at TOL_FP32 and bf16 at
    TOL_BF16; the bf16 prefill's peak memory stays a few GB."""
    from megakernel.bench.systems import reference_prefill

    ref, layered = stages
    prompt = _prompt(32768, 11)
    ref_logits, ref_state = reference_prefill(ref, prompt, all_logits=False)
    lines = []
    for mode, tol in (("fp32", TOL_FP32), ("bf16", TOL_BF16)):
        state = _state(layered, len(prompt))
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t0 = time.perf_counter()
        logits, state = layered.prefill(prompt, state=state, last_only=True, mode=mode)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30
        worst = _errors(ref_logits, ref_state, logits, state, tol, f"{mode} 32k ")
        lines.append(f"  {mode}: {seconds:.2f} s, peak {peak:.1f} GiB above the state; "
                     + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
        if mode == "bf16":
            assert peak < 8, f"bf16 prefill of 32k tokens peaked at {peak:.1f} GiB"
            assert "4 pieces" in layered.prefiller("bf16").last_run
        del logits, state
        torch.cuda.empty_cache()
    with capsys.disabled():
        print("\n32k-token prompt vs the reference (last position, every state):\n" + "\n".join(lines))


def test_fla_and_torch_delta_rules_agree(stages, capsys):
    """flash-linear-attention's chunk_gated_delta_rule (bf16 q/k/v) against the batched torch form (fp32) on one
    layer's shapes, and the whole bf16 prefill on each backend against the oracle."""
    pytest.importorskip("fla", reason="flash-linear-attention is not installed (the torch backend runs)")
    from megakernel.prefill import Prefill
    from megakernel.prefill.delta_rule import chunked_delta_rule, fla_delta_rule

    ref, layered = stages
    gen = torch.Generator(device="cuda").manual_seed(0)
    T, H, D = 1000, 16, 128
    q, k, v = (torch.randn(T, H, D, device="cuda", generator=gen) for _ in range(3))
    g = -0.1 * torch.rand(T, H, device="cuda", generator=gen)
    beta = torch.rand(T, H, device="cuda", generator=gen)
    s0 = 0.1 * torch.randn(H, D, D, device="cuda", generator=gen)
    o_torch, s_torch = chunked_delta_rule(q, k, v, g, beta, s0)
    o_fla, s_fla = fla_delta_rule(q, k, v, g, beta, s0)
    op = check("fla vs torch output", o_torch, o_fla.float(), 2e-2).rel
    st = check("fla vs torch state", s_torch, s_fla, 2e-2).rel
    prompt = PROMPTS[1]
    ref_logits, ref_state = ref.prefill(prompt)
    lines = [f"  one layer (T={T}): output {op:.2e}, state {st:.2e} (tol 2e-2: bf16 inputs to fla's products)"]
    for backend in ("torch", "fla"):
        prefill = Prefill(layered.weights, backend=backend)
        state = _state(layered, len(prompt))
        logits = prefill(prompt, state, logits="all")
        worst = _errors(ref_logits, ref_state, logits, state, TOL_BF16, f"{backend} ")
        lines.append(f"  whole bf16 prefill, {backend}: " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items()))
    with capsys.disabled():
        print("\nflash-linear-attention vs the torch delta rule:\n" + "\n".join(lines))


def test_prefill_speed_is_reported(stages, capsys):
    """Not a timed test (the benchmark has the checked figures): pp512 / pp4096 tok/s of the bf16 prefill, eager
    (first run) and replayed (CUDA graph), and of the reference, printed for the record."""
    ref, layered = stages
    prefill = layered.prefiller("bf16")
    lines = []
    for n in (512, 4096):
        prompt = _prompt(n, 0)
        state = _state(layered, n)
        times = []
        for _ in range(4):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            layered.prefill(prompt, state=state, last_only=True)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            lines.append(f"  pp{n}: {n / times[-1]:>9,.0f} tok/s ({prefill.last_run})")
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        ref.prefill(prompt, last_only=True)
        torch.cuda.synchronize()
        lines.append(f"  pp{n}: {n / (time.perf_counter() - t0):>9,.0f} tok/s (the reference, fp32)")
    with capsys.disabled():
        print("\nprefill speed (first run eager, second captures, then replays):\n" + "\n".join(lines))
