"""The MLP's down projection split over the intermediate dimension (``fused_down``, version 7).

Why. In versions 2-6 an MLP is two phases with a grid barrier between them: gate/up makes ``act`` [F] (each block
its share of the F rows), and down (``h += W_down @ act``, each block its share of the D rows) needs all of
``act``, so every block waits for every other. That barrier, and the down phase's own prologue (``act`` staged
from L2) and epilogue, cost ~5.5 us per layer on the H100, for 7.3 MB of weights that stream in ~2.5 us.

Split-K instead: a block that made rows ``[f0, f1)`` of ``act`` multiplies them by the same rows of
``W_down^T`` ([F, D], stored transposed: ``DeviceWeights(down_transposed=True)``, so the rows are one contiguous
run, streamed through the ring like any page) and adds its [D] partial into the residual stream. No block waits
for another's ``act``: one phase, one barrier per MLP.

Adding partials from every block into one [D] vector needs atomics, and float atomics would sum in whatever
order the blocks arrive: the bits would change from run to run (the stress tests hold the kernel to repeat-run
and cross-grid bit identity). So the products ``W^T[f, d] * act[f]`` (fp32, as the reference's matvec makes
them) of a chunk of ``fd_chunk`` rows are summed in fp32 in row order, and each chunk's sum is converted to
64-bit fixed point (``to_fixed``: x 2^32, truncated) and summed as integers: integer addition is associative, so
the total is the same whatever the order. A block's rows come in whole chunks (``aligned_rows``), so no chunk's
fp32 sum depends on the grid either. The range is +-2^31 per element of h's update with a resolution of 2^-32
(2.3e-10); each chunk loses at most one resolution step, so the 896 chunks of a 0.8B down row err by at most
2.1e-7 in total (fp32's own rounding of such a sum is of the same order).

How the partials meet (measured on the H100, context 512; NOTES.md "Persistent megakernel version 7"): 2 x 512
``atom.add.u64`` per block, 135k per layer on one 8 KB vector, cost ~100 us per step, half of it in the next
phase's reads of the vector (its L2 lines still busy with the atomics); replicas of the vector or its elements
spread over more L2 lines (``fd_reps``, ``fd_stride``) moved the cost around without removing it. One bulk
reduction per block by the copy engine (``tma.bulk_reduce_add_u64``: ``cp.reduce.async.bulk ... add.u64`` of
the block's staged [D] sums, ``fd_bulk``) costs ~20 us per step: within 2% of no reduction at all.

Where the sum goes: ``h_acc`` (int64 [D], or ``fd_reps`` x [D]). The phases after the MLP that read h (the next
layer's input norm, or the final norm) read ``h + from_fixed(h_acc)`` (``stage_norm_acc``), and the next residual
phase (out_proj or o_proj) folds it in per row, ``h[row] = (h[row] + from_fixed(h_acc[row])) + acc``, the
reference's two fp32 adds in its order, then clears ``h_acc[row]`` for the next MLP. The embedding phase clears it
at the start of a step.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import cuda
from numba.cuda import float32, int64, uint64

from megakernel import device as D

from . import tma
from ..kernels.fused_matvec import stage_norm4

FIXED_SCALE = np.float32(2.0**32)  # one unit of h_acc is 2^-32
FIXED_UNIT = np.float32(2.0**-32)

__all__ = ["FIXED_SCALE", "FIXED_UNIT", "to_fixed", "from_fixed", "aligned_rows", "accumulator", "down_t_consumer"]


@cuda.jit(device=True)
def to_fixed(x):
    """float32 -> int64 units of 2^-32, truncated toward zero (``cvt.rzi.s64.f32``; x 2^32 is exact in fp32)."""
    return int64(x * FIXED_SCALE)


@cuda.jit(device=True)
def from_fixed(v):
    """int64 units of 2^-32 -> float32: one rounding (``cvt.rn.f32.s64``), then an exact power-of-two scale."""
    return float32(v) * FIXED_UNIT


def aligned_rows(rows: int, block: int, nblocks: int, chunk: int) -> tuple[int, int]:
    """Block ``block``'s contiguous share [first, end) of ``rows`` rows in whole chunks of ``chunk`` rows (the last
    chunk may be short), so no chunk is ever split between blocks, whatever the grid."""
    n = -(-rows // chunk)
    return min(rows, chunk * (n * block // nblocks)), min(rows, chunk * (n * (block + 1) // nblocks))


@functools.lru_cache(maxsize=None)
def accumulator(hidden: int, reps: int, stride: int = 1, out: bool = False):
    """``(stage_norm_acc, fold)`` for ``h_acc`` kept as ``reps`` replicas of [hidden] int64 (block b adds into
    replica b % reps, so each element takes a ``reps``-th of the atomics; their integer sum is the same whatever
    ``reps``). Element d of replica r is word ``(r * hidden + d) * stride`` of ``hacc``: a stride spreads the
    elements over more L2 lines (the atomics of all blocks on one 8 KB vector otherwise queue on a few L2 slices).
    ``out`` (``fused_out``): one more vector after the replicas, ``h_out``, where the DeltaNet items add their
    share of out_proj; ``fold``/``clear`` cover it too, ``fold_mlp``/``clear_mlp`` only the MLP's replicas.

    ``stage_norm_acc(h, hacc, gw, xs, nv, scratch)``: ``fused_matvec.stage_norm`` of ``h + from_fixed(h_acc)``
    (xs <- that * (1 + gw) in the split layout; returns its sum of squares, the same in every block; its barriers
    publish xs). ``fold(hacc, d)``: element d of the accumulator as float32 (the replicas summed as integers, then
    one rounding); ``clear(hacc, d)`` zeroes it."""

    def first_vectors(n):
        """``(fold, clear)`` over the first ``n`` vectors of ``hacc``."""

        @cuda.jit(device=True)
        def fold_n(hacc, d):
            v = hacc[d * stride]
            for r in range(1, n):
                v += hacc[(r * hidden + d) * stride]
            return from_fixed(v)

        @cuda.jit(device=True)
        def clear_n(hacc, d):
            for r in range(n):
                hacc[(r * hidden + d) * stride] = int64(0)

        return fold_n, clear_n

    fold, clear = first_vectors(reps + (1 if out else 0))
    fold_mlp, clear_mlp = first_vectors(reps)

    @cuda.jit(device=True)
    def stage_norm_acc(h, hacc, gw, xs, nv, scratch):
        ss = float32(0)
        q = cuda.threadIdx.x
        while q < 2 * nv:  # (not range(): its trip count would be a 64-bit division by the block size)
            h0, h1, h2, h3 = D.load_f32x4(h, q)
            g0, g1, g2, g3 = D.load_f32x4(gw, q)
            h0 = h0 + fold(hacc, 4 * q)
            h1 = h1 + fold(hacc, 4 * q + 1)
            h2 = h2 + fold(hacc, 4 * q + 2)
            h3 = h3 + fold(hacc, 4 * q + 3)
            ss += stage_norm4(xs, q, nv, h0, h1, h2, h3, g0, g1, g2, g3)
            q += cuda.blockDim.x
        return D.block_sum(ss, scratch)

    return stage_norm_acc, fold, clear, fold_mlp, clear_mlp


@functools.lru_cache(maxsize=None)
def down_t_consumer(threads: int, hidden: int, chunk: int = 1, reps: int = 1, stride: int = 1, rows_per_page: int = 0,
                    lean: bool = False):
    """``(start, page, flush, flush_bulk, flush_to, flush_bulk_to, NSUMS)``: device functions for a block of
    ``threads`` threads and rows of ``hidden``
    weights (``hidden / 2`` words): thread t owns the word columns t, t + threads, ... (``NPW`` of them, two
    columns each, their low and high bf16), with an fp32 partial and an int64 sum per column, in local arrays
    (``NSUMS`` = 2 NPW elements each) kept across the block's pages.

    ``start(sums, parts)`` zeroes them. ``page(ring, base, nrows, row0, end, act, sums, parts)`` adds the page's
    ``nrows`` rows (row ``r`` at word ``base + r * hidden / 2`` of the ring, scaled by ``act[row0 + r]``): each
    column's products are summed in fp32 over a chunk of ``chunk`` rows in row order, and the chunk's sum goes
    into the int64 sum in fixed point where the chunk ends (at a multiple of ``chunk``, or at the block's ``end``);
    so with the block's rows in whole chunks (``aligned_rows``) every chunk's fp32 sum, and so the total, is the
    same whatever the grid. When pages hold whole chunks (``rows_per_page`` a multiple of ``chunk``) a chunk's rows
    are read all at once (``chunk`` x NPW independent loads per thread; the same sums in the same order).
    ``flush(hacc, sums, block)`` adds the sums into replica ``block % reps`` of ``hacc`` (laid out as
    ``accumulator`` has it; relaxed atomics, ordered for the readers by the grid barrier after); ``flush_bulk``
    the same through the copy engine (one bulk reduction of the staged [hidden] sums); the ``_to`` forms add into
    the vector at a given element of ``hacc`` (``fused_out``'s ``h_out``). ``lean`` (whole-chunk pages): a chunk's
    ``act`` values loaded once for all of the thread's columns, and unsigned indices (no negative-index
    wraparound code on every shared-memory read): the same products and sums in the same order."""
    kw = hidden // 2
    npw = -(-kw // threads)
    exact = kw % threads == 0
    fast = chunk > 1 and rows_per_page > 0 and rows_per_page % chunk == 0

    @cuda.jit(device=True)
    def start(sums, parts):
        for m in range(2 * npw):
            sums[m] = int64(0)
            parts[m] = float32(0)

    @cuda.jit(device=True)
    def page(ring, base, nrows, row0, end, act, sums, parts):
        tid = cuda.threadIdx.x
        r0 = 0
        if fast and lean:
            while r0 + chunk <= nrows:
                rb = uint64(base + r0 * kw + tid)
                ab = uint64(row0 + r0)
                av = cuda.local.array(chunk, float32)
                for k in range(chunk):
                    av[k] = act[ab + uint64(k)]
                for m in range(npw):
                    if exact or tid + m * threads < kw:
                        lo = float32(0)
                        hi = float32(0)
                        for k in range(chunk):
                            w = ring[rb + uint64(m * threads + k * kw)]
                            lo = lo + D.bf16_lo(w) * av[k]
                            hi = hi + D.bf16_hi(w) * av[k]
                        sums[2 * m] += to_fixed(lo)
                        sums[2 * m + 1] += to_fixed(hi)
                r0 += chunk
        elif fast:  # whole chunks (a page starts on a chunk boundary): no partial sum carried in or out
            while r0 + chunk <= nrows:
                rb = base + r0 * kw
                for m in range(npw):
                    p = tid + m * threads
                    if exact or p < kw:
                        lo = float32(0)
                        hi = float32(0)
                        for k in range(chunk):
                            w = ring[rb + k * kw + p]
                            a = act[row0 + r0 + k]
                            lo = lo + D.bf16_lo(w) * a
                            hi = hi + D.bf16_hi(w) * a
                        sums[2 * m] += to_fixed(lo)
                        sums[2 * m + 1] += to_fixed(hi)
                r0 += chunk
        for r in range(r0, nrows):
            a = act[row0 + r]
            rb = base + r * kw
            row = row0 + r
            close = chunk == 1 or (row + 1) % chunk == 0 or row + 1 == end
            for m in range(npw):
                p = tid + m * threads
                if exact or p < kw:
                    w = ring[rb + p]
                    if chunk == 1:
                        sums[2 * m] += to_fixed(D.bf16_lo(w) * a)
                        sums[2 * m + 1] += to_fixed(D.bf16_hi(w) * a)
                    else:
                        lo = parts[2 * m] + D.bf16_lo(w) * a
                        hi = parts[2 * m + 1] + D.bf16_hi(w) * a
                        if close:
                            sums[2 * m] += to_fixed(lo)
                            sums[2 * m + 1] += to_fixed(hi)
                            lo = float32(0)
                            hi = float32(0)
                        parts[2 * m] = lo
                        parts[2 * m + 1] = hi

    @cuda.jit(device=True)
    def flush_bulk(hacc, sums, block, stage):
        flush_bulk_to(hacc, sums, (block % reps) * hidden * stride, stage)

    @cuda.jit(device=True)
    def flush_bulk_to(hacc, sums, first, stage):
        """``flush`` through the copy engine: the block's sums staged in ``stage`` (an int64 shared array of
        ``hidden`` elements), then one bulk reduction of the whole vector into the replica (thread 0 returns once
        it is done; the block barrier after it frees the stage)."""
        tid = cuda.threadIdx.x
        for m in range(npw):
            p = tid + m * threads
            if exact or p < kw:
                stage[2 * p] = sums[2 * m]
                stage[2 * p + 1] = sums[2 * m + 1]
        tma.fence_proxy_async()  # the threads' shared-memory writes before the copy engine reads them
        cuda.syncthreads()
        if tid == 0:
            tma.bulk_reduce_add_u64(hacc, first, stage, 0, hidden)

    @cuda.jit(device=True)
    def flush(hacc, sums, block):
        flush_to(hacc, sums, (block % reps) * hidden)

    @cuda.jit(device=True)
    def flush_to(hacc, sums, off):
        """``flush`` into the vector at element ``off`` (before the stride) of ``hacc``."""
        tid = cuda.threadIdx.x
        for m in range(npw):
            p = tid + m * threads
            if exact or p < kw:
                cuda.atomic.add(hacc, (off + 2 * p) * stride, sums[2 * m])
                cuda.atomic.add(hacc, (off + 2 * p + 1) * stride, sums[2 * m + 1])

    return start, page, flush, flush_bulk, flush_to, flush_bulk_to, 2 * npw
