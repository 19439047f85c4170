"""Persistent megakernel, version 2: the weights stream through shared memory, ahead of the barriers.

What changes from version 1, and why. Version 1 loads each phase's weights into registers after the grid barrier
that opens the phase, so at each of the 134 barriers per token the memory system drains: the slowest warp of the
last phase finishes, everybody waits, then every warp starts its loads cold, and with the kernel at 255 registers
(the maximum over all phases) an SM holds only 8 warps, too few loads in flight to reach full bandwidth anyway
(H100: 29 % of the floor, slower than the layered CUDA graph). But the weights never depend on the activations:
they can be fetched before the activations are ready.

So in version 2 every block owns a contiguous range of rows of every matrix (``megakernel.persistent.pages``),
and thread 0 streams those rows, page after page, through a ring of ``ring_pages`` shared-memory slots with the
copy engine (``cp.async.bulk``, one instruction per page; ``megakernel.persistent.tma``), completing on one
``mbarrier`` per slot. The stream runs ahead of the computation by up to the ring's size (192 KB per SM on an
H100, ~8 us of streaming): while the block computes a page, waits at a grid barrier, or runs a phase without
weights (the DeltaNet recurrence, attention), the next pages are already on their way. A page is consumed by
all warps (one row per warp at a time, x staged in shared memory in the split layout, ``dot_row_split``), then the
block synchronises and thread 0 refills the slot with the next page of the table. Memory-level parallelism no
longer comes from warps and registers, so one block of 256 threads per SM is enough, whatever the register
count of the attention phase.

The phases, their order and the barriers are version 1's (134 per 0.8B token, ``schedule``); the mixer phases run
the same device bodies (``phases.make_mixers``). The matvec phases no longer use the layered kernels' global-load
skeleton (``matvec_rows``): their rows come from the ring, but the dot product (``dot_row_split``), the norm and
gated-norm prologues (``stage_norm``, ``stage_gated``, ``stage_split``) and the argmax (``argmax_key``,
``publish_block_best``) are the same functions.

Memory ordering: the grid barriers as in version 1; a slot is rewritten only after a ``syncthreads`` (every warp
has read it) and a ``fence.proxy.async`` (the copy engine's writes are ordered after the threads' reads); a page is
read only after its mbarrier phase completed (the copy engine's writes are then visible to the block).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from numba import cuda
from numba.cuda import float32, int32, int64, uint32

from megakernel import device as D
from reference.config import LINEAR

from ..kernels import attention as attn
from ..kernels import deltanet as dn
from ..kernels import lm_head as lmh
from ..kernels.embedding import embed_rows
from ..kernels.fused_matvec import (dot2_row_split, dot4_row_split, dot_row_split, stage_gated, stage_norm,
                                    xreg_dots)
from ..kernels.matvec import WARP, stage_split
from ..launch import SIMULATOR, as_kernel_array
from . import pages as PG
from . import plan as P
from . import split_down as SD
from . import mma as MM
from . import handoff as HO
from . import tma, warp_roles
from .phases import (Offsets, close_launch, make_barrier, make_barrier_close, make_barrier_count,
                     make_barrier_handle, make_counter_halves, make_deltanet_item, make_mixers, make_prefetchers,
                     seed_bits, stamp)

VERSION = 2
DESCRIPTION = "weights streamed through a shared-memory ring by the copy engine, ahead of the barriers"

RING_PAGES = 6
PAGE_WORDS = 8192            # 32 KB pages
SIM_RING_PAGES = 3
XREG_MAX_PIECES = 4          # ``xregs``: x in registers for rows of up to 4 x 32 pieces (32 floats a lane)
SMEM_PER_BLOCK = 227 * 1024  # H100: dynamic + static shared memory one block may use (after opting in)


DESC_PAGES = 1024            # ``smem_descs``: copy descriptors a block keeps in shared memory (16 B each)


def configure(plan, ring: int | None = None, page_kb: int | None = None, fused_down: bool = False,
              fused_out: bool = False, smem_descs: bool = False, producer: bool = False, producer_regs: int = 0,
              combine_cols: int = 0, **_options):
    """The plan with the ring's size: as many 32 KB pages as fit next to the workspace (at most ``RING_PAGES``);
    in the simulator 3 small pages (two rows of the widest phase each), so rows, pages and ring wrap-around are
    all exercised on a tiny model. ``ring`` / ``page_kb``: another ring (measured variants, NOTES.md).
    ``fused_down``: a workspace with room for the block's rows of act after x (``D + F`` floats); ``fused_out``:
    room for the gated values of out_proj's input there too (``D + value_dim``); ``smem_descs``: room for
    ``DESC_PAGES`` copy descriptors in static shared memory (``desc_pages``); ``producer``: a producer warp beside
    the block's threads (``producer_threads``; with ``producer_regs`` a warpgroup of 4 warps); ``combine_cols``: room
    for an attention-combine item's partials (``attention.combine_cols_workspace``)."""
    c = plan.config
    plan = dataclasses.replace(plan, producer_threads=(4 * WARP if producer_regs else WARP) if producer else 0)
    if fused_down:
        plan = dataclasses.replace(plan, workspace=max(plan.workspace, c.hidden_size + c.intermediate_size))
    if fused_out:
        plan = dataclasses.replace(plan, workspace=max(plan.workspace, out_gate_offset(plan) + c.value_dim))
    if combine_cols and c.full_layers:
        cols = attn.combine_columns(c.head_dim, plan.threads, combine_cols)
        plan = dataclasses.replace(plan, workspace=max(plan.workspace, attn.combine_cols_workspace(cols)))
    # (an int: that capacity instead; the tests give a small one so the fallback to global memory runs)
    desc_pages = (DESC_PAGES if smem_descs is True else int(smem_descs)) if smem_descs else 0
    plan = dataclasses.replace(plan, desc_pages=desc_pages)
    widest = max(ph.k // 2 * (2 if ph.kind == PG.K_SWIGLU else 1) for ph in PG.rows_phases(c, fused_down, fused_out))
    if SIMULATOR:
        words = -(-2 * widest // 4) * 4
        return dataclasses.replace(plan, ring_pages=SIM_RING_PAGES, page_words=words)
    words = max(page_kb * 256 if page_kb else PAGE_WORDS, -(-widest // 4) * 4)
    static = 2048 + (8 * c.hidden_size if fused_down else 0) + 16 * plan.desc_pages  # parts, scratch, keys,
    # flag, mbarriers (rounded up), with fused_down the stage of fd_bulk, with smem_descs the descriptors, with
    # producer the empty mbarriers
    static += 8 * (RING_PAGES + 4) if producer else 0
    pages = (SMEM_PER_BLOCK - static - 4 * plan.workspace - 128) // (4 * words)
    pages = min(ring or RING_PAGES, pages)
    if pages < 2:
        raise P.UnsupportedConfigError(f"config not supported by persistent kernel v2: hidden/MLP sizes leave room "
                                       f"for {pages} weight pages of {4 * words} B in shared memory (need 2)")
    return dataclasses.replace(plan, ring_pages=pages, page_words=words)


def out_gate_offset(plan) -> int:
    """``fused_out``: where the gated values of out_proj's input sit in the workspace (after x and after the
    DeltaNet item's own workspace, both of which are in use while they are)."""
    c = plan.config
    ws_dn = dn.deltanet_workspace(c.linear_key_head_dim, plan.cw, plan.threads)
    return max(c.hidden_size, ws_dn)


def ll_offset(config, fd_reps: int = 1, fd_stride: int = 1, fused_out: bool = False,
              ll_residual: bool = False) -> int:
    """``ll_inproj``: where in ``hacc`` (int64) the input projection's flag-in-data words start, after the residual
    accumulator's words (with ``ll_residual``, after the first of its two regions: ``residual_regions``)."""
    if ll_residual:
        return 2 * config.hidden_size
    return config.hidden_size * (fd_reps + int(fused_out)) * fd_stride


def ll_words(config) -> int:
    """``ll_inproj``: one flag-in-data word per row of a DeltaNet input projection."""
    return config.conv_dim + config.value_dim + 2 * config.linear_num_value_heads


def residual_regions(config, ll_inproj: bool) -> tuple[int, int]:
    """``ll_residual``: where in ``hacc`` its two regions start. Region ``p`` is the MLP accumulator of the layers
    of parity ``p`` (``hidden`` int64 words) followed by the residual stream as flag-in-data words written by the
    residual phase of the layer after (``hidden`` more); the input projection's words lie between them."""
    lin = ll_inproj and LINEAR in config.layer_types
    return 0, 2 * config.hidden_size + (-(-ll_words(config) // 2) * 2 if lin else 0)


def hacc_words(config, fd_reps: int = 1, fd_stride: int = 1, fused_out: bool = False, ll_inproj: bool = False,
               ll_residual: bool = False) -> int:
    """The int64 words ``hacc`` needs: the accumulator, then (``ll_inproj``) the input projection's words; with
    ``ll_residual`` its two regions around them."""
    if ll_residual:
        return residual_regions(config, ll_inproj)[1] + 2 * config.hidden_size
    words = ll_offset(config, fd_reps, fd_stride, fused_out)
    if ll_inproj and LINEAR in config.layer_types:
        words += ll_words(config)
    return words


def kernel_key(plan) -> tuple:
    return (plan.config, plan.capacity, plan.threads, plan.ring_pages, plan.page_words, plan.positions_per_split,
            plan.splits_fit_grid, plan.workspace, plan.desc_pages, plan.producer_threads)


_BUILT: dict = {}


OPTIONS = {"out_of_line": False, "l2_ahead": 0, "nocompute": False, "nomixer": False, "prefetch": False,
           "prefetch_late": False, "counter": False, "defer": False, "state_first": False,
           "evict_first": False, "rows_out_of_line": False,
           "paired_rows": False, "l2_keep": False, "nocopy": False, "warp_release": False,
           "monotonic": False, "max_registers": 0,
           "page_pairs": False, "xregs": False, "split_sums": False, "early_residual": False,
           "l2_mixer": 0, "fold_attention": False, "deltanet_out_of_line": False,
           "inline_decode": False, "fused_down": False,
           "deltanet_late_shift": False, "fd_probe": 0, "fd_chunk": 1,
           "fd_reps": 1, "fd_stride": 1, "fd_bulk": False, "fused_out": False,
           "lm_pool": 0, "lineinfo": False, "mixer_twice": False, "lean_calls": False, "count_smem": False,
           "pair_copies": 0, "lean": False, "smem_descs": False,
           "mma_pages": False, "mma_chains": 1, "bar_thread": 0, "deferred_shift": False,
           "combine_batch": 0, "skeleton": 0, "refill_fence": True,
           "packed_descs": False, "producer": False,
           "producer_backoff": 0, "producer_regs": 0, "lto": True,
           "producer_hold": False, "release_stamp": False,
           "producer_throttle": False, "ll_inproj": False,
           "combine_cols": 0, "ll_residual": False, "ll_backoff": 0,
           "ll_together": False}  # measured variants (NOTES.md); the defaults are the kept ones


PLAN_OPTIONS = ("ring", "page_kb")  # read by ``configure`` (they shape the plan, which ``plan_key`` covers)
# (``smem_descs`` shapes the plan too, and the kernel: ``configure`` and ``build`` both take it)


def build(plan_key, plan, barriers: bool = True, profile: bool = False, **options):
    opts = {**OPTIONS, **{k: v for k, v in options.items() if k not in PLAN_OPTIONS}}
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown persistent kernel build option(s) {unknown}: choose from {sorted(OPTIONS)} "
                         f"(and {list(PLAN_OPTIONS)} for the plan)")
    key = (plan_key, barriers, profile, tuple(sorted(opts.items())))
    kernel = _BUILT.get(key)
    if kernel is None:
        kernel = _BUILT[key] = _build(plan, barriers, profile, **opts)
    return kernel


def build_with(defaults: dict):
    """``build`` for a later version: version 2's kernel builder with that version's ``defaults`` switched on (an
    option passed wins)."""

    def build_version(plan_key, plan, barriers: bool = True, profile: bool = False, **options):
        return build(plan_key, plan, barriers, profile, **{**defaults, **options})

    return build_version


def _build(plan, barriers: bool, profile: bool = False, out_of_line: bool = False, l2_ahead: int = 0,
           nocompute: bool = False, nomixer: bool = False, prefetch: bool = False, prefetch_late: bool = False,
           counter: bool = False, defer: bool = False, state_first: bool = False, evict_first: bool = False,
           rows_out_of_line: bool = False, paired_rows: bool = False, l2_keep: bool = False, nocopy: bool = False,
           warp_release: bool = False, monotonic: bool = False, max_registers: int = 0, page_pairs: bool = False,
           xregs: bool = False, split_sums: bool = False, early_residual: bool = False,
           l2_mixer: int = 0, fold_attention: bool = False, deltanet_out_of_line: bool = False,
           inline_decode: bool = False, fused_down: bool = False, deltanet_late_shift: bool = False,
           fd_probe: int = 0, fd_chunk: int = 1, fd_reps: int = 1,
           fd_stride: int = 1, fd_bulk: bool = False, fused_out: bool = False, lm_pool: int = 0,
           lineinfo: bool = False, mixer_twice: bool = False, pair_copies: int = 0, lean: bool = False,
           smem_descs: bool = False, lean_calls: bool = False, count_smem: bool = False, mma_pages: bool = False,
           mma_chains: int = 1, bar_thread: int = 0, deferred_shift: bool = False, combine_batch: int = 0,
           skeleton: int = 0, refill_fence: bool = True, packed_descs: bool = False, producer: bool = False,
           producer_backoff: int = 0, producer_regs: int = 0, lto: bool = True,
           producer_hold: bool = False, release_stamp: bool = False, producer_throttle: bool = False,
           ll_inproj: bool = False, combine_cols: int = 0, ll_residual: bool = False,
           ll_backoff: int = 0, ll_together: int = 0):
    """``out_of_line``: the mixer bodies as real calls (``noinline``: their own register allocation);
    ``l2_ahead``: before each barrier, thread 0 asks the copy engine to prefetch into L2 the next ``l2_ahead``
    pages beyond those already in the ring (so HBM keeps streaming while the block waits or runs a mixer).
    Timing experiments only (wrong results, the token clamped to the vocabulary): ``nocompute`` waits for every
    page but skips its dot products; ``nomixer`` skips the DeltaNet and attention bodies (barriers kept).
    ``prefetch``: the mixers' HBM inputs (DeltaNet state and conv rows, the KV rows to score) into L2 at the start
    of the projection before them (``make_prefetchers``);
    ``prefetch_late``: the same prefetches issued after the block's last page of that projection (before the
    barrier), so they do not delay its pages; ``counter``: the counter barrier instead of ``grid.sync()``
    (``make_barrier``). ``defer``: the slots freed by a mixer's input projection are refilled only after the mixer
    (its HBM reads then do not queue behind those pages); ``state_first``: the DeltaNet body loads its state slab
    first (``deltanet.deltanet_item``); ``evict_first``: the pages' copies with an L2 evict-first policy (the
    weights pass L2 once per token; code, activations, states and KV then stay); ``rows_out_of_line``: one
    out-of-line copy of the matvec consumer for all six call sites (the kernel's code shrinks; with
    ``mma_pages`` one of the tensor-core page loop for its five); ``paired_rows``: a
    warp computes two rows of a page at once (gate with up; rows ``r`` and ``r + warps``: ``dot2_row_split``), the
    same sums in the same order. With ``l2_ahead`` and ``counter`` thread 0 issues the L2 prefetches after its
    block arrived at the barrier, while it waits (with ``grid.sync()`` it must issue them before arriving); they
    carry the copies' evict-first policy unless ``l2_keep``. ``nocopy`` (timing only, wrong results): no page is
    copied (each slot's mbarrier completes at once on stale data), so the profile shows what the kernel costs
    without its weight stream. ``warp_release``: no block-wide barrier per page; each warp leaves a slot on its
    own and the last one out refills it (``release_slot``; not with ``defer``). ``monotonic``: the monotonic
    arrival-counter barrier (``make_barrier``). ``max_registers``: cap the kernel's registers (0: no cap;
    ``tools/ptxas_report.py 5+regs=N`` reports the spills a cap costs). ``page_pairs``: a phase's pages consumed
    two at a time, four rows per warp pass (``quad_rows_pages``: twice the independent sums per lane, one block
    barrier per two pages; each row's sum in the same order). ``xregs``: in the phases whose rows have the hidden
    size (the input projections, gate/up, the LM head: ~80 % of the bytes) each lane keeps its pieces of x in
    registers for the whole phase (``fused_matvec.xreg_dots``; up to 32 floats a lane at the 0.8B's 1024) and
    reads only weights from the ring; the same sums in the same order. ``split_sums``: a warp pass's two rows
    summed in one five-shuffle reduction (``device.warp_sum2``: the first row's sum on lanes 0-15, the second's on
    16-31, the same bits as two ``warp_sum``s) and finished by lanes 0 and 16 together (one argmax key per lane
    instead of two). ``early_residual``: a residual phase's pass loads the rows of h it will add to before its dot
    products, not after (the L2 round trip overlaps them instead of following them). ``l2_mixer``: when a
    DeltaNet or attention mixer starts (no page is consumed until it ends), thread 0 asks for L2 prefetches of the
    next ``l2_mixer`` pages beyond the ring, so HBM keeps streaming while the ring is full. ``fold_attention``: an
    attention layer's prepare, decode and combine in one phase with one grid barrier instead of three
    (``phases.make_folded_attention``: each decode item makes its queries, the last split writes the new key and
    value, the blocks of a KV head's first splits combine its query heads once all its items are in; the same
    bits). ``deltanet_out_of_line``: ``out_of_line`` for the DeltaNet body only; ``inline_decode``: with
    ``out_of_line``, the attention decode body stays inline. ``fused_down``: each MLP in one phase, its down
    projection split over the intermediate dimension and summed into the residual stream's fixed-point
    accumulator (``split_down``; the decoder stores W_down transposed and passes ``hacc``).
    ``deltanet_late_shift``: the DeltaNet body's "last reader" count awaited after its state columns, not before
    (``deltanet.deltanet_item(late_shift=True)``; the same bits). ``fd_probe`` (timing only, wrong results): with
    ``fused_down``, 1 skips the down rows' arithmetic, 2 their atomics, 3 the accumulator in the norms.
    ``fd_chunk``: with ``fused_down``, a block's MLP rows come in whole chunks of this many rows, and each chunk's
    down products are summed in fp32 before one conversion to fixed point (``split_down.down_t_consumer``);
    ``fd_reps``: the accumulator's replicas (each element takes a ``fd_reps``-th of the atomics); ``fd_stride``:
    its elements ``fd_stride`` words apart (spread over more L2 lines); ``fd_bulk``: a block's sums added by the
    copy engine in one bulk reduction (``tma.bulk_reduce_add_u64``) instead of 2 x D/2 atomics from the threads.
    ``fused_out`` (with ``fused_down``): each DeltaNet layer's out_proj in its DeltaNet phase: every item publishes
    its columns' sum of o^2, waits for the other items of its value head (a counter per head), applies the gated
    norm to its columns and adds their share of out_proj (``W_out^T`` rows, one page per item) into ``h_out``; the
    same phase folds the last MLP's accumulator into h (``deltanet_out_phase``). ``lm_pool``: that percentage of
    the LM head's pages (the vocabulary's last) are claimed at run time by whichever blocks are free (``pages
    .lm_pool``): each block's copy thread turns its placeholder pages into pool pages one page ahead (an atomic on
    a counter the page table carries), so the blocks whose stream runs faster take more; the same rows, the same
    bits. ``lineinfo``: the kernel compiled with line information, so Nsight Compute attributes its stall samples
    to Python lines (``tools/ncu_persistent.py``); the same code. ``mixer_twice`` (timing only, wrong results): every
    mixer item runs its body twice in a row, the second time with its code and inputs on the SM.
    ``pair_copies`` (1: the LM head's pages, 2: every phase's; ``pages.page_table(pairs=)`` marks them): the copy
    thread fetches a page and the next one with one copy into two adjacent slots when both are free (an even slot
    and the one after it), so the copy engine moves 64 KB at a time while the consumers still take 32 KB pages:
    the second slot's mbarrier completes at once (its bytes come with the first's), and a pair waits for its
    second slot's readers. ``lean``: the page loops' index arithmetic made cheap, the same pages in the same
    order: a page's ring slot and mbarrier parity carried from page to page instead of ``cursor % R`` and
    ``cursor // R`` (signed 64-bit division by the ring's size on every page), the copy thread's slot and page
    index as 32-bit unsigned remainders, a block's first and last rows of a phase as 32-bit unsigned quotients
    (rows x blocks < 2^32), word offsets shifted instead of floor-divided, a warp's rows walked by a while loop
    (no trip count to divide out), the lane and warp from bit operations, and no per-piece guard where x fills
    every lane's registers (``xreg_dots(full=True)``). ``smem_descs``: each block copies its rows of the page table
    (the copy descriptors) into shared memory when a launch starts, so the copy thread reads the next page's
    descriptor from shared memory instead of global memory (where the load waits behind the weight stream's
    traffic, and every other warp waits for the copy thread at the page's block barrier); a block with more pages
    per step than there is room for (``DESC_PAGES``: grids below ~45 blocks at the 0.8B's size) reads them from
    global memory as before. ``lean_calls``: the out-of-line mixer calls pass each array as its address and shape
    (``noinline.lean_wrapper``) instead of Numba's whole descriptor (~60 parameters a call, most through the
    stack). ``count_smem`` (with ``monotonic``): the grid barriers passed are counted in shared memory, not in a
    value the kernel carries from barrier to barrier (``phases.make_barrier``: version 10's allocation spilled that
    value and reloaded it from local memory before every barrier's arrival). ``mma_pages`` (with ``xregs``): the
    pages of rows with the hidden size (the input projections, gate/up, the LM head) multiplied on the tensor cores
    (``mma.page_mma``: the warps split k, each keeps its k-span of x as bf16 hi/lo fragments in registers, and after
    the page's block barrier the upper half of the warps finish the rows from the warps' partials); other bits than
    without (the tensor cores' fp32 sums), the same bits on any grid. Where the hidden size is not a multiple of 16
    or exceeds 128 per warp, those pages keep ``xregs``' consumer. ``mma_chains``: independent accumulator chains
    per row group in a warp's products (``mma.page_mma(chains=)``: shorter dependent chains, other bits).
    ``bar_thread`` (with ``monotonic``): the thread of each block that arrives at the grid barriers and polls them
    (``phases.make_barrier(arriver=)``), not the ring's copy thread 0. ``deferred_shift``: the DeltaNet items do
    not shift the q/k conv state (no "last reader" fence and atomic on their critical path,
    ``deltanet.deltanet_item(deferred_shift=True)``); the out_proj phase after them does, its loads in flight with
    those of the gated norm's staging, its stores right after it (``deltanet.qk_conv_shift``); the same bits.
    ``combine_batch``: an attention-combine thread's partials loaded that many at a time (0: ``attention
    .COMBINE_BATCH``); at least the splits in use, one round trip; the same bits. ``combine_cols`` (with a plan
    configured with it): the attention combine over items of that many columns of a head, every split's partials
    loaded at once (``attention.combine_cols_item``); the same bits. ``skeleton`` (timing only, with
    ``nocopy`` and ``nocompute``: what each part of a page's bookkeeping costs): a bit mask of what the page loops
    leave out, 1 the wait for the slot's mbarrier, 2 the block barrier after each page, 4 the slot's refill (needs
    1), 8 the refill's load of the next copy descriptor, 16 the refill's mbarrier arrival (needs 1).
    ``refill_fence=False``: no ``fence.proxy.async`` between the block barrier after a page and the refill of its
    slot (the threads' generic-proxy reads of the slot have returned their values before the barrier; the
    copy engine's writes come after it, as in the mbarrier-ordered TMA pipelines of CUTLASS); the fence is
    ``MEMBAR.ALL.CTA`` + ``FENCE.VIEW.ASYNC.S`` on the copy thread, on every page's critical path.
    ``packed_descs`` (with ``smem_descs``): the copy thread's next descriptor in a few instructions: the block's
    descriptors packed two words to an int64 next to the mbarriers, read with 32-bit shared addressing, and the
    page's index within the step carried in shared memory (``+ 1``, wrapped at the block's pages) instead of a
    32-bit remainder. The copy thread's work after each page's block barrier is a serial chain that every other
    warp waits for at the next page's barrier; the descriptor's load took ~60 predicated 64-bit instructions
    there (a shared and a global table behind one array, a division), ~0.24 us a page (NOTES.md). ``producer``
    (needs a plan configured with it and ``lean``): warp specialisation, the block's ``T`` threads only consume
    and one more warp only streams. Lane 0 of the producer warp issues every page of the launch in order
    (``produce``), each into its slot once the slot's "empty" mbarrier says all ``NW`` consumer warps have left
    the page before it, and the consumer warps leave a slot each on its own (``leave_slot``: ``syncwarp``, then
    lane 0 arrives on the empty mbarrier, a release), with no block barrier per page and no copy work on any
    consumer's path. The consumers' ``syncthreads`` and ``blockDim`` are narrowed to the ``T`` of them
    (``warp_roles``); a launch ended early (end of sequence) stops the producer through a shared word and waits
    for what it issued. The same pages in the same order, the same sums: the same bits. ``producer_backoff``: the
    producer sleeps that many ns (``nanosleep``) between the retries of a wait for an empty slot (measuring whether
    its waiting takes issue slots from the consumer warps that share its SM sub-partition). ``producer_regs`` (needs
    a plan configured with it): a producer warpgroup (4 warps, one of which streams) that gives its registers back
    with ``setmaxnreg.dec`` to that many a thread, and consumers that take them with ``setmaxnreg.inc``
    (``warp_roles.register_split``: 40 for the producers leaves 232 for 256 consumers, in a kernel compiled for the
    block's 168); the way Hopper's warp-specialised kernels keep their consumers' registers. ``producer_hold``
    (timing only): the producer issues no copy while its block is at a grid barrier (a shared flag thread 0 raises
    before it arrives and lowers when it leaves), as the copy thread of versions 2-12 does not. ``release_stamp``
    (profiling builds, timing only): the page-wait column holds each block's time from its barrier arrival to its
    release-add instead (``phases.make_barrier``). ``producer_throttle``: in the phases before a mixer (the input
    projections: in_proj, qkv), the producer issues none of the later phases' pages until the block has passed the
    phase's grid barrier (thread 0 sets a limit when the phase starts and lifts it when the block leaves the
    barrier): a block's release at a grid barrier (``MEMBAR.ALL.GPU``) waits for its own stores, whose
    acknowledgements come back behind the pages in flight to its SM; those pages are only needed after the mixer
    (measured: the barriers faster, the mixers slower, whose reads then queue behind the refills). ``lto`` (on):
    link through LTO-IR, numba-cuda's default where nvJitLink is installed; off, through Numba's PTX and
    ``ptxas``, where the out-of-line mixer bodies are called with whole array descriptors (every mixer ~1.6x
    slower on the H100). ``ll_inproj`` (with ``fused_down`` and ``deferred_shift``): no grid barrier
    between a DeltaNet layer's in_proj and its items. The in_proj rows are written twice, as floats (for the
    out_proj phase, two barriers later: z and the q/k shift) and as flag-in-data words (``handoff``: value and
    tag in one 64-bit store, after the residual accumulator in ``hacc``), which the items spin on
    (``deltanet.deltanet_item(ll_inputs=True)``): a block goes from its last in_proj page to its items, and an item
    waits only for the rows it reads, with no release (``MEMBAR.ALL.GPU``) on anyone's path. The tag counts
    the grid barriers of every launch so far (``handoff.ll_tag``, ``CTL_LL_BASE``): unique over launches. The same
    bits. ``ll_residual`` (with ``fused_down``): no grid barrier between a residual phase (out_proj, o_proj) and the
    MLP after it. The residual phase writes each new row of h also as a flag-in-data word, and the MLP's norm
    spins on the words (``handoff.ll_stage_norm``). The MLP's accumulator alternates between two regions of
    ``hacc`` by layer parity (``residual_regions``): a residual phase folds and clears the last MLP's region while
    a block already past it may add into the other. The same bits. ``ll_backoff``: with ``ll_residual``, the norm's
    threads sleep this many ns between the re-reads of a word not yet written (``handoff.ll_value_sleep``).
    ``ll_together`` (with ``ll_inproj`` or ``ll_residual``): a reader re-reads all its words not yet written in each
    round (``handoff.ll_wait4``): one memory round trip a round, where waiting on them one after another costs a
    round trip for each word whose first read came too early (1 or True: every reader; 2: the MLP's norm only; 3:
    the DeltaNet items only). The same bits."""
    if producer and (not lean or not plan.producer_threads or warp_release or page_pairs or defer or l2_ahead
                     or l2_mixer or lm_pool or mma_pages or fused_out or skeleton or bar_thread >= plan.threads):
        raise ValueError("persistent kernel build option producer needs lean and a plan configured with it, and "
                         "does not combine with warp_release, page_pairs, defer, l2_ahead, l2_mixer, lm_pool, "
                         "mma_pages, fused_out or skeleton")
    if (producer_backoff or producer_regs or producer_hold or producer_throttle) and not producer:
        raise ValueError("persistent kernel build options producer_backoff, producer_regs, producer_hold and "
                         "producer_throttle need producer")
    if producer and plan.producer_threads != (4 * WARP if producer_regs else WARP):
        raise ValueError("persistent kernel build option producer_regs needs a plan configured with it (a producer "
                         "warpgroup): pass it to configure too")
    if plan.producer_threads and not producer:
        raise ValueError("a plan configured with a producer warp needs the build option producer")
    if packed_descs and (not smem_descs or warp_release or lm_pool):
        raise ValueError("persistent kernel build option packed_descs needs smem_descs and does not combine with "
                         "warp_release or lm_pool")
    if skeleton and (not nocopy or not nocompute or (skeleton & 20 and not skeleton & 1)):
        raise ValueError("persistent kernel build option skeleton is a timing probe: it needs nocopy and nocompute, "
                         "and leaving out the refills (4) or their arrivals (16) needs leaving out the waits (1)")
    if bar_thread and (not monotonic or not 0 <= bar_thread < plan.threads):
        raise ValueError(f"persistent kernel build option bar_thread={bar_thread} needs monotonic and a thread of "
                         f"the block (0 to {plan.threads - 1})")
    if deferred_shift and (fused_out or deltanet_late_shift):
        raise ValueError("persistent kernel build option deferred_shift does not combine with fused_out or "
                         "deltanet_late_shift")
    if mma_pages and (not xregs or warp_release or page_pairs or lm_pool):
        raise ValueError("persistent kernel build option mma_pages needs xregs and does not combine with "
                         "warp_release, page_pairs or lm_pool")
    if count_smem and not monotonic:
        raise ValueError("persistent kernel build option count_smem needs monotonic (its barrier)")
    if combine_cols and (fold_attention or combine_batch):
        raise ValueError("persistent kernel build option combine_cols does not combine with fold_attention or "
                         "combine_batch")
    if combine_cols and plan.config.full_layers and plan.workspace < attn.combine_cols_workspace(
            attn.combine_columns(plan.config.head_dim, plan.threads, combine_cols)):
        raise ValueError("persistent kernel build option combine_cols needs a plan configured with it (room for "
                         "the partials): pass it to configure too")
    if ll_inproj and (not fused_down or not deferred_shift or fused_out or mma_pages or lean_calls or fold_attention):
        raise ValueError("persistent kernel build option ll_inproj needs fused_down (its words follow the "
                         "accumulator) and deferred_shift, and does not combine with fused_out, mma_pages, lean_calls "
                         "or fold_attention")
    if ll_residual and (not fused_down or fused_out or fd_reps != 1 or fd_stride != 1 or not monotonic
                        or fold_attention or lean_calls or mma_pages or early_residual):
        raise ValueError("persistent kernel build option ll_residual needs fused_down (one accumulator, fd_reps and "
                         "fd_stride 1) and monotonic, and does not combine with fused_out, fold_attention, lean_calls, "
                         "mma_pages or early_residual")
    if split_sums and not paired_rows or early_residual and not split_sums:
        raise ValueError("persistent kernel build option split_sums needs paired_rows, early_residual needs "
                         "split_sums")
    if pair_copies and (warp_release or page_pairs or l2_ahead or defer or lm_pool):
        raise ValueError("persistent kernel build option pair_copies does not combine with warp_release, page_pairs, "
                         "l2_ahead, defer or lm_pool")
    if lean and plan.config.vocab_size * 4096 >= 2 ** 32:
        raise P.UnsupportedConfigError("config not supported by persistent kernel option lean: vocab_size "
                                       f"{plan.config.vocab_size} x up to 4096 blocks overflows its 32-bit row split")
    if smem_descs and (plan.desc_pages <= 0 or lm_pool or l2_ahead or l2_mixer):
        raise ValueError("persistent kernel build option smem_descs needs a plan configured with it (room for the "
                         "descriptors) and does not combine with lm_pool, l2_ahead or l2_mixer")
    if lean and (warp_release or page_pairs or lm_pool):
        raise ValueError("persistent kernel build option lean does not combine with warp_release, page_pairs or "
                         "lm_pool")
    if lm_pool and (warp_release or page_pairs or l2_ahead):
        raise ValueError("persistent kernel build option lm_pool does not combine with warp_release, page_pairs or "
                         "l2_ahead")
    if fused_out and not fused_down:
        raise ValueError("persistent kernel build option fused_out needs fused_down (its accumulator)")
    if fused_down and (page_pairs or warp_release or early_residual):
        raise ValueError("persistent kernel build option fused_down does not combine with page_pairs, warp_release "
                         "or early_residual")
    if xregs and page_pairs:
        raise ValueError("persistent kernel build options xregs and page_pairs do not combine")
    if page_pairs and warp_release:
        raise ValueError("persistent kernel build options page_pairs and warp_release do not combine")
    if monotonic and counter:
        raise ValueError("persistent kernel build options monotonic and counter are two grid barriers: pick one")
    if warp_release and defer:
        raise ValueError("persistent kernel build options warp_release and defer do not combine (the deferred "
                         "refills are thread 0's)")
    o = Offsets(plan)
    lay = o.lay
    T, NW, D_, F, V, EPS, L, KIND, SLOT = o.T, o.NW, o.D, o.F, o.V, o.EPS, o.L, o.KIND, o.SLOT
    HAS_LIN, HAS_ATT = o.HAS_LIN, o.HAS_ATT
    Hv, Dv, C, P_LIN, HVDV = o.Hv, o.Dv, o.C, o.P_LIN, o.HVDV
    P_ATT, HQDH = o.P_ATT, o.HQDH
    H0, PL0, OL0, PA0, AO0, ACT0, LG0 = o.H0, o.PL0, o.OL0, o.PA0, o.AO0, o.ACT0, o.LG0
    W_EMB = lay.embed
    F_IN, F_POST, NS_ = lay.input_norm, lay.post_norm, lay.norm_stride
    F_FINAL, F_GN, LSS = lay.final_norm, lay.gated_norm, lay.lin_small_stride
    R_ = plan.ring_pages
    CSMEM = count_smem and barriers  # (without barriers, the test-only switch, there is nothing to count)
    # (an even count: the static shared arrays after it stay 16-byte aligned for the bulk copies)
    N_BARS0 = 2 * R_ + (4 if CSMEM else 2)
    PRODUCER = producer
    BACKOFF = producer_backoff
    EMPTY0 = N_BARS0  # producer: the slots' "empty" mbarriers (NW consumer warps leave each page)
    STOP = EMPTY0 + R_  # producer: non-zero once the consumers end the launch (the producer issues no more)
    PDONE = STOP + 1  # producer: the pages it issued, once it has stopped (-1 until then)
    HOLD = PDONE + 1  # producer_hold: non-zero while the block is at a grid barrier (the producer issues nothing)
    HOLDING = producer_hold
    NO_LIMIT = 1 << 62
    LIMIT = HOLD + 1  # producer_throttle: the producer issues no page from this one on (thread 0 moves it)
    THROTTLE = producer_throttle
    N_BARS1 = N_BARS0 + ((R_ + 5) // 2 * 2 if producer else 0)  # (even: 16-byte alignment after it)
    PACKED = packed_descs
    DIDX = N_BARS1  # packed_descs: the index (within a step) of the next descriptor to load; then padding
    DB0 = N_BARS1 + 2  # packed_descs: page d's descriptor at DB0 + 2 d (src1 | n1 << 32), DB0 + 2 d + 1 (src2, n2)
    N_BARS = DB0 + 2 * max(1, plan.desc_pages) if packed_descs else N_BARS1
    if producer and not max_registers:  # the consumers and the producer warp(s) in one SM's registers
        max_registers = warp_roles.block_registers(plan.launch_threads)
    SETMAXNREG = producer and producer_regs > 0
    if SETMAXNREG:
        max_registers, consumer_regs = warp_roles.register_split(plan.threads, plan.producer_threads, producer_regs)
        give_registers = warp_roles.set_max_registers(False, producer_regs)
        take_registers = warp_roles.set_max_registers(True, consumer_regs)
    else:
        give_registers = take_registers = warp_roles.set_max_registers(True, 0)  # (never called)
    if producer:
        warp_roles.install()
    FUSED = 2 * R_  # pair_copies: 1 while the next page to issue came with the last copy
    WAITED = 2 * R_ + 1  # profiling builds: thread 0's ns waiting for pages since the last barrier
    CNT = 2 * R_ + 2  # count_smem: the grid barriers this launch has passed (the next word is padding)
    PAIRS = pair_copies > 0
    PAIR_ALL = pair_copies == PG.PAIRS_ALL  # else the LM head's call site alone pairs (the only pages marked)
    PW = plan.page_words
    XS = plan.workspace
    K_NORM, K_GATED, K_PLAIN, K_SWIGLU, K_LMHEAD = PG.K_NORM, PG.K_GATED, PG.K_PLAIN, PG.K_SWIGLU, PG.K_LMHEAD
    K_NORM_LL = 16  # ``ll_inproj``: in_proj's rows, also stored as flag-in-data words (``mine`` carries the tag)
    LL = ll_inproj and o.HAS_LIN
    NO_KEY = np.int64(lmh.INT64_MIN)
    barrier = make_barrier(barriers, profile, counter, monotonic, CSMEM, bar_thread, release_stamp)
    barrier_count = make_barrier_count(CSMEM, monotonic)
    close_barriers = make_barrier_close(barriers, monotonic)
    deltanet_core, attention_core = make_mixers(plan, barrier, out_of_line, state_first, fold_attention,
                                                deltanet_out_of_line, inline_decode, deltanet_late_shift,
                                                mixer_twice, lean_calls, deferred_shift, combine_batch, LL,
                                                combine_cols, int(ll_together) in (1, 3))
    DSHIFT = deferred_shift and HAS_LIN
    KM1 = o.KC - 1
    if DSHIFT:
        shift_load, shift_store = dn.qk_conv_shift(o.Hk, o.Dk, o.KC, T)
    ATT_BARRIERS = 1 if fold_attention else 3
    prefetch_deltanet, prefetch_kv = make_prefetchers(plan)
    PREFETCH = prefetch
    LATE = prefetch_late
    barrier_handle = make_barrier_handle(counter, monotonic)
    L2_AHEAD = l2_ahead
    L2_MIX = l2_mixer
    COMPUTE = not nocompute
    MIXERS = not nomixer
    CLAMP = nocompute or nomixer or nocopy or not barriers or fd_probe
    NOCOPY = nocopy
    RFENCE = refill_fence
    SK_WAIT, SK_BAR, SK_FILL = not skeleton & 1, not skeleton & 2, not skeleton & 4
    SK_DESC, SK_ISSUE = not skeleton & 8, not skeleton & 16
    WREL = warp_release
    QUAD = page_pairs
    PROFILE = profile
    SPLIT_BAR = l2_ahead > 0 and counter and barriers  # the L2 prefetches between arrival and departure
    counter_arrive, counter_wait = make_counter_halves()
    prefetch_page = tma.prefetch_l2_evict_first if evict_first and not l2_keep else tma.prefetch_l2
    DEFER = defer
    PAIRED = paired_rows
    copy = tma.bulk_copy_evict_first if evict_first else tma.bulk_copy
    XE = -(-(D_ // 8) // WARP)  # x pieces per lane in a hidden-size row
    XREG = xregs and XE <= XREG_MAX_PIECES
    XR = 8 * XE
    SPLIT = split_sums
    EARLY_H = early_residual
    LEAN = lean
    DESC = smem_descs
    DCAP = max(1, plan.desc_pages)
    load_x, dot_row_x, dot2_row_x = xreg_dots(XE, full=lean and XE * WARP == D_ // 8)
    MMA = mma_pages and XREG and MM.mma_supported(D_, NW)
    XF, PART_N, load_fragments, mma_partials, mma_row_sum = MM.page_mma(
        D_, NW, PW // (D_ // 2), full=(D_ // MM.TILE_K) % NW == 0, chains=mma_chains)
    if not MMA:
        XF = PART_N = 1
    E0 = NW // 2  # mma_pages: the first warp that finishes rows (the lower half, with the copy thread, does not)
    NE = NW - E0
    ONE_PASS = PW // (D_ // 2) <= 4 * NE  # a page's rows (gate/up pairs) at most 4 (2) an emitting warp
    POOL, V_STATIC, RPL = PG.lm_pool(plan.config, PW, lm_pool)
    SLACK = PG.LM_POOL_SLACK
    W_LM = lay.lm_head
    FD = fused_down
    FD_PROBE = fd_probe
    NORM_ACC = FD and fd_probe != 3
    XA = D_  # fused_down: the block's rows of act in the workspace after x (``configure`` makes room)
    if FD and (fd_chunk < 1 or fd_reps < 1 or fd_stride < 1):
        raise ValueError("persistent kernel build options fd_chunk, fd_reps and fd_stride must be >= 1")
    CH = fd_chunk if FD else 1
    if FD and fd_bulk and fd_stride != 1:
        raise ValueError("persistent kernel build option fd_bulk needs fd_stride 1 (one contiguous vector)")
    down_start, down_page, down_flush, down_flush_bulk, _, _, NSUMS = SD.down_t_consumer(T, D_, CH, fd_reps,
                                                                                        fd_stride, PW // (D_ // 2),
                                                                                        lean)
    BULK = FD and fd_bulk
    STAGE = D_ if BULK else 2
    FO = fused_out and HAS_LIN
    CW = plan.cw
    RPP_OUT = PW // (D_ // 2)
    F_ALOG, F_DT = lay.A_log, lay.dt_bias
    NS_ITEM = Dv // CW  # DeltaNet items per value head
    N_DN = o.N_DN
    HC0 = P.head_counter_slot(plan.config)
    SQ0 = plan.scratch["ssq"][0]
    OUT_ACC = fd_reps * D_  # h_out's first element (before the stride) in hacc
    _, out_page, _, _, out_flush_to, out_flush_bulk_to, _ = SD.down_t_consumer(T, D_, CW, 1, fd_stride,
                                                                              PW // (D_ // 2))
    dn_item = make_deltanet_item(plan, out_of_line or deltanet_out_of_line, state_first, deltanet_late_shift) \
        if FO else None
    column_out = dn.item_output(o.Dk, CW, T) if FO else None
    XG = out_gate_offset(plan)
    if FO and XG + HVDV > XS:
        raise ValueError("persistent kernel build option fused_out needs a plan configured with it (room for the "
                         "gated values in the workspace): pass it to configure too")
    norm_acc, fold_acc, clear_acc, fold_mlp, clear_mlp = SD.accumulator(D_, fd_reps, fd_stride, FO)
    LLR = ll_residual
    LL_BACKOFF = ll_backoff
    LL_TOGETHER_NORM = int(ll_together) in (1, 2)
    if int(ll_together) not in (0, 1, 2, 3):
        raise ValueError(f"persistent kernel build option ll_together={ll_together}: 0-3 (1 every reader, 2 the MLP's "
                         "norm, 3 the DeltaNet items)")
    if ll_backoff and not ll_residual:
        raise ValueError("persistent kernel build option ll_backoff needs ll_residual")
    if ll_together and not (ll_inproj or ll_residual):
        raise ValueError("persistent kernel build option ll_together needs ll_inproj or ll_residual")
    LL0 = ll_offset(plan.config, fd_reps, fd_stride, FO, LLR)  # ``ll_inproj``: in_proj's words in hacc from here
    _, R1 = residual_regions(plan.config, ll_inproj)  # ``ll_residual``: the odd layers' region
    RW = 2 * D_  # ``ll_residual``: a region's words (the accumulator, then h as words)
    if FD and XA + F > XS:
        raise ValueError("persistent kernel build option fused_down needs a plan configured with it (room for act "
                         "in the workspace): pass it to configure too")

    @cuda.jit(device=True)
    def rmod(a, m):
        """``a % m`` for 0 <= a, 0 < m < 2^31; with ``lean`` as a 32-bit unsigned remainder (a multiply by a
        constant ``m``; no signed 64-bit division)."""
        if LEAN:
            return int32(uint32(a) % uint32(m))
        return a % m

    @cuda.jit(device=True)
    def qdiv(a, m):
        """``a // m`` for 0 <= a < 2^32, 0 < m; with ``lean`` as a 32-bit unsigned quotient (the block's first row
        of a phase: a 64-bit division by the grid size otherwise)."""
        if LEAN:
            return int32(uint32(a) // uint32(m))
        return a // m

    @cuda.jit(device=True)
    def ring_pos(cursor):
        """Page ``cursor``'s ring slot and the parity of the mbarrier phase it completes."""
        return cursor % R_, (cursor // R_) & 1

    @cuda.jit(device=True)
    def next_pos(slot, par):
        """``lean``: the next page's slot and parity from this one's (no division by the ring's size)."""
        slot += 1
        if slot == R_:
            return 0, par ^ 1
        return slot, par

    @cuda.jit(device=True)
    def w4(x):
        """A ring word offset as a 16-byte piece index: ``x // 4``, a shift with ``lean`` (the same value)."""
        if LEAN:
            return x >> 2
        return x // 4

    @cuda.jit(device=True)
    def l2_top_up(issued, prefetched, total, b, pb, table, Ww, ahead=L2_AHEAD):
        """Thread 0: L2 prefetches of the pages up to ``ahead`` beyond those issued to the ring (so HBM keeps
        streaming while the block waits or runs a mixer). Returns the pages prefetched so far."""
        g = max(prefetched, issued)
        stop = min(issued + ahead, total)
        while g < stop:
            d = g % pb
            prefetch_page(Ww, table[b, d, 0], table[b, d, 1])
            if table[b, d, 3] > 0:
                prefetch_page(Ww, table[b, d, 2], table[b, d, 3])
            g += 1
        return max(prefetched, stop)

    @cuda.jit(device=True)
    def page_wait(bars, slot, par):
        """Wait for the page in ``slot`` (its mbarrier's phase of parity ``par``); a profiling build adds thread
        0's wait to ``bars[WAITED]`` (``bar`` records it per phase)."""
        if not SK_WAIT:
            return
        if PROFILE and cuda.threadIdx.x == 0:
            t0 = tma.globaltimer()
            tma.mbar_wait(bars, slot, par)
            bars[WAITED] += tma.globaltimer() - t0
        else:
            tma.mbar_wait(bars, slot, par)

    @cuda.jit(device=True)
    def bar(grid, count, prof, issued, prefetched, total, b, pb, table, Ww, bars):
        """The grid barrier, with ``l2_ahead`` thread 0's L2 prefetches: while it waits (``SPLIT_BAR``, the counter
        barrier's two halves), or before it arrives (``grid.sync()`` cannot be split). A profiling build first
        records the phase's page waits in the buffer's last third (``profile.read_timeline``)."""
        if PROFILE and cuda.threadIdx.x == 0:
            e = prof.shape[1] // 3
            k = bars[CNT] if CSMEM else count
            if k < e:
                prof[cuda.blockIdx.x, 2 * e + k] = bars[WAITED]
            bars[WAITED] = 0
        if SPLIT_BAR:
            if PROFILE:
                stamp(prof, 2 * count)
            cuda.syncthreads()  # the block's work is done
            if cuda.threadIdx.x == 0:
                gen, last = counter_arrive(grid)
                prefetched = l2_top_up(issued, prefetched, total, b, pb, table, Ww)
                counter_wait(grid, gen, last)
            cuda.syncthreads()
            if PROFILE:
                stamp(prof, 2 * count + 1)
            return count + 1, prefetched
        if L2_AHEAD > 0:
            if cuda.threadIdx.x == 0:
                prefetched = l2_top_up(issued, prefetched, total, b, pb, table, Ww)
        if HOLDING and cuda.threadIdx.x == 0:
            bars[HOLD] = 1  # (every page of this phase was issued: thread 0's warp has consumed them all)
        count = barrier(grid, count, prof)
        if cuda.threadIdx.x == 0:
            if HOLDING:
                bars[HOLD] = 0
            if THROTTLE:
                bars[LIMIT] = NO_LIMIT  # (the block has released what it wrote: the next phases' pages may come)
        return count, prefetched

    @cuda.jit(device=True)
    def lo32(w):
        """The low 32 bits of an int64, as the int32 they were packed from."""
        v = w & 0xFFFFFFFF
        return int32(v - 0x100000000 if v >= 0x80000000 else v)

    @cuda.jit(device=True)
    def next_desc(g, total, b, pb, table, bars):
        """Thread 0: the copy descriptor (src1, n1, src2, n2) of page ``g``, loaded one page ahead of its issue so
        the load's latency never stands between a freed slot and its refill."""
        if g >= total:
            return int32(0), int32(0), int32(0), int32(0)
        if PACKED and pb <= DCAP:  # the pages in order: page g's index is the last one's + 1, wrapped at pb
            d = int32(bars[DIDX])
            bars[DIDX] = d + 1 if d + 1 < pb else 0
            w0 = bars[DB0 + 2 * d]
            w1 = bars[DB0 + 2 * d + 1]
            return lo32(w0), int32(w0 >> 32), lo32(w1), int32(w1 >> 32)
        d = rmod(g, pb)
        if DESC and pb <= DCAP:  # ``table`` is the block's copy in shared memory: one row
            return table[0, d, 0], table[0, d, 1], table[0, d, 2], table[0, d, 3]
        if POOL > 0 and d >= pb - (SLACK * POOL + cuda.gridDim.x - 1) // cuda.gridDim.x:
            # an LM head placeholder (a step's last pages; known without a load): claim a pool page now, use the
            # claim (-3) only at the issue, a page later, so the atomic's round trip is never waited for
            return cuda.atomic.add(table, (table.shape[0] - 1, 0, 0), 1), int32(-3), int32(0), int32(0)
        return table[b, d, 0], table[b, d, 1], table[b, d, 2], table[b, d, 3]

    @cuda.jit(device=True)
    def issue(slot, s1, n1, s2, n2, Ww, ring, bars):
        """Thread 0: start the copy of a page (one or two row ranges) into ``slot``."""
        if PAIRS and n2 < 0:  # a page that may pair with the next (pair_copies), copied alone
            n2 = int32(0)
        if POOL > 0 and n1 == -3:  # a claimed pool page: its rows (or -1: the pool ran dry) for the consumers
            if s1 < POOL:
                row0 = V_STATIC + s1 * RPL
                bars[R_ + slot] = row0
                s1 = W_LM + row0 * (D_ // 2)
                n1 = min(RPL, V - row0) * (D_ // 2)
            else:
                bars[R_ + slot] = -1
                n1 = 0
        if NOCOPY or (POOL > 0 and n1 == 0):
            tma.mbar_expect(bars, slot, 0)  # the slot's phase completes at once
        else:
            tma.mbar_expect(bars, slot, (n1 + n2) * 4)
            copy(ring, slot * PW, Ww, s1, n1, bars, slot)
            if n2 > 0:
                copy(ring, slot * PW + n1, Ww, s2, n2, bars, slot)

    @cuda.jit(device=True)
    def issue_next(issued, limit, total, b, pb, table, Ww, ring, bars, d1, d2, d3, d4, pairs=False):
        """Thread 0 starts page ``issued`` (descriptor d1..d4) into its slot ``issued % R_``, whose previous page
        every warp has finished (the caller's ``syncthreads``), and loads the next descriptor. All threads
        return ``issued + 1``. With ``pairs`` (``pair_copies``, a constant at each inlined call site, so the other
        call sites carry none of this code) thread 0 issues every page below ``limit`` (the first page whose slot
        still has readers) instead, a pair with one copy, and returns how far it got (the other threads' count is
        never used)."""
        if cuda.threadIdx.x == 0:
            if PAIRS and pairs:
                g = issued
                while g < total and g < limit:
                    slot = rmod(g, R_)
                    if bars[FUSED] != 0:  # its bytes come with the previous page's copy
                        bars[FUSED] = 0
                        tma.mbar_expect(bars, slot, 0)
                    else:
                        pair = d4 < 0 and slot % 2 == 0 and slot + 1 < R_
                        if pair:
                            if g + 1 >= limit:
                                break  # the pair's second slot still has readers: wait for the next free slot
                            d2 -= d4  # one copy of both pages' words (-d4: the next page's)
                        if RFENCE:
                            tma.fence_proxy_async()
                        if SK_ISSUE:
                            issue(slot, d1, d2, d3, d4, Ww, ring, bars)
                        bars[FUSED] = 1 if pair else 0
                    g += 1
                    if SK_DESC:
                        d1, d2, d3, d4 = next_desc(g, total, b, pb, table, bars)
                return g, d1, d2, d3, d4
            if RFENCE:
                tma.fence_proxy_async()  # the threads' reads of the slot before the copy engine's writes
            if SK_ISSUE:
                issue(rmod(issued, R_), d1, d2, d3, d4, Ww, ring, bars)
            if SK_DESC:
                d1, d2, d3, d4 = next_desc(issued + 1, total, b, pb, table, bars)
        return issued + 1, d1, d2, d3, d4

    @cuda.jit(device=True)
    def free_slot(cursor, issued, total, b, pb, table, Ww, ring, bars, d1, d2, d3, d4):
        """The block is done with page ``cursor``: once every thread has left its slot, refill the slot with the
        next page to issue, if any. Returns (cursor + 1, issued, d1, d2, d3, d4)."""
        if SK_BAR:
            cuda.syncthreads()  # every thread is done with the slot
        if SK_FILL and issued < total:
            issued, d1, d2, d3, d4 = issue_next(issued, cursor + 1 + R_, total, b, pb, table, Ww, ring, bars, d1,
                                                d2, d3, d4, PAIR_ALL)
        return cursor + 1, issued, d1, d2, d3, d4

    @cuda.jit(device=True)
    def refill(cursor, issued, total, b, pb, table, Ww, ring, bars, d1, d2, d3, d4):
        """Issue the pages of every free slot (those ``rows_phase(..., hold=True)`` left empty)."""
        while issued < total and issued < cursor + R_:  # (only with defer, which pair_copies refuses)
            issued, d1, d2, d3, d4 = issue_next(issued, cursor + R_, total, b, pb, table, Ww, ring, bars, d1, d2,
                                                d3, d4)
        return issued, d1, d2, d3, d4

    @cuda.jit(device=True)
    def leave_slot(bars, slot, lane):
        """``producer``: this warp is done reading ``slot``: once all its lanes are (``syncwarp``), lane 0 counts
        the warp out on the slot's empty mbarrier (a release: the producer's copy into the slot comes after it)."""
        cuda.syncwarp()
        if lane == 0:
            tma.mbar_arrive(bars, EMPTY0 + slot)

    @cuda.jit(device=True)
    def produce(total, b, pb, table, Ww, ring, bars):
        """``producer``: lane 0 of the producer warp. Every page of the launch in order, each into its slot once
        every consumer warp has left the page the slot held (its empty mbarrier's phase; the first ``R_`` pages
        go at once); with ``pair_copies`` a marked page and the next in one copy when both of an even slot pair
        are free. Stops early when the consumers set ``bars[STOP]``; then publishes how many pages it issued."""
        g = 0
        slot = 0
        epar = 1  # the parity of the empty phase page g waits for, (g // R_ - 1) & 1: flipped at every wrap
        fused = False
        d1, d2, d3, d4 = next_desc(0, total, b, pb, table, bars)
        while g < total:
            if tma.flag_value(bars, STOP) != 0:
                break
            if g >= R_ and tma.mbar_wait_or_stop(bars, EMPTY0 + slot, epar, STOP, BACKOFF) == 0:
                break
            if fused:  # its bytes come with the previous page's copy
                tma.mbar_expect(bars, slot, 0)
                fused = False
            else:
                if HOLDING:  # not while the block is at a grid barrier
                    while tma.flag_value(bars, HOLD) != 0 and tma.flag_value(bars, STOP) == 0:
                        pass
                if THROTTLE:  # not past the limit thread 0 set (a phase before a mixer: until its barrier)
                    while g >= tma.flag_value(bars, LIMIT) and tma.flag_value(bars, STOP) == 0:
                        pass
                pair = PAIRS and d4 < 0 and (slot & 1) == 0 and slot + 1 < R_ and g + 1 < total
                if pair and g + 1 >= R_ and tma.mbar_wait_or_stop(bars, EMPTY0 + slot + 1, epar, STOP,
                                                                  BACKOFF) == 0:
                    break
                tma.fence_proxy_async()  # the consumers' reads of the slot before the copy engine's writes
                issue(slot, d1, d2 - d4 if pair else d2, d3, d4, Ww, ring, bars)
                fused = pair
            g += 1
            d1, d2, d3, d4 = next_desc(g, total, b, pb, table, bars)
            slot, epar = next_pos(slot, epar)
        cuda.atomic.exch(bars, PDONE, g)

    @cuda.jit(device=True)
    def emit(kind, row, acc, up, rstd, y, h, act, logits, hacc, mine, lane):
        """A finished row's epilogue (``acc``, ``up``: its warp-summed dot products)."""
        if kind == K_SWIGLU:
            if lane == 0:
                act[row] = D.silu(acc * rstd) * (up * rstd)
        elif kind == K_NORM:
            if lane == 0:
                y[row] = acc * rstd
        elif kind == K_NORM_LL:
            if lane == 0:
                value = acc * rstd
                y[row] = value
                HO.ll_store(hacc, LL0 + row, value, mine)
        elif kind == K_LMHEAD:
            value = acc * rstd
            if lane == 0:
                logits[row] = value
            key = lmh.argmax_key(value, row)
            if key > mine:
                mine = key
        elif FD:  # K_GATED, K_PLAIN with the last MLP's down projection still in the accumulator: fold it in
            if lane == 0:
                hn = (h[row] + fold_acc(hacc, row)) + acc
                h[row] = hn
                clear_acc(hacc, row)
                if LLR:  # ``hacc`` is the last MLP's region: h's words follow its accumulator; ``mine``: the tag
                    HO.ll_store(hacc, D_ + row, hn, mine)
        else:  # K_GATED, K_PLAIN: the residual add
            if lane == 0:
                h[row] += acc
        return mine

    @cuda.jit(device=True)
    def emit_split(kind, row_a, row_b, v, rstd, y, h, act, logits, hacc, mine, lane, old):
        """``split_sums``: the epilogue of a pass's two rows from ``warp_sum2``'s ``v`` (row a's sum on lanes 0-15,
        row b's on 16-31; a SwiGLU row's gate and up sums instead); lane 0 finishes row a, lane 16 row b.
        ``old``: with ``early_residual``, lane 0's and 16's row of h, loaded before the dot products."""
        if kind == K_SWIGLU:  # lane 0 holds the gate sum, lane 16 the up sum
            return emit(kind, row_a, v, cuda.shfl_xor_sync(D.FULL_MASK, v, 16), rstd, y, h, act, logits, hacc, mine,
                        lane)
        row = row_b if lane >= 16 else row_a
        if EARLY_H and (kind == K_GATED or kind == K_PLAIN):
            if lane % 16 == 0:
                h[row] = old + v
            return mine
        return emit(kind, row, v, v, rstd, y, h, act, logits, hacc, mine, lane % 16)  # lanes 0 and 16 write

    @cuda.jit(device=True)
    def warp_max_key(mine):
        """``split_sums``: the lanes' argmax keys (two rows' worth per pass) made one per warp, as
        ``publish_block_best`` reads lane 0's."""
        for off in (16, 8, 4, 2, 1):
            other = cuda.shfl_xor_sync(D.FULL_MASK, mine, off)
            if other > mine:
                mine = other
        return mine

    @cuda.jit(device=True)
    def dot2(ring, base_a, base_b, xs, xr, use_x, nv, lane):
        """Two rows' dot products against x from registers (``use_x``) or from shared memory."""
        if use_x:
            return dot2_row_x(ring, base_a, base_b, xr, nv, lane)
        return dot2_row_split(ring, base_a, base_b, xs, nv, lane)

    @cuda.jit(device=True)
    def dot1(ring, base, xs, xr, use_x, nv, lane):
        if use_x:
            return dot_row_x(ring, base, xr, nv, lane)
        return dot_row_split(ring, base, xs, nv, lane)

    @cuda.jit(device=True)
    def rows_at(kind, nrows, row0, base, r, nv, kw, rstd, y, h, act, logits, hacc, mine, ring, xs, xr, use_x, lane):
        """A warp's pass over one page at row ``r``: a SwiGLU row's gate and up together, otherwise rows ``r`` and
        ``r + NW`` (a lone last row alone)."""
        if kind == K_SWIGLU:
            if r < nrows:
                g, u = dot2(ring, w4(base + r * kw), w4(base + nrows * kw + r * kw), xs, xr, use_x, nv, lane)
                if SPLIT:
                    mine = emit_split(kind, row0 + r, row0 + r, D.warp_sum2(g, u), rstd, y, h, act, logits, hacc, mine,
                                      lane, float32(0))
                else:
                    g = D.warp_sum(g)
                    u = D.warp_sum(u)
                    mine = emit(kind, row0 + r, g, u, rstd, y, h, act, logits, hacc, mine, lane)
        elif r + NW < nrows:
            old = float32(0)
            if EARLY_H and (kind == K_GATED or kind == K_PLAIN) and lane % 16 == 0:
                old = h[row0 + r + NW] if lane >= 16 else h[row0 + r]
            a, c = dot2(ring, w4(base + r * kw), w4(base + (r + NW) * kw), xs, xr, use_x, nv, lane)
            if SPLIT:
                mine = emit_split(kind, row0 + r, row0 + r + NW, D.warp_sum2(a, c), rstd, y, h, act, logits, hacc, mine,
                                  lane, old)
            else:
                a = D.warp_sum(a)
                c = D.warp_sum(c)
                mine = emit(kind, row0 + r, a, a, rstd, y, h, act, logits, hacc, mine, lane)
                mine = emit(kind, row0 + r + NW, c, c, rstd, y, h, act, logits, hacc, mine, lane)
        elif r < nrows:
            a = D.warp_sum(dot1(ring, w4(base + r * kw), xs, xr, use_x, nv, lane))
            mine = emit(kind, row0 + r, a, a, rstd, y, h, act, logits, hacc, mine, lane)
        return mine

    @cuda.jit(device=True)
    def paired_rows_page(kind, nrows, row0, base, nv, kw, rstd, y, h, act, logits, hacc, mine, ring, xs, xr, use_x,
                         lane, warp):
        """One page's rows, two per warp pass (``rows_at``)."""
        if not COMPUTE:
            return mine
        step = NW if kind == K_SWIGLU else 2 * NW
        if LEAN:  # (range() with a run-time stop divides out its trip count)
            r = warp
            while r < nrows:
                mine = rows_at(kind, nrows, row0, base, r, nv, kw, rstd, y, h, act, logits, hacc, mine, ring, xs, xr,
                               use_x, lane)
                r += step
            return mine
        for r in range(warp, nrows, step):
            mine = rows_at(kind, nrows, row0, base, r, nv, kw, rstd, y, h, act, logits, hacc, mine, ring, xs, xr, use_x,
                           lane)
        return mine

    @cuda.jit(device=True)
    def quad_rows_pages(kind, na, row0a, basea, nb_, row0b, baseb, nv, kw, rstd, y, h, act, logits, hacc, mine, ring,
                        xs, xr, lane, warp):
        """Two pages of one phase, four rows per warp pass: at row ``r`` a SwiGLU page pair's two gate and two up
        rows, otherwise rows ``r`` and ``r + NW`` of each page; where a page has fewer rows, ``rows_at`` per page.
        Four independent sums in flight per lane, each x piece read once for all four (``dot4_row_split``)."""
        if not COMPUTE:
            return mine
        swiglu = kind == K_SWIGLU
        for r in range(warp, max(na, nb_), NW if swiglu else 2 * NW):
            if swiglu and r < na and r < nb_:
                ga, ua, gb, ub = dot4_row_split(ring, (basea + r * kw) // 4, (basea + na * kw + r * kw) // 4,
                                                (baseb + r * kw) // 4, (baseb + nb_ * kw + r * kw) // 4, xs, nv, lane)
                ga = D.warp_sum(ga)
                ua = D.warp_sum(ua)
                gb = D.warp_sum(gb)
                ub = D.warp_sum(ub)
                mine = emit(kind, row0a + r, ga, ua, rstd, y, h, act, logits, hacc, mine, lane)
                mine = emit(kind, row0b + r, gb, ub, rstd, y, h, act, logits, hacc, mine, lane)
            elif not swiglu and r + NW < na and r + NW < nb_:
                a, c, e, f = dot4_row_split(ring, (basea + r * kw) // 4, (basea + (r + NW) * kw) // 4,
                                            (baseb + r * kw) // 4, (baseb + (r + NW) * kw) // 4, xs, nv, lane)
                a = D.warp_sum(a)
                c = D.warp_sum(c)
                e = D.warp_sum(e)
                f = D.warp_sum(f)
                mine = emit(kind, row0a + r, a, a, rstd, y, h, act, logits, hacc, mine, lane)
                mine = emit(kind, row0a + r + NW, c, c, rstd, y, h, act, logits, hacc, mine, lane)
                mine = emit(kind, row0b + r, e, e, rstd, y, h, act, logits, hacc, mine, lane)
                mine = emit(kind, row0b + r + NW, f, f, rstd, y, h, act, logits, hacc, mine, lane)
            else:
                mine = rows_at(kind, na, row0a, basea, r, nv, kw, rstd, y, h, act, logits, hacc, mine, ring, xs, xr,
                               False, lane)
                mine = rows_at(kind, nb_, row0b, baseb, r, nv, kw, rstd, y, h, act, logits, hacc, mine, ring, xs, xr,
                               False, lane)
        return mine

    @cuda.jit(device=True)
    def release_slot(cursor, slot, total, b, pb, table, Ww, ring, bars, lane, nd1, nd2, nd3, nd4):
        """``warp_release``: this warp is done with page ``cursor``: lane 0 counts the warp out of its slot
        (``bars[R_ + slot]``, a release); the last of the block's warps to leave it starts the copy of page
        ``cursor + R_`` into it (descriptor ``nd1..nd4``). No block-wide barrier: the other warps go on to their
        next page, which is already there or on its way."""
        cuda.syncwarp()  # the warp's lanes are all done reading the slot
        if lane == 0:
            cuda.threadfence_block()
            if cuda.atomic.add(bars, R_ + slot, 1) % NW == NW - 1:
                cuda.threadfence_block()  # acquire the other warps' releases
                if cursor + R_ < total:
                    tma.fence_proxy_async()  # their reads of the slot before the copy engine's writes
                    issue(slot, nd1, nd2, nd3, nd4, Ww, ring, bars)

    @cuda.jit(device=True)
    def mma_emit(kind, nrows, row0, part, buf, rstd, y, h, act, logits, hacc, mine, lane, warp):
        """``mma_pages``: a page's rows finished from the warps' partials, after the page's block barrier, by the
        upper half of the warps (warp 0's thread 0 refills the slot meanwhile, and the others do not wait for it at
        the next page's barrier as long): each 8-lane group of an emitting warp sums one partial row over the warps
        (``mma_row_sum``), so a warp finishes 4 rows or 2 gate/up pairs (gate on groups 0 and 2, up on 1 and 3);
        lane 0 of a row's group writes it."""
        if warp < E0:
            return mine
        we = warp - E0
        grp = lane >> 3
        if kind == K_SWIGLU:
            base_r = 2 * we
            while base_r < nrows:
                r = base_r + (grp >> 1)
                v = mma_row_sum(part, buf, 2 * min(r, nrows - 1) + (grp & 1), lane)
                u = cuda.shfl_xor_sync(D.FULL_MASK, v, 8)
                if r < nrows:
                    mine = emit(kind, row0 + r, v, u, rstd, y, h, act, logits, hacc, mine, lane & 15)
                if ONE_PASS:  # (a page has at most 2 pairs an emitting warp: no loop, a smaller page loop body)
                    break
                base_r += 2 * NE
            return mine
        base_r = 4 * we
        while base_r < nrows:
            row = base_r + grp
            v = mma_row_sum(part, buf, min(row, nrows - 1), lane)
            if row < nrows:
                mine = emit(kind, row0 + row, v, v, rstd, y, h, act, logits, hacc, mine, lane & 7)
            if ONE_PASS:
                break
            base_r += 4 * NE
        return mine

    @cuda.jit(device=True)
    def rows_body(kind, k, rows, rstd, y, h, act, logits, hacc, mine, cursor, issued, total, pb, b, nb, table, Ww,
                  ring, bars, xs, part, d1, d2, d3, d4, hold):
        """Consume this block's pages of a rows phase (``rows`` rows of length ``k``; x staged in ``xs``),
        refilling each slot as it frees. The block's rows and their pages follow from (rows, b, nb) as in
        ``pages.page_table``, so the consumers read no table; thread 0 carries the next copy descriptor
        (d1..d4); with ``hold`` the freed slots are refilled only with this phase's own pages, the others stay
        empty (``refill`` issues them later).
        Returns (cursor, issued, mine, d1, d2, d3, d4)."""
        nv = k // 8
        kw = k // 2
        if LEAN:
            lane = cuda.threadIdx.x & (WARP - 1)
            warp = cuda.threadIdx.x >> 5
        else:
            lane = cuda.threadIdx.x % WARP
            warp = cuda.threadIdx.x // WARP
        rpp = PW // (kw * 2) if kind == K_SWIGLU else PW // kw
        first = qdiv(rows * b, nb)
        end = qdiv(rows * (b + 1), nb)
        if FD and kind == K_SWIGLU:
            first, end = mlp_rows(rows, b, nb)
        last = cursor + (end - first + rpp - 1) // rpp  # the cursor after this phase's pages
        if THROTTLE and hold and cuda.threadIdx.x == 0:  # no later page in flight at this phase's barrier
            bars[LIMIT] = last
        nd1 = nd2 = nd3 = nd4 = int32(0)
        xr = cuda.local.array(XR, float32)
        use_x = XREG and k == D_  # a constant at each (inlined) call site
        if use_x:
            load_x(xr, xs, nv, lane)
        slot, par = ring_pos(cursor)  # (lean: carried from page to page, below)
        row0 = first
        while row0 < end:
            nrows = min(rpp, end - row0)
            if QUAD and row0 + rpp < end:  # two pages of this phase: four rows per warp pass
                slot = cursor % R_
                slot_b = (cursor + 1) % R_
                tma.mbar_wait(bars, slot, (cursor // R_) & 1)
                tma.mbar_wait(bars, slot_b, ((cursor + 1) // R_) & 1)
                mine = quad_rows_pages(kind, nrows, row0, slot * PW, min(rpp, end - row0 - rpp), row0 + rpp,
                                       slot_b * PW, nv, kw, rstd, y, h, act, logits, hacc, mine, ring, xs, xr, lane,
                                       warp)
                cuda.syncthreads()  # every warp is done with both slots
                for _ in range(2):
                    if issued < total and (not hold or issued < last):
                        issued, d1, d2, d3, d4 = issue_next(issued, cursor + 2 + R_, total, b, pb, table, Ww, ring,
                                                            bars, d1, d2, d3, d4)
                cursor += 2
                row0 += 2 * rpp
                continue
            if not LEAN:
                slot, par = ring_pos(cursor)
            if WREL:  # the copy descriptor of the page this slot gets next, in case this warp frees it last
                nd1, nd2, nd3, nd4 = next_desc(cursor + R_, total, b, pb, table, bars)
            page_wait(bars, slot, par)
            base = slot * PW
            if PAIRED:
                mine = paired_rows_page(kind, nrows, row0, base, nv, kw, rstd, y, h, act, logits, hacc, mine, ring, xs,
                                        xr, use_x, lane, warp)
            for r in range(warp, nrows if COMPUTE and not PAIRED else 0, NW):
                acc = D.warp_sum(dot1(ring, (base + r * kw) // 4, xs, xr, use_x, nv, lane))
                up = acc
                if kind == K_SWIGLU:
                    up = D.warp_sum(dot1(ring, (base + nrows * kw + r * kw) // 4, xs, xr, use_x, nv, lane))
                mine = emit(kind, row0 + r, acc, up, rstd, y, h, act, logits, hacc, mine, lane)
            if WREL:
                release_slot(cursor, slot, total, b, pb, table, Ww, ring, bars, lane, nd1, nd2, nd3, nd4)
            elif PRODUCER:
                leave_slot(bars, slot, lane)
            else:
                if SK_BAR:
                    cuda.syncthreads()  # every warp is done with the slot
                if SK_FILL and issued < total and (not hold or issued < last):
                    issued, d1, d2, d3, d4 = issue_next(issued, cursor + 1 + R_, total, b, pb, table, Ww, ring, bars,
                                                        d1, d2, d3, d4, PAIR_ALL or kind == K_LMHEAD)
            cursor += 1
            if LEAN:
                slot, par = next_pos(slot, par)
            row0 += rpp
        if POOL > 0 and kind == K_LMHEAD:  # the placeholders: pool pages (their rows from the copy thread), or none
            for _ in range((SLACK * POOL + nb - 1) // nb):
                slot = cursor % R_
                tma.mbar_wait(bars, slot, (cursor // R_) & 1)
                row0 = int32(bars[R_ + slot])
                if row0 >= 0:
                    mine = paired_rows_page(kind, min(RPL, V - row0), row0, slot * PW, nv, kw, rstd, y, h, act,
                                            logits, hacc, mine, ring, xs, xr, use_x, lane, warp)
                cursor, issued, d1, d2, d3, d4 = free_slot(cursor, issued, total, b, pb, table, Ww, ring, bars,
                                                           d1, d2, d3, d4)
        if WREL:
            issued = min(cursor + R_, total)
        return cursor, issued, mine, d1, d2, d3, d4

    @cuda.jit(device=True)
    def rows_mma(kind, k, rows, rstd, y, h, act, logits, hacc, mine, cursor, issued, total, pb, b, nb, table, Ww,
                 ring, bars, xs, part, d1, d2, d3, d4, hold):
        """``mma_pages``: ``rows_body`` for the phases whose rows have the hidden size (``k == D_``), on the tensor
        cores: the same pages in the same order, each multiplied into the warps' partials (``mma.page_mma``), then
        after the page's block barrier (and its refill) finished by the upper half of the warps (``mma_emit``). Its
        own function, so these call sites carry none of the CUDA-core consumer's code. Returns as ``rows_body``."""
        lane = cuda.threadIdx.x & (WARP - 1)
        warp = cuda.threadIdx.x >> 5
        kw = D_ // 2
        rpp = PW // (kw * 2) if kind == K_SWIGLU else PW // kw
        first = qdiv(rows * b, nb)
        end = qdiv(rows * (b + 1), nb)
        if FD and kind == K_SWIGLU:
            first, end = mlp_rows(rows, b, nb)
        last = cursor + (end - first + rpp - 1) // rpp  # the cursor after this phase's pages
        xf = cuda.local.array(XF, uint32)
        load_fragments(xf, xs, D_ // 8, lane, warp)
        slot, par = ring_pos(cursor)
        row0 = first
        while row0 < end:
            nrows = min(rpp, end - row0)
            if not LEAN:
                slot, par = ring_pos(cursor)
            page_wait(bars, slot, par)
            buf = (cursor & 1) * (PART_N // 2)  # (two pages' partials: a warp may start the next page's)
            if COMPUTE:
                mma_partials(ring, slot * PW, nrows, kw, kind == K_SWIGLU, row0 & 7, xf, part, buf, lane, warp)
            if SK_BAR:
                cuda.syncthreads()  # every warp is done with the slot, and its partials are in part[buf]
            if SK_FILL and issued < total and (not hold or issued < last):
                issued, d1, d2, d3, d4 = issue_next(issued, cursor + 1 + R_, total, b, pb, table, Ww, ring, bars,
                                                    d1, d2, d3, d4, PAIR_ALL or kind == K_LMHEAD)
            if COMPUTE:
                mine = mma_emit(kind, nrows, row0, part, buf, rstd, y, h, act, logits, hacc, mine, lane, warp)
            cursor += 1
            if LEAN:
                slot, par = next_pos(slot, par)
            row0 += rpp
        return cursor, issued, mine, d1, d2, d3, d4

    @cuda.jit(device=True)
    def mlp_rows(rows, b, nb):
        """``fused_down``: block b's MLP rows [first, end), in whole chunks of ``fd_chunk`` (``split_down
        .aligned_rows``, as the page table has them)."""
        n = (rows + CH - 1) // CH
        return min(rows, CH * qdiv(n * b, nb)), min(rows, CH * qdiv(n * (b + 1), nb))

    @cuda.jit(device=True)
    def down_phase(rows, act, hacc, stage, cursor, issued, total, pb, b, nb, table, Ww, ring, bars, d1, d2, d3,
                   d4):
        """``fused_down``: this block's pages of W_down^T, the rows of ``act`` it made (``rows`` = F, split as
        gate/up's), each row scaled by its act value and summed per column in fixed point (``split_down``), then
        added into ``hacc``. Returns (cursor, issued, d1, d2, d3, d4)."""
        kw = D_ // 2
        rpp = PW // kw
        first, end = mlp_rows(rows, b, nb)
        sums = cuda.local.array(NSUMS, int64)
        parts = cuda.local.array(NSUMS, float32)
        down_start(sums, parts)
        slot, par = ring_pos(cursor)  # (lean: carried from page to page)
        row0 = first
        while row0 < end:
            nrows = min(rpp, end - row0)
            if not LEAN:
                slot, par = ring_pos(cursor)
            page_wait(bars, slot, par)
            if COMPUTE and FD_PROBE != 1:
                down_page(ring, slot * PW, nrows, row0, end, act, sums, parts)
            if PRODUCER:
                leave_slot(bars, slot, cuda.threadIdx.x & (WARP - 1))
                cursor += 1
            else:
                cursor, issued, d1, d2, d3, d4 = free_slot(cursor, issued, total, b, pb, table, Ww, ring, bars, d1,
                                                           d2, d3, d4)
            if LEAN:
                slot, par = next_pos(slot, par)
            row0 += rpp
        if FD_PROBE != 2:
            if BULK:
                down_flush_bulk(hacc, sums, b, stage)
            else:
                down_flush(hacc, sums, b)
        return cursor, issued, d1, d2, d3, d4

    @cuda.jit(device=True)
    def deltanet_out_phase(j, Wf, conv_ws, conv, rec, scr, counters, h, hacc, stage, xs, flag, b, nb, cursor,
                           issued, total, pb, table, Ww, ring, bars, d1, d2, d3, d4):
        """``fused_out``: DeltaNet layer ``j``'s items and its out_proj in one phase. (1) The block's items, each
        publishing the sum of o^2 over its columns (in column order) and counting itself in on its value head's
        counter (a release); the row owners fold the last MLP's accumulator into h (nothing reads h in this
        phase). (2) Per item, once all of its head's items are in (an acquire-poll; a block waits only after all
        its own items, so no deadlock): the head's sum of squares (its items' sums in item order), the gated
        norm of the item's columns into the workspace, and the item's pages of ``W_out^T`` scaled by them, summed
        per output in fp32 over the item's columns, then in fixed point; (3) one flush into ``h_out``.
        Returns (cursor, issued, d1, d2, d3, d4)."""
        tid = cuda.threadIdx.x
        proj_lin = scr[PL0:PL0 + P_LIN]
        o_lin = scr[OL0:OL0 + HVDV]
        ssq = scr[SQ0:SQ0 + N_DN]
        a_log = Wf[F_ALOG + j * LSS:F_ALOG + j * LSS + Hv]
        dt_bias = Wf[F_DT + j * LSS:F_DT + j * LSS + Hv]
        gn = Wf[F_GN + j * LSS:F_GN + j * LSS + Dv]
        xg = xs[XG:XG + HVDV]
        for item in range(b, N_DN, nb):
            dn_item(item, proj_lin, conv_ws[j], conv[j], a_log, dt_bias, rec[j], o_lin, counters, xs, flag)
            # the item's o from its workspace (the body returns with the block synchronised), its share of the
            # head's sum of squares (warp 0's butterfly), counted in; then its gated values before the head's rstd
            col0 = item * CW
            v = float32(0)
            if tid < CW:
                v = column_out(xs, tid)
            if tid < WARP:
                s = D.warp_sum(v * v)
                if tid == 0:
                    ssq[item] = s
                    tma.red_release_add(counters, HC0 + item // NS_ITEM, 1)
            if tid < CW:
                xg[col0 + tid] = gn[(item % NS_ITEM) * CW + tid] * v * D.silu(proj_lin[C + col0 + tid])
            cuda.syncthreads()  # the next item's body reuses the workspace
        for d in range(b * T + tid, D_, nb * T):
            h[d] = h[d] + fold_mlp(hacc, d)
            clear_mlp(hacc, d)
        sums = cuda.local.array(NSUMS, int64)
        parts = cuda.local.array(NSUMS, float32)
        down_start(sums, parts)
        for item in range(b, N_DN, nb):
            hd = item // NS_ITEM
            if tid == 0:
                while tma.ld_acquire(counters, HC0 + hd) < NS_ITEM:
                    pass
            cuda.syncthreads()
            s = float32(0)
            for k in range(NS_ITEM):
                s += ssq[hd * NS_ITEM + k]
            r = D.rsqrt(s / float32(Dv) + EPS)
            col0 = item * CW
            if tid < CW:
                xg[col0 + tid] = xg[col0 + tid] * r
            cuda.syncthreads()
            row0 = col0
            end = col0 + CW
            while row0 < end:
                nrows = min(RPP_OUT, end - row0)
                slot = cursor % R_
                tma.mbar_wait(bars, slot, (cursor // R_) & 1)
                if COMPUTE:
                    out_page(ring, slot * PW, nrows, row0, end, xg, sums, parts)
                cursor, issued, d1, d2, d3, d4 = free_slot(cursor, issued, total, b, pb, table, Ww, ring, bars, d1,
                                                           d2, d3, d4)
                row0 += RPP_OUT
        if BULK:
            out_flush_bulk_to(hacc, sums, OUT_ACC * fd_stride, stage)
        else:
            out_flush_to(hacc, sums, OUT_ACC)
        return cursor, issued, d1, d2, d3, d4

    if rows_out_of_line:
        from .noinline import noinline

        @cuda.jit(device=True)
        def rows_call(kind, k, rows, rstd, y, h, act, logits, hacc, mine, cursor, issued, total, pb, b, nb, table, Ww,
                      ring, bars, xs, part, d1, d2, d3, d4, hold):
            return rows_body(kind, k, rows, rstd, y, h, act, logits, hacc, mine, cursor, issued, total, pb, b, nb,
                             table, Ww, ring, bars, xs, part, d1, d2, d3, d4, hold)

        noinline(rows_call)

        @cuda.jit(device=True)
        def rows_phase(kind, k, rows, rstd, y, h, act, logits, hacc, mine, cursor, issued, total, pb, b, nb, table, Ww,
                       ring, bars, xs, part, d1, d2, d3, d4, hold):
            # the sizes as runtime values: literal arguments would make one out-of-line copy per call site
            return rows_call(int32(kind), int32(k), int32(rows), rstd, y, h, act, logits, hacc, mine, cursor, issued,
                             total, pb, b, nb, table, Ww, ring, bars, xs, part, d1, d2, d3, d4, int32(hold))
    else:
        rows_phase = rows_body
    rows_hidden = rows_mma if MMA else rows_phase  # the call sites whose rows have the hidden size
    if rows_out_of_line and MMA:  # one out-of-line copy of the tensor-core page loop for its five call sites
        from .noinline import noinline

        @cuda.jit(device=True)
        def rows_mma_call(kind, rows, rstd, y, h, act, logits, hacc, mine, cursor, issued, total, pb, b, nb, table,
                          Ww, ring, bars, xs, part, d1, d2, d3, d4, hold):
            return rows_mma(kind, D_, rows, rstd, y, h, act, logits, hacc, mine, cursor, issued, total, pb, b, nb,
                            table, Ww, ring, bars, xs, part, d1, d2, d3, d4, hold)

        noinline(rows_mma_call)

        @cuda.jit(device=True)
        def rows_hidden(kind, k, rows, rstd, y, h, act, logits, hacc, mine, cursor, issued, total, pb, b, nb, table,
                        Ww, ring, bars, xs, part, d1, d2, d3, d4, hold):
            return rows_mma_call(int32(kind), int32(rows), rstd, y, h, act, logits, hacc, mine, cursor, issued,
                                 total, pb, b, nb, table, Ww, ring, bars, xs, part, d1, d2, d3, d4, int32(hold))

    def persistent_v2(Ww, Wf, conv_ws, conv, rec, kc, vc, position, scr, q, pml, po, ctl, best, best_s, tokens,
                      counters, trace, prof, table_g, npages, hacc):
        smem_w = cuda.shared.array(0, int32)
        smem_f = cuda.shared.array(0, float32)
        scratch = cuda.shared.array(32, float32)
        flag = cuda.shared.array(1, int32)
        keys = cuda.shared.array(WARP, int64)
        bars = cuda.shared.array(N_BARS, int64)  # the slots' mbarriers, then (warp_release) their release counts
        descs = cuda.shared.array((1, 1 if PACKED else DCAP, 4), int32)  # smem_descs: the block's copy descriptors
        acc_stage = cuda.shared.array(STAGE, int64)  # fd_bulk: a block's down sums for the copy engine
        part = cuda.shared.array(PART_N, float32)  # mma_pages: the warps' partial sums of two pages' rows
        grid = barrier_handle(ctl)
        if CSMEM:  # the barriers' count in shared memory (zeroed below, before the first barrier)
            grid = (grid[0], grid[1], bars[CNT:CNT + 1])
        b = cuda.blockIdx.x
        nb = cuda.gridDim.x
        tid = cuda.threadIdx.x
        first = b == 0 and tid == 0
        xs = smem_f[0:XS]  # the phases' workspace: staged x, the mixers' scratch
        pad = ((128 - (tma.shared_address(smem_w) + 4 * XS) % 128) % 128) // 4  # the ring on a 128-byte boundary
        ring = smem_w[XS + pad:XS + pad + R_ * PW]

        pos0 = position[0]
        n_steps = ctl[P.CTL_STEPS]
        token = ctl[P.CTL_TOKEN]
        if token < 0:
            token = ctl[P.CTL_LAST]
        pb = npages[b]
        total = pb * n_steps
        in_smem = DESC and pb <= DCAP  # (a grid so small that a block's pages do not fit reads global memory)
        if in_smem and PACKED and tid < T:  # the block's copy descriptors into shared memory, two words to an int64
            i = tid
            while i < 2 * pb:
                lo = table_g[b, i >> 1, 2 * (i & 1)]
                hi = table_g[b, i >> 1, 2 * (i & 1) + 1]
                bars[DB0 + i] = (int64(lo) & 0xFFFFFFFF) | (int64(hi) << 32)
                i += T
        elif in_smem and tid < T:  # the block's copy descriptors into shared memory
            i = tid
            while i < 4 * pb:
                descs[0, i >> 2, i & 3] = table_g[b, i >> 2, i & 3]
                i += T
        table = descs if in_smem else table_g  # where the copy thread reads its descriptors
        if tid == 0:
            for s in range(R_):
                tma.mbar_init(bars, s, 1)
                bars[R_ + s] = 0
            bars[FUSED] = 0
            bars[WAITED] = 0
            if PACKED:
                bars[DIDX] = 0
            if CSMEM:
                bars[CNT] = 0
            if PRODUCER:
                for s in range(R_):
                    tma.mbar_init(bars, EMPTY0 + s, NW)
                bars[STOP] = 0
                bars[PDONE] = -1
                bars[HOLD] = 0
                bars[LIMIT] = NO_LIMIT
            tma.fence_mbarrier_init()
        if PRODUCER:
            warp_roles.sync_all()  # (the only barrier the producer warp takes part in)
            if tid >= T:
                if SETMAXNREG:
                    give_registers()
                if tid == T:
                    produce(total, b, pb, table, Ww, ring, bars)
                return
            if SETMAXNREG:
                take_registers()
        else:
            cuda.syncthreads()
        issued = min(R_, total)
        d1 = d2 = d3 = d4 = int32(0)
        if tid == 0 and not PRODUCER:
            for g in range(issued):
                d1, d2, d3, d4 = next_desc(g, total, b, pb, table, bars)
                issue(g % R_, d1, d2, d3, d4, Ww, ring, bars)
            d1, d2, d3, d4 = next_desc(issued, total, b, pb, table, bars)
        cursor = 0
        pf = 0  # thread 0: pages prefetched into L2 so far
        count = 0
        done = 0
        h = scr[H0:H0 + D_]
        tag = int64(0)  # ``ll_inproj``: the tag of this layer's in_proj words
        ll_base = HO.ll_base(ctl)  # (block 0 moves it on only after the launch's last barrier)
        for step in range(n_steps):
            pos = pos0 + step
            embed_rows(Ww[W_EMB:W_EMB + V * D_ // 2], token, h, D_ // 2, b, nb)
            if FD:  # the last step's LM head has read it (a barrier ago); the first MLP adds into it
                for d in range(b * T + tid, D_, nb * T):
                    clear_acc(hacc, d)
                    if LLR:  # (and the other region, which layer 0's residual phase folds)
                        clear_acc(hacc, R1 + d)
            if POOL > 0 and first:  # every claim on the last step's pool was made before its LM head's barrier
                table_g[nb, 0, 0] = 0
            count, pf = bar(grid, count, prof, issued, pf, total, b, pb, table, Ww, bars)
            for i in range(L):
                j = SLOT[i]
                if LLR:  # the region of the last MLP (its accumulator, the residual phase's words) and this MLP's
                    if (i & 1) == 0:
                        acc_in = hacc[R1:R1 + RW]
                        acc_mlp = hacc[0:RW]
                    else:
                        acc_in = hacc[0:RW]
                        acc_mlp = hacc[R1:R1 + RW]
                else:
                    acc_in = hacc
                    acc_mlp = hacc
                rtag = NO_KEY  # ``ll_residual``: the tag of this layer's residual words
                if PREFETCH:
                    if KIND[i] == 0:
                        if HAS_LIN:
                            prefetch_deltanet(j, b, nb, rec, conv, Wf)
                    elif HAS_ATT:
                        prefetch_kv(j, pos, b, nb, kc, vc)
                in_norm = Wf[F_IN + i * NS_:F_IN + i * NS_ + D_]
                if NORM_ACC:
                    ss = norm_acc(h, acc_in, in_norm, xs, D_ // 8, scratch)
                else:
                    ss = stage_norm(h, in_norm, xs, D_ // 8, scratch)
                rstd = D.rsqrt(ss / float32(D_) + EPS)
                if KIND[i] == 0:
                    if HAS_LIN:
                        if LL:  # the rows as words tagged for the items; no barrier before them
                            tag = HO.ll_tag(ll_base, barrier_count(grid, count))
                            cursor, issued, _m, d1, d2, d3, d4 = rows_hidden(
                                K_NORM_LL, D_, P_LIN, rstd, scr[PL0:PL0 + P_LIN], h, h, h, hacc, tag, cursor, issued,
                                total, pb, b, nb, table, Ww, ring, bars, xs, part, d1, d2, d3, d4, DEFER or THROTTLE)
                        else:
                            cursor, issued, _m, d1, d2, d3, d4 = rows_hidden(
                                K_NORM, D_, P_LIN, rstd, scr[PL0:PL0 + P_LIN], h, h, h, hacc, NO_KEY, cursor, issued,
                                total, pb, b, nb, table, Ww, ring, bars, xs, part, d1, d2, d3, d4, DEFER or THROTTLE)
                        if LATE:
                            prefetch_deltanet(j, b, nb, rec, conv, Wf)
                        if not LL:
                            count, pf = bar(grid, count, prof, issued, pf, total, b, pb, table, Ww, bars)
                        if L2_MIX > 0 and tid == 0:
                            pf = l2_top_up(issued, pf, total, b, pb, table, Ww, L2_MIX)
                        if FO:  # the items and their share of out_proj, one phase
                            cursor, issued, d1, d2, d3, d4 = deltanet_out_phase(
                                j, Wf, conv_ws, conv, rec, scr, counters, h, hacc, acc_stage, xs, flag, b, nb,
                                cursor, issued, total, pb, table, Ww, ring, bars, d1, d2, d3, d4)
                            count, pf = bar(grid, count, prof, issued, pf, total, b, pb, table, Ww, bars)
                        else:
                            if MIXERS and LL:
                                count = deltanet_core(j, Wf, conv_ws, conv, rec, scr, counters, b, nb, xs, flag,
                                                      grid, count, prof, hacc[LL0:LL0 + P_LIN], tag)
                            elif MIXERS:
                                count = deltanet_core(j, Wf, conv_ws, conv, rec, scr, counters, b, nb, xs, flag,
                                                      grid, count, prof)
                            else:
                                count, pf = bar(grid, count, prof, issued, pf, total, b, pb, table, Ww, bars)
                            if DSHIFT:  # every item has read the q/k conv state: shift it (loads now, stores after
                                # the staging of out_proj's x, whose loads they wait with)
                                shifted = cuda.local.array(KM1, float32)
                                shift_load(conv[j], scr[PL0:PL0 + P_LIN], b, nb, shifted)
                            if DEFER:
                                issued, d1, d2, d3, d4 = refill(cursor, issued, total, b, pb, table, Ww, ring, bars,
                                                                d1, d2, d3, d4)
                            gn = Wf[F_GN + j * LSS:F_GN + j * LSS + Dv]
                            stage_gated(scr[OL0:OL0 + HVDV], scr[PL0 + C:PL0 + C + HVDV], gn, xs, Hv, Dv, EPS)
                            if DSHIFT:  # (its loads were in flight with the staging's: no wait of its own)
                                shift_store(conv[j], scr[PL0:PL0 + P_LIN], b, nb, shifted)
                            cuda.syncthreads()
                            if LLR:
                                rtag = HO.ll_tag(ll_base, barrier_count(grid, count))
                            cursor, issued, _m, d1, d2, d3, d4 = rows_phase(
                                K_GATED, HVDV, D_, rstd, h, h, h, h, acc_in, rtag, cursor, issued, total, pb, b, nb,
                                table, Ww, ring, bars, xs, part, d1, d2, d3, d4, False)
                            if not LLR:
                                count, pf = bar(grid, count, prof, issued, pf, total, b, pb, table, Ww, bars)
                else:
                    if HAS_ATT:
                        cursor, issued, _m, d1, d2, d3, d4 = rows_hidden(
                            K_NORM, D_, P_ATT, rstd, scr[PA0:PA0 + P_ATT], h, h, h, hacc, NO_KEY, cursor, issued, total,
                            pb, b, nb, table, Ww, ring, bars, xs, part, d1, d2, d3, d4, DEFER or THROTTLE)
                        if LATE:
                            prefetch_kv(j, pos, b, nb, kc, vc)
                        count, pf = bar(grid, count, prof, issued, pf, total, b, pb, table, Ww, bars)
                        if L2_MIX > 0 and tid == 0:
                            pf = l2_top_up(issued, pf, total, b, pb, table, Ww, L2_MIX)
                        if MIXERS:
                            count = attention_core(j, Wf, kc, vc, pos, scr, q, pml, po, counters, b, nb, xs,
                                                   scratch, flag, grid, count, prof)
                        else:
                            for _ in range(ATT_BARRIERS):
                                count, pf = bar(grid, count, prof, issued, pf, total, b, pb, table, Ww, bars)
                        if DEFER:
                            issued, d1, d2, d3, d4 = refill(cursor, issued, total, b, pb, table, Ww, ring, bars,
                                                            d1, d2, d3, d4)
                        stage_split(scr[AO0:AO0 + HQDH], xs, HQDH // 8)
                        cuda.syncthreads()
                        if LLR:
                            rtag = HO.ll_tag(ll_base, barrier_count(grid, count))
                        cursor, issued, _m, d1, d2, d3, d4 = rows_phase(
                            K_PLAIN, HQDH, D_, rstd, h, h, h, h, acc_in, rtag, cursor, issued, total, pb, b, nb, table,
                            Ww, ring, bars, xs, part, d1, d2, d3, d4, False)
                        if not LLR:
                            count, pf = bar(grid, count, prof, issued, pf, total, b, pb, table, Ww, bars)
                post_norm = Wf[F_POST + i * NS_:F_POST + i * NS_ + D_]
                if FO and NORM_ACC:  # h_out is not folded into h before the next attention layer
                    ss = norm_acc(h, hacc, post_norm, xs, D_ // 8, scratch)
                elif LLR:  # h as the residual phase's words, each awaited by its tag
                    ss = HO.ll_stage_norm(acc_in, D_, rtag, post_norm, xs, D_ // 8, scratch, LL_BACKOFF,
                                              LL_TOGETHER_NORM)
                else:
                    ss = stage_norm(h, post_norm, xs, D_ // 8, scratch)
                rstd = D.rsqrt(ss / float32(D_) + EPS)
                if FO and b == 0:  # every wait on the out_proj head counters is a barrier ago: clear them
                    for hc in range(tid, Hv, T):
                        counters[HC0 + hc] = 0
                if FD:  # one phase: the block's act rows stay in its workspace, its down rows add into hacc
                    act_rows = xs[XA:XA + F]
                    cursor, issued, _m, d1, d2, d3, d4 = rows_hidden(
                        K_SWIGLU, D_, F, rstd, h, h, act_rows, h, acc_mlp, NO_KEY, cursor, issued, total, pb, b, nb,
                        table, Ww, ring, bars, xs, part, d1, d2, d3, d4, False)
                    cuda.syncthreads()  # (the last page's barrier already published the block's rows of act)
                    cursor, issued, d1, d2, d3, d4 = down_phase(F, act_rows, acc_mlp, acc_stage, cursor, issued, total,
                                                                pb, b, nb, table, Ww, ring, bars, d1, d2, d3, d4)
                    count, pf = bar(grid, count, prof, issued, pf, total, b, pb, table, Ww, bars)
                else:
                    act = scr[ACT0:ACT0 + F]
                    cursor, issued, _m, d1, d2, d3, d4 = rows_hidden(
                        K_SWIGLU, D_, F, rstd, h, h, act, h, hacc, NO_KEY, cursor, issued, total, pb, b, nb, table,
                        Ww, ring, bars, xs, part, d1, d2, d3, d4, False)
                    count, pf = bar(grid, count, prof, issued, pf, total, b, pb, table, Ww, bars)
                    stage_split(act, xs, F // 8)
                    cuda.syncthreads()
                    cursor, issued, _m, d1, d2, d3, d4 = rows_phase(
                        K_PLAIN, F, D_, rstd, h, h, h, h, hacc, NO_KEY, cursor, issued, total, pb, b, nb, table, Ww,
                        ring, bars, xs, part, d1, d2, d3, d4, False)
                    count, pf = bar(grid, count, prof, issued, pf, total, b, pb, table, Ww, bars)
                if ctl[P.CTL_TRACE] != 0:
                    for d in range(b * T + tid, D_, nb * T):
                        trace[i, d] = h[d] + fold_acc(acc_mlp, d) if FD else h[d]
            # ---- LM head + argmax, and the next token
            final_norm = Wf[F_FINAL:F_FINAL + D_]
            if LLR:  # the last layer's MLP region
                ss = norm_acc(h, hacc[R1:R1 + RW] if (L & 1) == 0 else hacc[0:RW], final_norm, xs, D_ // 8, scratch)
            elif NORM_ACC:
                ss = norm_acc(h, hacc, final_norm, xs, D_ // 8, scratch)
            else:
                ss = stage_norm(h, final_norm, xs, D_ // 8, scratch)
            rstd = D.rsqrt(ss / float32(D_) + EPS)
            logits = scr[LG0:LG0 + V]
            cursor, issued, mine, d1, d2, d3, d4 = rows_hidden(
                K_LMHEAD, D_, V_STATIC, rstd, h, h, h, logits, hacc, NO_KEY, cursor, issued, total, pb, b, nb, table,
                Ww, ring, bars, xs, part, d1, d2, d3, d4, False)
            if SPLIT:
                mine = warp_max_key(mine)
            lmh.publish_block_best(mine, best, nb, keys)
            count, pf = bar(grid, count, prof, issued, pf, total, b, pb, table, Ww, bars)
            if ctl[P.CTL_SAMPLE] != 0:
                seed_lo, seed_hi = seed_bits(ctl)
                lmh.sample_gumbel_rows(logits, V, D.bits_to_f32(ctl[P.CTL_INV_T]), seed_lo, seed_hi, pos, best_s,
                                       b, nb, keys)
                count, pf = bar(grid, count, prof, issued, pf, total, b, pb, table, Ww, bars)
                token = int32(best_s[3])
            else:
                token = int32(best[3])
            if CLAMP:
                token = min(max(token, 0), V - 1)
            if first:
                tokens[pos] = token
            done = step + 1
            if token == ctl[P.CTL_EOS]:
                break
        if tid == 0 and PRODUCER:  # stop the producer; wait for the pages it issued for steps that will not run
            cuda.atomic.add(bars, STOP, 1)
            while tma.flag_value(bars, PDONE) < 0:
                pass
            for g in range(cursor, bars[PDONE]):
                tma.mbar_wait(bars, g % R_, (g // R_) & 1)
        elif tid == 0:  # pages already requested for steps that will not run: wait for them before exiting
            for g in range(cursor, issued):
                tma.mbar_wait(bars, g % R_, (g // R_) & 1)
        count, pf = bar(grid, count, prof, issued, pf, total, b, pb, table, Ww, bars)
        count = barrier_count(grid, count)
        close_launch(first, position, pos0, done, ctl, token, count)
        close_barriers(first, grid, count)
        if LL and first:
            HO.ll_close(ctl, ll_base, count)

    if producer:  # the name tells the compiler hook (and the simulator) how many threads are consumers
        persistent_v2.__name__ = persistent_v2.__qualname__ = warp_roles.consumer_name("persistent_v2", T)
    jit_options = {} if lto else warp_roles.NO_LTO
    return cuda.jit(persistent_v2, max_registers=max_registers or None, lineinfo=lineinfo, **jit_options)




def extra_args(decoder) -> list:
    """The page table for the decoder's grid (rebuilt when the grid changes)."""
    fused = decoder.fuses_down
    chunk = decoder.option_value("fd_chunk", 1) if fused else 1
    out = decoder.fuses_out
    pool = decoder.option_value("lm_pool", 0)
    pairs = decoder.option_value("pair_copies", 0)
    key = (decoder.blocks, decoder.plan.page_words, fused, chunk, out, pool, pairs)
    cached = getattr(decoder, "_v2_pages", None)
    if cached is None or cached[0] != key:
        table, count = PG.page_table(decoder.config, decoder.blocks, decoder.plan.page_words, fused, chunk, out,
                                     pool, pairs)
        t = torch.from_numpy(table).to(decoder.device)
        n = torch.from_numpy(count).to(decoder.device)
        cached = decoder._v2_pages = (key, [as_kernel_array(t), as_kernel_array(n), as_kernel_array(decoder.h_acc)],
                                      (t, n))
    return cached[1]


__all__ = ["VERSION", "DESCRIPTION", "configure", "build", "kernel_key", "extra_args", "ll_offset", "ll_words"]
