"""transformers as the outside oracle: run ``Qwen3_5ForCausalLM`` on the same checkpoint and read its states.

Used by the tests, notebook 03 and the compare CLI. transformers is imported lazily (it is slow to import).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .check import ElementCheckResult, check_elements
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


def state_tensors(ref: DecodeState, out: DecodeState):
    """Every state tensor of two DecodeStates, cut into heads for ``check_elements``: yields (layer, what, ref
    part, out part, group_dims, group_names). ``what``: "conv q|k" (the conv state's q and k channels,
    [2 Hk, Dk, K-1], head j < Hk a query head), "conv v" ([Hv, Dv, K-1]), "DeltaNet" ([Hv, Dk, Dv]), "K" and
    "V" (the valid part of the caches, [Hkv, length, Dh], one group per head and position). The head sizes come
    from the DeltaNet state's shape (the conv channels are [q (Hk Dk) | k (Hk Dk) | v (Hv Dv)])."""
    for i in sorted(ref.conv):
        Hv, Dk, Dv = ref.recurrent[i].shape
        qk = ref.conv[i].shape[0] - Hv * Dv
        for what, rows, a, b in (("conv q|k", Dk, ref.conv[i][:qk], out.conv[i][:qk]),
                                 ("conv v", Dv, ref.conv[i][qk:], out.conv[i][qk:])):
            yield i, what, a.reshape(-1, rows, a.shape[-1]), b.reshape(-1, rows, b.shape[-1]), 1, ("head",)
        yield i, "DeltaNet", ref.recurrent[i], out.recurrent[i], 1, ("value head",)
    n = ref.length
    for i in sorted(ref.k_cache):
        for what, a, b in (("K", ref.k_cache[i][:, :n], out.k_cache[i][:, :n]),
                           ("V", ref.v_cache[i][:, :n], out.v_cache[i][:, :n])):
            yield i, what, a, b, 2, ("KV head", "position")


STATE_NAMES = {"conv q|k": "conv state (q, k channels)", "conv v": "conv state (v channels)",
               "DeltaNet": "DeltaNet state", "K": "K cache", "V": "V cache"}


def compare_states(ref: DecodeState, out: DecodeState, tol: float, prefix: str = "",
                   verbose: bool = False) -> list[ElementCheckResult]:
    """``check_elements`` on every conv state, DeltaNet state and the valid part of every KV cache, per head
    (``state_tensors``): each element within ``tol`` times the largest value of its own head (of its head and
    position in a KV cache), so an error in a small head or element cannot hide behind the largest value of the
    layer. A bf16 cache on both sides also gets one bf16 step of the element itself: the fp32 values it stores
    agree to ``tol``, and each side rounds them to bf16, which can land on neighbouring bf16 values. ``tol = 0``:
    bit-identical states. Failures name the layer, the state, the head and the element."""
    if ref.length != out.length:
        raise AssertionError(f"{prefix}state length {out.length} != reference {ref.length}")
    results = []
    for i, what, a, b, dims, names in state_tensors(ref, out):
        both_bf16 = a.dtype == b.dtype == torch.bfloat16  # fp32 values rounded on both sides
        results.append(check_elements(f"{prefix}layer {i} {STATE_NAMES[what]}", a, b, tol, dims, names,
                                      bf16_step=both_bf16 and tol > 0, verbose=verbose))
    return results
