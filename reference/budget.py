"""The per-token byte budget of decode, and the bandwidth floor it implies.

Decoding one token at batch 1 reads every weight once (a matrix-vector product per projection) and reads and
writes the recurrent state; the arithmetic is ~2 FLOP per weight, far below what the GPU can do per byte, so the
time is bounded below by ``bytes / memory bandwidth``. Every benchmark in this project reports its fraction of
that floor.

For Qwen3.5-0.8B in bf16: body weights 996,226,688 B, tied LM head 508,559,360 B (a third of the total),
1,504,786,048 B in all, plus 37.7 MB of fp32 DeltaNet state (read and written) and 12,288 B of KV cache per
position of context. At the H100's measured 3.02 TB/s device-copy bandwidth: ~0.51 ms per token, ~1,950 tok/s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .checkpoint import expected_shapes
from .config import LINEAR, Qwen35Config

# Device-to-device copy bandwidth measured on the H100 80GB HBM3 (bytes read + written per second).
H100_COPY_BANDWIDTH = 3.02e12


def weight_groups(name: str) -> str:
    """A readable group for a weight name (for per-op byte charts)."""
    if name in ("embed_tokens.weight", "lm_head.weight"):
        return "LM head (tied embedding)"
    for key, group in (
        ("in_proj_qkv", "DeltaNet in_proj_qkv"), ("in_proj_z", "DeltaNet in_proj_z"),
        ("in_proj_a", "DeltaNet in_proj_a/b"), ("in_proj_b", "DeltaNet in_proj_a/b"),
        ("out_proj", "DeltaNet out_proj"), ("q_proj", "attention q_proj (+gate)"),
        ("k_proj", "attention k/v_proj"), ("v_proj", "attention k/v_proj"), ("o_proj", "attention o_proj"),
        ("gate_proj", "MLP gate/up"), ("up_proj", "MLP gate/up"), ("down_proj", "MLP down"),
    ):
        if key in name:
            return group
    return "norms, conv taps, decay params"


@dataclass(frozen=True)
class DecodeBudget:
    """Bytes moved through device memory for one decoded token (batch 1)."""

    body_weight_bytes: int  # every layer's weights + final norm
    lm_head_bytes: int  # the [V, D] LM head (read in full every token)
    deltanet_state_traffic_bytes: int  # fp32 recurrent states, read + written
    conv_state_traffic_bytes: int  # conv states, read + written
    kv_bytes: int  # KV cache read at this context (+ the new position written)
    context: int

    @property
    def weight_bytes(self) -> int:
        return self.body_weight_bytes + self.lm_head_bytes

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.deltanet_state_traffic_bytes + self.conv_state_traffic_bytes + self.kv_bytes

    def floor_seconds(self, bandwidth: float = H100_COPY_BANDWIDTH) -> float:
        return self.total_bytes / bandwidth

    def floor_tokens_per_second(self, bandwidth: float = H100_COPY_BANDWIDTH) -> float:
        return 1.0 / self.floor_seconds(bandwidth)


def decode_budget(config: Qwen35Config, context: int = 0, weight_bytes: int = 2, state_bytes: int = 4,
                  cache_bytes: int = 2) -> DecodeBudget:
    """The byte budget of one decode step with ``context`` tokens already in the KV cache.

    weight_bytes: bytes per weight (2 for bf16; every weight counted at that size, as the published figures do).
    """
    shapes = expected_shapes(config)
    body = sum(math.prod(s) for n, s in shapes.items() if n not in ("embed_tokens.weight", "lm_head.weight"))
    lm_head = config.vocab_size * config.hidden_size
    n_linear = sum(t == LINEAR for t in config.layer_types)
    n_full = config.num_hidden_layers - n_linear
    state = n_linear * config.linear_num_value_heads * config.linear_key_head_dim * config.linear_value_head_dim
    conv = n_linear * config.conv_dim * (config.linear_conv_kernel_dim - 1)
    kv_per_position = n_full * 2 * config.num_key_value_heads * config.head_dim * cache_bytes
    return DecodeBudget(
        body_weight_bytes=body * weight_bytes,
        lm_head_bytes=lm_head * weight_bytes,
        deltanet_state_traffic_bytes=2 * state * state_bytes,
        conv_state_traffic_bytes=2 * conv * cache_bytes,
        kv_bytes=kv_per_position * (context + 1),
        context=context,
    )


def weight_bytes_by_group(config: Qwen35Config, weight_bytes: int = 2) -> dict[str, int]:
    """Bytes of weights read per token, grouped by op (see :func:`weight_groups`)."""
    out: dict[str, int] = {}
    for name, shape in expected_shapes(config).items():
        if name == "embed_tokens.weight" and not config.tie_word_embeddings:
            continue  # an untied embedding is only looked up (one row per token)
        group = weight_groups(name)
        out[group] = out.get(group, 0) + math.prod(shape) * weight_bytes
    return out


def fraction_of_floor(seconds_per_token: float, config: Qwen35Config, context: int = 0,
                      bandwidth: float = H100_COPY_BANDWIDTH) -> float:
    """floor time / measured time (1.0 = at the bandwidth floor)."""
    return decode_budget(config, context).floor_seconds(bandwidth) / seconds_per_token
