"""Partial rotary position embedding (RoPE) as Qwen3.5 applies it.

Only the first R = head_dim * partial_rotary_factor dims of each query/key head are rotated (64 of 256 in the
0.8B model); the rest pass through. Within those R dims the two halves are paired (``rotate_half``), not
adjacent dims. For text, Qwen3.5's multimodal RoPE (mrope) gets the same position on all three axes and so
reduces to this plain RoPE.
"""

import torch


def rope_inv_freq(rotary_dim: int, theta: float) -> torch.Tensor:
    """[R/2] fp32 inverse frequencies ``1 / theta^(2i/R)``."""
    return 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim))


def rope_cos_sin(
    positions: torch.Tensor, rotary_dim: int, theta: float, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin: [T, R] for integer positions [T], computed in fp32 then cast to ``dtype`` (as transformers)."""
    freqs = positions.float()[:, None] * rope_inv_freq(rotary_dim, theta).to(positions.device)[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_partial_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, H, Dh]; cos, sin: [T, R] with R <= Dh. Rotates x[..., :R], keeps x[..., R:]."""
    R = cos.shape[-1]
    cos, sin = cos[:, None, :], sin[:, None, :]
    x_rot, x_pass = x[..., :R], x[..., R:]
    return torch.cat([x_rot * cos + _rotate_half(x_rot) * sin, x_pass], dim=-1)
