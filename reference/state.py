"""The decode state: everything a Qwen3.5 model carries from one token to the next.

Per DeltaNet layer: the conv state (the last K-1 inputs of the causal conv, [C, K-1], model dtype) and the
recurrent state (one [Dk, Dv] fp32 matrix per value head, [Hv, Dk, Dv]). Per attention layer: the KV cache
([Hkv, capacity, Dh] each for keys and values, model dtype; keys are stored after k_norm and RoPE). Unlike a
transformer's KV cache, the DeltaNet states do not grow with the context.

Dicts are keyed by the global layer index, so ``state.conv[0]`` is layer 0's conv state and ``state.k_cache[3]``
layer 3's keys. Later stages (the Numba kernels, the megakernel) keep the same contents in flat GPU buffers and
convert to and from this form for comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .config import Qwen35Config


class ContextTooLongError(ValueError):
    """More positions than the model (or a preallocated cache) supports."""


@dataclass
class DecodeState:
    conv: dict[int, torch.Tensor] = field(default_factory=dict)
    recurrent: dict[int, torch.Tensor] = field(default_factory=dict)
    k_cache: dict[int, torch.Tensor] = field(default_factory=dict)
    v_cache: dict[int, torch.Tensor] = field(default_factory=dict)
    length: int = 0  # tokens seen so far = the position of the next token

    @classmethod
    def empty(
        cls, config: Qwen35Config, dtype: torch.dtype, device: torch.device | str = "cpu", capacity: int = 256,
        cache_dtype: torch.dtype | None = None,
    ) -> "DecodeState":
        s = cls()
        for i in config.linear_layers:
            s.conv[i] = torch.zeros(config.conv_dim, config.linear_conv_kernel_dim - 1, dtype=dtype, device=device)
            s.recurrent[i] = torch.zeros(
                config.linear_num_value_heads, config.linear_key_head_dim, config.linear_value_head_dim,
                dtype=torch.float32, device=device,
            )
        for i in config.full_layers:
            shape = (config.num_key_value_heads, capacity, config.head_dim)
            s.k_cache[i] = torch.zeros(shape, dtype=cache_dtype or dtype, device=device)
            s.v_cache[i] = torch.zeros(shape, dtype=cache_dtype or dtype, device=device)
        return s

    @property
    def capacity(self) -> int | None:
        return next(iter(self.k_cache.values())).shape[1] if self.k_cache else None

    def ensure_capacity(self, positions: int, max_positions: int) -> None:
        """Grow the KV caches (doubling) to hold ``positions``; refuse beyond ``max_positions``."""
        if positions > max_positions:
            raise ContextTooLongError(
                f"context too long: {positions} positions exceed max_position_embeddings = {max_positions}"
            )
        cap = self.capacity
        if cap is None or positions <= cap:
            return
        new_cap = min(max(positions, 2 * cap), max_positions)
        for cache in (self.k_cache, self.v_cache):
            for i, t in cache.items():
                grown = t.new_zeros(t.shape[0], new_cap, t.shape[2])
                grown[:, :cap] = t
                cache[i] = grown

    def keys(self, layer: int) -> torch.Tensor:
        """The valid part of a layer's key cache: [Hkv, length, Dh]."""
        return self.k_cache[layer][:, : self.length]

    def values(self, layer: int) -> torch.Tensor:
        return self.v_cache[layer][:, : self.length]

    def clone(self) -> "DecodeState":
        c = lambda d: {i: t.clone() for i, t in d.items()}  # noqa: E731
        return DecodeState(c(self.conv), c(self.recurrent), c(self.k_cache), c(self.v_cache), self.length)

    def to(self, device) -> "DecodeState":
        m = lambda d: {i: t.to(device) for i, t in d.items()}  # noqa: E731
        return DecodeState(m(self.conv), m(self.recurrent), m(self.k_cache), m(self.v_cache), self.length)
