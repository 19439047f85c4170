"""SwiGLU MLP: ``down(act(gate(x)) * up(x))`` with Qwen3.5's bias-free projections."""

import torch
import torch.nn.functional as F

from .activations import activation as activation_fn


def swiglu_mlp(
    x: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor, act: str = "silu"
) -> torch.Tensor:
    """x: [..., D]; w_gate, w_up: [F, D]; w_down: [D, F]. Returns [..., D] in x's dtype."""
    return F.linear(activation_fn(act)(F.linear(x, w_gate)) * F.linear(x, w_up), w_down)
