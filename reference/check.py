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


def _ordered_bf16(t: torch.Tensor) -> torch.Tensor:
    """bf16 bit patterns mapped to integers that increase with the value (adjacent bf16 values differ by 1)."""
    bits = t.detach().cpu().to(torch.bfloat16).view(torch.int16).to(torch.int32)
    return torch.where(bits < 0, -(bits & 0x7FFF), bits)


def check_bf16_neighbours(name: str, ref, out, max_fraction: float = 1e-3, verbose: bool = True) -> CheckResult:
    """bf16 tensors computed in fp32 by two implementations and then rounded: equal, except that where the fp32
    values straddle a bf16 rounding midpoint the two round to neighbouring bf16 values (one bf16 ulp, 2^-8
    relative). Fails on any difference of more than one ulp, or on more than ``max_fraction`` of the elements
    differing (isolated flips are expected; many mean a real error)."""
    ref, out = torch.as_tensor(ref), torch.as_tensor(out)
    if tuple(ref.shape) != tuple(out.shape):
        raise CheckFailed(f"{name}: shape {tuple(out.shape)} != reference shape {tuple(ref.shape)}")
    if bool((~torch.isfinite(out.float()) & torch.isfinite(ref.float())).any()):
        raise CheckFailed(f"{name}: non-finite values in the output")
    steps = (_ordered_bf16(ref) - _ordered_bf16(out)).abs()
    flips = int((steps > 0).sum())
    max_abs, rel = relative_error(ref, out)
    fraction = flips / max(1, steps.numel())
    result = CheckResult(f"{name} ({flips} one-ulp flips)", max_abs, rel, 2.0**-8, tuple(ref.shape))
    if verbose:
        print(result)
    if steps.numel() and int(steps.max()) > 1:
        raise CheckFailed(f"{name}: bf16 values differ by up to {int(steps.max())} ulp (at most 1 is rounding)")
    if fraction > max_fraction:
        raise CheckFailed(f"{name}: {flips} of {steps.numel()} bf16 values differ ({fraction:.2e} > {max_fraction:.0e})")
    return result
