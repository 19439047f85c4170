"""transformers as the outside oracle: run ``Qwen3_5ForCausalLM`` on the same checkpoint and read its states.

Used by the tests, notebook 03 and the compare CLI. transformers is imported lazily (it is slow to import).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .check import CheckResult, bf16_storage_tol, check
from .checkpoint import FP32_PARAMS, load_weights
from .config import Qwen35Config
from .state import DecodeState


def load_transformers_model(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "eager",
    keep_fp32: bool = False,
    device: str | torch.device = "cpu",
):
    """``AutoModelForCausalLM.from_pretrained`` (a ``Qwen3_5ForCausalLM``), in eval mode.

    keep_fp32: transformers rounds the fp32-stored A_log and DeltaNet norm weights to ``dtype``; with
    keep_fp32=True they are put back in fp32 (to compare with ``load_model(..., keep_fp32=True)`` in bf16).
    """
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation)
    hf.to(device).eval()
    if keep_fp32 and dtype != torch.float32:
        _, weights = load_weights(path, dtype=dtype, keep_fp32=True)
        params = dict(hf.model.named_parameters())
        for name, t in weights.items():
            if name.endswith(FP32_PARAMS) and t.dtype == torch.float32:
                params[name].data = t.to(device)
    return hf


def transformers_state(cache, config: Qwen35Config, length: int) -> DecodeState:
    """Convert a transformers ``DynamicCache`` into our DecodeState form (batch 1).

    transformers keeps the last K conv inputs (the oldest is never used); ours keeps K-1, so the last K-1 are
    taken. Its KV cache is [1, Hkv, T, Dh]; ours [Hkv, T, Dh].
    """
    s = DecodeState(length=length)
    for i in config.linear_layers:
        layer = cache.layers[i]
        s.conv[i] = layer.conv_states[0][0, :, -(config.linear_conv_kernel_dim - 1):]
        s.recurrent[i] = layer.recurrent_states[0][0]
    for i in config.full_layers:
        s.k_cache[i] = cache.layers[i].keys[0]
        s.v_cache[i] = cache.layers[i].values[0]
    return s


class TransformersRunner:
    """prefill / decode_step over a transformers model with the same signatures as our models."""

    def __init__(self, hf, config: Qwen35Config):
        self.hf, self.config = hf, config
        self.cache, self.length = None, 0
        self.device = next(hf.parameters()).device

    @torch.no_grad()
    def prefill(self, ids) -> torch.Tensor:
        ids = torch.as_tensor(ids, device=self.device).view(1, -1)
        out = self.hf(ids, use_cache=True)
        self.cache, self.length = out.past_key_values, ids.shape[1]
        return out.logits[0].float()

    @torch.no_grad()
    def decode_step(self, token: int) -> torch.Tensor:
        out = self.hf(torch.tensor([[token]], device=self.device), past_key_values=self.cache, use_cache=True)
        self.cache, self.length = out.past_key_values, self.length + 1
        return out.logits[0, -1].float()

    def state(self) -> DecodeState:
        return transformers_state(self.cache, self.config, self.length)


def compare_states(ref: DecodeState, out: DecodeState, tol: float, prefix: str = "",
                   verbose: bool = False) -> list[CheckResult]:
    """check() every conv state, DeltaNet state and the valid part of every KV cache. A bf16 cache on both sides
    gets ``bf16_storage_tol(tol)``: the fp32 values it stores are compared at ``tol``, and rounding them to bf16
    can add one bf16 step (2^-8 of the largest value) where the two sides straddle a rounding midpoint."""
    results = []
    if ref.length != out.length:
        raise AssertionError(f"{prefix}state length {out.length} != reference {ref.length}")
    for i in sorted(ref.conv):
        results.append(check(f"{prefix}layer {i} conv state", ref.conv[i], out.conv[i], tol, verbose))
        results.append(check(f"{prefix}layer {i} DeltaNet state", ref.recurrent[i], out.recurrent[i], tol, verbose))
    for i in sorted(ref.k_cache):
        n = ref.length
        for what, a, b in (("K", ref.k_cache[i][:, :n], out.k_cache[i][:, :n]),
                           ("V", ref.v_cache[i][:, :n], out.v_cache[i][:, :n])):
            name = f"{prefix}layer {i} {what} cache"
            both_bf16 = a.dtype == b.dtype == torch.bfloat16  # fp32 values rounded on both sides
            results.append(check(name, a, b, bf16_storage_tol(tol) if both_bf16 else tol, verbose))
    return results
