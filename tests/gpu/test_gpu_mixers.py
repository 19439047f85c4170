"""The non-matvec decode kernels (DeltaNet step, attention prepare / split decode / combine, RMSNorm) on the GPU at
the real Qwen3.5-0.8B shapes: Hk = Hv = 16, Dk = Dv = 128, K = 4; Hq = 8, Hkv = 2, Dh = 256, R = 64, theta 1e7.

Oracle: ``reference.ops`` composed in fp32 on the CPU (so no TF32 or cuDNN algorithm choice can blur it), from the
same bf16-valued parameters and a bf16 KV cache. Inputs are random with realistic scales (in_proj outputs ~N(0, 1.5),
conv taps ~0.3, A_log in log[1, 16], a recurrent state of size ~0.3, q/k after their norms ~1 per element).

Tolerances (relative, max|err| / max|ref|):

* DeltaNet ``o`` and recurrent state: 1e-5. fp32 on both sides; the kernel sums the 128-term dot products
  ``S^T k``, ``S^T q``, the L2 norms and the 4 conv taps in another order (8 rows per thread, then 16 row groups
  through shared memory) and uses libdevice expf/log1pf (<= 2 ulp): a few ulp per value, ~1e-6 relative at most.
  The conv state is compared bit for bit (copies).
* attention ``q_out``: 1e-5 (sum of squares order, the kernel's sincos within 1.2e-7); ``gate_out`` and the V cache
  bit for bit; the K cache bit for bit except where the reference's fp32 ``k`` lies within 2^-18 of a bf16
  rounding midpoint (either neighbour accepted there, counted and printed); other cache positions untouched.
* attention output: 1e-5 against ``gqa_attention`` on the same bf16 cache: online softmax over up to 8191
  positions merged from up to 128 splits reorders fp32 sums (~1e-7 per sum).

Every output starts NaN-poisoned. Repeat runs on the same inputs must give bit-identical outputs and states (the
kernels use no floating-point atomics, so a moving result means a race). A last test prints kernel times (CUDA
graph replay, so Python launch overhead is excluded) and the bandwidth they reach; it asserts nothing about speed.

Run on a GPU machine: ``pytest -m gpu tests/gpu/test_gpu_mixers.py -v -s``. Skipped without a GPU.
"""

from __future__ import annotations

import math

import pytest
import torch

from megakernel import launch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not launch.gpu_available(), reason="needs a CUDA GPU")]

TOL = 1e-5
EPS = 1e-6
DN = (16, 16, 128, 128, 4)  # Hk, Hv, Dk, Dv, K
AT = (8, 2, 256, 64)  # Hq, Hkv, Dh, R
THETA = 1e7
BF16_NAN = 0x7FC0
DEVICE = "cuda"


def A(t):
    return launch.as_kernel_array(t)


def bf(t):
    return t.to(torch.bfloat16).float()


def cuda_(t):
    """A device copy (never an alias of the host tensor)."""
    return t.to(DEVICE, copy=True).contiguous()


def host(t):
    """A host copy (never an alias of the device tensor)."""
    return t.detach().to("cpu", copy=True)


# ----------------------------------------------------------------------------------------------------------------
# DeltaNet
# ----------------------------------------------------------------------------------------------------------------


def dn_inputs(seed, steps):
    Hk, Hv, Dk, Dv, Kw = DN
    C = 2 * Hk * Dk + Hv * Dv
    g = torch.Generator().manual_seed(seed)
    params = dict(
        conv_w=bf(torch.randn(C, Kw, generator=g) * 0.3),
        A_log=torch.empty(Hv).uniform_(0.0, math.log(16.0), generator=g),
        dt_bias=bf(torch.randn(Hv, generator=g) * 0.5),
    )
    conv_state = torch.randn(C, Kw - 1, generator=g)
    state = torch.randn(Hv, Dk, Dv, generator=g) * 0.3
    projs = [torch.randn(C + Hv * Dv + 2 * Hv, generator=g) * 1.5 for _ in range(steps)]
    return params, conv_state, state, projs


def dn_reference(proj, params, conv_state, state):
    from reference import ops

    Hk, Hv, Dk, Dv, _ = DN
    return ops.deltanet_decode_step(proj, params["conv_w"], params["A_log"], params["dt_bias"], conv_state, state,
                                    (Hk, Hv, Dk, Dv))


def dn_launch(d_proj, d_params, d_conv, d_state, d_o, poison=True):
    from megakernel.kernels.deltanet import deltanet_step

    if poison:
        launch.poison_(d_o)
    deltanet_step(A(d_proj), A(d_params["conv_w"]), A(d_conv), A(d_params["A_log"]), A(d_params["dt_bias"]),
                  A(d_state), A(d_o), *DN)


def test_deltanet_five_steps_real_shapes():
    from megakernel.kernels import deltanet
    from reference.check import check

    params, conv_state, state, projs = dn_inputs(seed=0, steps=5)
    d_params = {k: cuda_(v) for k, v in params.items()}
    d_conv, d_state = cuda_(conv_state), cuda_(state)
    d_o = torch.empty(DN[1] * DN[3], device=DEVICE)
    ref_conv, ref_state = conv_state.clone(), state.clone()
    for step, proj in enumerate(projs):
        ref_o, ref_conv, ref_state = dn_reference(proj, params, ref_conv, ref_state)
        dn_launch(cuda_(proj), d_params, d_conv, d_state, d_o)
        check(f"deltanet step {step} o", ref_o, host(d_o), TOL)
        check(f"deltanet step {step} conv state", ref_conv, host(d_conv), exact=True)
        check(f"deltanet step {step} recurrent state", ref_state, host(d_state), TOL)
    for arr, t in deltanet._COUNTERS.values():
        assert int(t.sum()) == 0  # every launch leaves its q/k hand-over counters at zero


def test_deltanet_repeat_runs_are_bit_identical():
    params, conv_state, state, projs = dn_inputs(seed=1, steps=1)
    d_params = {k: cuda_(v) for k, v in params.items()}
    d_proj = cuda_(projs[0])
    runs = []
    for _ in range(3):
        d_conv, d_state = cuda_(conv_state), cuda_(state)
        d_o = torch.empty(DN[1] * DN[3], device=DEVICE)
        dn_launch(d_proj, d_params, d_conv, d_state, d_o)
        runs.append([host(t) for t in (d_o, d_conv, d_state)])
    for other in runs[1:]:
        for a, b, what in zip(runs[0], other, ("o", "conv state", "recurrent state")):
            assert torch.equal(a.view(torch.int32), b.view(torch.int32)), f"{what} moved between runs: a race"


# ----------------------------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------------------------


def at_weights(g):
    Hq, Hkv, Dh, R = AT
    return bf(torch.randn(Dh, generator=g) * 0.2), bf(torch.randn(Dh, generator=g) * 0.2)


def at_proj(g):
    Hq, Hkv, Dh, R = AT
    return torch.randn(Hq * 2 * Dh + 2 * Hkv * Dh, generator=g) * 2.0


def at_reference_prepare(proj, qw, kw, position):
    from reference import ops

    Hq, Hkv, Dh, R = AT
    query, gate = ops.split_query_gate(proj[: Hq * 2 * Dh][None], Hq, Dh)
    q = ops.rms_norm(query, qw, EPS)
    k = ops.rms_norm(proj[Hq * 2 * Dh : Hq * 2 * Dh + Hkv * Dh].view(1, Hkv, Dh), kw, EPS)
    v = proj[Hq * 2 * Dh + Hkv * Dh :].view(Hkv, Dh)
    cos, sin = ops.rope_cos_sin(torch.tensor([position]), R, THETA)
    return ops.apply_partial_rope(q, cos, sin)[0], gate[0], ops.apply_partial_rope(k, cos, sin)[0], v


def at_reference_attention(q, gate, k_cache, v_cache, length):
    from reference import ops

    Hq, Hkv, Dh, R = AT
    keys = k_cache[:, :length].transpose(0, 1).float()
    values = v_cache[:, :length].transpose(0, 1).float()
    o = ops.gqa_attention(q[None], keys, values, Dh**-0.5, length - 1)
    return (o.reshape(Hq * Dh) * torch.sigmoid(gate)).reshape(-1)


def at_prepare(d_proj, d_qw, d_kw, d_inv, position, d_k, d_v, outputs=None):
    from megakernel.kernels.attention import attn_prepare

    Hq, Hkv, Dh, R = AT
    if outputs is None:
        q_out = launch.poison_(torch.empty(Hq, Dh, device=DEVICE))
        gate_out = launch.poison_(torch.empty(Hq * Dh, device=DEVICE))
    else:
        q_out, gate_out = outputs
    attn_prepare(A(d_proj), A(d_qw), A(d_kw), A(d_inv), position, A(launch.halves(d_k)), A(launch.halves(d_v)),
                 A(q_out), A(gate_out), *AT, eps=EPS)
    return q_out, gate_out


def at_attention(d_q, d_gate, d_k, d_v, length, n_splits, buffers=None, poison=True):
    from megakernel.kernels.attention import MAX_SPLITS, attn_combine, attn_decode

    Hq, Hkv, Dh, R = AT
    if buffers is None:
        buffers = (torch.empty(Hq, MAX_SPLITS, 2, device=DEVICE), torch.empty(Hq, MAX_SPLITS, Dh, device=DEVICE),
                   torch.empty(Hq * Dh, device=DEVICE))
    partial_ml, partial_o, out = (launch.poison_(t) for t in buffers) if poison else buffers
    attn_decode(A(d_q), A(launch.halves(d_k)), A(launch.halves(d_v)), length, A(partial_ml), A(partial_o),
                n_splits, *AT)
    attn_combine(A(partial_ml), A(partial_o), A(d_gate), A(out), n_splits, *AT)
    return out


def random_caches(g, capacity, length):
    Hq, Hkv, Dh, R = AT
    k, v = ((torch.randn(Hkv, capacity, Dh, generator=g) * 1.5).to(torch.bfloat16) for _ in range(2))
    for cache in (k, v):
        cache.view(torch.int16)[:, length:] = BF16_NAN  # never read by the decode
    return k, v


def check_bf16_column(name, ref_f32, got, slack=2.0**-18):
    """Bit-identical to ``ref_f32.to(bf16)`` except next to a rounding midpoint; returns how many differ."""
    expect = ref_f32.to(torch.bfloat16)
    differ = expect.view(torch.int16) != got.view(torch.int16)
    if not differ.any():
        return 0
    r, e, o = ref_f32[differ].double(), expect[differ].double(), got[differ].double()
    ok = ((e - o).abs() <= torch.maximum(e.abs(), o.abs()) * 2.0**-7) & ((r - (e + o) / 2).abs() <= slack * r.abs())
    assert ok.all(), f"{name}: bf16 values differ from the reference's rounding away from a midpoint"
    return int(differ.sum())


def test_attn_prepare_real_shapes(capsys):
    from reference import ops
    from reference.check import check

    Hq, Hkv, Dh, R = AT
    g = torch.Generator().manual_seed(2)
    qw, kw = at_weights(g)
    d_qw, d_kw, d_inv = cuda_(qw), cuda_(kw), cuda_(ops.rope_inv_freq(R, THETA))
    capacity = 4096
    k_cache, v_cache = random_caches(g, capacity, capacity)
    d_k, d_v = cuda_(k_cache), cuda_(v_cache)
    flips = 0
    for position in (0, 1, 1000, 4095):
        proj = at_proj(g)
        before_k, before_v = host(d_k), host(d_v)
        q_out, gate_out = at_prepare(cuda_(proj), d_qw, d_kw, d_inv, position, d_k, d_v)
        q, gate, k, v = at_reference_prepare(proj, qw, kw, position)
        check(f"prepare pos {position} q", q, host(q_out), TOL)
        check(f"prepare pos {position} gate", gate, host(gate_out), exact=True)
        after_k, after_v = host(d_k), host(d_v)
        assert torch.equal(after_v[:, position].view(torch.int16), v.to(torch.bfloat16).view(torch.int16))
        flips += check_bf16_column(f"prepare pos {position} k", k, after_k[:, position])
        others = torch.arange(capacity) != position
        assert torch.equal(after_k[:, others].view(torch.int16), before_k[:, others].view(torch.int16))
        assert torch.equal(after_v[:, others].view(torch.int16), before_v[:, others].view(torch.int16))
    with capsys.disabled():
        print(f"\nattn_prepare: {flips} of {4 * Hkv * Dh} k values took the other bf16 neighbour at a midpoint")


@pytest.mark.parametrize("length,n_splits,q_scale", [
    (1, None, 1.0), (63, None, 1.0), (65, None, 1.0), (1000, None, 1.0), (4096, None, 1.0),
    (4096, 1, 1.0), (4096, 7, 4.0), (8191, None, 8.0),
])
def test_attn_decode_real_shapes(length, n_splits, q_scale):
    from megakernel.kernels.attention import attention_splits
    from reference.check import check

    Hq, Hkv, Dh, R = AT
    g = torch.Generator().manual_seed(length)
    k_cache, v_cache = random_caches(g, length + 64, length)
    q = torch.randn(Hq, Dh, generator=g) * q_scale  # q_scale 8: scores of std ~8, a peaky softmax
    gate = torch.randn(Hq * Dh, generator=g) * 2.0
    n = n_splits or attention_splits(length)
    out = at_attention(cuda_(q), cuda_(gate), cuda_(k_cache), cuda_(v_cache), length, n)
    check(f"attention L={length} splits={n} q x{q_scale}", at_reference_attention(q, gate, k_cache, v_cache, length),
          host(out), TOL)


def test_attention_five_step_chain():
    from megakernel.kernels.attention import attention_splits
    from reference import ops
    from reference.check import check

    g = torch.Generator().manual_seed(3)
    qw, kw = at_weights(g)
    d_qw, d_kw, d_inv = cuda_(qw), cuda_(kw), cuda_(ops.rope_inv_freq(AT[3], THETA))
    start = 300
    k_cache, v_cache = random_caches(g, 512, start)
    d_k, d_v = cuda_(k_cache), cuda_(v_cache)
    for position in range(start, start + 5):
        proj = at_proj(g)
        q_out, gate_out = at_prepare(cuda_(proj), d_qw, d_kw, d_inv, position, d_k, d_v)
        q, gate, k, v = at_reference_prepare(proj, qw, kw, position)
        check(f"chain pos {position} q", q, host(q_out), TOL)
        k_now, v_now = host(d_k), host(d_v)
        check_bf16_column(f"chain pos {position} k", k, k_now[:, position])
        assert torch.equal(v_now[:, position].view(torch.int16), v.to(torch.bfloat16).view(torch.int16))
        n = attention_splits(position + 1, positions_per_split=64)
        out = at_attention(q_out, gate_out, d_k, d_v, position + 1, n)
        check(f"chain pos {position} out ({n} splits)", at_reference_attention(q, gate, k_now, v_now, position + 1),
              host(out), TOL)


def test_attention_repeat_runs_are_bit_identical():
    from reference import ops

    g = torch.Generator().manual_seed(4)
    qw, kw = at_weights(g)
    d_qw, d_kw, d_inv = cuda_(qw), cuda_(kw), cuda_(ops.rope_inv_freq(AT[3], THETA))
    proj = cuda_(at_proj(g))
    k_cache, v_cache = random_caches(g, 4096, 3000)
    runs = []
    for _ in range(3):
        d_k, d_v = cuda_(k_cache), cuda_(v_cache)
        q_out, gate_out = at_prepare(proj, d_qw, d_kw, d_inv, 3000, d_k, d_v)
        out = at_attention(q_out, gate_out, d_k, d_v, 3001, 47)
        runs.append([host(t).view(torch.int16) if t.dtype == torch.bfloat16 else host(t).view(torch.int32)
                     for t in (q_out, gate_out, d_k, d_v, out)])
    for other in runs[1:]:
        for a, b, what in zip(runs[0], other, ("q_out", "gate_out", "k cache", "v cache", "out")):
            assert torch.equal(a, b), f"{what} moved between runs: a race"


def test_sincos_with_hardware_fma():
    """The attention kernel's sin/cos, now with the GPU's fused multiply-add, over the 0.8B model's RoPE angles up
    to position 262143: within 1.2e-7 of the exact values."""
    from numba import cuda

    from megakernel.kernels.attention import sincos
    from reference import ops

    @cuda.jit
    def kernel(angles, s, c):
        i = cuda.grid(1)
        if i < angles.shape[0]:
            sn, cs = sincos(angles[i])
            s[i] = sn
            c[i] = cs

    rng = torch.Generator().manual_seed(5)
    positions = torch.cat([torch.arange(2048), torch.randint(0, 262144, (2048,), generator=rng)])
    angles = (positions.float()[:, None] * ops.rope_inv_freq(64, THETA)[None, :]).reshape(-1)
    d_angles = cuda_(angles)
    s, c = launch.poison_(torch.empty_like(d_angles)), launch.poison_(torch.empty_like(d_angles))
    n = angles.numel()
    kernel[(n + 255) // 256, 256](A(d_angles), A(s), A(c))
    exact = angles.double()
    assert float((host(s).double() - exact.sin()).abs().max()) <= 1.2e-7
    assert float((host(c).double() - exact.cos()).abs().max()) <= 1.2e-7


def test_rmsnorm_hidden_size():
    from megakernel.kernels.rmsnorm import rmsnorm
    from reference import ops
    from reference.check import check

    g = torch.Generator().manual_seed(6)
    x, w = torch.randn(1024, generator=g) * 3, bf(torch.randn(1024, generator=g) * 0.2)
    out = launch.poison_(torch.empty(1024, device=DEVICE))
    rmsnorm(A(cuda_(x)), A(cuda_(w)), A(out), 1024, EPS)
    check("rmsnorm 1024", ops.rms_norm(x, w, EPS), host(out), TOL)


# ----------------------------------------------------------------------------------------------------------------
# Times (reported, not asserted)
# ----------------------------------------------------------------------------------------------------------------


def _graph_time_us(fn, copies=20, replays=20):
    """Kernel time per call from a CUDA graph holding ``copies`` calls (no Python launch cost), or None."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                fn()  # compiles and allocates outside the capture
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(copies):
                fn()
        graph.replay()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) * 1e3 / (copies * replays)
    except Exception as exc:  # noqa: BLE001 - a report, not a check
        print(f"  (CUDA graph timing unavailable: {type(exc).__name__}: {exc})")
        return None


def _stream_time_us(fn, iters=200):
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / iters


def test_report_times(capsys):
    from megakernel.kernels.attention import MAX_SPLITS, attention_splits, attn_combine, attn_decode, attn_prepare
    from megakernel.kernels.deltanet import deltanet_step
    from reference import ops

    Hk, Hv, Dk, Dv, Kw = DN
    Hq, Hkv, Dh, R = AT
    lines = []

    def report(name, fn, nbytes):
        t = _graph_time_us(fn)
        how = "CUDA graph"
        if t is None:
            t, how = _stream_time_us(fn), "stream, includes Python launch overhead"
        lines.append(f"  {name:<44s} {t:8.2f} us  {nbytes / t / 1e3:8.1f} GB/s  ({how})")

    # kernel arrays wrapped once, as the decoder does: the timed closures only launch
    params, conv_state, state, projs = dn_inputs(seed=7, steps=1)
    d_params = {k: cuda_(v) for k, v in params.items()}
    d_state = cuda_(state)
    dn_args = [A(t) for t in (cuda_(projs[0]), d_params["conv_w"], cuda_(conv_state), d_params["A_log"],
                              d_params["dt_bias"], d_state, torch.empty(Hv * Dv, device=DEVICE))]
    report("deltanet_step (state 1 MiB read + 1 MiB written)", lambda: deltanet_step(*dn_args, *DN),
           2 * Hv * Dk * Dv * 4)

    g = torch.Generator().manual_seed(8)
    qw, kw = at_weights(g)
    weights = [A(cuda_(t)) for t in (qw, kw, ops.rope_inv_freq(R, THETA))]
    q_out, gate_out = torch.empty(Hq, Dh, device=DEVICE), torch.empty(Hq * Dh, device=DEVICE)
    partials = [A(torch.empty(Hq, MAX_SPLITS, 2, device=DEVICE)), A(torch.empty(Hq, MAX_SPLITS, Dh, device=DEVICE))]
    out = A(torch.empty(Hq * Dh, device=DEVICE))
    for length in (512, 4096, 32768):
        k_cache, v_cache = random_caches(g, length, length)
        caches = [A(launch.halves(cuda_(t))) for t in (k_cache, v_cache)]
        attn_prepare(A(cuda_(at_proj(g))), *weights, length - 1, *caches, A(q_out), A(gate_out), *AT, eps=EPS)
        n = attention_splits(length)
        q_arr, gate_arr = A(q_out), A(gate_out)

        def decode_and_combine(caches=caches, length=length, n=n):
            attn_decode(q_arr, *caches, length, *partials, n, *AT)
            attn_combine(*partials, gate_arr, out, n, *AT)

        report(f"attn_decode + attn_combine L={length} ({n} splits)", decode_and_combine,
               2 * Hkv * length * Dh * 2)
    prep_args = [A(cuda_(at_proj(g))), *weights, min(100, length - 1), *caches, A(q_out), A(gate_out)]
    report("attn_prepare", lambda: attn_prepare(*prep_args, *AT, eps=EPS), (Hq * 2 + 2 * Hkv) * Dh * 4)
    with capsys.disabled():
        print("\nnon-matvec decode kernels at the 0.8B shapes (bandwidth = the bytes named / time):")
        print("\n".join(lines))
    assert bool(torch.isfinite(d_state).all())
