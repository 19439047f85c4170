"""One prefill forward pass over a piece of the prompt, layer by layer, in the kernel stages' precision regime.

    h = embed[ids]                                     fp32 residual stream [T, D], as the decode kernels keep it
    per layer:   x = rms_norm(h)                       fp32, rounded to the compute dtype for the matrix product
                 h += mixer(x)                         DeltaNet or gated attention (below)
                 h += down(silu(gate x) * up x)        three matrix products
    logits = lm_head(rms_norm(h))                      fp32 activations, bf16 weights (as the decode kernel)

Every matrix product takes the compute dtype (``bf16``: tensor cores, cuBLAS accumulates in fp32 and rounds
the output to bf16; ``fp32``: the same code on fp32 upcasts of the bf16 weights, the check twin) and reads the
weights in the kernel layout (:class:`megakernel.layout.DeviceWeights`: ``in_proj`` = [qkv; z; b; a], attention
``qkv`` = [q|gate; k; v]). Everything between the products is fp32: norms, the causal conv, the gated delta rule
and its states, RoPE, gates. The KV cache is bf16 and attention reads it back (as the decode kernels and the
reference do), through ``scaled_dot_product_attention`` (flash attention on a GPU in bf16).

DeltaNet mixer on the piece (positions start .. start+T-1), C = conv channels (q | k | v):

    [qkv | z | b | a] = x @ in_proj^T
    window = [previous K-1 inputs (the conv state) ; qkv]      fp32 [C, K-1+T]; its last K-1 columns are the new
    mixed  = silu(depthwise_conv(window))                        conv state
    o      = gated delta rule(q, k, v, g, beta, state)           chunked, batched (delta_rule.py); state updated
    out    = out_proj(rms_norm(o) * w * silu(z))

Attention mixer: q|gate, k, v = x @ qkv^T; q, k = rope(rms_norm(q)), rope(rms_norm(k)); the piece's k, v go
into the bf16 cache at [start, start+T); o = causal softmax(q K^T / sqrt(Dh)) V over positions [0, start+T)
(lower-right aligned when start > 0); out = o_proj(o * sigmoid(gate)).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from reference.config import LINEAR

from .delta_rule import delta_rule, repeat_heads

LM_HEAD_ROWS = 32768  # vocabulary rows per fp32 slice when every position's logits are asked for


@dataclass
class Targets:
    """Where a piece's states go (and, when ``start > 0``, where the states entering it are read).

    conv: fp32 [n_linear, C, K-1]; rec: fp32 [n_linear, Hv, Dk, Dv]; k_cache, v_cache: bf16
    [n_full, Hkv, capacity, Dh] holding positions [0, start) already (a DeviceState's buffers, or a CUDA graph's
    staging buffers of capacity T)."""

    conv: torch.Tensor
    rec: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor


class PrefillWeights:
    """The weights the prefill reads: a :class:`DeviceWeights` (shared, no copy) plus the few derived fp32
    vectors it needs: ``1 + w`` for the zero-centred RMSNorm weights and ``-exp(A_log)``."""

    def __init__(self, weights):
        self.device_weights = dw = weights
        self.config = c = dw.config
        self.embed, self.lm_head, self.final_norm = dw.embed, dw.lm_head, dw.final_norm
        self.final_norm_1p = 1.0 + dw.final_norm
        self.inv_freq = dw.inv_freq
        self.linear_index = {layer: j for j, layer in enumerate(c.linear_layers)}
        self.full_index = {layer: j for j, layer in enumerate(c.full_layers)}
        self.layers = []
        for lw in dw.layers:
            d = dict(kind=lw.kind, lw=lw, input_norm_1p=1.0 + lw.input_norm, post_norm_1p=1.0 + lw.post_norm)
            if lw.kind == LINEAR:
                d.update(neg_A=-lw.A_log.exp(), conv_w=lw.conv_w[:, None, :].contiguous())  # [C, 1, K] for conv1d
            else:
                d.update(q_norm_1p=1.0 + lw.q_norm, k_norm_1p=1.0 + lw.k_norm)
            self.layers.append(d)


@contextmanager
def tf32_matmuls(enabled: bool):
    """fp32 matrix products on a GPU in TF32 (tensor cores, 10-bit inputs, fp32 accumulation) or in full fp32,
    whatever the global setting, restored after. (No effect on a CPU.)"""
    flags = torch.backends.cuda.matmul
    before = flags.allow_tf32
    flags.allow_tf32 = enabled
    try:
        yield
    finally:
        flags.allow_tf32 = before


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w^T in x's dtype: bf16 x (tensor cores, fp32 accumulation) or fp32 x (w upcast: the check twin)."""
    return F.linear(x, w if w.dtype == x.dtype else w.to(x.dtype))


def rms_norm(x: torch.Tensor, weight_1p: torch.Tensor, eps: float) -> torch.Tensor:
    """fp32 ``x * rsqrt(mean(x^2) + eps) * (1 + w)`` over the last dim (``weight_1p`` = 1 + w)."""
    return F.rms_norm(x.float(), (x.shape[-1],), weight_1p, eps)


def rope_tables(inv_freq: torch.Tensor, start: int, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, R] fp32 for positions start .. start+T-1 (as reference.ops.rope)."""
    positions = torch.arange(start, start + T, device=inv_freq.device, dtype=torch.float32)
    freqs = positions[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first R dims of every head of x [T, H, Dh] in place (pairs i, i + R/2)."""
    R = cos.shape[-1]
    rot = x[..., :R]
    half = torch.cat([-rot[..., R // 2:], rot[..., : R // 2]], dim=-1)
    rot.mul_(cos[:, None, :]).addcmul_(half, sin[:, None, :])
    return x


def deltanet_mixer(x, p, c, conv_state, rec_state, fresh: bool, backend: str) -> torch.Tensor:
    """One DeltaNet layer's mixer on x [T, D] (compute dtype). conv_state fp32 [C, K-1] and rec_state fp32
    [Hv, Dk, Dv] are read (unless ``fresh``: zeros) and overwritten with the states after the piece.
    Returns [T, D] in x's dtype."""
    lw = p["lw"]
    T = x.shape[0]
    Hk, Hv, Dk, Dv = c.linear_num_key_heads, c.linear_num_value_heads, c.linear_key_head_dim, c.linear_value_head_dim
    C, K = c.conv_dim, c.linear_conv_kernel_dim
    proj = linear(x, lw.in_proj)  # [T, C + Hv*Dv + 2*Hv]: qkv | z | b | a
    z = proj[:, C : C + Hv * Dv].view(T, Hv, Dv)
    b, a = proj[:, C + Hv * Dv : C + Hv * Dv + Hv], proj[:, C + Hv * Dv + Hv :]
    window = torch.empty(C, K - 1 + T, dtype=torch.float32, device=x.device)
    if fresh:
        window[:, : K - 1].zero_()
    else:
        window[:, : K - 1].copy_(conv_state)
    window[:, K - 1 :].copy_(proj[:, :C].t())
    conv_state.copy_(window[:, T:])  # the last K-1 inputs
    with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):  # an fp32 conv
        mixed = F.silu(F.conv1d(window[None], p["conv_w"], groups=C)[0])  # [C, T] fp32
    qk = mixed[: 2 * Hk * Dk].view(2, Hk, Dk, T).permute(0, 3, 1, 2)  # [2, T, Hk, Dk]
    v = mixed[2 * Hk * Dk :].view(Hv, Dv, T).permute(2, 0, 1)  # [T, Hv, Dv]
    beta = torch.sigmoid(b.float())
    g = p["neg_A"] * F.softplus(a.float() + lw.dt_bias)
    # The chunk products in TF32 alongside bf16 projections (4x finer than bf16, ~8x the fp32 rate on an H100);
    # in full fp32 for the fp32 twin. States and accumulation stay fp32 either way.
    with tf32_matmuls(x.dtype == torch.bfloat16):
        o, _ = delta_rule(backend, qk[0], qk[1], v, g, beta, None if fresh else rec_state, final_state=rec_state)
    o = F.rms_norm(o.float(), (Dv,), lw.gated_norm, c.rms_norm_eps) * F.silu(z.float())
    return linear(o.reshape(T, Hv * Dv).to(x.dtype), lw.out_proj)


def attention_mixer(x, p, c, k_cache, v_cache, start: int, cos, sin) -> torch.Tensor:
    """One gated attention layer's mixer on x [T, D] (compute dtype) for positions start .. start+T-1.
    k_cache, v_cache: bf16 [Hkv, capacity, Dh]; positions [start, start+T) are written, [0, start+T) read.
    Returns [T, D] in x's dtype."""
    lw = p["lw"]
    T = x.shape[0]
    Hq, Hkv, Dh, eps = c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.rms_norm_eps
    proj = linear(x, lw.qkv)  # [T, 2*Hq*Dh + 2*Hkv*Dh]: per head [q | gate], then k, v
    qg = proj[:, : 2 * Hq * Dh].view(T, Hq, 2 * Dh)
    k = proj[:, 2 * Hq * Dh : 2 * Hq * Dh + Hkv * Dh].view(T, Hkv, Dh)
    v = proj[:, 2 * Hq * Dh + Hkv * Dh :].view(T, Hkv, Dh)
    q = apply_rope_(rms_norm(qg[..., :Dh], p["q_norm_1p"], eps), cos, sin)
    k = apply_rope_(rms_norm(k, p["k_norm_1p"], eps), cos, sin)
    S = start + T
    k_cache[:, start:S].copy_(k.transpose(0, 1))
    v_cache[:, start:S].copy_(v.transpose(0, 1))
    group = Hq // Hkv
    keys, values = (repeat_heads(cache[:, :S], group, 0).to(x.dtype)[None] for cache in (k_cache, v_cache))
    # causal over the piece; a later piece's queries also see every earlier key (the mask aligned bottom-right)
    mask = dict(is_causal=True) if start == 0 else dict(attn_mask=causal_lower_right(T, S))
    o = F.scaled_dot_product_attention(q.to(x.dtype).transpose(0, 1)[None], keys, values, scale=Dh**-0.5,
                                       **mask)  # [1, Hq, T, Dh]
    o = o[0].transpose(0, 1).reshape(T, Hq * Dh).float() * torch.sigmoid(qg[..., Dh:].reshape(T, Hq * Dh).float())
    return linear(o.to(x.dtype), lw.o_proj)


def mlp(x, lw) -> torch.Tensor:
    """SwiGLU MLP on x [T, D] (compute dtype); the product of the two branches in fp32."""
    act = F.silu(linear(x, lw.gate).float()) * linear(x, lw.up).float()
    return linear(act.to(x.dtype), lw.down)


def lm_head_fp32(x: torch.Tensor, weight: torch.Tensor, rows: int = LM_HEAD_ROWS) -> torch.Tensor:
    """logits [n, V] fp32 = x [n, D] fp32 @ weight [V, D]^T (bf16), in fp32 over vocabulary slices of ``rows``
    (a bf16 output would round the logits to 8 bits and turn close tokens into ties)."""
    V = weight.shape[0]
    out = torch.empty(V, x.shape[0], dtype=torch.float32, device=x.device)
    for v0 in range(0, V, rows):
        torch.mm(weight[v0 : v0 + rows].float(), x.t(), out=out[v0 : v0 + rows])
    return out.t()


def forward_piece(pw: PrefillWeights, ids: torch.Tensor, start: int, targets: Targets, dtype: torch.dtype,
                  backend: str) -> torch.Tensor:
    """Run the piece ``ids`` [T] (device int64, positions start .. start+T-1) through every layer, writing its
    states into ``targets`` (see :class:`Targets`). Returns the residual stream after the last layer, fp32 [T, D].
    """
    c = pw.config
    T, eps = ids.shape[0], c.rms_norm_eps
    fresh = start == 0
    h = pw.embed[ids].float()
    cos, sin = rope_tables(pw.inv_freq, start, T)
    with tf32_matmuls(False):  # fp32 products are fp32 (the twin), except where a mixer says otherwise
        for i, p in enumerate(pw.layers):
            x = rms_norm(h, p["input_norm_1p"], eps).to(dtype)
            if p["kind"] == LINEAR:
                j = pw.linear_index[i]
                h += deltanet_mixer(x, p, c, targets.conv[j], targets.rec[j], fresh, backend)
            else:
                j = pw.full_index[i]
                h += attention_mixer(x, p, c, targets.k_cache[j], targets.v_cache[j], start, cos, sin)
            h += mlp(rms_norm(h, p["post_norm_1p"], eps).to(dtype), p["lw"])
    return h


__all__ = ["LM_HEAD_ROWS", "PrefillWeights", "Targets", "apply_rope_", "attention_mixer", "deltanet_mixer",
           "forward_piece", "linear", "lm_head_fp32", "mlp", "rms_norm", "rope_tables", "tf32_matmuls"]
