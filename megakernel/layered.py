"""Stage 2: the layered decoder. Every decode op is its own Numba CUDA kernel; one launch per op.

One decode step (``D`` hidden, ``C`` conv channels; every matvec reads bf16 weights and accumulates in fp32):

    embed_lookup                                   h = embed[token]
    per DeltaNet layer (5 launches):
        norm_matvec                                proj = [qkv | z | b | a] = W_in @ rms_norm(h)
        deltanet_step                              conv + SiLU, L2 norms, decay/beta, state update, o = S^T q
        gated_norm_matvec_residual                 h += W_out @ gated_rms_norm(o, z)
        norm_swiglu_matvec                         act = silu(W_gate @ n) * (W_up @ n),  n = rms_norm(h)
        matvec_residual                            h += W_down @ act
    per attention layer (7 launches):
        norm_matvec                                proj = [q|gate , k , v] = W_qkv @ rms_norm(h)
        attn_prepare                               q/k norms, partial RoPE, append k, v to the bf16 cache
        attn_decode, attn_combine                  softmax(q K^T / sqrt(Dh)) V split over blocks, * sigmoid(gate)
        matvec_residual                            h += W_o @ attn
        norm_swiglu_matvec, matvec_residual        the MLP as above
    lm_head_argmax                                 logits = W_lm @ rms_norm(h), and their argmax
    advance                                        record the token, position += 1 (in device memory)

That is 3 + 5 x 18 + 7 x 6 = 135 launches per token for Qwen3.5-0.8B: the per-launch host cost is what the
megakernel removes. ``decode_step`` and ``generate`` run on the kernels. ``prefill`` is compute-bound (every
weight is used by every prompt token) and runs ``megakernel.prefill``: bf16 matrix products on tensor cores, fp32
states, written straight into the device buffers (``prefill_mode="bf16"``, the default); ``"fp32"`` runs the same
code in fp32 (its check twin) and ``"reference"`` runs the reference model and copies its states in (for
comparisons of the decode kernels, which then start from exactly the oracle's state).

The oracle for this stage is the reference computing in fp32 from the same bf16 weights with a bf16 KV cache
(``reference.load_model(path, dtype=float32, cache_dtype=bfloat16)``): the kernels do the same arithmetic in a
different order, so logits and states agree to ~1e-6 relative.
"""

from __future__ import annotations

from pathlib import Path

import torch

from reference.config import LINEAR
from reference.model import Qwen35Model, as_token_id, generate_tokens

from .kernels import attention, deltanet, embedding, fused_matvec, lm_head
from .launch import NoGPUError, as_kernel_array, require_gpu, synchronize
from .layout import DeviceState, DeviceWeights, check_supported
from .prefill.modes import PREFILL_MODES, PrefillModes, check_prefill_mode  # noqa: F401 (re-exported)


class LayeredDecoder(PrefillModes):
    """Qwen3.5 decode with one Numba kernel launch per op. Same API as :class:`reference.Qwen35Model`.

    Two ways to run a step: eagerly (``decode_step``, ``greedy_tokens``: Python launches every kernel, ~20-40 us
    of host time each) or as a captured CUDA graph (``graph_greedy_tokens``: the whole step replayed with one
    call). The graph needs every per-step input in device memory: the token id (the previous step's argmax),
    the position (``DeviceState.position``, advanced by the last kernel of the step) and a grid sized for the
    cache capacity.
    """

    stage = "layered"

    def __init__(self, reference: Qwen35Model, max_context: int = 4096, prefill_mode: str = "bf16", *,
                 matvec_config=None):
        """``matvec_config``: ``(warps_per_block, G)`` for every matvec-family launch instead of the planned
        one (G warps per row; per gate/up row pair in the SwiGLU kernel). Tests use it to run split-K rows
        (``matvec.combine_parts``) at sizes whose plan is one warp per row; None keeps the plans."""
        require_gpu("the layered decoder")
        check_supported(reference.config)
        if matvec_config is not None and (len(matvec_config) != 2 or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in matvec_config)):
            raise ValueError(f"matvec_config must be (warps_per_block, G), two positive integers; got "
                             f"{matvec_config!r}")
        self.matvec_config = None if matvec_config is None else tuple(matvec_config)
        self._setup_stage(reference, max_context, prefill_mode)
        c = self.config
        self.weights = DeviceWeights(c, reference.weights, self.device)
        self.sizes_deltanet = deltanet.deltanet_sizes(c)
        self.sizes_attention = attention.attention_sizes(c)
        self.grid_splits = attention.attention_splits(self.max_context)
        self._graph = None
        self._buffers()

    def _buffers(self) -> None:
        c, dev = self.config, self.device
        f32 = lambda *shape: torch.zeros(*shape, dtype=torch.float32, device=dev)  # noqa: E731
        Hq, Dh = c.num_attention_heads, c.head_dim
        self.h = f32(c.hidden_size)
        self.proj_linear = f32(c.conv_dim + c.value_dim + 2 * c.linear_num_value_heads)
        self.o_linear = f32(c.value_dim)
        self.proj_attn = f32(2 * Hq * Dh + 2 * c.num_key_value_heads * Dh)
        self.q = f32(Hq, Dh)
        self.gate = f32(Hq * Dh)
        self.attn_out = f32(Hq * Dh)
        self.partial_ml = f32(Hq, self.grid_splits, 2)
        self.partial_o = f32(Hq, self.grid_splits, Dh)
        self.act = f32(c.intermediate_size)
        self.logits = f32(c.vocab_size)
        self.best = lm_head.new_best(dev)  # argmax result; its token slot feeds the next step's embedding
        self.token = lm_head.token_view(self.best)
        self.history = torch.zeros(self.max_context, dtype=torch.int32, device=dev)  # tokens chosen per position
        k = as_kernel_array
        self.k = {name: k(getattr(self, name)) for name in (
            "h", "proj_linear", "o_linear", "proj_attn", "q", "gate", "attn_out", "partial_ml", "partial_o",
            "act", "logits", "best", "token", "history")}
        z0 = c.conv_dim
        self.k["z"] = k(self.proj_linear[z0 : z0 + c.value_dim])

    # ------------------------------------------------------------------ public API (as the reference model)
    @torch.no_grad()
    def decode_step(self, token_id, state: DeviceState, trace: dict | None = None) -> torch.Tensor:
        """Feed one token at position ``state.length``; returns logits [V] fp32 (a copy) and advances the state.

        trace: if a dict, ``trace["hidden"][layer]`` gets each layer's output hidden state (for the compare CLI).
        """
        token = as_token_id(token_id, self.config.vocab_size)
        if state.length == 0:
            raise ValueError("decode_step needs a state from prefill")
        state.check_room()
        self.token.fill_(token)
        self._step(state, trace)
        state.length += 1
        return self.logits.clone()

    @torch.no_grad()
    def generate(self, input_ids, max_new_tokens: int, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None, stop_at_eos: bool = True, eos_token_id=None,
                 callback=None) -> torch.Tensor:
        """As :meth:`reference.Qwen35Model.generate` (new token ids only). Sampling uses the shared host-side
        sampler on the kernel logits, so a seed gives the same tokens as the reference when logits agree."""
        return generate_tokens(self, input_ids, max_new_tokens, temperature, top_k, top_p, seed, stop_at_eos,
                               eos_token_id, callback)

    @torch.no_grad()
    def greedy_tokens(self, input_ids, n: int, state: DeviceState | None = None) -> list[int]:
        """n greedy tokens, eagerly: the argmax stays on the device (feeding the next step's embedding); the
        host reads each token id (one 4-byte copy per step) to stop at the cache's end."""
        logits, state = self.prefill(input_ids, state=state, last_only=True)
        out = [int(logits[-1].argmax())]
        self.token.fill_(out[0])
        for _ in range(n - 1):
            state.check_room()
            self._step(state, None)
            state.length += 1
            out.append(lm_head.read_token(self.best))
        return out

    # ------------------------------------------------------------------ CUDA graph
    def capture_graph(self):
        """Capture one decode step (reading the token and position from device memory) into a CUDA graph.
        Returns the state the graph is bound to; ``graph_prefill`` fills it and ``graph_replay`` runs steps."""
        if self._graph is not None:
            return self._graph[1]
        if self.device.type != "cuda":
            raise NoGPUError("CUDA graphs need a GPU (the simulator runs kernels eagerly)")
        state = self.new_state()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up on the capture stream: compiles, caches launch configs/buffers
            self._step(state, None)
        stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            self._step(state, None)
        torch.cuda.synchronize()
        self._graph = (graph, state)
        return state

    @torch.no_grad()
    def graph_prefill(self, input_ids) -> int:
        """Prefill into the state the graph is bound to and put the first greedy token where the graph's first
        kernel reads it. Returns that token."""
        state = self.capture_graph()
        logits, _ = self.prefill(input_ids, state=state, last_only=True)
        first = int(logits[-1].argmax())
        self.token.fill_(first)
        return first

    def graph_replay(self, n: int) -> None:
        """n greedy decode steps, each one replay of the captured graph (no host synchronisation)."""
        graph, state = self._graph
        state.check_room(n)
        for _ in range(n):
            graph.replay()
        state.length += n

    @torch.no_grad()
    def graph_greedy_tokens(self, input_ids, n: int) -> list[int]:
        """n greedy tokens with each decode step replayed from one captured CUDA graph (no host work per token
        beyond the replay call; the token ids are read back once at the end)."""
        first = self.graph_prefill(input_ids)
        start = self._graph[1].length
        self.graph_replay(n - 1)
        return [first] + self.history[start : start + n - 1].tolist()

    # ------------------------------------------------------------------ one step: the launches
    def _step(self, state: DeviceState, trace: dict | None) -> None:
        c, W, K, cfg = self.config, self.weights, self.k, self.matvec_config
        D, F, eps = c.hidden_size, c.intermediate_size, c.rms_norm_eps
        pos = state.k["position"]  # device int32[1]: the position of the token being decoded
        embedding.embed_lookup(W.k["embed"], K["token"], K["h"], D)
        for i, lw in enumerate(W.layers):
            w = lw.k
            if lw.kind == LINEAR:
                j = state.linear_index[i]
                fused_matvec.norm_matvec(K["h"], w["input_norm"], w["in_proj"], K["proj_linear"],
                                         lw.in_proj.shape[0], D, eps, config=cfg)
                deltanet.deltanet_step(K["proj_linear"], w["conv_w"], state.k["conv"][j], w["A_log"], w["dt_bias"],
                                       state.k["rec"][j], K["o_linear"], *self.sizes_deltanet)
                fused_matvec.gated_norm_matvec_residual(K["o_linear"], K["z"], w["gated_norm"], w["out_proj"],
                                                        K["h"], D, c.linear_num_value_heads,
                                                        c.linear_value_head_dim, eps, config=cfg)
            else:
                j = state.full_index[i]
                kc, vc = state.k["k_cache"][j], state.k["v_cache"][j]
                fused_matvec.norm_matvec(K["h"], w["input_norm"], w["qkv"], K["proj_attn"], lw.qkv.shape[0], D, eps,
                                         config=cfg)
                attention.attn_prepare(K["proj_attn"], w["q_norm"], w["k_norm"], W.k["inv_freq"], pos, kc, vc,
                                       K["q"], K["gate"], *self.sizes_attention, eps=eps)
                attention.attn_decode(K["q"], kc, vc, pos, K["partial_ml"], K["partial_o"], self.grid_splits,
                                      *self.sizes_attention)
                attention.attn_combine(K["partial_ml"], K["partial_o"], K["gate"], K["attn_out"], self.grid_splits,
                                       *self.sizes_attention, length=pos)
                fused_matvec.matvec_residual(w["o_proj"], K["attn_out"], K["h"], D,
                                             c.num_attention_heads * c.head_dim, config=cfg)
            fused_matvec.norm_swiglu_matvec(K["h"], w["post_norm"], w["gate"], w["up"], K["act"], F, D, eps,
                                            config=cfg)
            fused_matvec.matvec_residual(w["down"], K["act"], K["h"], D, F, config=cfg)
            if trace is not None:
                synchronize()
                trace.setdefault("hidden", {})[i] = self.h.detach().cpu().clone()
        lm_head.lm_head_argmax(K["h"], W.k["final_norm"], W.k["lm_head"], K["logits"], c.vocab_size, D, eps,
                               K["best"], config=cfg)
        embedding.advance(pos, K["token"], K["history"])

    def launches_per_token(self) -> int:
        n_lin = sum(t == LINEAR for t in self.config.layer_types)
        n_full = self.config.num_hidden_layers - n_lin
        return 3 + 5 * n_lin + 7 * n_full


def load(path: str | Path, stage: str = "layered", max_context: int | None = None, keep_fp32: bool = True,
         prefill_mode: str | None = None):
    """``megakernel.load`` for the first two stages (kept for existing callers)."""
    from .stages import load as load_stage

    if stage not in ("reference", "layered"):
        raise ValueError(f"unknown stage {stage!r}; expected 'reference' or 'layered' (megakernel.load knows all)")
    return load_stage(path, stage, max_context=max_context, keep_fp32=keep_fp32, prefill_mode=prefill_mode)
