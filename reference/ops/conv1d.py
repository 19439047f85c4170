"""Depthwise causal conv1d over the DeltaNet's mixed q|k|v channels (no bias), followed by the activation.

Each channel c has its own K taps: ``out[c, t] = act(sum_j w[c, j] * x[c, t - (K-1) + j])``, where inputs
before the first token come from the conv state (the previous K-1 inputs; zeros at the start). Decode keeps only
that state: ``C x (K-1)`` values per layer.

Rounding follows transformers: the conv runs in the weight dtype and the activation in that dtype.
"""

import torch
import torch.nn.functional as F

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
    # out[c, t] = sum_j weight[c, j] * full[c, t + j]: a grouped (depthwise) conv. F.conv1d sums the taps as
    # transformers does; it also takes the same path (zero padding rather than zero columns) for a fresh state,
    # which changes fp32 rounding, so fp32 results agree bit for bit.
    if not bool(state.any()):
        out = F.conv1d(x[None].to(weight.dtype), weight[:, None, :], padding=K - 1, groups=C)[0, :, :T]
    else:
        out = F.conv1d(full[None], weight[:, None, :], groups=C)[0]
    if activation is not None:
        out = activation_fn(activation)(out)
    return out.to(x.dtype), full[:, T:].to(x.dtype)


def causal_conv1d_step(
    x_t: torch.Tensor, state: torch.Tensor, weight: torch.Tensor, activation: str | None = "silu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """One decode step: x_t [C]; state [C, K-1]; weight [C, K]. Returns (out [C], new_state [C, K-1])."""
    C, K = weight.shape
    window = torch.cat([state.to(x_t.dtype), x_t[:, None]], dim=-1).to(weight.dtype)  # [C, K]
    # out[c] = sum_j weight[c, j] * window[c, j]. transformers keeps K past inputs and convolves K+1 columns;
    # convolving the same (zero-extended) length makes F.conv1d round identically in fp32.
    extended = torch.cat([window.new_zeros(C, 1), window], dim=-1)
    out = F.conv1d(extended[None], weight[:, None, :], groups=C)[0, :, -1]
    if activation is not None:
        out = activation_fn(activation)(out)
    return out.to(x_t.dtype), window[:, 1:].to(x_t.dtype)
