"""One comparison helper for every stage: ``check(name, ref, out, tol=...)``.

It reports the max absolute error, the relative error ``max|out - ref| / max|ref|`` and the share of the
tolerance used, and fails hard (``CheckFailed``, an AssertionError) on a NaN/inf in the output, a shape mismatch
or an error over the tolerance. Tests, notebooks, the compare CLI and the benchmarks all use it, so "checked"
means the same thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class CheckFailed(AssertionError):
    pass


@dataclass
class CheckResult:
    name: str
    max_abs: float
    rel: float
    tol: float
    shape: tuple

    @property
    def used(self) -> float:
        """Fraction of the tolerance used (> 1 means failed)."""
        return self.rel / self.tol if self.tol > 0 else float("inf") if self.rel > 0 else 0.0

    def __str__(self) -> str:
        return (f"{self.name:<40s} max|err| {self.max_abs:.3e}  rel {self.rel:.3e}  "
                f"tol {self.tol:.0e}  ({100 * self.used:5.1f}% of tol)")


def relative_error(ref: torch.Tensor, out: torch.Tensor) -> tuple[float, float]:
    """(max |out - ref|, max |out - ref| / max |ref|), computed in fp64."""
    ref64, out64 = ref.detach().double().cpu(), out.detach().double().cpu()
    max_abs = float((out64 - ref64).abs().max()) if ref64.numel() else 0.0
    scale = float(ref64.abs().max()) if ref64.numel() else 0.0
    return max_abs, (max_abs / scale if scale > 0 else max_abs)


def check(name: str, ref, out, tol: float = 1e-5, verbose: bool = True, exact: bool = False) -> CheckResult:
    """Compare ``out`` with ``ref``; raise CheckFailed unless the relative error is <= tol (or equal if exact)."""
    ref = torch.as_tensor(ref)
    out = torch.as_tensor(out)
    if tuple(ref.shape) != tuple(out.shape):
        raise CheckFailed(f"{name}: shape {tuple(out.shape)} != reference shape {tuple(ref.shape)}")
    if out.is_floating_point():
        bad = ~torch.isfinite(out.detach().cpu().float())
        ref_bad = ~torch.isfinite(ref.detach().cpu().float())
        if bool((bad & ~ref_bad).any()):
            n = int((bad & ~ref_bad).sum())
            raise CheckFailed(f"{name}: {n} non-finite values in the output (NaN-poisoned elements never written?)")
    max_abs, rel = relative_error(ref, out)
    result = CheckResult(name, max_abs, rel, 0.0 if exact else tol, tuple(ref.shape))
    if verbose:
        print(result)
    if (exact and max_abs != 0.0) or (not exact and not rel <= tol):
        raise CheckFailed(f"{name}: relative error {rel:.3e} exceeds tolerance {tol:.1e} (max abs {max_abs:.3e})"
                          if not exact else f"{name}: not bit-identical (max abs diff {max_abs:.3e})")
    return result


BF16_ULP = 2.0**-8  # one bf16 step relative to the value (8 significant bits)


def bf16_storage_tol(tol: float) -> float:
    """Tolerance for a bf16-stored tensor whose fp32 source is compared at ``tol``: both sides round their fp32
    values (which differ by up to ``tol`` relative to the largest) to bf16, which adds up to one bf16 step of the
    largest value (2^-8 relative) where the two land on different sides of a rounding midpoint."""
    return tol + BF16_ULP
