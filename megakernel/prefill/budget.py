"""The arithmetic and the bytes of a prefill: why it is compute-bound where decode is memory-bound.

Decode at batch 1 reads every weight once per token and does 2 FLOP per weight (1 FLOP per byte of bf16): the
time is ``bytes / bandwidth``. A prefill of T tokens reads every weight once for all T tokens and does 2 T FLOP
per weight: T FLOP per byte. An H100 does ~990 TFLOP/s of dense bf16 on tensor cores against ~3 TB/s of memory:
its ridge point is ~330 FLOP per byte, so beyond a few hundred prompt tokens the matrix products, not the weight
reads, set the floor: ``max(FLOPs / peak, bytes / bandwidth)``.

FLOPs counted (one multiply-add = 2 FLOP): every projection and MLP (2 T per weight), the LM head (last position
only, as a prefill for generation computes it), the causal conv, the chunked gated delta rule as
``delta_rule.chunked_delta_rule`` computes it, and causal attention (QK^T and PV over the keys up to each query).
Bytes: the weights (bf16, read once), the embedding rows looked up, the states written (fp32 DeltaNet and conv
states, the bf16 KV cache of the prompt). Activations that a fused kernel keeps on chip are not counted: this is
the floor, not what any implementation moves.
"""

from __future__ import annotations

from dataclasses import dataclass

from reference.budget import H100_COPY_BANDWIDTH, decode_budget
from reference.config import LINEAR, Qwen35Config

from .delta_rule import CHUNK

H100_BF16_FLOPS = 989e12  # H100 SXM dense bf16 tensor-core peak (spec sheet)


@dataclass(frozen=True)
class PrefillBudget:
    tokens: int
    flops: dict  # group -> FLOPs
    bytes: dict  # group -> bytes

    @property
    def total_flops(self) -> float:
        return float(sum(self.flops.values()))

    @property
    def total_bytes(self) -> float:
        return float(sum(self.bytes.values()))

    @property
    def intensity(self) -> float:
        """FLOPs per byte of memory traffic."""
        return self.total_flops / self.total_bytes

    def compute_seconds(self, flops_per_s: float = H100_BF16_FLOPS) -> float:
        return self.total_flops / flops_per_s

    def memory_seconds(self, bandwidth: float = H100_COPY_BANDWIDTH) -> float:
        return self.total_bytes / bandwidth

    def floor_seconds(self, flops_per_s: float = H100_BF16_FLOPS, bandwidth: float = H100_COPY_BANDWIDTH) -> float:
        return max(self.compute_seconds(flops_per_s), self.memory_seconds(bandwidth))


def delta_rule_flops(tokens: int, heads: int, dk: int, dv: int, chunk: int = CHUNK) -> float:
    """FLOPs of ``chunked_delta_rule`` over ``tokens`` (padded to whole chunks) for ``heads`` value heads."""
    n, C = -(-tokens // chunk), chunk
    per_chunk = (2 * C * C * dk            # A = (beta k) k^T
                 + C * C * (dv + dk)       # the triangular solve for [U | W]
                 + 2 * dk * C * (dv + dk)  # Kd^T [U | W] -> B and M
                 + 2 * dk * dk * dv        # S_(n+1) = M S_n + B (the sequential step)
                 + 2 * C * dk * dv         # delta = U - W S_n
                 + 2 * C * C * dk          # q k^T
                 + 2 * C * C * dv          # (q k^T * decay) delta
                 + 2 * C * dk * dv)        # (q e^G) S_n
    return float(n * heads * per_chunk)


def prefill_budget(config: Qwen35Config, tokens: int, last_only: bool = True) -> PrefillBudget:
    """FLOPs and bytes of a prefill of ``tokens`` tokens from an empty state (see the module docstring)."""
    c, T = config, tokens
    if T < 1:
        raise ValueError(f"tokens must be positive, got {T}")
    n_lin = sum(t == LINEAR for t in c.layer_types)
    n_full = c.num_hidden_layers - n_lin
    D, F = c.hidden_size, c.intermediate_size
    Hv, Dk, Dv = c.linear_num_value_heads, c.linear_key_head_dim, c.linear_value_head_dim
    Hq, Hkv, Dh = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    deltanet_proj = (c.conv_dim + Hv * Dv + 2 * Hv) * D + D * Hv * Dv
    attention_proj = (2 * Hq * Dh + 2 * Hkv * Dh) * D + D * Hq * Dh
    flops = {
        "projections": 2.0 * T * (n_lin * deltanet_proj + n_full * attention_proj),
        "MLPs": 2.0 * T * c.num_hidden_layers * 3 * F * D,
        "LM head": 2.0 * (1 if last_only else T) * c.vocab_size * D,
        "gated delta rule": n_lin * delta_rule_flops(T, Hv, Dk, Dv),
        "attention": n_full * 2.0 * Hq * Dh * T * (T + 1),  # QK^T and PV, each 2 Dh per (query, key <= query)
        "causal conv": 2.0 * n_lin * c.conv_dim * c.linear_conv_kernel_dim * T,
    }
    db = decode_budget(c, 0)
    kv = n_full * 2 * Hkv * Dh * 2 * T
    state = n_lin * (Hv * Dk * Dv * 4 + c.conv_dim * (c.linear_conv_kernel_dim - 1) * 4)
    bytes_ = {
        "weights": float(db.body_weight_bytes + db.lm_head_bytes),
        "embedding rows": float(T * D * 2),
        "states and KV cache written": float(state + kv),
    }
    return PrefillBudget(T, flops, bytes_)


__all__ = ["H100_BF16_FLOPS", "PrefillBudget", "delta_rule_flops", "prefill_budget"]
