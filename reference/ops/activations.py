"""Activation functions by config name (``hidden_act``); Qwen3.5 uses SiLU."""

import torch
import torch.nn.functional as F


def silu(x: torch.Tensor) -> torch.Tensor:
    """x * sigmoid(x), elementwise, in x's dtype."""
    return F.silu(x)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


_ACTIVATIONS = {"silu": silu, "gelu": F.gelu, "gelu_pytorch_tanh": _gelu_tanh, "relu": F.relu}


def activation(name: str):
    """The activation function for a config's ``hidden_act`` (used by the MLP and the DeltaNet conv)."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unsupported activation {name!r}; supported: {sorted(_ACTIVATIONS)}") from None

