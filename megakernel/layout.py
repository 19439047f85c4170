"""The device-side layout every kernel stage shares: weights, decode state, and scratch buffers.

Weights (converted once at load time):

* every large matrix stays bf16 and is handed to kernels as int32 words (two bf16 per word); matrices that one
  matvec reads together are concatenated row-wise so a layer needs fewer launches:
  DeltaNet ``in_proj`` = [qkv (C) ; z (Hv*Dv) ; b (Hv) ; a (Hv)] x D, attention ``qkv`` = [q|gate (2*Hq*Dh) ;
  k (Hkv*Dh) ; v (Hkv*Dh)] x D;
* small parameters (norm weights, conv taps, ``A_log``, ``dt_bias``, RoPE inverse frequencies) are fp32, exact
  upcasts of the stored values.
* all of them live in two arenas, ``DeviceWeights.words`` (int32: every bf16 matrix) and ``DeviceWeights.floats``
  (fp32: every small parameter), at offsets fixed by the config (:func:`arena_layout`); the per-layer tensors are
  views into them. The layered decoder passes the views to its kernels; the persistent megakernel gets the two
  arenas and uses the offsets as compile-time constants (two kernel arguments instead of ~200). Every array starts
  on a 256-byte boundary (16-byte vector loads need 16).

Decode state (the same contents as :class:`reference.state.DecodeState`, in flat stacked buffers):

* ``conv``  fp32 [n_linear, C, K-1]      the conv's last K-1 inputs per DeltaNet layer (oldest first)
* ``rec``   fp32 [n_linear, Hv, Dk, Dv]  the DeltaNet state per layer
* ``k_cache``, ``v_cache`` bf16 [n_full, Hkv, capacity, Dh]  keys after k_norm and RoPE, values
* ``length`` tokens seen; also mirrored in the device int32 ``position`` buffer so a captured CUDA graph can
  read it.

The megakernel stage reuses this layout unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from reference.config import LINEAR, Qwen35Config
from reference.state import ContextTooLongError, DecodeState

from .launch import as_kernel_array, halves, words


class UnsupportedConfigError(ValueError):
    """A config the kernels were not written for (the message names the field)."""


def check_supported(config: Qwen35Config) -> None:
    """Refuse configs the Numba kernels do not implement, naming the field."""
    c = config
    problems = []
    if c.hidden_act != "silu":
        problems.append(f"hidden_act={c.hidden_act!r} (the kernels implement SiLU only)")
    if c.attention_bias:
        problems.append("attention_bias=true (the kernels implement bias-free projections only)")
    for name, value in (("hidden_size", c.hidden_size), ("intermediate_size", c.intermediate_size),
                        ("linear_value_head_dim * linear_num_value_heads", c.value_dim),
                        ("head_dim * num_attention_heads", c.head_dim * c.num_attention_heads)):
        if value % 8:
            problems.append(f"{name}={value} is not a multiple of 8 (matvec rows are read 16 bytes at a time)")
    if problems:
        raise UnsupportedConfigError("config not supported by the Numba kernels: " + "; ".join(problems))


ALIGN_WORDS = 64  # 256 bytes


def _align(n: int) -> int:
    return -(-n // ALIGN_WORDS) * ALIGN_WORDS


@dataclass(frozen=True)
class ArenaLayout:
    """Where every weight lives in the two arenas (offsets in elements: int32 words / fp32 floats).

    Layers of one kind share a shape, so they are stacked at a fixed stride: the DeltaNet layer with linear index
    ``j`` has its ``in_proj`` at ``lin_in + j * lin_stride`` (words), its conv taps at ``conv_w + j * conv_stride``
    (floats), and so on; layer ``i``'s MLP ``gate`` at ``mlp_gate + i * mlp_stride``. ``lm_head == embed`` when the
    embedding is tied."""

    words: int
    floats: int
    embed: int
    lm_head: int
    mlp_gate: int
    mlp_up: int
    mlp_down: int
    mlp_stride: int
    lin_in: int
    lin_out: int
    lin_stride: int
    att_qkv: int
    att_o: int
    att_stride: int
    # floats
    input_norm: int
    post_norm: int
    norm_stride: int
    final_norm: int
    inv_freq: int
    conv_w: int
    conv_stride: int
    A_log: int
    dt_bias: int
    gated_norm: int
    lin_small_stride: int
    q_norm: int
    k_norm: int
    att_small_stride: int


def arena_layout(config: Qwen35Config) -> ArenaLayout:
    """The arena offsets of a config (see :class:`ArenaLayout`)."""
    c = config
    D, F = c.hidden_size, c.intermediate_size
    n_lin, n_full, L = len(c.linear_layers), len(c.full_layers), c.num_hidden_layers
    words = lambda rows, k: _align(rows * k // 2)  # noqa: E731
    w = 0
    embed = w
    w += words(c.vocab_size, D)
    lm_head = embed
    if not c.tie_word_embeddings:
        lm_head = w
        w += words(c.vocab_size, D)
    mlp_gate, mlp_up, mlp_down = 0, words(F, D), 2 * words(F, D)
    mlp_stride = mlp_down + words(D, F)
    mlp_base, w = w, w + L * mlp_stride
    rows_in = c.conv_dim + c.value_dim + 2 * c.linear_num_value_heads
    lin_in, lin_out = 0, words(rows_in, D)
    lin_stride = lin_out + words(D, c.value_dim)
    lin_base, w = w, w + n_lin * lin_stride
    hq = c.num_attention_heads * c.head_dim
    att_qkv, att_o = 0, words(2 * hq + 2 * c.num_key_value_heads * c.head_dim, D)
    att_stride = att_o + words(D, hq)
    att_base, w = w, w + n_full * att_stride
    f = 0
    norm_stride = _align(D)
    input_norm, f = f, f + L * norm_stride
    post_norm, f = f, f + L * norm_stride
    final_norm, f = f, f + norm_stride
    inv_freq, f = f, f + _align(max(1, c.rotary_dim // 2))
    conv_stride = _align(c.conv_dim * c.linear_conv_kernel_dim)
    conv_w, f = f, f + n_lin * conv_stride
    Hv = c.linear_num_value_heads
    a_log, dt_bias, gated = 0, _align(Hv), 2 * _align(Hv)
    lin_small_stride = gated + _align(c.linear_value_head_dim)
    lin_small, f = f, f + n_lin * lin_small_stride
    att_small_stride = 2 * _align(c.head_dim)
    att_small, f = f, f + n_full * att_small_stride
    return ArenaLayout(
        words=max(w, ALIGN_WORDS), floats=max(f, ALIGN_WORDS), embed=embed, lm_head=lm_head,
        mlp_gate=mlp_base + mlp_gate, mlp_up=mlp_base + mlp_up, mlp_down=mlp_base + mlp_down, mlp_stride=mlp_stride,
        lin_in=lin_base + lin_in, lin_out=lin_base + lin_out, lin_stride=lin_stride,
        att_qkv=att_base + att_qkv, att_o=att_base + att_o, att_stride=att_stride,
        input_norm=input_norm, post_norm=post_norm, norm_stride=norm_stride, final_norm=final_norm,
        inv_freq=inv_freq, conv_w=conv_w, conv_stride=conv_stride, A_log=lin_small + a_log,
        dt_bias=lin_small + dt_bias, gated_norm=lin_small + gated, lin_small_stride=lin_small_stride,
        q_norm=att_small, k_norm=att_small + _align(c.head_dim), att_small_stride=att_small_stride)


@dataclass
class LayerWeights:
    kind: str
    input_norm: torch.Tensor  # fp32 [D]
    post_norm: torch.Tensor  # fp32 [D]
    gate: torch.Tensor  # bf16 [F, D]
    up: torch.Tensor  # bf16 [F, D]
    down: torch.Tensor  # bf16 [D, F]
    # DeltaNet
    in_proj: torch.Tensor | None = None  # bf16 [C + 2*Hv + Hv*Dv, D]: qkv ; z ; b ; a
    conv_w: torch.Tensor | None = None  # fp32 [C, K]
    A_log: torch.Tensor | None = None  # fp32 [Hv]
    dt_bias: torch.Tensor | None = None  # fp32 [Hv]
    gated_norm: torch.Tensor | None = None  # fp32 [Dv]
    out_proj: torch.Tensor | None = None  # bf16 [D, Hv*Dv]
    # attention
    qkv: torch.Tensor | None = None  # bf16 [2*Hq*Dh + 2*Hkv*Dh, D]
    q_norm: torch.Tensor | None = None  # fp32 [Dh]
    k_norm: torch.Tensor | None = None  # fp32 [Dh]
    o_proj: torch.Tensor | None = None  # bf16 [D, Hq*Dh]
    k: dict = field(default_factory=dict)  # kernel-array views, filled by DeviceWeights


class DeviceWeights:
    """All weights on the kernel device (GPU, or CPU under the simulator), in kernel layout: two arenas
    (``words``, ``floats``; offsets in ``layout``) and per-layer views into them (``layers``, ``embed``, ...)."""

    def __init__(self, config: Qwen35Config, weights: dict[str, torch.Tensor], device: torch.device,
                 down_transposed: bool = False, out_transposed: bool = False):
        """``down_transposed``: each MLP's down projection stored as its transpose [F, D] (same words, same
        offset; ``layers[i].down`` is then a [D, F] view of it), so a block's share of the intermediate
        dimension is one contiguous run (the persistent kernel's ``fused_down``). The layered kernels need the
        plain layout: their kernel views skip such a matrix. ``out_transposed``: the same for each DeltaNet layer's
        out_proj ([value_dim, D]; the persistent kernel's ``fused_out``)."""
        check_supported(config)
        self.config = c = config
        self.layout = lay = arena_layout(config)
        self.words = torch.zeros(lay.words, dtype=torch.int32, device=device)
        self.floats = torch.zeros(lay.floats, dtype=torch.float32, device=device)
        def bf16(offset: int, t: torch.Tensor) -> torch.Tensor:
            """Copy ``t`` (rounded to bf16) into the word arena at ``offset``; return the bf16 view there."""
            rows, k = t.shape
            view = self.words[offset : offset + rows * k // 2].view(torch.bfloat16).view(rows, k)
            view.copy_(t.to(device=device, dtype=torch.bfloat16))
            return view

        def f32(offset: int, t: torch.Tensor, shape=None) -> torch.Tensor:
            t = t.to(device=device, dtype=torch.float32).reshape(shape or t.shape)
            view = self.floats[offset : offset + t.numel()].view(t.shape)
            view.copy_(t)
            return view

        self.embed = bf16(lay.embed, weights["embed_tokens.weight"])
        tied = weights["lm_head.weight"] is weights["embed_tokens.weight"]
        if tied != (lay.lm_head == lay.embed):
            raise UnsupportedConfigError(
                f"tie_word_embeddings={c.tie_word_embeddings} but the checkpoint's lm_head is "
                f"{'tied to' if tied else 'separate from'} the embedding")
        self.lm_head = self.embed if tied else bf16(lay.lm_head, weights["lm_head.weight"])
        self.final_norm = f32(lay.final_norm, weights["norm.weight"])
        self.inv_freq = f32(lay.inv_freq, 1.0 / (config.rope_theta ** (
            torch.arange(0, config.rotary_dim, 2).float() / config.rotary_dim)))
        linear_index = {layer: j for j, layer in enumerate(c.linear_layers)}
        full_index = {layer: j for j, layer in enumerate(c.full_layers)}
        self.layers: list[LayerWeights] = []
        for i, kind in enumerate(config.layer_types):
            p = f"layers.{i}."
            m = i * lay.mlp_stride
            lw = LayerWeights(
                kind=kind,
                input_norm=f32(lay.input_norm + i * lay.norm_stride, weights[p + "input_layernorm.weight"]),
                post_norm=f32(lay.post_norm + i * lay.norm_stride, weights[p + "post_attention_layernorm.weight"]),
                gate=bf16(lay.mlp_gate + m, weights[p + "mlp.gate_proj.weight"]),
                up=bf16(lay.mlp_up + m, weights[p + "mlp.up_proj.weight"]),
                down=(bf16(lay.mlp_down + m, weights[p + "mlp.down_proj.weight"].t()).t() if down_transposed
                      else bf16(lay.mlp_down + m, weights[p + "mlp.down_proj.weight"])),
            )
            if kind == LINEAR:
                a = p + "linear_attn."
                j = linear_index[i]
                lw.in_proj = bf16(lay.lin_in + j * lay.lin_stride, torch.cat(
                    [weights[a + n + ".weight"] for n in ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a")]))
                conv = weights[a + "conv1d.weight"]
                lw.conv_w = f32(lay.conv_w + j * lay.conv_stride, conv, (conv.shape[0], -1))
                s = j * lay.lin_small_stride
                lw.A_log = f32(lay.A_log + s, weights[a + "A_log"])
                lw.dt_bias = f32(lay.dt_bias + s, weights[a + "dt_bias"])
                lw.gated_norm = f32(lay.gated_norm + s, weights[a + "norm.weight"])
                w_out = weights[a + "out_proj.weight"]
                lw.out_proj = (bf16(lay.lin_out + j * lay.lin_stride, w_out.t()).t() if out_transposed
                               else bf16(lay.lin_out + j * lay.lin_stride, w_out))
            else:
                a = p + "self_attn."
                j = full_index[i]
                lw.qkv = bf16(lay.att_qkv + j * lay.att_stride,
                              torch.cat([weights[a + n + ".weight"] for n in ("q_proj", "k_proj", "v_proj")]))
                s = j * lay.att_small_stride
                lw.q_norm = f32(lay.q_norm + s, weights[a + "q_norm.weight"])
                lw.k_norm = f32(lay.k_norm + s, weights[a + "k_norm.weight"])
                lw.o_proj = bf16(lay.att_o + j * lay.att_stride, weights[a + "o_proj.weight"])
            lw.k = _kernel_views(lw)
            self.layers.append(lw)
        self.k = {
            "embed": as_kernel_array(words(self.embed).view(-1)),
            "lm_head": as_kernel_array(words(self.lm_head).view(-1)),
            "final_norm": as_kernel_array(self.final_norm),
            "inv_freq": as_kernel_array(self.inv_freq),
            "words": as_kernel_array(self.words),
            "floats": as_kernel_array(self.floats),
        }

    def nbytes(self) -> int:
        """Bytes of weights (the arenas' payload, padding excluded)."""
        seen, total = set(), 0
        for t in [self.embed, self.lm_head, self.final_norm, self.inv_freq] + [
                v for lw in self.layers for v in vars(lw).values() if isinstance(v, torch.Tensor)]:
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
        return total


def _kernel_views(lw: LayerWeights) -> dict:
    out = {}
    for name, t in vars(lw).items():
        if not isinstance(t, torch.Tensor) or not t.is_contiguous():
            continue  # a transposed view (``down_transposed``, ``out_transposed``): no layered kernel reads it
        out[name] = as_kernel_array(words(t).view(-1) if t.dtype == torch.bfloat16 else t)
    return out


class DeviceState:
    """The decode state in stacked device buffers (see the module docstring)."""

    def __init__(self, config: Qwen35Config, device: torch.device, capacity: int):
        c = config
        if capacity > c.max_position_embeddings:
            raise ContextTooLongError(f"context too long: capacity {capacity} exceeds max_position_embeddings = "
                                      f"{c.max_position_embeddings}")
        self.config, self.capacity, self.length = c, capacity, 0
        self.linear_index = {layer: j for j, layer in enumerate(c.linear_layers)}
        self.full_index = {layer: j for j, layer in enumerate(c.full_layers)}
        n_lin, n_full = len(c.linear_layers), len(c.full_layers)
        self.conv = torch.zeros(n_lin, c.conv_dim, c.linear_conv_kernel_dim - 1, device=device)
        self.rec = torch.zeros(n_lin, c.linear_num_value_heads, c.linear_key_head_dim, c.linear_value_head_dim,
                               device=device)
        shape = (n_full, c.num_key_value_heads, capacity, c.head_dim)
        self.k_cache = torch.zeros(shape, dtype=torch.bfloat16, device=device)
        self.v_cache = torch.zeros(shape, dtype=torch.bfloat16, device=device)
        self.position = torch.zeros(1, dtype=torch.int32, device=device)  # == length, for graph replays
        self.k = {
            "conv": [as_kernel_array(self.conv[j]) for j in range(n_lin)],
            "rec": [as_kernel_array(self.rec[j]) for j in range(n_lin)],
            "k_cache": [as_kernel_array(halves(self.k_cache[j])) for j in range(n_full)],
            "v_cache": [as_kernel_array(halves(self.v_cache[j])) for j in range(n_full)],
            "position": as_kernel_array(self.position),
        }

    def check_room(self, extra: int = 1) -> None:
        if self.length + extra > self.capacity:
            raise ContextTooLongError(
                f"context too long: {self.length + extra} positions exceed this decoder's KV-cache capacity "
                f"{self.capacity} (pass a larger max_context when loading, up to max_position_embeddings = "
                f"{self.config.max_position_embeddings})")

    def load_reference(self, ref: DecodeState) -> None:
        """Copy a reference DecodeState (e.g. after a reference prefill) into these buffers."""
        if ref.length > self.capacity:
            raise ContextTooLongError(f"context too long: a state of {ref.length} positions does not fit this "
                                      f"decoder's KV-cache capacity {self.capacity}")
        for layer, j in self.linear_index.items():
            self.conv[j].copy_(ref.conv[layer].float())
            self.rec[j].copy_(ref.recurrent[layer].float())
        for layer, j in self.full_index.items():
            self.k_cache[j, :, : ref.length].copy_(ref.k_cache[layer][:, : ref.length].to(torch.bfloat16))
            self.v_cache[j, :, : ref.length].copy_(ref.v_cache[layer][:, : ref.length].to(torch.bfloat16))
        self.length = ref.length
        self.position.fill_(ref.length)

    def to_reference(self) -> DecodeState:
        """The same contents as a reference DecodeState (for comparisons), on the CPU."""
        s = DecodeState(length=self.length)
        for layer, j in self.linear_index.items():
            s.conv[layer] = self.conv[j].cpu().clone()
            s.recurrent[layer] = self.rec[j].cpu().clone()
        for layer, j in self.full_index.items():
            s.k_cache[layer] = self.k_cache[j, :, : self.length].cpu().clone()
            s.v_cache[layer] = self.v_cache[j, :, : self.length].cpu().clone()
        return s


__all__ = ["ArenaLayout", "DeviceState", "DeviceWeights", "LayerWeights", "UnsupportedConfigError",
           "arena_layout", "check_supported"]
