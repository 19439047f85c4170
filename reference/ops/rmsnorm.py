"""RMSNorm in Qwen3.5's two flavours.

* ``rms_norm``: the model's norms (input, post-attention, final, q_norm, k_norm). The weight is stored
  zero-centred and applied as ``(1 + w)``; the whole op runs in fp32 and rounds once at the end.
* ``gated_rms_norm``: the DeltaNet output norm. A plain weight ``w`` (initialised to 1); the normalised value is
  rounded to the input dtype *before* the weight multiply, then multiplied by ``silu(gate)`` computed in fp32.
"""

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x * rsqrt(mean(x^2) + eps) * (1 + weight)`` over the last dim.

    x: [..., N] any float dtype; weight: [N]. Computes in fp32, returns x's dtype.
    """
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (normed * (1.0 + weight.float())).to(x.dtype)


def gated_rms_norm(x: torch.Tensor, gate: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``(weight * rmsnorm(x)) * silu(gate)`` over the last dim (the DeltaNet output norm).

    x, gate: [..., Dv]; weight: [Dv] (may be fp32 while x is bf16: the product then promotes to fp32, exactly
    as in transformers). Returns x's dtype.
    """
    dtype = x.dtype
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    out = weight * normed.to(dtype)
    out = out * F.silu(gate.float())
    return out.to(dtype)
