"""Prefill straight into the kernel stages' decode state: ``prefill_into(weights, state, ids) -> logits``.

The kernel stages (layered, persistent) decode from a :class:`megakernel.layout.DeviceState`. This fills one from
a prompt without going through the reference model: bf16 matrix products on tensor cores, everything else fp32
(the decode kernels' regime), every state written in the kernel layout directly (``layers.py``):

* a long prompt runs in pieces of ``piece_tokens`` (default 8192): each piece continues the states the previous
  one left (conv, DeltaNet, KV cache), so memory stays bounded (a 32k-token prompt works);
* on a GPU, a prompt of at most ``GRAPH_MAX_TOKENS`` tokens from an empty state is replayed from a captured CUDA
  graph once its length has been seen once (the first run warms up cuBLAS / flash attention / Triton; the second
  captures; later ones replay): a 512-token prefill is ~1,700 small kernels, and launching them one by one from
  Python would cost as much as running them. The graph writes into its own staging buffers, copied into the
  caller's state after each replay (a few MB), so one graph serves every state;
* ``dtype=torch.float32`` runs the same code in fp32 (the check twin: it matches the reference computing in fp32
  to ~1e-6, which proves the algorithm; the bf16 run then differs only by rounding).

The delta rule runs on ``backend``: ``"torch"`` (``delta_rule.chunked_delta_rule``, everywhere) or ``"fla"``
(flash-linear-attention's Triton kernel, GPU, bf16 only); ``"auto"`` takes fla on a GPU in bf16 when it imports.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from reference.model import as_token_list
from reference.state import ContextTooLongError

from ..kernels import lm_head
from ..launch import as_kernel_array
from ..layout import DeviceState, DeviceWeights
from .delta_rule import BACKENDS, fla_status
from .layers import PrefillWeights, Targets, forward_piece, lm_head_fp32, rms_norm, tf32_matmuls

PIECE_TOKENS = 8192  # a piece's activations are ~0.3 MB per token in bf16 (~2.5 GB at 8192) on the 0.8B model
GRAPH_MAX_TOKENS = 4096  # longer prompts keep the GPU busy longer than Python needs to launch their kernels
GRAPH_CACHE = 4  # captured graphs kept (each holds its pool: ~0.2 GB at 512 tokens, ~1.5 GB at 4096)
LOGITS = ("last", "all")
DTYPES = {torch.bfloat16: "bf16", torch.float32: "fp32"}


class Prefill:
    """A prefill over fixed weights. ``Prefill(weights)(ids, state)`` fills ``state`` and returns logits.

    weights: a :class:`DeviceWeights` (shared) or a reference :class:`Qwen35Model` (converted once to the kernel
    layout on ``device``). dtype: the matrix products' dtype (bf16, or fp32 for the check twin). backend:
    "auto" | "torch" | "fla" (the delta rule). piece_tokens: the longest piece run at once. cuda_graphs: replay
    repeated short prompts from captured graphs (GPU only).
    """

    def __init__(self, weights, dtype: torch.dtype = torch.bfloat16, backend: str = "auto",
                 piece_tokens: int = PIECE_TOKENS, cuda_graphs: bool = True, device: torch.device | None = None):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be torch.bfloat16 or torch.float32, got {dtype}")
        if backend not in ("auto",) + BACKENDS:
            raise ValueError(f"unknown delta-rule backend {backend!r}; choose auto, {', '.join(BACKENDS)}")
        if isinstance(piece_tokens, bool) or not isinstance(piece_tokens, int) or piece_tokens < 1:
            raise ValueError(f"piece_tokens must be a positive integer, got {piece_tokens!r}")
        if not isinstance(weights, DeviceWeights):
            if not hasattr(weights, "weights") or not hasattr(weights, "config"):
                raise TypeError(f"weights must be a DeviceWeights or a reference Qwen35Model, got "
                                f"{type(weights).__name__}")
            weights = DeviceWeights(weights.config, weights.weights, device or weights.device)
        self.weights = PrefillWeights(weights)
        self.config = weights.config
        self.device = weights.embed.device
        self.dtype, self.piece_tokens = dtype, piece_tokens
        self.backend, self.backend_note = self._pick_backend(backend)
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self.graph_note = "" if self.cuda_graphs else "no CUDA graphs" + ("" if cuda_graphs else " (asked)")
        self._graphs: OrderedDict = OrderedDict()  # T -> _Graph
        self._seen: set = set()
        self.last_run = ""  # how the last call ran (for benchmark notes)
        # The last position's logits come from the decode stage's LM-head kernel (fp32 logits, bf16 weights,
        # the final norm folded in): one pass over the 0.5 GB head instead of fp32 slices of it. Its argmax lands
        # in ``best`` on the device (``lm_head.token_view(best)``: the first greedy token, for a decode kernel).
        c = self.config
        self._h_last = torch.zeros(c.hidden_size, device=self.device)
        self._last = torch.zeros(c.vocab_size, device=self.device)
        self.best = lm_head.new_best(self.device)
        self._k = {name: as_kernel_array(t) for name, t in
                   (("h", self._h_last), ("logits", self._last), ("best", self.best))}

    def _pick_backend(self, backend: str) -> tuple[str, str]:
        why_not = fla_status()
        if backend == "fla" and why_not is not None:
            raise ValueError(f"backend='fla' asked for, but flash-linear-attention does not import: {why_not}")
        if backend == "fla" and (self.device.type != "cuda" or self.dtype != torch.bfloat16):
            raise ValueError("backend='fla' runs on a CUDA GPU in bf16 only (its kernels refuse fp32)")
        if backend != "auto":
            return backend, f"delta rule: {backend} (asked for)"
        if self.device.type == "cuda" and self.dtype == torch.bfloat16 and why_not is None:
            return "fla", "delta rule: flash-linear-attention chunk_gated_delta_rule (Triton)"
        reason = (why_not if why_not is not None else "no CUDA GPU" if self.device.type != "cuda"
                  else "fp32 (fla's kernels are bf16)")
        return "torch", f"delta rule: torch, chunks batched (flash-linear-attention not used: {reason})"

    # ------------------------------------------------------------------ the call
    @torch.no_grad()
    def __call__(self, input_ids, state: DeviceState, logits: str = "last", continue_state: bool = False):
        """Prefill ``input_ids`` into ``state``. Without ``continue_state`` the state is overwritten as if empty
        (positions 0 .. T-1); with it the prompt continues from ``state.length``. Returns fp32 logits: [1, V]
        for the last position (``logits="last"``) or [T, V] for every position (``"all"``)."""
        if logits not in LOGITS:
            raise ValueError(f"logits must be one of {', '.join(LOGITS)}, got {logits!r}")
        c = self.config
        ids = as_token_list(input_ids, c.vocab_size)
        start = state.length if continue_state else 0
        T = len(ids)
        if start + T > state.capacity:
            raise ContextTooLongError(f"context too long: {start} + {T} prompt tokens exceed the state's KV-cache "
                                      f"capacity {state.capacity}")
        if state.conv.device != self.device:
            raise ValueError(f"the state lives on {state.conv.device}, the weights on {self.device}")
        ids_dev = torch.tensor(ids, dtype=torch.long).to(self.device, non_blocking=True)
        if self.cuda_graphs and start == 0 and logits == "last" and T <= min(self.piece_tokens, GRAPH_MAX_TOKENS):
            out = self._graph_run(ids_dev, state)
        else:
            out = self._eager_run(ids_dev, state, start, logits)
        state.length = start + T
        state.position.fill_(start + T)
        return out

    def _eager_run(self, ids, state: DeviceState, start: int, logits: str) -> torch.Tensor:
        targets = Targets(state.conv, state.rec, state.k_cache, state.v_cache)
        outs = []
        T, P = ids.shape[0], self.piece_tokens
        for p0 in range(0, T, P):
            h = forward_piece(self.weights, ids[p0 : p0 + P], start + p0, targets, self.dtype, self.backend)
            if logits == "all":
                outs.append(self._all_logits(h))
        pieces = -(-T // P)
        self.last_run = f"eager, {pieces} piece{'s' * (pieces > 1)} of <= {P} tokens"
        if logits == "all":
            return torch.cat(outs)
        self._last_logits(h)
        return self._last.clone()[None]

    def _all_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Every row's logits [n, V] fp32 (fp32 slices of the head; for checks)."""
        x = rms_norm(h, self.weights.final_norm_1p, self.config.rms_norm_eps)
        with tf32_matmuls(False):
            return lm_head_fp32(x, self.weights.lm_head).contiguous()

    def _last_logits(self, h: torch.Tensor) -> None:
        """The last row's logits into ``self._last`` (and their argmax into ``self.best``), on the LM-head
        kernel of the decode stage."""
        c, dw = self.config, self.weights.device_weights
        self._h_last.copy_(h[-1])
        lm_head.lm_head_argmax(self._k["h"], dw.k["final_norm"], dw.k["lm_head"], self._k["logits"], c.vocab_size,
                               c.hidden_size, c.rms_norm_eps, self._k["best"])

    # ------------------------------------------------------------------ CUDA graphs
    def _graph_run(self, ids, state: DeviceState) -> torch.Tensor:
        T = ids.shape[0]
        graph = self._graphs.get(T)
        if graph is None:
            if T not in self._seen:  # first time: run eagerly (also the warm-up the capture needs)
                self._seen.add(T)
                return self._eager_run(ids, state, 0, "last")
            try:
                graph = _Graph(self, T)
            except Exception as e:  # noqa: BLE001 (an op that cannot be captured: say so, run eagerly from now on)
                self.cuda_graphs = False
                self.graph_note = f"CUDA graph capture failed, eager from now on ({type(e).__name__}: {e})"[:300]
                torch.cuda.synchronize()
                return self._eager_run(ids, state, 0, "last")
            self._graphs[T] = graph
            while len(self._graphs) > GRAPH_CACHE:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(T)
        self.last_run = f"one CUDA graph replay ({T} tokens)"
        return graph.replay(ids, state, self._last)


class _Graph:
    """One captured prefill of T tokens from an empty state into staging buffers (see the module docstring)."""

    def __init__(self, prefill: Prefill, T: int):
        c, dev = prefill.config, prefill.device
        n_lin, n_full = len(c.linear_layers), len(c.full_layers)
        self.ids = torch.zeros(T, dtype=torch.long, device=dev)
        self.targets = Targets(
            conv=torch.zeros(n_lin, c.conv_dim, c.linear_conv_kernel_dim - 1, device=dev),
            rec=torch.zeros(n_lin, c.linear_num_value_heads, c.linear_key_head_dim, c.linear_value_head_dim,
                            device=dev),
            k_cache=torch.zeros(n_full, c.num_key_value_heads, T, c.head_dim, dtype=torch.bfloat16, device=dev),
            v_cache=torch.zeros(n_full, c.num_key_value_heads, T, c.head_dim, dtype=torch.bfloat16, device=dev))
        self.graph = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.graph(self.graph, stream=stream):
            h = forward_piece(prefill.weights, self.ids, 0, self.targets, prefill.dtype, prefill.backend)
            prefill._last_logits(h)
        torch.cuda.current_stream().wait_stream(stream)
        self.T = T

    def replay(self, ids, state: DeviceState, logits: torch.Tensor) -> torch.Tensor:
        self.ids.copy_(ids)
        self.graph.replay()
        t = self.targets
        state.conv.copy_(t.conv)
        state.rec.copy_(t.rec)
        state.k_cache[:, :, : self.T].copy_(t.k_cache)
        state.v_cache[:, :, : self.T].copy_(t.v_cache)
        return logits.clone()[None]


def prefill_into(weights, state: DeviceState, input_ids, *, logits: str = "last", continue_state: bool = False,
                 dtype: torch.dtype = torch.bfloat16, backend: str = "auto", piece_tokens: int = PIECE_TOKENS,
                 cuda_graphs: bool = True) -> torch.Tensor:
    """Prefill ``input_ids`` into ``state`` (a :class:`DeviceState`) with ``weights`` (a :class:`DeviceWeights`
    or a reference :class:`Qwen35Model`); returns fp32 logits ([1, V], or [T, V] with ``logits="all"``). One
    :class:`Prefill` per (weights, options) is kept while ``weights`` lives (its CUDA graphs are reused)."""
    key = (dtype, backend, piece_tokens, cuda_graphs)
    per_weights = vars(weights).setdefault("_prefill_runners", {})  # lives and dies with the weights
    runner = per_weights.get(key)
    if runner is None:
        runner = per_weights[key] = Prefill(weights, dtype=dtype, backend=backend, piece_tokens=piece_tokens,
                                            cuda_graphs=cuda_graphs, device=state.conv.device)
    return runner(input_ids, state, logits=logits, continue_state=continue_state)


__all__ = ["DTYPES", "GRAPH_CACHE", "GRAPH_MAX_TOKENS", "LOGITS", "PIECE_TOKENS", "Prefill", "prefill_into"]
