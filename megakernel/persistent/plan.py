"""The persistent megakernel's plan: every size, offset and launch choice, fixed before anything compiles.

A megakernel is compiled for one model shape: the plan turns a ``Qwen35Config`` (plus the KV-cache capacity, the
block size and the grid) into Python integers that the kernel factory closes over, so they are compile-time
constants in the kernel (loop bounds, offsets into the weight and scratch arenas). Making the plan is also where
a config the kernel cannot run is refused, before any launch, with a message naming the field.

Scratch arena (fp32, one kernel argument; offsets in floats, each 256-byte aligned):

==============  =============================  ==========================================================
``h``           [D]                            the residual stream
``proj_lin``    [C + Hv Dv + 2 Hv]             DeltaNet in_proj output: qkv | z | b | a
``o_lin``       [Hv Dv]                        S^T q per value head (before the gated norm)
``proj_att``    [2 Hq Dh + 2 Hkv Dh]           attention q|gate, k, v
``q``           [Hq, Dh]                       queries after norm and RoPE
``gate``        [Hq Dh]                        the output gate (pre-sigmoid)
``attn_out``    [Hq Dh]                        attention output times sigmoid(gate): o_proj's input
``partial_ml``  [Hq, S, 2]                     per split: running max and sum
``partial_o``   [Hq, S, Dh]                    per split: unnormalised output
``act``         [F]                            silu(gate) * up: down_proj's input
``logits``      [V]                            the last step's logits
==============  =============================  ==========================================================

Control block (int32, host <-> kernel): see ``CTL_*``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from reference.config import LINEAR, Qwen35Config

from ..kernels import attention as attn
from ..kernels import deltanet as dn
from ..kernels.matvec import MAX_PARTS, SHARED_LIMIT_BYTES, WARP, min_parts
from ..layout import UnsupportedConfigError, arena_layout, check_supported

# control block (int32)
CTL_TOKEN = 0        # in: the token fed at the first step (-1: the previous launch's last token, CTL_LAST)
CTL_STEPS = 1        # in: steps to run (N tokens per launch)
CTL_EOS = 2          # in: stop after this token (-1: never)
CTL_SAMPLE = 3       # in: 0 greedy, 1 Gumbel-max sampling at temperature 1/inv_t
CTL_SEED_LO = 4      # in: sampling seed, low / high 32 bits
CTL_SEED_HI = 5
CTL_INV_T = 6        # in: 1/temperature as float32 bits
CTL_TRACE = 7        # in: 1 = write the hidden state after every layer to ``trace`` (debug / bisect)
CTL_DONE = 8         # out: steps done (< CTL_STEPS when EOS stopped it)
CTL_LAST = 9         # out: the last token chosen
CTL_BARRIERS = 10    # out: grid barriers each block passed (checked against the schedule)
CTL_BAR_COUNT = 11   # kernel: the counter barrier's arrivals (0 between barriers, so 0 at every launch)
CTL_BAR_GEN = 12     # kernel: the counter barrier's generation (bumped by the last block to arrive)
CTL_ARRIVALS = 13    # kernel: the monotonic barrier's arrivals (mod 2^32; the host zeroes it before a run)
CTL_BAR_BASE = 14    # kernel: CTL_ARRIVALS when this launch starts (block 0 writes it when a launch ends)
CTL_LL_BASE = 15     # kernel: flag-in-data tags used by the launches so far (never zeroed: a tag never repeats)
CTL_LEN = 16

ALIGN = 64  # floats: 256 bytes


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


@dataclass(frozen=True)
class Plan:
    config: Qwen35Config
    capacity: int            # KV-cache positions
    threads: int             # block size (every phase)
    blocks: int              # grid size (every block co-resident)
    max_splits: int          # attention splits at full capacity (partials are sized for it)
    G_in: int                # warps per row: in_proj / qkv (K = D)
    G_sw: int                # MLP gate/up row pair (K = D)
    G_out: int               # DeltaNet out_proj (K = Hv Dv)
    G_o: int                 # attention o_proj (K = Hq Dh)
    G_down: int              # MLP down (K = F)
    G_lm: int                # LM head (K = D)
    cw: int                  # DeltaNet state columns per work item
    workspace: int           # float32 elements of dynamic shared memory
    scratch: dict = field(default_factory=dict)   # name -> (offset, size) in the fp32 scratch arena
    scratch_len: int = 0
    ring_pages: int = 0      # version 2+: shared-memory slots of the weight stream
    page_words: int = 0      # version 2+: 32-bit words per slot
    positions_per_split: int = attn.POSITIONS_PER_SPLIT  # attention: cached positions per decode work item
    splits_fit_grid: bool = False  # attention: at most one decode item per block (fewer splits on long contexts)
    desc_pages: int = 0      # ``smem_descs``: a block's page copy descriptors held in (static) shared memory
    producer_threads: int = 0  # ``producer``: a warp beside the ``threads`` consumers that only streams pages

    @property
    def launch_threads(self) -> int:
        """The block size a launch asks for: the consumers, and the producer warp if there is one."""
        return self.threads + self.producer_threads

    @property
    def warps(self) -> int:
        return self.threads // WARP

    @property
    def deltanet_items(self) -> int:
        return self.config.linear_num_value_heads * (self.config.linear_value_head_dim // self.cw)

    @property
    def shared_bytes(self) -> int:
        """Dynamic shared memory per block: the phases' workspace, and the weight ring (+ 128 B to align it)."""
        ring = 4 * self.ring_pages * self.page_words
        return 4 * self.workspace + (ring + 128 if ring else 0)

    def layer_table(self) -> tuple[np.ndarray, np.ndarray]:
        """(kind, slot) per layer: kind 0 DeltaNet / 1 attention, slot = index among layers of that kind."""
        kinds, slots, nl, nf = [], [], 0, 0
        for t in self.config.layer_types:
            if t == LINEAR:
                kinds.append(0)
                slots.append(nl)
                nl += 1
            else:
                kinds.append(1)
                slots.append(nf)
                nf += 1
        return np.array(kinds, dtype=np.int32), np.array(slots, dtype=np.int32)


def _refuse(field_name: str, why: str):
    raise UnsupportedConfigError(f"config not supported by the persistent megakernel: {field_name}: {why}")


def _pick_g(k: int, warps: int, what: str, field_name: str, g_min: int | None = None) -> int:
    g = min_parts(k) if g_min is None else g_min
    if g > warps or warps % g:
        _refuse(field_name, f"{what} rows of K = {k} need G = {g} warps per row, which does not divide the "
                            f"{warps} warps of a block (use larger blocks, threads=)")
    return g


def counter_slots(config: Qwen35Config) -> tuple[int, int]:
    """(first, total): the int32 hand-over counters of a launch (zero between launches): DeltaNet's "last reader",
    one per key head, then from ``first`` the folded attention's decode items counted in (and its combining blocks
    out), one per KV head, then (``head_counter_slot``) the fused out_proj's items counted in, one per value head."""
    first = config.linear_num_key_heads
    return first, first + config.num_key_value_heads + config.linear_num_value_heads


def head_counter_slot(config: Qwen35Config) -> int:
    """The first of the fused out_proj's per-value-head counters (``fused_out``) in the launch's counters."""
    return config.linear_num_key_heads + config.num_key_value_heads


def make_plan(config: Qwen35Config, capacity: int, threads: int, blocks: int,
              positions_per_split: int = attn.POSITIONS_PER_SPLIT) -> Plan:
    """The plan for a config (refuses what the kernel cannot run, naming the field). ``positions_per_split``:
    cached positions per attention-decode work item (fewer: more items, shorter per-item chains)."""
    c = config
    check_supported(c)
    if threads % WARP or not WARP <= threads <= 1024:
        raise ValueError(f"threads = {threads}: a block must be a multiple of 32 threads, at most 1024")
    if blocks < 1:
        raise ValueError(f"blocks = {blocks}: the grid needs at least one block")
    if not 1 <= capacity <= c.max_position_embeddings:
        raise ValueError(f"capacity {capacity} must be in [1, max_position_embeddings = "
                         f"{c.max_position_embeddings}]")
    if c.vocab_size >= 1 << 31:
        _refuse("vocab_size", f"{c.vocab_size} does not fit the 32-bit argmax index")
    warps = threads // WARP
    D, F = c.hidden_size, c.intermediate_size
    Hv, Dk = c.linear_num_value_heads, c.linear_key_head_dim
    Hq, Hkv, Dh = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    G_in = _pick_g(D, warps, "in_proj/qkv", "hidden_size")
    G_sw = _pick_g(D, warps, "MLP gate/up", "hidden_size", g_min=2 * min_parts(D))
    G_out = _pick_g(c.value_dim, warps, "DeltaNet out_proj", "linear_num_value_heads * linear_value_head_dim")
    G_o = _pick_g(Hq * Dh, warps, "o_proj", "num_attention_heads * head_dim")
    G_down = _pick_g(F, warps, "MLP down", "intermediate_size")
    G_lm = G_in
    if warps > MAX_PARTS:
        raise ValueError(f"threads = {threads}: at most {MAX_PARTS} warps per block")
    # DeltaNet: the layered kernel's launch rules with this block size
    has_linear = LINEAR in c.layer_types
    cw = 1
    ws_dn = 0
    if has_linear:
        try:
            cw, _ = dn.deltanet_launch_config(*dn.deltanet_sizes(c), threads=threads)
        except ValueError as e:
            _refuse("linear_* (DeltaNet sizes)", str(e).replace("deltanet_step: ", ""))
        ws_dn = dn.deltanet_workspace(Dk, cw, threads)
    # attention: the layered kernels' limits (registers per lane in attn_decode)
    ws_att = 0
    max_splits = attn.attention_splits(capacity, positions_per_split)
    if c.full_layers:
        try:
            attn._check_sizes(*attn.attention_sizes(c))
        except ValueError as e:
            _refuse("attention sizes", str(e).replace("attention: ", ""))
        group, per_lane = Hq // Hkv, -(-Dh // 32)
        if group > attn.MAX_GROUP or group * per_lane > attn.MAX_LANE_VALUES:
            _refuse("num_attention_heads / num_key_value_heads, head_dim",
                    f"{group} query heads per KV head of head_dim {Dh}: attn_decode keeps {group} x {per_lane} "
                    f"values per lane in registers (at most {attn.MAX_GROUP} heads, {attn.MAX_LANE_VALUES} values)")
        # fold_attention stages the group's G queries (G Dh) at the start of the decode workspace, which is larger
        ws_att = max(attn.decode_workspace(Hq, Hkv, Dh, warps), group * Dh, attn.combine_workspace())
    staged = [D, c.value_dim if has_linear else 0]  # xs of the norm / gated prologues
    staged += [k for k, g in ((Hq * Dh, G_o), (F, G_down)) if g == 1]  # matvec_rows with x in shared
    workspace = max(staged + [ws_dn, ws_att, 32])
    static = 4 * (2 * MAX_PARTS + 32 + 1) + 8 * 32
    if 4 * workspace + static > SHARED_LIMIT_BYTES:
        _refuse("hidden_size / head sizes", f"the phases need {4 * workspace + static} bytes of shared memory per "
                                            f"block (limit {SHARED_LIMIT_BYTES})")
    sizes = {
        "h": D,
        "proj_lin": c.conv_dim + c.value_dim + 2 * Hv,
        "o_lin": c.value_dim,
        "proj_att": 2 * Hq * Dh + 2 * Hkv * Dh,
        "q": Hq * Dh,
        "gate": Hq * Dh,
        "attn_out": Hq * Dh,
        "partial_ml": Hq * max_splits * 2,
        "partial_o": Hq * max_splits * Dh,
        "act": F,
        "logits": c.vocab_size,
        "ssq": Hv * (c.linear_value_head_dim // cw) if has_linear else 1,  # fused_out: each item's sum of o^2
    }
    scratch, off = {}, 0
    for name, n in sizes.items():
        scratch[name] = (off, n)
        off += _align(n)
    arena_layout(c)  # the weight arena must exist for this config too
    return Plan(config=c, capacity=capacity, threads=threads, blocks=blocks, max_splits=max_splits, G_in=G_in,
                G_sw=G_sw, G_out=G_out, G_o=G_o, G_down=G_down, G_lm=G_lm, cw=cw, workspace=workspace,
                scratch=scratch, scratch_len=off, positions_per_split=positions_per_split)


__all__ = ["Plan", "make_plan", "counter_slots", "head_counter_slot",
           "CTL_TOKEN", "CTL_STEPS", "CTL_EOS", "CTL_SAMPLE", "CTL_SEED_LO",
           "CTL_SEED_HI", "CTL_INV_T", "CTL_TRACE", "CTL_DONE", "CTL_LAST", "CTL_BARRIERS", "CTL_BAR_COUNT",
           "CTL_BAR_GEN", "CTL_ARRIVALS", "CTL_BAR_BASE", "CTL_LL_BASE", "CTL_LEN"]
