"""The comparison helpers every stage uses: ``check(name, ref, out, tol=...)``, ``check_elements`` and
``next_token_kl``.

``check`` reports the max absolute error, the relative error ``max|out - ref| / max|ref|`` and the share of the
tolerance used, and fails hard (``CheckFailed``, an AssertionError) on a NaN/inf in the output, a shape mismatch
or an error over the tolerance. Tests, notebooks, the compare CLI and the benchmarks all use it, so "checked"
means the same thing everywhere.

``check_elements`` holds every element to the scale of its own head instead of the whole tensor's largest value
(which lets a wrong small element hide): decode states and caches go through it (``hf_compare.compare_states``).
``next_token_kl`` measures fidelity where tokens cannot: how far a stage's next-token distribution is from the
reference's.
"""

from __future__ import annotations

import math
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


def bf16_spacing(x: torch.Tensor) -> torch.Tensor:
    """The gap between consecutive bf16 numbers at each |x| (fp64): 2^(e - 7) for |x| in [2^e, 2^(e+1)), the
    subnormal step 2^-133 below 2^-126 (and at 0)."""
    x = x.double().abs()
    _, exponent = torch.frexp(x)  # x = m 2^exponent, m in [0.5, 1)
    exponent = torch.where(x == 0, torch.full_like(exponent, -125), exponent)
    return torch.ldexp(torch.ones_like(x), (exponent - 8).clamp_min(-133))


@dataclass
class ElementCheckResult(CheckResult):
    """``rel``: max over elements of |out - ref| / (max |ref| over the element's group); ``worst``: the element
    (index tuple) that used the most of its allowance, ``worst_used``: that fraction (> 1 means failed)."""

    worst: tuple = ()
    worst_used: float = 0.0

    @property
    def used(self) -> float:
        return self.worst_used

    def __str__(self) -> str:
        return (f"{self.name:<40s} max|err| {self.max_abs:.3e}  rel to group max {self.rel:.3e}  tol {self.tol:.0e}  "
                f"({100 * self.used:5.1f}% of the allowance at {list(self.worst)})")


def element_errors(ref, out, group_dims: int = 0):
    """Per-element errors of ``out`` against ``ref`` (fp64, CPU): (|out - ref| with NaN where exactly one side is
    NaN, the max |ref| over each element's group broadcast to every element). A group is the elements sharing
    their first ``group_dims`` indices (a head, or a head at one position); ``group_dims=0``: the whole tensor."""
    r, o = _fp64(ref), _fp64(out)
    if tuple(r.shape) != tuple(o.shape):
        raise CheckFailed(f"shape {tuple(o.shape)} != reference shape {tuple(r.shape)}")
    if not 0 <= group_dims <= r.dim():
        raise ValueError(f"group_dims = {group_dims} for a {r.dim()}-d tensor")
    same = (r == o) | (r.isnan() & o.isnan())  # equal values, equal infinities, NaN on both sides
    err = torch.where(same, torch.zeros_like(r), (o - r).abs())
    scale = r.abs().nan_to_num(nan=0.0, posinf=0.0)
    if r.numel():
        scale = scale.reshape(*r.shape[:group_dims], -1).amax(-1)
        scale = scale.reshape(*scale.shape, *([1] * (r.dim() - group_dims))).expand_as(r)
    return err, scale


def _fp64(t) -> torch.Tensor:
    return torch.as_tensor(t).detach().cpu().double()


def _ratio(err: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    """err / bound, 0 where err is 0 (a zero bound then passes), inf for a NaN error."""
    return torch.where(err == 0, torch.zeros_like(err), err / bound).nan_to_num(nan=math.inf)


def group_relative_error(ref, out, group_dims: int = 0) -> tuple[float, float]:
    """(max |out - ref|, max over elements of |out - ref| / max|ref over the element's group|): ``relative_error``
    with each element held to its own head's scale instead of the whole tensor's."""
    err, scale = element_errors(ref, out, group_dims)
    if not err.numel():
        return 0.0, 0.0
    return float(err.nan_to_num(nan=math.inf).max()), float(_ratio(err, scale).max())


def check_elements(name: str, ref, out, tol: float, group_dims: int = 0, group_names: tuple = (),
                   bf16_step: bool = False, verbose: bool = True) -> ElementCheckResult:
    """Compare every element: ``|out - ref| <= tol * max|ref over the element's group|`` (groups as in
    ``element_errors``), plus with ``bf16_step`` one bf16 step of the element itself (the larger of
    ``bf16_spacing`` at ``ref`` and at ``out``: two bf16 roundings of fp32 values that agree to ``tol`` can land
    on neighbours). ``tol = 0`` without ``bf16_step`` demands bit-identical values.

    Raises CheckFailed on a shape mismatch, a NaN or inf where the reference differs, or any element over its
    allowance, naming the worst element (its group by ``group_names``, e.g. ("head",)), both values, the
    allowance and how many elements failed.
    """
    r, o = _fp64(ref), _fp64(out)
    try:
        err, scale = element_errors(r, o, group_dims)
    except CheckFailed as e:
        raise CheckFailed(f"{name}: {e}") from None
    shape = tuple(err.shape)
    if not err.numel():
        return ElementCheckResult(name, 0.0, 0.0, tol, shape)
    allowed = tol * scale
    if bf16_step:
        allowed = allowed + torch.maximum(bf16_spacing(r), bf16_spacing(o))
    used = _ratio(err, allowed)
    worst = tuple(int(i) for i in torch.unravel_index(used.reshape(-1).argmax(), shape))
    result = ElementCheckResult(name, float(err.nan_to_num(nan=math.inf).max()), float(_ratio(err, scale).max()),
                                tol, shape, worst, float(used.max()))
    if verbose:
        print(result)
    if not result.worst_used <= 1.0:
        where = "".join(f"{label} {i}, " for label, i in zip(group_names, worst[:group_dims]))
        rule = f"{tol:.1e} x group max {float(scale[worst]):.3e}" + (" + one bf16 step" if bf16_step else "")
        raise CheckFailed(
            f"{name}: {int((used > 1.0).sum())} of {err.numel()} elements outside |err| <= {rule}; worst at "
            f"{where}element {list(worst)}: out {float(o[worst]):.7e}, ref {float(r[worst]):.7e}, |err| "
            f"{float(err[worst]):.3e} > allowed {float(allowed[worst]):.3e}")
    return result


def next_token_kl(ref_logits, out_logits) -> torch.Tensor:
    """KL(p_ref || p_out) of the next-token distributions softmax(ref_logits), softmax(out_logits), in nats, per
    position (logits [..., V] -> [...]), computed in fp64: sum_v p_ref (log p_ref - log p_out)."""
    log_p = torch.log_softmax(_fp64(ref_logits), dim=-1)
    log_q = torch.log_softmax(_fp64(out_logits), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)
