"""A Gated DeltaNet layer (the token mixer of 3 of every 4 Qwen3.5 layers), composed from the ops.

    qkv = in_proj_qkv(x); z = in_proj_z(x); b = in_proj_b(x); a = in_proj_a(x)
    qkv = silu(causal_conv1d(qkv))                 # depthwise, K taps, state = last K-1 inputs
    q, k, v = split(qkv)                           # [Hk, Dk], [Hk, Dk], [Hv, Dv] per token
    beta = sigmoid(b); g = -exp(A_log) * softplus(a + dt_bias)      # per value head, g <= 0
    o = gated_delta_rule(q, k, v, g, beta, state)  # chunked for prefill, recurrent for decode
    out = out_proj(gated_rms_norm(o, z))

x is the input-normed hidden state [T, D]. The conv and recurrent states are updated in place.
"""

import torch
import torch.nn.functional as F

from .conv1d import causal_conv1d, causal_conv1d_step
from .gated_delta_rule import chunked_gated_delta_rule, recurrent_gated_delta_rule
from .rmsnorm import gated_rms_norm


def deltanet_decay(a: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor) -> torch.Tensor:
    """g = -exp(A_log) * softplus(a + dt_bias), in fp32: a [T, Hv]; A_log, dt_bias [Hv]. Returns [T, Hv]."""
    return -A_log.float().exp() * F.softplus(a.float() + dt_bias)


def gated_deltanet(
    x: torch.Tensor,
    w: dict,
    conv_state: torch.Tensor,
    recurrent_state: torch.Tensor,
    config,
    decode: bool,
) -> torch.Tensor:
    """One DeltaNet layer.

    w: {"in_proj_qkv" [C, D], "in_proj_z" [Hv*Dv, D], "in_proj_b" [Hv, D], "in_proj_a" [Hv, D],
        "conv1d" [C, K], "A_log" [Hv], "dt_bias" [Hv], "norm" [Dv], "out_proj" [D, Hv*Dv]}
    conv_state: [C, K-1] (model dtype); recurrent_state: [Hv, Dk, Dv] fp32; both updated in place.
    decode=True takes the one-token path (conv step + recurrent rule, as transformers does once a cache exists),
    otherwise the chunked prefill path. Returns [T, D] in x's dtype.
    """
    T = x.shape[0]
    Hk, Hv = config.linear_num_key_heads, config.linear_num_value_heads
    Dk, Dv = config.linear_key_head_dim, config.linear_value_head_dim
    qkv = F.linear(x, w["in_proj_qkv"])
    z = F.linear(x, w["in_proj_z"]).view(T, Hv, Dv)
    b = F.linear(x, w["in_proj_b"])
    a = F.linear(x, w["in_proj_a"])
    o, new_conv_state, new_state = deltanet_core(qkv, b, a, w["conv1d"], w["A_log"], w["dt_bias"], conv_state,
                                                 recurrent_state, (Hk, Hv, Dk, Dv), decode, config.hidden_act)
    conv_state.copy_(new_conv_state)
    recurrent_state.copy_(new_state)
    o = gated_rms_norm(o.to(x.dtype), z, w["norm"], config.rms_norm_eps)
    return F.linear(o.reshape(T, Hv * Dv), w["out_proj"])


def deltanet_core(
    qkv: torch.Tensor,
    b: torch.Tensor,
    a: torch.Tensor,
    conv_w: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    conv_state: torch.Tensor,
    recurrent_state: torch.Tensor,
    heads: tuple[int, int, int, int],
    decode: bool,
    act: str = "silu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The layer between the input projections and the gated norm: conv + activation, split into q, k, v,
    beta = sigmoid(b), the decay g, and the gated delta rule.

    qkv: [T, C]; b, a: [T, Hv]; conv_w: [C, K]; heads = (Hk, Hv, Dk, Dv). decode=True: one token (conv step and
    recurrent rule), else the prefill path (conv over T and the chunked rule). The states are not modified.
    Returns (o [T, Hv, Dv] fp32, new conv state [C, K-1], new recurrent state [Hv, Dk, Dv] fp32).
    """
    Hk, Hv, Dk, Dv = heads
    T = qkv.shape[0]
    if decode:
        mixed, new_conv_state = causal_conv1d_step(qkv[0], conv_state, conv_w, act)
        mixed = mixed[None]  # [1, C]
    else:
        mixed, new_conv_state = causal_conv1d(qkv.transpose(0, 1), conv_w, conv_state, act)
        mixed = mixed.transpose(0, 1)  # [T, C]
    q = mixed[:, : Hk * Dk].reshape(T, Hk, Dk)
    k = mixed[:, Hk * Dk : 2 * Hk * Dk].reshape(T, Hk, Dk)
    v = mixed[:, 2 * Hk * Dk :].reshape(T, Hv, Dv)

    beta = b.sigmoid()  # in the model dtype, as transformers
    g = deltanet_decay(a, A_log, dt_bias)
    rule = recurrent_gated_delta_rule if decode else chunked_gated_delta_rule
    o, new_state = rule(q, k, v, g, beta, initial_state=recurrent_state)
    return o, new_conv_state, new_state


def deltanet_decode_step(
    proj: torch.Tensor,
    conv_w: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    conv_state: torch.Tensor,
    recurrent_state: torch.Tensor,
    heads: tuple[int, int, int, int],
    act: str = "silu",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One decode step from the fused in_proj output ``proj = [qkv (C) | z (Hv*Dv) | b (Hv) | a (Hv)]``: exactly
    what the Numba ``deltanet_step`` kernel computes (the gated norm with z comes after). Returns
    (o [Hv*Dv] fp32, new conv state [C, K-1], new recurrent state [Hv, Dk, Dv]); the states are not modified."""
    Hk, Hv, Dk, Dv = heads
    C = 2 * Hk * Dk + Hv * Dv
    b, a = proj[C + Hv * Dv : C + Hv * Dv + Hv], proj[C + Hv * Dv + Hv :]
    o, new_conv_state, new_state = deltanet_core(proj[None, :C], b[None], a[None], conv_w, A_log, dt_bias,
                                                 conv_state, recurrent_state, heads, decode=True, act=act)
    return o.reshape(Hv * Dv), new_conv_state, new_state
