"""megakernel.kernels.rmsnorm against reference.ops.rms_norm (fp32), in the simulator; sm_90 PTX check.

Tolerance 1e-5 relative (max|err| / max|ref|): both sides are fp32; only the order of the n-term sum of squares
differs (block reduction vs torch's vectorised sum), which moves rsqrt by a few ulp (~1e-7 relative).
"""

from __future__ import annotations

import pytest
import torch

import megakernel  # noqa: F401  (installs the honest simulator)
from megakernel import launch
from megakernel.testing import ptx_check
from megakernel.kernels import rmsnorm as K
from reference import ops
from reference.check import check

TOL = 1e-5
A = launch.as_kernel_array


@pytest.mark.parametrize("n", [1, 37, 64, 300])
def test_rmsnorm_matches_reference(n):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=g) * 3.0
    w = torch.randn(n, generator=g) * 0.2  # zero-centred weight, applied as (1 + w)
    w = w.to(torch.bfloat16).float()  # the checkpoint's bf16 values, upcast exactly
    out = launch.poison_(torch.empty(n))
    K.rmsnorm(A(x), A(w), A(out), n, 1e-6)
    check(f"rmsnorm n={n}", ops.rms_norm(x, w, 1e-6), out, TOL)


def test_rmsnorm_eps_and_scale_extremes():
    # tiny inputs: eps dominates the mean square; a large eps value exercises the constant
    x = torch.full((40,), 1e-4)
    x[::3] = -2e-4
    w = torch.zeros(40)
    for eps in (1e-6, 1e-2):
        out = launch.poison_(torch.empty(40))
        K.rmsnorm(A(x), A(w), A(out), 40, eps)
        check(f"rmsnorm eps={eps}", ops.rms_norm(x, w, eps), out, TOL)


def test_rmsnorm_refuses_bad_sizes():
    x = A(torch.zeros(4))
    with pytest.raises(ValueError, match="n .* positive"):
        K.rmsnorm(x, x, A(torch.zeros(4)), 0, 1e-6)
    with pytest.raises(ValueError, match="eps"):
        K.rmsnorm(x, x, A(torch.zeros(4)), 4, 0.0)


def test_ptx_sm90_clean():
    """Every kernel in PTX_SIGNATURES compiles for sm_90 without float64, local memory or spills (the subprocess
    check raises with the table on any of them)."""
    reports = ptx_check.check_in_subprocess("megakernel.kernels.rmsnorm")
    assert {r.name for r in reports} == set(K.PTX_SIGNATURES)
    for r in reports:
        assert r.ok, r.problems
        assert "bar.sync" in r.ptx and "shfl.sync.bfly" in r.ptx
