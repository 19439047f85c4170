"""The Qwen3.5 text model in plain PyTorch: prefill, one-token decode steps, and generation.

    h = embed(tokens)
    for each layer:   h = h + mixer(rms_norm(h))        # Gated DeltaNet (linear) or gated attention (full)
                      h = h + swiglu_mlp(rms_norm(h))
    logits = lm_head(rms_norm(h))

The model is stateless between calls: everything carried across tokens lives in a :class:`DecodeState`
(conv + DeltaNet states, KV cache), which ``prefill`` creates and ``decode_step`` advances in place. Later stages
(the Numba kernels, the megakernel) implement the same three methods and are checked against this class.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Sequence

import torch

from .checkpoint import load_weights
from .config import LINEAR, Qwen35Config
from .ops import gated_attention, gated_deltanet, lm_head, rms_norm, swiglu_mlp
from .sampling import check_sampling_args, sample_next_token
from .state import ContextTooLongError, DecodeState


def as_token_list(input_ids, vocab_size: int) -> list[int]:
    """Accept a list of ints, a 1-D tensor or a [1, T] tensor; check ids are in the vocabulary."""
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dim() == 2:
            if input_ids.shape[0] != 1:
                raise ValueError(f"batch size {input_ids.shape[0]} given; this model decodes one sequence (batch 1)")
            input_ids = input_ids[0]
        if input_ids.dim() != 1:
            raise ValueError(f"input_ids must be 1-D (or [1, T]), got shape {tuple(input_ids.shape)}")
        if input_ids.dtype.is_floating_point:
            raise ValueError(f"input_ids must be integers, got {input_ids.dtype}")
        ids = [int(t) for t in input_ids.tolist()]
    elif isinstance(input_ids, numbers.Integral) and not isinstance(input_ids, bool):
        ids = [int(input_ids)]
    else:
        try:
            ids = list(input_ids)
        except TypeError:
            raise TypeError(f"input_ids must be token ids (a list of ints or an integer tensor), got "
                            f"{type(input_ids).__name__} {input_ids!r}") from None
        bad = [t for t in ids if isinstance(t, bool) or not isinstance(t, numbers.Integral)]
        if bad:
            raise TypeError(f"token ids must be ints, got {type(bad[0]).__name__} {bad[0]!r}")
        ids = [int(t) for t in ids]
    if not ids:
        raise ValueError("input_ids is empty: give at least one token")
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {vocab_size})")
    return ids


def as_token_id(token, vocab_size: int) -> int:
    """The one token ``decode_step`` feeds: a Python (or NumPy) integer in [0, vocab_size). A tensor is refused
    rather than read (``int(t)`` on a CUDA tensor waits for the GPU: the caller should decide when), and so are
    floats, bools and None."""
    if isinstance(token, torch.Tensor):
        raise TypeError(f"decode_step takes one token id as an int, got a tensor of shape {tuple(token.shape)} "
                        "(pass int(t))")
    if isinstance(token, bool) or not isinstance(token, numbers.Integral):
        raise TypeError(f"decode_step takes one token id as an int, got {type(token).__name__} {token!r}")
    if not 0 <= token < vocab_size:
        raise ValueError(f"token id {token} is outside the vocabulary [0, {vocab_size})")
    return int(token)


class Qwen35Model:
    """Pure-PyTorch Qwen3.5 text model over a dict of weights (see :func:`reference.checkpoint.load_weights`)."""

    def __init__(self, config: Qwen35Config, weights: dict[str, torch.Tensor], dtype: torch.dtype | None = None,
                 cache_dtype: torch.dtype | None = None):
        self.config = config
        self.weights = weights
        self.dtype = dtype or weights["embed_tokens.weight"].dtype
        # The KV cache's storage dtype (default: the compute dtype). The kernel stages compute in fp32 with bf16
        # weights and a bf16 KV cache; load_model(..., dtype=float32, cache_dtype=bfloat16) is their oracle.
        self.cache_dtype = cache_dtype or self.dtype
        self.device = weights["embed_tokens.weight"].device
        self.layers = [self._layer_weights(i) for i in range(config.num_hidden_layers)]

    def _layer_weights(self, i: int) -> dict:
        w, p = self.weights, f"layers.{i}."
        layer = {
            "kind": self.config.layer_types[i],
            "input_norm": w[p + "input_layernorm.weight"],
            "post_norm": w[p + "post_attention_layernorm.weight"],
            "gate_proj": w[p + "mlp.gate_proj.weight"],
            "up_proj": w[p + "mlp.up_proj.weight"],
            "down_proj": w[p + "mlp.down_proj.weight"],
        }
        if layer["kind"] == LINEAR:
            a = p + "linear_attn."
            layer["mixer"] = {
                "in_proj_qkv": w[a + "in_proj_qkv.weight"], "in_proj_z": w[a + "in_proj_z.weight"],
                "in_proj_b": w[a + "in_proj_b.weight"], "in_proj_a": w[a + "in_proj_a.weight"],
                "conv1d": w[a + "conv1d.weight"], "A_log": w[a + "A_log"], "dt_bias": w[a + "dt_bias"],
                "norm": w[a + "norm.weight"], "out_proj": w[a + "out_proj.weight"],
            }
        else:
            a = p + "self_attn."
            mixer = {name: w[a + name + ".weight"] for name in
                     ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm")}
            for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
                if a + name + ".bias" in w:
                    mixer[name + "_bias"] = w[a + name + ".bias"]
            layer["mixer"] = mixer
        return layer

    # ------------------------------------------------------------------ core
    def new_state(self, capacity: int = 256) -> DecodeState:
        return DecodeState.empty(self.config, self.dtype, self.device,
                                 capacity=min(capacity, self.config.max_position_embeddings),
                                 cache_dtype=self.cache_dtype)

    def forward(self, ids: list[int], state: DecodeState, decode: bool, trace: dict | None = None,
                last_only: bool = False) -> torch.Tensor:
        """Run tokens ``ids`` (positions state.length ...) through the model; returns logits [T, V] fp32
        (only the last position's, [1, V], with ``last_only``: a long prompt's full logits are large).

        trace: if a dict is given, ``trace["hidden"][layer]`` receives each layer's output hidden state [T, D]
        and ``trace["final_norm"]`` the normed hidden state fed to the LM head (used by the compare CLI).
        """
        cfg, T, start = self.config, len(ids), state.length
        state.ensure_capacity(start + T, cfg.max_position_embeddings)
        h = self.weights["embed_tokens.weight"][torch.tensor(ids, device=self.device)].to(self.dtype)
        if trace is not None:
            trace.setdefault("hidden", {})
        for i, layer in enumerate(self.layers):
            x = rms_norm(h, layer["input_norm"], cfg.rms_norm_eps)
            if layer["kind"] == LINEAR:
                mixed = gated_deltanet(x, layer["mixer"], state.conv[i], state.recurrent[i], cfg, decode=decode)
            else:
                mixed = gated_attention(x, layer["mixer"], state.k_cache[i], state.v_cache[i], start, cfg)
            h = h + mixed
            h = h + swiglu_mlp(rms_norm(h, layer["post_norm"], cfg.rms_norm_eps),
                               layer["gate_proj"], layer["up_proj"], layer["down_proj"], cfg.hidden_act)
            if trace is not None:
                trace["hidden"][i] = h.detach().clone()
        if last_only:
            h = h[-1:]
        h = rms_norm(h, self.weights["norm.weight"], cfg.rms_norm_eps)
        if trace is not None:
            trace["final_norm"] = h.detach().clone()
        state.length = start + T
        return lm_head(h, self.weights["lm_head.weight"]).float()

    # ------------------------------------------------------------------ public API
    @torch.no_grad()
    def prefill(self, input_ids, state: DecodeState | None = None, trace: dict | None = None,
                last_only: bool = False):
        """Process a prompt. Returns (logits [T, V] fp32 for every prompt position, state); with ``last_only``
        the logits of the last position only ([1, V]).

        With ``state`` given, the prompt continues that state (chunked path, as transformers does for a
        multi-token forward); otherwise a fresh state is created.
        """
        ids = as_token_list(input_ids, self.config.vocab_size)
        if len(ids) > self.config.max_position_embeddings:
            raise ContextTooLongError(f"context too long: prompt of {len(ids)} tokens exceeds "
                                      f"max_position_embeddings = {self.config.max_position_embeddings}")
        state = state if state is not None else self.new_state(capacity=max(256, 2 * len(ids)))
        return self.forward(ids, state, decode=False, trace=trace, last_only=last_only), state

    @torch.no_grad()
    def decode_step(self, token_id, state: DecodeState, trace: dict | None = None) -> torch.Tensor:
        """Feed one token at position ``state.length``; advances the state. Returns logits [V] fp32."""
        ids = [as_token_id(token_id, self.config.vocab_size)]
        if state.length == 0:
            raise ValueError("decode_step needs a state from prefill (the first forward uses the prefill path)")
        return self.forward(ids, state, decode=True, trace=trace)[0]

    @torch.no_grad()
    def generate(
        self,
        input_ids,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop_at_eos: bool = True,
        eos_token_id: int | Sequence[int] | None = None,
        callback=None,
    ) -> torch.Tensor:
        """Generate up to ``max_new_tokens`` tokens after the prompt; returns only the NEW token ids (1-D long).

        temperature 0 (default) is greedy; otherwise sampled (top_k, top_p, reproducible with ``seed``).
        Stops after an end-of-sequence token when ``stop_at_eos`` (eos from the config unless given).
        ``callback(token_id)`` is called after each token (for streaming / progress bars).
        """
        return generate_tokens(self, input_ids, max_new_tokens, temperature, top_k, top_p, seed, stop_at_eos,
                               eos_token_id, callback)


def generate_tokens(model, input_ids, max_new_tokens, temperature=0.0, top_k=0, top_p=1.0, seed=None,
                    stop_at_eos=True, eos_token_id=None, callback=None) -> torch.Tensor:
    """The generation loop shared by every stage: any object with ``config``, ``prefill(ids, last_only=True)``
    and ``decode_step``."""
    check_sampling_args(temperature, top_k, top_p)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    ids = as_token_list(input_ids, model.config.vocab_size)
    limit = model.config.max_position_embeddings
    if len(ids) + max_new_tokens > limit + 1:  # the last generated token is never fed back
        raise ContextTooLongError(f"context too long: {len(ids)} prompt + {max_new_tokens} new tokens exceed "
                                  f"max_position_embeddings = {limit}")
    eos = eos_token_id if eos_token_id is not None else model.config.eos_token_id
    eos_set = set([eos] if isinstance(eos, int) else (eos or []))
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    out: list[int] = []
    if max_new_tokens == 0:
        return torch.tensor(out, dtype=torch.long)
    logits, state = model.prefill(ids, last_only=True)  # the prompt's other logits are never used
    logits = logits[-1]
    while True:
        token = sample_next_token(logits, temperature, top_k, top_p, generator)
        out.append(token)
        if callback is not None:
            callback(token)
        if len(out) >= max_new_tokens or (stop_at_eos and token in eos_set):
            break
        logits = model.decode_step(token, state)
    return torch.tensor(out, dtype=torch.long)


def load_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    keep_fp32: bool = True,
    cache_dtype: torch.dtype | None = None,
    weights_dtype: torch.dtype | None = None,
) -> Qwen35Model:
    """Load a checkpoint directory into a :class:`Qwen35Model` computing in ``dtype`` on ``device``.

    ``keep_fp32``: keep fp32-stored parameters (A_log, the DeltaNet norm weight) in fp32 when dtype is bf16.
    ``cache_dtype``: KV cache storage dtype (default: ``dtype``).
    ``weights_dtype``: round the weights to this dtype first, then compute in ``dtype`` (e.g. bf16 weights with
    fp32 arithmetic: exactly what the Numba kernels compute, so it is their oracle). fp32-stored parameters stay
    exact when ``keep_fp32``.
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' requested but no CUDA GPU is available (torch.cuda.is_available() "
                           "is False); use device='cpu'")
    config, weights = load_weights(path, dtype=weights_dtype or dtype, device=device, keep_fp32=keep_fp32)
    if weights_dtype is not None and weights_dtype != dtype:
        tied = weights["lm_head.weight"] is weights["embed_tokens.weight"]
        weights = {name: t.to(dtype) for name, t in weights.items()}
        if tied:
            weights["lm_head.weight"] = weights["embed_tokens.weight"]
    return Qwen35Model(config, weights, dtype=dtype, cache_dtype=cache_dtype)


__all__ = ["Qwen35Model", "load_model", "generate_tokens", "as_token_id", "as_token_list"]
