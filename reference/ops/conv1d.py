"""Depthwise causal conv1d over the DeltaNet's mixed q|k|v channels (no bias), followed by the activation.

Each channel c has its own K taps: ``out[c, t] = act(sum_j w[c, j] * x[c, t - (K-1) + j])``, where inputs
before the first token come from the conv state (the previous K-1 inputs; zeros at the start). Decode keeps only
that state: ``C x (K-1)`` values per layer.

Rounding follows transformers (``F.conv1d`` in the weight dtype, then the activation in that dtype): the tap sum
is done in fp32, rounded to the weight dtype, the activation computed in fp32 and rounded again.
"""

import torch

from .activations import activation as activation_fn


def causal_conv1d(
    x: torch.Tensor, weight: torch.Tensor, state: torch.Tensor | None = None, activation: str | None = "silu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefill form.

    x: [C, T] inputs; weight: [C, K]; state: [C, K-1] previous inputs (None = zeros).
    Returns (out [C, T] in x's dtype, new_state [C, K-1] = the last K-1 inputs, in x's dtype).
    """
    C, T = x.shape
    K = weight.shape[-1]
    if weight.shape != (C, K):
        raise ValueError(f"conv weight shape {tuple(weight.shape)} does not match {C} channels")
    if state is None:
        state = x.new_zeros(C, K - 1)
    full = torch.cat([state.to(x.dtype), x], dim=-1).to(weight.dtype)  # [C, K-1+T]
    acc = torch.zeros(C, T, dtype=torch.float32, device=x.device)
    for j in range(K):  # tap j multiplies the input (K-1-j) steps back
        acc += weight[:, j : j + 1].float() * full[:, j : j + T].float()
    out = acc.to(weight.dtype)
    if activation is not None:
        out = activation_fn(activation)(out.float()).to(weight.dtype)
    return out.to(x.dtype), full[:, T:].to(x.dtype)


def causal_conv1d_step(
    x_t: torch.Tensor, state: torch.Tensor, weight: torch.Tensor, activation: str | None = "silu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step: x_t [C]; state [C, K-1]; weight [C, K]. Returns (out [C], new_state [C, K-1])."""
    out, new_state = causal_conv1d(x_t[:, None], weight, state, activation)
    return out[:, 0], new_state
