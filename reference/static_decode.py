"""A static-shape decode step for the reference model: the best case a PyTorch user can get without custom kernels.

``Qwen35Model.decode_step`` is written to be read: every step slices the KV cache to the current length, builds
the token and position tensors on the host and lets the cache grow. Each of those changes a shape or copies from
the host, so the step cannot be captured in a CUDA graph and ``torch.compile`` would recompile at every length.
:class:`StaticDecoder` runs the same model with every shape fixed:

* the KV cache is preallocated at a fixed ``capacity`` (positions), and attention runs over the **whole**
  capacity with a mask built from the position, so the shapes never change;
* the position and the token fed to the step live in 1-element device tensors (``position``, ``token``); the step
  advances ``position`` itself, and writes the argmax of its logits into ``token`` (and into the ``tokens``
  history), so greedy decoding can replay the step without the host reading anything back;
* conv and DeltaNet states are updated in place (the reference ops already do that), the new key and value are
  written with ``index_copy_`` at the device position, and the logits land in a static ``logits`` buffer.

The step is therefore capturable with ``torch.cuda.CUDAGraph`` (:meth:`StaticDecoder.capture_cuda_graph`) and
usable with ``torch.compile(mode="reduce-overhead")`` (:meth:`StaticDecoder.compile`).

What is reused from ``reference.ops`` unchanged (already shape-static for one token): the embedding row lookup,
``rms_norm``, ``gated_deltanet(decode=True)`` (conv step, decay, recurrent delta rule, gated norm: states updated
in place), ``split_query_gate``, ``apply_partial_rope``, ``swiglu_mlp`` and ``lm_head``. Where it must differ from
the reference (all in the attention layer):

* RoPE angles come from the device ``position`` times precomputed inverse frequencies (the same fp32 arithmetic
  as ``rope_cos_sin``, whose inverse frequencies are built on the host at every call);
* the cache write is ``index_copy_`` at the device position instead of a slice assignment;
* attention reads all ``capacity`` cached positions and masks those after the current one (``-inf`` before the
  fp32 softmax, so they get weight exactly 0), instead of slicing ``[:length]``; the query heads of one KV head
  are batched as ``[Hkv, group, Dh]`` against the cache directly instead of ``repeat_interleave``-ing the cache
  (which would copy it every step). The sums are the same; only their blocking differs, so fp32 logits agree with
  ``decode_step`` to ~1e-7 relative (tests/test_static_decode.py checks 1e-5, and every state);
* the masked positions still cost bandwidth: every step reads the whole ``capacity`` of the KV cache (12 KB per
  position for Qwen3.5-0.8B), so size the capacity to the context you need.

Prefill is not static (a prompt has its own length): :meth:`StaticDecoder.prefill` runs the reference model's
chunked prefill and copies its state into the static buffers.

    model = load_model(path, device="cuda", dtype=torch.bfloat16)
    dec = StaticDecoder(model, capacity=1024)
    dec.capture_cuda_graph()                      # or dec.compile(), or neither (eager)
    logits, state = dec.prefill(prompt_ids)        # also puts the greedy next token in dec.token
    logits = dec.decode_step(token, state)         # logits [V] fp32, like Qwen35Model.decode_step
    tokens = dec.greedy_tokens(prompt_ids, 32)     # argmax fed back on the device, one host read at the end
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import LINEAR
from .model import Qwen35Model, as_token_id, as_token_list
from .ops import apply_partial_rope, gated_deltanet, lm_head, rms_norm, split_query_gate, swiglu_mlp
from .ops.rope import rope_inv_freq
from .state import ContextTooLongError, DecodeState


class StaticDecoder:
    """Shape-static decode for a :class:`reference.Qwen35Model` (same weights, same dtypes), capacity fixed.

    Public state: ``state`` (a :class:`DecodeState` whose KV caches have ``capacity`` positions, updated in place;
    ``state.length`` is the host's copy of the position), ``position``, ``token`` (int64 [1] device tensors),
    ``logits`` (fp32 [V]) and ``tokens`` (int64 [capacity + 1]: ``tokens[p]`` is the token fed at position p).
    ``mode`` is "eager", "cuda-graph" or "torch.compile(<mode>)".
    """

    def __init__(self, model: Qwen35Model, capacity: int):
        cfg = model.config
        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive number of positions, got {capacity!r}")
        if capacity > cfg.max_position_embeddings:
            raise ContextTooLongError(f"context too long: capacity {capacity} exceeds max_position_embeddings = "
                                      f"{cfg.max_position_embeddings}")
        self.model, self.config = model, cfg
        self.device, self.dtype = model.device, model.dtype
        self.capacity = capacity
        self.state = DecodeState.empty(cfg, model.dtype, model.device, capacity=capacity,
                                       cache_dtype=model.cache_dtype)
        dev = model.device
        self.token = torch.zeros(1, dtype=torch.long, device=dev)
        self.position = torch.zeros(1, dtype=torch.long, device=dev)
        self.logits = torch.zeros(cfg.vocab_size, dtype=torch.float32, device=dev)
        self.tokens = torch.zeros(capacity + 1, dtype=torch.long, device=dev)
        self.key_positions = torch.arange(capacity, device=dev)
        self.inv_freq = rope_inv_freq(cfg.rotary_dim, cfg.rope_theta).to(dev)
        self.mode = "eager"
        self._graph = None
        self._compiled = None

    # ------------------------------------------------------------------ the static step
    def _buffers(self) -> list[torch.Tensor]:
        """Every tensor the step writes (what a warm-up must restore)."""
        s = self.state
        return ([self.token, self.position, self.logits, self.tokens] + list(s.conv.values())
                + list(s.recurrent.values()) + list(s.k_cache.values()) + list(s.v_cache.values()))

    def _attention(self, x: torch.Tensor, w: dict, layer: int) -> torch.Tensor:
        """Gated attention for one token at the device position, over the whole cache capacity (masked)."""
        cfg = self.config
        Hq, Hkv, Dh = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        k_cache, v_cache = self.state.k_cache[layer], self.state.v_cache[layer]  # [Hkv, capacity, Dh]
        q, gate = split_query_gate(F.linear(x, w["q_proj"], w.get("q_proj_bias")), Hq, Dh)
        q = rms_norm(q, w["q_norm"], cfg.rms_norm_eps)
        k = rms_norm(F.linear(x, w["k_proj"], w.get("k_proj_bias")).view(1, Hkv, Dh), w["k_norm"], cfg.rms_norm_eps)
        v = F.linear(x, w["v_proj"], w.get("v_proj_bias")).view(1, Hkv, Dh)
        # rope_cos_sin, with the position read from the device
        freqs = self.position.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        q, k = apply_partial_rope(q, cos, sin), apply_partial_rope(k, cos, sin)
        k_cache.index_copy_(1, self.position, k.transpose(0, 1).to(k_cache.dtype))
        v_cache.index_copy_(1, self.position, v.transpose(0, 1).to(v_cache.dtype))
        keys, values = k_cache.to(q.dtype), v_cache.to(q.dtype)  # no-op unless the cache dtype differs
        # query head h reads KV head h // group: [Hkv, group, Dh] x [Hkv, Dh, capacity]
        qh = q[0].reshape(Hkv, Hq // Hkv, Dh)
        scores = torch.matmul(qh, keys.transpose(1, 2)) * Dh**-0.5  # [Hkv, group, capacity]
        scores = scores.masked_fill((self.key_positions > self.position)[None, None, :], float("-inf"))
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        o = torch.matmul(probs, values).reshape(1, Hq * Dh)
        o = o * torch.sigmoid(gate)
        return F.linear(o, w["o_proj"], w.get("o_proj_bias"))

    def _step(self) -> None:
        """One decode step, shape-static: reads ``token`` and ``position``; writes the states, ``logits``,
        ``position + 1``, and the argmax into ``token`` and ``tokens[position + 1]``."""
        cfg, model, state = self.config, self.model, self.state
        h = model.weights["embed_tokens.weight"][self.token].to(self.dtype)  # [1, D]
        for i, layer in enumerate(model.layers):
            x = rms_norm(h, layer["input_norm"], cfg.rms_norm_eps)
            if layer["kind"] == LINEAR:
                mixed = gated_deltanet(x, layer["mixer"], state.conv[i], state.recurrent[i], cfg, decode=True)
            else:
                mixed = self._attention(x, layer["mixer"], i)
            h = h + mixed
            h = h + swiglu_mlp(rms_norm(h, layer["post_norm"], cfg.rms_norm_eps),
                               layer["gate_proj"], layer["up_proj"], layer["down_proj"], cfg.hidden_act)
        h = rms_norm(h, model.weights["norm.weight"], cfg.rms_norm_eps)
        self.logits.copy_(lm_head(h, model.weights["lm_head.weight"]).float()[0])
        self.position.add_(1)
        self.token.copy_(torch.argmax(self.logits).view(1))
        self.tokens.index_copy_(0, self.position, self.token)

    def _run(self) -> None:
        if self._graph is not None:
            self._graph.replay()
        elif self._compiled is not None:
            self._compiled()
        else:
            self._step()

    # ------------------------------------------------------------------ graph capture / compile
    def _snapshot(self) -> list[torch.Tensor]:
        return [t.clone() for t in self._buffers()]

    def _restore(self, saved: list[torch.Tensor]) -> None:
        for t, s in zip(self._buffers(), saved):
            t.copy_(s)

    def _require_cuda(self, what: str) -> None:
        if self.device.type != "cuda":
            raise RuntimeError(f"{what} needs the model on a CUDA device; this decoder's model is on "
                               f"{self.device} (load it with device='cuda', or use the eager mode)")
        if not torch.cuda.is_available():
            raise RuntimeError(f"{what} needs a CUDA GPU and torch.cuda.is_available() is False")

    def capture_cuda_graph(self, warmup: int = 3) -> "StaticDecoder":
        """Capture one step into a ``torch.cuda.CUDAGraph``; later steps replay it. The warm-up steps run on a
        side stream (as CUDA graph capture requires) at position 0 and their effects are undone afterwards, so
        this may be called at any time (before or after a prefill)."""
        self._require_cuda("capture_cuda_graph")
        saved = self._snapshot()
        self.position.zero_()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(warmup):
                self.position.zero_()
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        self.position.zero_()
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            self._step()
        torch.cuda.synchronize()
        self._restore(saved)
        self._graph, self._compiled, self.mode = graph, None, "cuda-graph"
        return self

    def compile(self, mode: str = "reduce-overhead", fullgraph: bool = True, warmup: int = 3,
                **compile_kwargs) -> "StaticDecoder":
        """Wrap the step in ``torch.compile`` (default ``mode="reduce-overhead"``: Inductor kernels replayed as a
        CUDA graph). The weights and buffers are marked as static addresses so the CUDA graph reads them in place
        (an unmarked tensor would be copied into the graph's own input buffer at every replay). ``warmup`` calls
        compile and record the graph; their effects are undone. Compilation errors propagate."""
        mark = getattr(getattr(torch, "_dynamo", None), "mark_static_address", None)
        if mark is not None:
            for t in list(self.model.weights.values()) + self._buffers() + [self.key_positions, self.inv_freq]:
                try:
                    mark(t)
                except Exception:  # noqa: BLE001 (older torch: best effort)
                    pass
        fn = torch.compile(self._step, mode=mode, fullgraph=fullgraph, **compile_kwargs)
        saved = self._snapshot()
        with torch.no_grad():
            for _ in range(warmup):
                self.position.zero_()
                fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self._restore(saved)
        self._graph, self._compiled, self.mode = None, fn, f"torch.compile({mode})"
        return self

    # ------------------------------------------------------------------ public API (as Qwen35Model)
    def load_state(self, ref: DecodeState) -> None:
        """Copy a reference :class:`DecodeState` (e.g. from ``Qwen35Model.prefill``) into the static buffers."""
        if ref.length > self.capacity:
            raise ContextTooLongError(f"context too long: a state of {ref.length} positions does not fit this "
                                      f"decoder's KV-cache capacity {self.capacity}")
        s, n = self.state, ref.length
        for i in s.conv:
            s.conv[i].copy_(ref.conv[i])
            s.recurrent[i].copy_(ref.recurrent[i])
        for i in s.k_cache:
            for mine, theirs in ((s.k_cache[i], ref.k_cache[i]), (s.v_cache[i], ref.v_cache[i])):
                mine[:, :n].copy_(theirs[:, :n])
                mine[:, n:].zero_()  # masked anyway; zeros keep 0 * value finite
        s.length = n
        self.position.fill_(n)

    @torch.no_grad()
    def prefill(self, input_ids, last_only: bool = True):
        """Run the reference model's prefill and load its state. Returns (logits, state) like
        ``Qwen35Model.prefill`` ([1, V] with ``last_only``, the default here); the greedy next token is put in
        ``token`` (and ``tokens[length]``) so :meth:`advance` can continue without the host."""
        ids = as_token_list(input_ids, self.config.vocab_size)
        if len(ids) > self.capacity:
            raise ContextTooLongError(f"context too long: a prompt of {len(ids)} tokens exceeds this decoder's "
                                      f"KV-cache capacity {self.capacity}")
        logits, ref_state = self.model.prefill(ids, last_only=last_only)
        self.load_state(ref_state)
        self.token.copy_(torch.argmax(logits[-1].float()).view(1))
        self.tokens.index_copy_(0, self.position, self.token)
        return logits, self.state

    def check_room(self, steps: int = 1) -> None:
        if self.state.length + steps > self.capacity:
            raise ContextTooLongError(
                f"context too long: {self.state.length + steps} positions exceed this static decoder's KV-cache "
                f"capacity {self.capacity} (create it with a larger capacity)")

    @torch.no_grad()
    def decode_step(self, token_id, state: DecodeState | None = None) -> torch.Tensor:
        """Feed one token at position ``state.length``; returns logits [V] fp32 (a copy) and advances the state."""
        if state is not None and state is not self.state:
            raise ValueError("a StaticDecoder decodes only its own state (the one prefill returned)")
        token = as_token_id(token_id, self.config.vocab_size)
        if self.state.length == 0:
            raise ValueError("decode_step needs a state from prefill (the first forward uses the prefill path)")
        self.check_room()
        self.token.fill_(token)
        self._run()
        self.state.length += 1
        return self.logits.clone()

    @torch.no_grad()
    def advance(self, steps: int) -> None:
        """``steps`` greedy decode steps, each feeding the previous argmax (held in ``token``) on the device;
        nothing is read back (the tokens accumulate in ``tokens``). Call after :meth:`prefill`."""
        if self.state.length == 0:
            raise ValueError("advance needs a state from prefill")
        self.check_room(steps)
        for _ in range(steps):
            self._run()
        self.state.length += steps

    @torch.no_grad()
    def greedy_tokens(self, input_ids, n: int) -> list[int]:
        """Prefill, then greedy decoding: the n new token ids (the first from the prefill logits), like
        ``Qwen35Model.generate(ids, n, stop_at_eos=False)``."""
        if n < 1:
            return []
        self.prefill(input_ids)
        start = self.state.length
        self.advance(n - 1)
        return [int(t) for t in self.tokens[start : start + n].tolist()]


__all__ = ["StaticDecoder"]
