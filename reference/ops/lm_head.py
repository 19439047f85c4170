"""LM head: logits = x @ W^T, W [V, D] (tied to the token embedding in Qwen3.5-0.8B)."""

import torch
import torch.nn.functional as F


def lm_head(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x: [..., D]; weight: [V, D]. Returns logits [..., V] in x's dtype (transformers does not upcast)."""
    return F.linear(x, weight)
