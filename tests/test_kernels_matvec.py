"""Matvec kernels (every version, every fused variant) against plain torch / ``reference.ops`` in fp32.

Runs in the CUDA simulator on the CPU (``NUMBA_ENABLE_CUDASIM=1``; the honest simulator layer runs a launch's
blocks concurrently and provides warp shuffles).  The weights are random bf16 values with realistic scales
(std 1/sqrt(K), as trained projections), the oracle multiplies the same bf16 values upcast to fp32, and every
output buffer is NaN-poisoned before the launch, so an element a kernel forgets to write fails ``check``.

Sizes are awkward on purpose: N in {1, 31, 33, 257} (not multiples of the warps per block, one row, more rows
than warps so warps grid-stride), K in {8, 40, 72, 200} (1 to 25 sixteen-byte pieces: lanes with no piece), plus
K = 1096 and 1800, the smallest sizes that reach matvec v5's unrolled four-loads-in-flight loop (it needs
K >= 8 * 97) with a remainder after it.

Tolerance: 1e-5 relative (max|err| / max|ref|, ``reference.check``).  Both sides accumulate in fp32 the same
exact bf16 x fp32 products, in different orders (lane-strided partial sums + a shuffle tree here, torch's
blocked sum there).  Each rounding is <= 2^-24 relative to the running sum; over K <= 1800 terms with random
signs the accumulated error is ~ sqrt(K) * 2^-24 * (sum |w x|) ~ 40 * 6e-8 * (a few x |y|) ~ 1e-6..1e-5 in the
worst row, and ~1e-7..5e-7 is what we observe.  A real bug (a skipped piece, a wrong row, a missed norm weight)
is O(1e-2..1).
"""

from __future__ import annotations

import pytest
import torch

import megakernel  # noqa: F401  (installs the simulator layer)
from megakernel import launch
from megakernel.testing import ptx_check
from megakernel.kernels import fused_matvec as F
from megakernel.kernels import matvec as M
from reference import ops
from reference.check import check

SIM = launch.SIMULATOR
if not SIM and not launch.gpu_available():  # pragma: no cover
    pytest.skip("NUMBA_ENABLE_CUDASIM=0 but no GPU", allow_module_level=True)

TOL = 1e-5
EPS = 1e-6
DEV = launch.kernel_device()
kd = launch.as_kernel_array


def bf16_weights(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=g) / k**0.5).to(torch.bfloat16).to(DEV)


def vec(n: int, seed: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=g) * scale + shift).to(DEV)


def wk(W: torch.Tensor):
    return kd(launch.words(W).view(-1))


def poisoned(n: int) -> torch.Tensor:
    return launch.poison_(torch.empty(n, device=DEV))


# (N, K) cases: every N and every K appear; the last two reach v5's unrolled loop.
SHAPES = [(1, 8), (31, 40), (33, 72), (257, 200), (5, 1096), (3, 1800)]


# --------------------------------------------------------------------------------------------------------------
# matvec v1..v5
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", sorted(M.VERSIONS))
@pytest.mark.parametrize("n,k", SHAPES)
def test_matvec_versions_match_torch(version, n, k):
    W = bf16_weights(n, k, seed=n * 1000 + k)
    x = vec(k, seed=k)
    y = poisoned(n)
    M.matvec(wk(W), kd(x), kd(y), n, k, version=version)
    launch.synchronize()
    check(f"matvec v{version} [{n}, {k}]", W.float() @ x, y, TOL)


def test_dispatcher_defaults_and_plans():
    assert M.DEFAULT_VERSION == 7 and set(M.VERSIONS) == {1, 2, 3, 4, 5, 6, 7}
    # GPU grid sizing (pure arithmetic, checked here for an H100's 132 SMs)
    assert M.plan_rows(248320, sms=132, simulator=False) == (8 * 132, 512)  # the LM head: 8 x 512 per SM
    assert M.plan_rows(8224, sms=132, simulator=False) == (514, 512)
    assert M.plan_rows(3584, sms=132, simulator=False) == (448, 256)
    assert M.plan_rows(1024, sms=132, simulator=False) == (512, 64)  # few rows: small blocks on every SM
    assert M.plan_rows(1, sms=132, simulator=False) == (1, 32)
    assert M.plan_one_per_warp(1000, simulator=False) == (125, 256)
    assert M.plan_one_per_thread(1000, simulator=False) == (8, 128)
    with pytest.raises(ValueError, match="unknown matvec version 8"):
        M.matvec(None, None, None, 8, 8, version=8)


def test_v6_v7_plans():
    """G (warps per row) and the one-wave grid: pure arithmetic, checked with H100 numbers (132 SMs)."""
    assert [M.min_parts(k) for k in (8, 1024, 1032, 2048, 3584, 4096, 4104)] == [1, 1, 2, 2, 4, 4, 8]
    # v7: fewest warps per row; 8-warp blocks, 4 per SM (64 registers)
    assert M.parts_fewest(1024, 2048, 4224, 8) == 2 and M.parts_fewest(1024, 3584, 4224, 8) == 4
    assert M.plan_split(8224, 1024, 4, 132, 8, 1) == (528, 256, 1)   # in_proj: ~2 rows per warp, one wave
    assert M.plan_split(1024, 2048, 4, 132, 8, 2) == (256, 256, 2)   # out_proj / o_proj
    assert M.plan_split(1024, 3584, 4, 132, 8, 4) == (512, 256, 4)   # down
    assert M.plan_split(248320, 1024, 4, 132, 8, 1) == (528, 256, 1)
    assert M.plan_split(3, 8, 4, 132, 8, 1) == (1, 256, 1)
    # v6: spread few rows over more warps while they fit in one wave (16-warp blocks, 2 per SM)
    assert M.parts_spread(1024, 2048, 4224, 16) == 4 and M.parts_spread(8224, 1024, 4224, 16) == 1
    assert M.parts_spread(1024, 3584, 4224, 16) == 4
    with pytest.raises(ValueError, match="G = 3 warps per row must divide"):
        M.plan_split(100, 1024, 2, 132, 16, 3)
    with pytest.raises(ValueError, match=">= 4"):
        M.plan_split(100, 3584, 2, 132, 16, 2)
    with pytest.raises(ValueError, match="does not fit"):
        M.plan_split(100, 1024, 0, 132, 32, 1)


# (variant, N, K, (warps per block, G)): explicit configurations in the simulator's small blocks, with several
# iterations per warp (N > blocks * rows per block) and rows whose last chunk is partial
V6_CONFIGS = [(7, 33, 1800, (4, 4)), ("v7_shared", 33, 1800, (4, 4)), ("v7_l1", 9, 1096, (4, 2)),
              (6, 9, 1096, (4, 2)), (7, 70, 72, (2, 1)), ("v7_shared", 13, 264, (4, 2))]


@pytest.mark.parametrize("variant,n,k,config", V6_CONFIGS)
def test_matvec_v6_configs(variant, n, k, config):
    W = bf16_weights(n, k, seed=n * 1000 + k)
    x = vec(k, seed=k)
    y = poisoned(n)
    M.matvec(wk(W), kd(x), kd(y), n, k, version=variant, config=config)
    launch.synchronize()
    check(f"matvec {variant} {config} [{n}, {k}]", W.float() @ x, y, TOL)


@pytest.mark.parametrize("version,k", [(5, 12), (4, 36), (5, 1020), (3, 6), (1, 7)])
def test_bad_k_is_refused_with_the_shape(version, k):
    W = torch.zeros(4, k + (k % 2), dtype=torch.bfloat16, device=DEV)
    with pytest.raises(ValueError, match=rf"\[4, {k}\].*multiple of {M.K_MULTIPLE[version]}"):
        M.matvec(wk(W), kd(torch.zeros(k + 8, device=DEV)), kd(torch.zeros(4, device=DEV)), 4, k, version=version)


def test_fused_refuse_bad_k():
    z = kd(torch.zeros(64, device=DEV))
    Wz = kd(torch.zeros(64, dtype=torch.int32, device=DEV))
    with pytest.raises(ValueError, match=r"norm_matvec.*\[2, 20\].*multiple of 8"):
        F.norm_matvec(z, z, Wz, z, 2, 20, EPS)
    with pytest.raises(ValueError, match=r"norm_swiglu_matvec.*\[2, 4\]"):
        F.norm_swiglu_matvec(z, z, Wz, Wz, z, 2, 4, EPS)
    with pytest.raises(ValueError, match=r"matvec_residual.*\[2, 12\]"):
        F.matvec_residual(Wz, z, z, 2, 12)
    with pytest.raises(ValueError, match=r"gated_norm_matvec_residual.*\[2, 6\]"):
        F.gated_norm_matvec_residual(z, z, z, Wz, z, 2, 2, 3, EPS)


def test_too_small_buffers_are_refused():
    W = bf16_weights(4, 16, seed=1)
    with pytest.raises(ValueError, match="x has 8"):
        M.matvec(wk(W), kd(torch.zeros(8, device=DEV)), kd(torch.zeros(4, device=DEV)), 4, 16)


# --------------------------------------------------------------------------------------------------------------
# fused variants
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,k,version", [(1, 8, 7), (33, 72, 7), (257, 200, 7), (5, 1096, 7), (33, 72, 5),
                                         (5, 1096, 5)])
def test_norm_matvec(n, k, version):
    W = bf16_weights(n, k, seed=k + 7)
    h = vec(k, seed=1, scale=3.0, shift=0.5)  # residual-stream scale, nonzero mean
    w = vec(k, seed=2, scale=0.2)  # zero-centred norm weight, applied as (1 + w)
    y = poisoned(n)
    F.norm_matvec(kd(h), kd(w), wk(W), kd(y), n, k, EPS, version=version)
    launch.synchronize()
    check(f"norm_matvec v{version} [{n}, {k}]", W.float() @ ops.rms_norm(h, w, EPS), y, TOL)


@pytest.mark.parametrize("n,k,version,config", [(31, 40, 5, None), (3, 1800, 5, None), (1, 8, 7, None),
                                                (31, 40, 7, None), (257, 72, 7, None), (3, 1800, 7, None),
                                                (7, 1800, 7, (4, 4)), (11, 72, 7, (2, 2))])
def test_norm_swiglu_matvec(n, k, version, config):
    Wg, Wu = bf16_weights(n, k, seed=11), bf16_weights(n, k, seed=12)
    h = vec(k, seed=3, scale=2.0)
    w = vec(k, seed=4, scale=0.2)
    act = poisoned(n)
    F.norm_swiglu_matvec(kd(h), kd(w), wk(Wg), wk(Wu), kd(act), n, k, EPS, version=version, config=config)
    launch.synchronize()
    x = ops.rms_norm(h, w, EPS)
    ref = ops.silu(Wg.float() @ x) * (Wu.float() @ x)  # the pieces of reference.ops.swiglu_mlp
    check(f"norm_swiglu_matvec v{version} {config} [{n}, {k}]", ref, act, TOL)


@pytest.mark.parametrize("version", [5, 7])
@pytest.mark.parametrize("n,k", [(1, 8), (33, 200), (5, 1096)])
def test_matvec_residual_adds_exactly_the_product(n, k, version):
    W = bf16_weights(n, k, seed=21)
    x = vec(k, seed=5)
    h0 = vec(n, seed=6, scale=4.0)
    h = h0.clone()
    F.matvec_residual(wk(W), kd(x), kd(h), n, k, version=version)
    y = poisoned(n)
    M.matvec(wk(W), kd(x), kd(y), n, k, version=version)  # the same dot products, in the same order
    launch.synchronize()
    check(f"matvec_residual v{version} [{n}, {k}] == h0 + matvec", h0 + y, h, exact=True)
    check(f"matvec_residual v{version} [{n}, {k}] vs torch", h0 + W.float() @ x, h, TOL)


GATED_CASES = [(2, 8, 3, None), (3, 24, 33, None), (4, 20, 257, None), (2, 548, 5, None), (5, 200, 6, None),
               (17, 24, 9, None)]  # 17 heads: warps take two heads per pass, the last one alone


@pytest.mark.parametrize("heads,head_dim,n,config,fused,version",
                         [c + (f, 7) for c in GATED_CASES for f in (True, False)]
                         + [(2, 548, 9, (4, 4), True, 7), (3, 24, 33, None, True, 5), (2, 548, 5, None, True, 5),
                            (3, 24, 33, None, False, 5)])
def test_gated_norm_matvec_residual(heads, head_dim, n, config, fused, version):
    k = heads * head_dim
    W = bf16_weights(n, k, seed=31)
    o = vec(k, seed=7, scale=0.3)
    z = vec(k, seed=8, scale=2.0)
    w = vec(head_dim, seed=9, scale=0.2, shift=1.0)  # plain weight (initialised to 1)
    h0 = vec(n, seed=10)
    h = h0.clone()
    scratch = poisoned(k)
    F.gated_norm_matvec_residual(kd(o), kd(z), kd(w), wk(W), kd(h), n, heads, head_dim, EPS, fused=fused,
                                 scratch=kd(scratch), version=version, config=config)
    launch.synchronize()
    x = ops.gated_rms_norm(o.view(heads, head_dim), z.view(heads, head_dim), w, EPS).reshape(-1)
    check(f"gated_norm_matvec_residual v{version} fused={fused} {config} [{n}, {heads}x{head_dim}]",
          h0 + W.float() @ x, h, TOL)
    check("  (the product alone)", W.float() @ x, h - h0, 1e-4)  # h - h0 loses bits to h0's magnitude


@pytest.mark.parametrize("version", [5, 7])
def test_fused_norms_use_eps_on_tiny_inputs(version):
    """Inputs of ~1e-3 (mean square ~1e-6 = eps): the eps in each fused norm changes the result by O(1) here,
    so a dropped or misplaced eps fails (at unit scale it moves results by ~1e-6, inside every tolerance)."""
    n, k, heads, head_dim = 9, 72, 3, 24
    h = vec(k, seed=13, scale=1e-3)
    w = vec(k, seed=14, scale=0.2)
    W, Wu = bf16_weights(n, k, seed=15), bf16_weights(n, k, seed=16)
    y, act = poisoned(n), poisoned(n)
    F.norm_matvec(kd(h), kd(w), wk(W), kd(y), n, k, EPS, version=version)
    F.norm_swiglu_matvec(kd(h), kd(w), wk(W), wk(Wu), kd(act), n, k, EPS, version=version)
    o, z, gw = vec(k, seed=17, scale=1e-3), vec(k, seed=18), vec(head_dim, seed=19, scale=0.2, shift=1.0)
    out = torch.zeros(n, device=DEV)
    F.gated_norm_matvec_residual(kd(o), kd(z), kd(gw), wk(W), kd(out), n, heads, head_dim, EPS, version=version)
    launch.synchronize()
    x = ops.rms_norm(h, w, EPS)
    assert (x - ops.rms_norm(h, w, 0.0)).abs().max() > 0.1 * x.abs().max()  # eps matters at this scale
    check(f"norm_matvec v{version}, tiny h", W.float() @ x, y, TOL)
    check(f"norm_swiglu_matvec v{version}, tiny h", ops.silu(W.float() @ x) * (Wu.float() @ x), act, TOL)
    xg = ops.gated_rms_norm(o.view(heads, head_dim), z.view(heads, head_dim), gw, EPS).reshape(-1)
    xg0 = ops.gated_rms_norm(o.view(heads, head_dim), z.view(heads, head_dim), gw, 0.0).reshape(-1)
    assert (xg - xg0).abs().max() > 0.1 * xg.abs().max()
    check(f"gated_norm_matvec_residual v{version}, tiny o", W.float() @ xg, out, TOL)


@pytest.mark.parametrize("version", [5, 7])
def test_gated_norm_z_may_be_an_unaligned_slice(version):
    """The layered decoder passes z as a slice of the projection buffer at any offset (scalar loads)."""
    heads, head_dim, n = 2, 8, 4
    k = heads * head_dim
    W = bf16_weights(n, k, seed=41)
    buf = vec(3 + 2 * k, seed=11)
    o, z = buf[3 : 3 + k], buf[3 + k :]
    w = vec(head_dim, seed=12, shift=1.0)
    h = torch.zeros(n, device=DEV)
    F.gated_norm_matvec_residual(kd(o), kd(z), kd(w), wk(W), kd(h), n, heads, head_dim, EPS, version=version)
    launch.synchronize()
    x = ops.gated_rms_norm(o.view(heads, head_dim), z.view(heads, head_dim), w, EPS).reshape(-1)
    check("gated norm, unaligned o/z", W.float() @ x, h, TOL)


# --------------------------------------------------------------------------------------------------------------
# sm_90 PTX: no float64, no local memory, no spills; vector loads where promised
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ptx_reports():
    reports = ptx_check.check_in_subprocess("megakernel.kernels.matvec", "megakernel.kernels.fused_matvec")
    return {r.name: r.to_dict() for r in reports}


def test_ptx_clean_for_sm90(ptx_reports, capsys):
    names = set(M.PTX_SIGNATURES) | set(F.PTX_SIGNATURES)
    assert set(ptx_reports) == names
    with capsys.disabled():
        print()
        for name in sorted(names):
            r = ptx_reports[name]
            print(f"  {name:38s} regs {r['registers']}  spills {r['spill_store_bytes']}/{r['spill_load_bytes']}")
    for r in ptx_reports.values():
        assert r["problems"] == [] and not r["f64_lines"] and not r["local_lines"]
        if r["registers"] is not None:
            assert r["spill_store_bytes"] == 0 == r["spill_load_bytes"]


def _has(ptx: str, *needles: str) -> bool:
    return any(n in ptx for n in needles)


def test_ptx_vector_loads(ptx_reports):
    v16_w = ("ld.global.v4.u32", "ld.global.nc.v4.u32")
    v16_x = ("ld.global.v4.f32", "ld.global.nc.v4.f32")
    v6 = [name for name in ptx_reports if "_v6" in name or "_v7" in name]
    assert len(v6) == 6
    for name in ["matvec_v4", "matvec_v5", "norm_matvec_kernel", "norm_swiglu_matvec_kernel",
                 "matvec_residual_kernel", "gated_norm_matvec_residual_kernel"] + v6:
        assert _has(ptx_reports[name]["ptx"], *v16_w), f"{name}: no 16-byte weight loads"
    l1 = ("matvec_v7", "matvec_v7_residual")  # split-K instances: x through L1
    for name in ("matvec_v4", "matvec_v5", "norm_matvec_kernel", "matvec_residual_kernel") + l1:
        assert _has(ptx_reports[name]["ptx"], *v16_x), f"{name}: no 16-byte loads of x"
    for name in ["gated_norm_matvec_residual_kernel"] + [n for n in v6 if n not in l1]:
        assert "ld.shared.v4.f32" in ptx_reports[name]["ptx"], f"{name}: x not read from shared memory"
    # v6: all four pieces of a row requested before the first is used (four predicated 16-byte loads in a row)
    ptx = ptx_reports["matvec_v6"]["ptx"]
    assert ptx.count("ld.global.v4.u32") + ptx.count("ld.global.nc.v4.u32") >= 8
    assert _has(ptx_reports["matvec_v3"]["ptx"], "ld.global.v2.u32", "ld.global.nc.v2.u32")
    for name in ("matvec_v1", "matvec_v2"):
        assert not _has(ptx_reports[name]["ptx"], ".v4.u32", ".v2.u32"), f"{name} should use word loads"
    # v5's unrolled loop: four independent 16-byte weight loads in one basic block
    assert ptx_reports["matvec_v5"]["ptx"].count("ld.global.v4.u32") >= 5
