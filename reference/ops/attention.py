"""Gated full attention with partial RoPE, grouped-query heads, a KV cache and a sigmoid output gate.

Per layer (x is the input-normed hidden state [T, D], positions start at ``start``):

    q|gate = q_proj(x)           # [T, Hq, 2*Dh]: per head [query Dh | gate Dh] (interleaved per head, not halves)
    q = q_norm(q); k = k_norm(k_proj(x)); v = v_proj(x)      # RMSNorm (1+w) over each head's Dh
    q, k = rope(q), rope(k)      # only the first R dims of each head
    cache[start:start+T] = k, v
    o = softmax(q k^T / sqrt(Dh)) v   # query head h reads KV head h // (Hq/Hkv); causal
    out = o_proj(o * sigmoid(gate))

Rounding follows transformers' eager attention: scores and the weighted sum in the model dtype, softmax in fp32.
"""

import torch
import torch.nn.functional as F

from .rmsnorm import rms_norm
from .rope import apply_partial_rope, rope_cos_sin


def split_query_gate(qg: torch.Tensor, num_heads: int, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """qg: [T, Hq*2*Dh] -> (query [T, Hq, Dh], gate [T, Hq*Dh])."""
    T = qg.shape[0]
    per_head = qg.view(T, num_heads, 2 * head_dim)
    return per_head[..., :head_dim], per_head[..., head_dim:].reshape(T, num_heads * head_dim)


def gqa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, start: int) -> torch.Tensor:
    """Causal grouped-query attention over a cache.

    q: [T, Hq, Dh] for positions start..start+T-1; k, v: [S, Hkv, Dh] with S = start + T (cache incl. the new
    tokens). Returns [T, Hq, Dh] in q's dtype.
    """
    T, Hq, _ = q.shape
    S, Hkv, _ = k.shape
    if S != start + T:
        raise ValueError(f"cache holds {S} positions, expected start + T = {start + T}")
    group = Hq // Hkv
    kh = k.transpose(0, 1).repeat_interleave(group, dim=0)  # [Hq, S, Dh]
    vh = v.transpose(0, 1).repeat_interleave(group, dim=0)
    scores = torch.matmul(q.transpose(0, 1), kh.transpose(1, 2)) * scale  # [Hq, T, S]
    query_pos = torch.arange(start, start + T, device=q.device)[:, None]
    key_pos = torch.arange(S, device=q.device)[None, :]
    scores = scores.masked_fill(key_pos > query_pos, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(probs, vh).transpose(0, 1)  # [T, Hq, Dh]


def gated_attention(
    x: torch.Tensor,
    w: dict,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    start: int,
    config,
) -> torch.Tensor:
    """One gated attention layer on normed input x [T, D]; appends to the cache in place.

    w: {"q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm"} weights (+ "*_bias" if attention_bias).
    k_cache, v_cache: [Hkv, capacity, Dh] in the model dtype; positions [start, start+T) are written.
    Returns [T, D] in x's dtype.
    """
    T = x.shape[0]
    Hq, Hkv, Dh = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    if start + T > k_cache.shape[1]:
        raise ValueError(f"KV cache capacity {k_cache.shape[1]} too small for {start + T} positions")
    q, gate = split_query_gate(F.linear(x, w["q_proj"], w.get("q_proj_bias")), Hq, Dh)
    q = rms_norm(q, w["q_norm"], config.rms_norm_eps)
    k = rms_norm(F.linear(x, w["k_proj"], w.get("k_proj_bias")).view(T, Hkv, Dh), w["k_norm"], config.rms_norm_eps)
    v = F.linear(x, w["v_proj"], w.get("v_proj_bias")).view(T, Hkv, Dh)
    positions = torch.arange(start, start + T, device=x.device)
    cos, sin = rope_cos_sin(positions, config.rotary_dim, config.rope_theta, dtype=x.dtype)
    q, k = apply_partial_rope(q, cos, sin), apply_partial_rope(k, cos, sin)
    k_cache[:, start : start + T] = k.transpose(0, 1).to(k_cache.dtype)
    v_cache[:, start : start + T] = v.transpose(0, 1).to(v_cache.dtype)
    keys = k_cache[:, : start + T].transpose(0, 1).to(q.dtype)  # a bf16 cache is read back into the compute dtype
    values = v_cache[:, : start + T].transpose(0, 1).to(q.dtype)
    o = gqa_attention(q, keys, values, Dh**-0.5, start)
    o = o.reshape(T, Hq * Dh) * torch.sigmoid(gate)
    return F.linear(o, w["o_proj"], w.get("o_proj_bias"))
