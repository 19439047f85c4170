"""The persistent megakernel on the GPU at the real Qwen3.5-0.8B shapes (synthetic checkpoint), every version.

Oracle: the reference on the same GPU computing in fp32 from the same bf16 weights with a bf16 KV cache (the
arithmetic the kernels do), and the layered decoder (the same device bodies, one launch per op). Tolerances as
tests/gpu/test_gpu_layered.py: 1e-3 relative for logits and fp32 states after 64 steps, 1e-3 + 2^-8 for the bf16
KV cache (one bf16 step of drift where both sides straddle a rounding midpoint).

Memory ordering between blocks cannot be checked on the CPU (the simulator's memory is sequentially consistent):
the stress test runs the kernel many times at several grid sizes and requires bit-identical tokens, logits and
states every time.
"""

import pytest
import torch

from megakernel.launch import gpu_available
from reference.check import bf16_storage_tol, check
from reference.hf_compare import compare_states

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not gpu_available(), reason="needs a CUDA GPU")]

TOL = 1e-3
LONG = [(i * 7919) % 200_000 + 17 for i in range(2100)]  # a 2,100-token prompt
PROMPTS = [[785, 6722, 315, 9625, 374], list(range(1000, 1037)), LONG]


def _versions():
    from megakernel.persistent import VERSIONS

    return sorted(VERSIONS)


@pytest.fixture(scope="module")
def ref():
    import megakernel
    from reference import ensure_synthetic_checkpoint

    return megakernel.load(ensure_synthetic_checkpoint(), "reference")


@pytest.fixture(scope="module")
def layered(ref):
    from megakernel.layered import LayeredDecoder

    return LayeredDecoder(ref, max_context=4096, prefill_mode="reference")


@pytest.fixture(scope="module", params=_versions(), ids=lambda v: f"v{v}")
def pers(request, ref):
    from megakernel.persistent import PersistentDecoder

    # one decoder per version for every test, 32k positions of KV cache (one compile per version)
    dec = PersistentDecoder(ref, max_context=32_768, version=request.param, prefill_mode="reference")
    dec.kernel()
    print(f"\npersistent v{dec.version}: {dec.blocks} blocks x {dec.plan.threads} threads, "
          f"{getattr(dec, 'registers', '?')} registers, {dec.plan.shared_bytes} B dynamic shared memory")
    return dec


def test_logits_and_all_states_after_64_steps(ref, pers, capsys):
    worst = {"logits": 0.0, "states": 0.0}
    for prompt in PROMPTS[:2]:
        ref_logits, ref_state = ref.prefill(prompt)
        _, state = pers.prefill(prompt)
        token = int(ref_logits[-1].argmax())
        for step in range(64):
            out = pers.decode_step(token, state)
            expected = ref.decode_step(token, ref_state)
            worst["logits"] = max(worst["logits"], check(f"step {step} logits", expected, out, TOL, verbose=False).rel)
            token = int(expected.argmax())
        results = compare_states(ref_state.to("cpu"), state.to_reference(), TOL, prefix="after 64 steps ")
        worst["states"] = max([worst["states"]] + [r.rel for r in results])
    with capsys.disabled():
        print(f"\npersistent v{pers.version} vs reference, 2 prompts x 64 steps: worst logits rel "
              f"{worst['logits']:.2e}, worst state rel {worst['states']:.2e} (tol {TOL:.0e}, bf16 KV "
              f"{bf16_storage_tol(TOL):.1e})")


def test_greedy_tokens_identical_to_layered_and_reference_over_128(ref, layered, pers):
    for prompt in PROMPTS:
        expected = ref.generate(prompt, 128, stop_at_eos=False).tolist()
        assert layered.greedy_tokens(prompt, 128) == expected
        assert pers.greedy_tokens(prompt, 128) == expected, f"prompt of {len(prompt)} tokens"
        assert pers.last_run["steps"] == 127


def test_one_and_n_token_launches_give_the_same_tokens(pers):
    prompt = PROMPTS[1]
    all_in_one = pers.greedy_tokens(prompt, 48)
    assert pers.greedy_tokens(prompt, 48, steps_per_launch=5) == all_in_one
    logits, state = pers.prefill(prompt)
    steps = [int(logits[-1].argmax())]
    for _ in range(47):
        steps.append(int(pers.decode_step(steps[-1], state).argmax()))
    assert steps == all_in_one
    logits, state = pers.prefill(prompt)
    relaunched = [int(logits[-1].argmax())]
    relaunched += pers.run(state, relaunched[0], 1)
    pers.relaunch(46)
    relaunched += pers.finish()
    assert relaunched == all_in_one


def test_barrier_count_matches_the_schedule(pers):
    logits, state = pers.prefill([1, 2, 3])
    pers.run(state, int(logits[-1].argmax()), 4)
    assert pers.last_run["barriers"] == 4 * pers.barriers_per_step() + 1


def test_stress_bit_identical_over_runs_and_grid_sizes(pers):
    """Memory ordering: 5 runs at each of 3 grid sizes, 24 steps each, every token, logits and state identical."""
    prompt = PROMPTS[1]
    full = pers.resize_grid(None)
    baseline = None
    try:
        for blocks in (full, max(1, full // 2), 37 if full > 37 else max(1, full - 1)):
            pers.resize_grid(blocks)
            for run in range(5):
                logits, state = pers.prefill(prompt)
                tokens = pers.run(state, int(logits[-1].argmax()), 24)
                result = (tokens, pers.logits.clone(), state.to_reference())
                if baseline is None:
                    baseline = result
                    continue
                assert result[0] == baseline[0], f"tokens differ at grid {blocks}, run {run}"
                assert torch.equal(result[1], baseline[1]), f"logits differ at grid {blocks}, run {run}"
                a, b = result[2], baseline[2]
                for i in a.conv:
                    assert torch.equal(a.conv[i], b.conv[i]) and torch.equal(a.recurrent[i], b.recurrent[i]), i
                for i in a.k_cache:
                    assert torch.equal(a.k_cache[i], b.k_cache[i]) and torch.equal(a.v_cache[i], b.v_cache[i]), i
    finally:
        pers.resize_grid(None)


def test_sampling_in_the_kernel_is_reproducible_and_follows_its_keys(pers):
    prompt = PROMPTS[0]
    a = pers.generate(prompt, 24, temperature=0.8, seed=1234, stop_at_eos=False).tolist()
    b = pers.generate(prompt, 24, temperature=0.8, seed=1234, stop_at_eos=False).tolist()
    c = pers.generate(prompt, 24, temperature=0.8, seed=99, stop_at_eos=False).tolist()
    assert a == b and a != c


def _chunked_reference_prefill(ref, ids, capacity, chunk=2048):
    state = ref.new_state(capacity=capacity)
    logits = None
    for i in range(0, len(ids), chunk):
        logits, state = ref.prefill(ids[i : i + chunk], state=state, last_only=True)
    return logits, state


def test_32k_context_decodes_correctly(ref, pers):
    """A 32,000-token context (reference prefill in chunks), then 16 steps against the reference."""
    ids = [(i * 104729) % 240_000 + 3 for i in range(32_000)]
    logits, ref_state = _chunked_reference_prefill(ref, ids, capacity=32_768)
    state = pers.new_state()
    state.load_reference(ref_state)
    token = int(logits[-1].argmax())
    for step in range(16):
        out = pers.decode_step(token, state)
        expected = ref.decode_step(token, ref_state)
        check(f"32k step {step} logits", expected, out, TOL, verbose=False)
        assert int(out.argmax()) == int(expected.argmax())
        token = int(expected.argmax())


def test_version_6_computes_version_5s_bits_on_the_gpu(ref):
    """Version 6's consumer (split sums, x in registers, the mixers out of line) keeps every sum's order, so on the
    GPU too (the simulator replays ``warp_sum2`` in NumPy; here it is the shuffles, and x comes from registers)
    two decode steps after the same prompt give version 5's logits and states bit for bit."""
    from megakernel.persistent import PersistentDecoder

    runs = []
    for version in (5, 6):
        dec = PersistentDecoder(ref, max_context=1024, version=version, prefill_mode="reference")
        _, state = dec.prefill(PROMPTS[0])
        token, logits = 7, []
        for _ in range(2):
            logits.append(dec.decode_step(token, state).clone())
            token = int(logits[-1].argmax())
        runs.append((logits, state.to_reference()))
    (l5, s5), (l6, s6) = runs
    for a, b in zip(l5, l6):
        assert torch.equal(a, b), f"v6 logits differ from v5's: max abs {float((a - b).abs().max()):.3e}"
    for name in ("conv", "recurrent", "k_cache", "v_cache"):
        for layer in getattr(s5, name):
            assert torch.equal(getattr(s5, name)[layer], getattr(s6, name)[layer]), f"v6 {name}[{layer}] differs"



def test_the_producer_warp_computes_version_12s_bits_on_the_gpu(ref):
    """``producer`` (a ninth warp streams the pages, the consumer warps release slots through mbarriers; their
    block barriers and ``blockDim`` narrowed to 256 threads in the IR): the same sums in the same order, so on the
    full grid two decode steps give version 12's logits and states bit for bit, and a 6-step launch gives its
    tokens."""
    from megakernel.persistent import PersistentDecoder

    runs = []
    for options in ({}, {"producer": True}):
        dec = PersistentDecoder(ref, max_context=1024, version=12, prefill_mode="reference", options=options)
        _, state = dec.prefill(PROMPTS[1])
        token, logits = 7, []
        for _ in range(2):
            logits.append(dec.decode_step(token, state).clone())
            token = int(logits[-1].argmax())
        tokens = dec.run(state, token, 6)
        runs.append((logits, state.to_reference(), tokens, dec.last_run["threads"]))
    (l0, s0, t0, n0), (l1, s1, t1, n1) = runs
    assert n1 == n0 + 32 and t0 == t1, (n0, n1, t0, t1)
    for a, b in zip(l0, l1):
        assert torch.equal(a, b), f"producer logits differ from v12's: max abs {float((a - b).abs().max()):.3e}"
    for name in ("conv", "recurrent", "k_cache", "v_cache"):
        for layer in getattr(s0, name):
            assert torch.equal(getattr(s0, name)[layer], getattr(s1, name)[layer]), f"producer {name}[{layer}]"


def _assert_same_result(result, baseline, where: str) -> None:
    """Two runs' (tokens, logits, state.to_reference()) bit for bit: tokens, logits and every state per layer."""
    assert result[0] == baseline[0], f"tokens differ: {where}"
    assert torch.equal(result[1], baseline[1]), f"logits differ: {where}"
    for name in ("conv", "recurrent", "k_cache", "v_cache"):
        for layer in getattr(result[2], name):
            assert torch.equal(getattr(result[2], name)[layer], getattr(baseline[2], name)[layer]), \
                f"{name}[{layer}] differs: {where}"


def _same_bits_over_runs_and_grids(plain, build, what: str) -> None:
    """24-step launches after the same prompt: ``build`` must give ``plain``'s result (one run on the full grid)
    bit for bit in 3 runs on each of 3 grid sizes (the full grid, half of it, 37 blocks)."""
    full = build.resize_grid(None)
    baseline = None
    for dec, grids in ((plain, (full,)), (build, (full, full // 2, 37))):
        for blocks in grids:
            dec.resize_grid(blocks)
            for run in range(3 if dec is build else 1):
                logits, state = dec.prefill(PROMPTS[1])
                tokens = dec.run(state, int(logits[-1].argmax()), 24)
                result = (tokens, dec.logits.clone(), state.to_reference())
                if baseline is None:
                    baseline = result
                    continue
                _assert_same_result(result, baseline, f"{what} on {blocks} blocks, run {run}")


@pytest.mark.parametrize("more", [{}, {"producer": True, "producer_regs": 40, "inline_decode": False}],
                         ids=["v12", "producer"])
def test_flag_in_data_inproj_computes_version_12s_bits_on_the_gpu(ref, more):
    """``ll_inproj``: no grid barrier between a DeltaNet layer's in_proj and its items, which spin on flag-in-data
    words (value and tag in one 64-bit store). Memory ordering is what the simulator cannot check: here 24-step
    launches, 3 runs on each of 3 grid sizes, must give the tokens, logits and every state of the same build
    without ``ll_inproj``, bit for bit (a word read before its store landed would carry an older tag and be
    waited for; a torn word, or a value taken without its tag, would change the bits)."""
    from megakernel.persistent import PersistentDecoder

    decs = [PersistentDecoder(ref, max_context=1024, version=12, prefill_mode="reference",
                              options={**more, **options}) for options in ({}, {"ll_inproj": True})]
    _same_bits_over_runs_and_grids(*decs, f"ll_inproj{'+producer' if more else ''}")
    assert decs[1].last_run["barriers"] == 24 * decs[1].barriers_per_step() + 1
    assert decs[1].barriers_per_step() == decs[0].barriers_per_step() - len(ref.config.linear_layers)


@pytest.mark.parametrize("options", [{"ll_residual": True}, {"ll_together": True},
                                     {"ll_residual": True, "ll_together": 2}],
                         ids=["residual", "together", "residual+together=2"])
def test_flag_in_data_options_compute_version_13s_bits_on_the_gpu(ref, options):
    """``ll_residual``: no grid barrier between a residual phase and the MLP, whose norm spins on h's rows as
    flag-in-data words, with the MLP accumulators alternating by layer. ``ll_together``: the DeltaNet items re-read
    their in_proj words not yet written together (``2``: only the MLP's norm, its h words). 24-step launches, 3 runs
    on each of 3 grid sizes, must give version 13's tokens, logits and every state bit for bit (a word taken before
    its store landed, or a fast block's down sums added into an accumulator a slow block then cleared, would change
    the bits; so did the norm's squares contracted otherwise beside ``ll_wait4``: ``D.fma``)."""
    from megakernel.persistent import PersistentDecoder

    decs = [PersistentDecoder(ref, max_context=1024, version=13, prefill_mode="reference", options=o)
            for o in ({}, options)]
    _same_bits_over_runs_and_grids(*decs, str(options))
    assert decs[1].last_run["barriers"] == 24 * decs[1].barriers_per_step() + 1
    fewer = ref.config.num_hidden_layers if options.get("ll_residual") else 0
    assert decs[1].barriers_per_step() == decs[0].barriers_per_step() - fewer


def test_version_14_computes_version_13s_bits_on_the_gpu(ref):
    """Version 14 (version 13 with ``ll_residual``, ``ll_together=2`` and ``packed_descs``): 24-step launches, 3
    runs on each of 3 grid sizes, give version 13's tokens, logits and every state bit for bit."""
    from megakernel.persistent import PersistentDecoder

    decs = [PersistentDecoder(ref, max_context=1024, version=v, prefill_mode="reference") for v in (13, 14)]
    _same_bits_over_runs_and_grids(*decs, "version 14")
    assert decs[1].last_run["barriers"] == 24 * decs[1].barriers_per_step() + 1
    assert decs[1].barriers_per_step() == decs[0].barriers_per_step() - ref.config.num_hidden_layers


def test_column_combine_computes_version_13s_bits_on_the_gpu(ref):
    """``combine_cols``: the attention combine over items of 16 columns of a head, every split's partials loaded at
    once. After a 520-token prompt (33 splits of 16 positions on the full grid, 18 on 37 blocks), 16-step launches
    give version 13's tokens, logits and every state bit for bit on each grid size, twice."""
    from megakernel.persistent import PersistentDecoder

    decs = [PersistentDecoder(ref, max_context=1024, version=13, prefill_mode="reference", options=options)
            for options in ({}, {"combine_cols": 16})]
    full = decs[1].resize_grid(None)
    for blocks in (full, 37):
        results = []
        for dec, runs in ((decs[0], 1), (decs[1], 2)):
            dec.resize_grid(blocks)
            for _ in range(runs):
                logits, state = dec.prefill(LONG[:520])
                tokens = dec.run(state, int(logits[-1].argmax()), 16)
                results.append((tokens, dec.logits.clone(), state.to_reference()))
        for run, result in enumerate(results[1:]):
            where = f"combine_cols=16 on {blocks} blocks, run {run}"
            _assert_same_result(result, results[0], where)


@pytest.mark.parametrize("blocks,lto", [(1, True), (132, True), (132, False)])
def test_the_warp_roles_probe_on_the_gpu(blocks, lto):
    """The producer/consumer hand-off and the narrowed barriers in a small kernel (``warp_roles_probe``): 8
    consumer warps sum 64 pages a producer warp streams through a 4-slot ring, meeting at ``syncthreads`` after
    every page; every sum right and ``blockDim`` 256, linked through LTO-IR (numba-cuda's default) and through
    Numba's PTX (a kernel whose narrowing is skipped hangs: the probe was how that was found)."""
    from numba import cuda

    from megakernel.testing import warp_roles_probe

    warp_roles_probe.run(threads=256, ring=4, page_words=1024, pages=64, blocks=blocks, device_array=cuda.to_device,
                         lto=lto)
