"""The matvec variants one decode step needs, each one launch, built on matvec v7 (the originals on v5 are kept).

Decode is a chain of matvecs with small ops in between (norms, activations, residual adds).  Each small op as a
kernel of its own would cost a launch (several microseconds of host time; ~2 us of GPU time even inside a CUDA
graph) and a round trip of its vector through memory, for a few KB of data.  The 1024-row matvecs (out_proj,
o_proj, down) stream only 4-7 MB of weights, 1.4-2.5 us at 3 TB/s, so that overhead would double them.  So the
small ops are folded into the matvec that consumes or produces their vector:

==============================================  =======================================================================
``norm_matvec(h, norm_w, W, y, n, k, eps)``       y = W @ rms_norm(h)            (in_proj, q|k|v: reads the residual)
``norm_swiglu_matvec(h, norm_w, Wg, Wu, act,``    act = silu(Wg @ x) * (Wu @ x), x = rms_norm(h)   (MLP gate/up)
``    n, k, eps)``
``matvec_residual(W, x, h, n, k)``                h += W @ x                     (o_proj, down_proj)
``gated_norm_matvec_residual(o, z, norm_w, W,``   h += W @ gated_rms_norm(o, z)  (the DeltaNet out_proj)
``    h, n, heads, head_dim, eps)``
==============================================  =======================================================================

Memory-traffic reasoning, variant by variant (version 5, the original kernels):

* **RMSNorm folded into the dot product.**  ``rms_norm(h) = h * rstd * (1 + w)`` with one scalar
  ``rstd = 1/sqrt(mean(h^2) + eps)`` for the whole vector, so ``W @ rms_norm(h) = rstd * (W @ (h * (1 + w)))``:
  a warp reads ``h`` and ``w`` alongside its W row (through L1, like x in matvec v4/v5), multiplies on the fly,
  and scales the finished dot product by ``rstd`` at the end.  ``rstd`` needs the sum of squares of all of h,
  and a warp's 32 lanes read all of h for every row anyway: each lane adds up ``h^2`` of the pieces it reads and
  the warp sums those with the dot product (two shuffle reductions per row).  No extra pass over h, no block
  barrier, no separate norm launch, and every warp gets the bit-identical ``rstd`` (each lane always covers
  the same pieces, in the same order).  Extra cost: 16 more bytes of L1 reads and ~16 flops per 16 bytes of W,
  far below what an SM can do while it waits for HBM.
* **SwiGLU: one warp, both rows.**  ``act[i]`` needs row i of W_gate and row i of W_up against the same
  normalised vector: one warp streams both rows (2 + 2 sixteen-byte loads in flight per lane) and computes
  ``x`` once for both; ``silu`` happens in the epilogue.  The [F] gate and up vectors never exist in memory.
* **Residual add in the epilogue.**  Lane 0 does ``h[n] += acc``: one read-modify-write of 4 bytes per row
  instead of a separate add kernel over h.  In place: each row of h is touched by exactly one warp.
* **Gated RMSNorm as a per-block prologue.**  ``gated_rms_norm`` needs a per-head ``rstd`` (RMS over each
  head's ``head_dim`` values) and ``silu(z)`` per element, too much to redo per row.  So each block computes the
  normalised vector x (``heads * head_dim`` floats, 8 KB for Qwen3.5-0.8B) once into shared memory, one warp
  per head, then its warps stream W rows against it (x in matvec v7's "split" layout: conflict-free 16-byte
  reads).  The alternative, a tiny ``gated_rms_norm`` kernel writing x to global memory followed by
  ``matvec_residual``, is kept (``fused=False``) and timed next to the fused kernel by
  ``megakernel.bench.kernels``: on the H100 the fused kernel wins by ~2 us.

**Version 7** (the default; ``version=5`` selects the originals, on matvec v5) puts all four on matvec v7's
skeleton (one resident wave, each row's weight loads issued first, split-K for long rows, see
:mod:`megakernel.kernels.matvec`), and changes how the small ops are folded in:

* the RMSNorm is a per-block prologue too: the block stages x = h * (1 + w) in shared memory and computes
  sum(h^2) with one block reduction (the same order in every block, so every block has the bit-identical
  rstd), while the first rows' weight loads are in flight.  The version-5 way, every warp re-deriving x and
  the sum of squares from h and w for every row, cost 10 % on the LM head (201 vs 182 us) and 3 us on the
  attention projection;
* SwiGLU: G warps per row *pair*, half on the gate row and half on the up row, 4 pieces per lane each, meeting
  in shared memory (``combine_pair``).  The first attempt, one warp reading both rows (8 loads per lane),
  measured 8.1-8.5 us against 6.7 us for the plain matvec over the same 7168 rows; splitting the pair over two
  warps made it the plain matvec's shape of work (7.2 us);
* the gated norm's prologue loads o, z and the norm weight of four elements per lane before storing anything
  (a store to shared memory between them would keep the compiler from issuing the next loads early: it cannot
  tell the arrays apart), then rescales the staged values by the head's rstd; holding the first row's loads
  through the prologue takes ~85 registers, so its blocks are 16 warps (one per head), one per SM.  (The
  first version of this prologue, a load-store-load chain, cost 2.3 us over the plain matvec; this one ~1 us);
* the residual add is matvec v7's kernel with ``y[row] += acc`` (same G, same sums: h gains exactly what
  ``matvec`` would compute).

Shapes and alignment as in :mod:`megakernel.kernels.matvec`: W [n, k] bf16 as int32 words, K a multiple of 8
(``ValueError`` otherwise), fp32 vectors starting on 16-byte boundaries (``o``, ``z`` and the gated norm weight
are read with scalar loads and may sit at any offset).  Wrappers launch on torch's current stream and never
synchronize.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import cuda
from numba.cuda import float32, uint64

from megakernel import device as D

from .matvec import (MAX_PARTS, PARTS_LEN, SHARED_LIMIT_BYTES, SIM_MAX_BLOCKS, SIMULATOR, V6_BOUNDS, WARP,
                     Launcher, RowsLauncher, cdiv, check_k, combine_parts, dot16_split, dot16_split2,
                     dot16_split4, dot16_x, dot_batch, dot_row, load_batch, memo_kernel, min_parts, plan_rows,
                     row_limit, rows_launcher, rows_setup, x_shared_bytes)



# --------------------------------------------------------------------------------------------------------------
# Inner loops
# --------------------------------------------------------------------------------------------------------------
@cuda.jit(device=True)
def dot16_norm(acc, ss, w, h, g, v):
    """One 16-byte piece (words ``w``, piece ``v``) against x = h * (1 + g); also adds this piece's h^2 to ss."""
    h0, h1, h2, h3 = D.load_f32x4(h, 2 * v)
    h4, h5, h6, h7 = D.load_f32x4(h, 2 * v + 1)
    g0, g1, g2, g3 = D.load_f32x4(g, 2 * v)
    g4, g5, g6, g7 = D.load_f32x4(g, 2 * v + 1)
    one = float32(1)
    ss += h0 * h0 + h1 * h1 + h2 * h2 + h3 * h3
    ss += h4 * h4 + h5 * h5 + h6 * h6 + h7 * h7
    a, b, c, d = w
    acc += (D.bf16_lo(a) * (h0 * (one + g0)) + D.bf16_hi(a) * (h1 * (one + g1))
            + D.bf16_lo(b) * (h2 * (one + g2)) + D.bf16_hi(b) * (h3 * (one + g3)))
    acc += (D.bf16_lo(c) * (h4 * (one + g4)) + D.bf16_hi(c) * (h5 * (one + g5))
            + D.bf16_lo(d) * (h6 * (one + g6)) + D.bf16_hi(d) * (h7 * (one + g7)))
    return acc, ss


@cuda.jit(device=True)
def dot_row_norm(W, base, h, g, nv, lane):
    """This lane's share of (row at piece ``base``) . (h * (1 + g)), and of sum(h^2): matvec.dot_row with the
    RMSNorm folded in.  Four 16-byte W loads in flight per lane."""
    acc = float32(0)
    ss = float32(0)
    v = lane
    while v + 3 * WARP < nv:
        w0 = D.load_u32x4(W, base + v)
        w1 = D.load_u32x4(W, base + v + WARP)
        w2 = D.load_u32x4(W, base + v + 2 * WARP)
        w3 = D.load_u32x4(W, base + v + 3 * WARP)
        acc, ss = dot16_norm(acc, ss, w0, h, g, v)
        acc, ss = dot16_norm(acc, ss, w1, h, g, v + WARP)
        acc, ss = dot16_norm(acc, ss, w2, h, g, v + 2 * WARP)
        acc, ss = dot16_norm(acc, ss, w3, h, g, v + 3 * WARP)
        v += 4 * WARP
    while v < nv:
        acc, ss = dot16_norm(acc, ss, D.load_u32x4(W, base + v), h, g, v)
        v += WARP
    return acc, ss


@cuda.jit(device=True)
def dot16x2_norm(ag, au, ss, p, q, h, g, v):
    """Piece ``v`` of a gate row (words p) and an up row (words q) against the same x = h * (1 + g)."""
    h0, h1, h2, h3 = D.load_f32x4(h, 2 * v)
    h4, h5, h6, h7 = D.load_f32x4(h, 2 * v + 1)
    g0, g1, g2, g3 = D.load_f32x4(g, 2 * v)
    g4, g5, g6, g7 = D.load_f32x4(g, 2 * v + 1)
    one = float32(1)
    ss += h0 * h0 + h1 * h1 + h2 * h2 + h3 * h3
    ss += h4 * h4 + h5 * h5 + h6 * h6 + h7 * h7
    x0, x1, x2, x3 = h0 * (one + g0), h1 * (one + g1), h2 * (one + g2), h3 * (one + g3)
    x4, x5, x6, x7 = h4 * (one + g4), h5 * (one + g5), h6 * (one + g6), h7 * (one + g7)
    return dot16_x(ag, p, x0, x1, x2, x3, x4, x5, x6, x7), dot16_x(au, q, x0, x1, x2, x3, x4, x5, x6, x7), ss


@cuda.jit(device=True)
def dot_rows2_norm(Wg, Wu, base, h, g, nv, lane):
    """This lane's share of gate-row . x, up-row . x (x = h * (1 + g)) and sum(h^2); two pieces of each matrix
    (four 16-byte loads) in flight per lane."""
    ag = float32(0)
    au = float32(0)
    ss = float32(0)
    v = lane
    while v + WARP < nv:
        p0 = D.load_u32x4(Wg, base + v)
        p1 = D.load_u32x4(Wg, base + v + WARP)
        q0 = D.load_u32x4(Wu, base + v)
        q1 = D.load_u32x4(Wu, base + v + WARP)
        ag, au, ss = dot16x2_norm(ag, au, ss, p0, q0, h, g, v)
        ag, au, ss = dot16x2_norm(ag, au, ss, p1, q1, h, g, v + WARP)
        v += 2 * WARP
    while v < nv:
        ag, au, ss = dot16x2_norm(ag, au, ss, D.load_u32x4(Wg, base + v), D.load_u32x4(Wu, base + v), h, g, v)
        v += WARP
    return ag, au, ss


@cuda.jit(device=True)
def dot_row_split(W, base, xs, nv, lane):
    acc = float32(0)
    v = lane
    while v + 3 * WARP < nv:
        w0 = D.load_u32x4(W, base + v)
        w1 = D.load_u32x4(W, base + v + WARP)
        w2 = D.load_u32x4(W, base + v + 2 * WARP)
        w3 = D.load_u32x4(W, base + v + 3 * WARP)
        acc = dot16_split(acc, w0, xs, v, nv)
        acc = dot16_split(acc, w1, xs, v + WARP, nv)
        acc = dot16_split(acc, w2, xs, v + 2 * WARP, nv)
        acc = dot16_split(acc, w3, xs, v + 3 * WARP, nv)
        v += 4 * WARP
    while v < nv:
        acc = dot16_split(acc, D.load_u32x4(W, base + v), xs, v, nv)
        v += WARP
    return acc


@cuda.jit(device=True)
def dot2_row_split(W, base_a, base_b, xs, nv, lane):
    """``dot_row_split`` of two rows at once (one warp): each x piece is read from shared memory once for both,
    and both rows' loads are in flight together. Each row's sum is formed in exactly ``dot_row_split``'s order, so
    the results are bit-identical to two single calls."""
    acc_a = float32(0)
    acc_b = float32(0)
    v = lane
    while v + WARP < nv:
        a0 = D.load_u32x4(W, base_a + v)
        b0 = D.load_u32x4(W, base_b + v)
        a1 = D.load_u32x4(W, base_a + v + WARP)
        b1 = D.load_u32x4(W, base_b + v + WARP)
        acc_a, acc_b = dot16_split2(acc_a, acc_b, a0, b0, xs, v, nv)
        acc_a, acc_b = dot16_split2(acc_a, acc_b, a1, b1, xs, v + WARP, nv)
        v += 2 * WARP
    while v < nv:
        acc_a, acc_b = dot16_split2(acc_a, acc_b, D.load_u32x4(W, base_a + v), D.load_u32x4(W, base_b + v), xs,
                                    v, nv)
        v += WARP
    return acc_a, acc_b


@cuda.jit(device=True)
def dot4_row_split(W, base_a, base_b, base_c, base_d, xs, nv, lane):
    """``dot_row_split`` of four rows at once (one warp): four independent sums in flight, each x piece read once
    for all four; each row's sum in exactly ``dot_row_split``'s order (bit-identical to four single calls)."""
    acc_a = float32(0)
    acc_b = float32(0)
    acc_c = float32(0)
    acc_d = float32(0)
    for v in range(lane, nv, WARP):
        acc_a, acc_b, acc_c, acc_d = dot16_split4(acc_a, acc_b, acc_c, acc_d, D.load_u32x4(W, base_a + v),
                                                  D.load_u32x4(W, base_b + v), D.load_u32x4(W, base_c + v),
                                                  D.load_u32x4(W, base_d + v), xs, v, nv)
    return acc_a, acc_b, acc_c, acc_d


@functools.lru_cache(maxsize=None)
def xreg_dots(E: int, full: bool = False):
    """x held in registers instead of shared memory, for rows of at most ``32 E`` pieces (``8 x 32 E`` values):
    lane l keeps the pieces l, l + 32, ..., l + 32 (E - 1) of x, the only ones it ever multiplies, in a local
    array of ``8 E`` floats that the compiler keeps in registers (every index is a constant once the loops over
    ``E`` are unrolled). A page's rows then read only their weights from shared memory, where ``dot_row_split``
    reads as many bytes of x as of weights. Returns (load_x, dot_row, dot2_row):

        load_x(xr, xs, nv, lane)                      xr <- this lane's pieces of x (split layout ``xs``)
        dot_row(W, base, xr, nv, lane)                 -> acc          (``dot_row_split``'s sum, same order)
        dot2_row(W, base_a, base_b, xr, nv, lane)      -> acc_a, acc_b (``dot2_row_split``'s sums)

    Every row's sum runs over the pieces in ``dot_row_split``'s order with the same x values: the same bits.
    ``full``: the rows have exactly ``32 E`` pieces (``nv == 32 E``), so every lane has all ``E`` of its pieces and
    the per-piece guard (a branch around each piece) is compiled away."""

    @cuda.jit(device=True)
    def load_x(xr, xs, nv, lane):
        for e in range(E):
            v = lane + WARP * e
            if full or v < nv:
                x0, x1, x2, x3 = D.load_f32x4(xs, v)
                x4, x5, x6, x7 = D.load_f32x4(xs, nv + v)
                xr[8 * e] = x0
                xr[8 * e + 1] = x1
                xr[8 * e + 2] = x2
                xr[8 * e + 3] = x3
                xr[8 * e + 4] = x4
                xr[8 * e + 5] = x5
                xr[8 * e + 6] = x6
                xr[8 * e + 7] = x7

    @cuda.jit(device=True)
    def dot_row(W, base, xr, nv, lane):
        acc = float32(0)
        for e in range(E):
            v = lane + WARP * e
            if full or v < nv:
                acc = dot16_x(acc, D.load_u32x4(W, base + v), xr[8 * e], xr[8 * e + 1], xr[8 * e + 2],
                              xr[8 * e + 3], xr[8 * e + 4], xr[8 * e + 5], xr[8 * e + 6], xr[8 * e + 7])
        return acc

    @cuda.jit(device=True)
    def dot2_row(W, base_a, base_b, xr, nv, lane):
        acc_a = float32(0)
        acc_b = float32(0)
        for e in range(E):
            v = lane + WARP * e
            if full or v < nv:
                wa = D.load_u32x4(W, base_a + v)
                wb = D.load_u32x4(W, base_b + v)
                acc_a = dot16_x(acc_a, wa, xr[8 * e], xr[8 * e + 1], xr[8 * e + 2], xr[8 * e + 3], xr[8 * e + 4],
                                xr[8 * e + 5], xr[8 * e + 6], xr[8 * e + 7])
                acc_b = dot16_x(acc_b, wb, xr[8 * e], xr[8 * e + 1], xr[8 * e + 2], xr[8 * e + 3], xr[8 * e + 4],
                                xr[8 * e + 5], xr[8 * e + 6], xr[8 * e + 7])
        return acc_a, acc_b

    return load_x, dot_row, dot2_row


# --------------------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------------------
@cuda.jit
def norm_matvec_kernel(h, norm_w, W, y, n, k, eps):
    """y[row] = rstd * (W[row] . (h * (1 + norm_w))), rstd = 1/sqrt(mean(h^2) + eps)."""
    lane = cuda.threadIdx.x % WARP
    nv = k // 8
    kf = float32(k)
    for row in range(cuda.grid(1) // WARP, n, cuda.gridsize(1) // WARP):
        acc, ss = dot_row_norm(W, row * nv, h, norm_w, nv, lane)
        acc = D.warp_sum(acc)
        ss = D.warp_sum(ss)
        if lane == 0:
            y[row] = acc * D.rsqrt(ss / kf + eps)


@cuda.jit
def norm_swiglu_matvec_kernel(h, norm_w, Wg, Wu, act, n, k, eps):
    """act[i] = silu(gate_i) * up_i, gate/up = rows i of Wg/Wu against rms_norm(h)."""
    lane = cuda.threadIdx.x % WARP
    nv = k // 8
    kf = float32(k)
    for row in range(cuda.grid(1) // WARP, n, cuda.gridsize(1) // WARP):
        ag, au, ss = dot_rows2_norm(Wg, Wu, row * nv, h, norm_w, nv, lane)
        ag = D.warp_sum(ag)
        au = D.warp_sum(au)
        ss = D.warp_sum(ss)
        if lane == 0:
            r = D.rsqrt(ss / kf + eps)
            act[row] = D.silu(ag * r) * (au * r)


@cuda.jit
def matvec_residual_kernel(W, x, h, n, k):
    """h[row] += W[row] . x (in place; each row of h belongs to one warp)."""
    lane = cuda.threadIdx.x % WARP
    nv = k // 8
    for row in range(cuda.grid(1) // WARP, n, cuda.gridsize(1) // WARP):
        acc = D.warp_sum(dot_row(W, row * nv, x, nv, lane))
        if lane == 0:
            h[row] += acc


@cuda.jit(device=True)
def gated_norm_head(o, base, head_dim, eps, lane):
    """1/RMS of o[base : base + head_dim] (every lane gets it)."""
    ss = float32(0)
    for d in range(lane, head_dim, WARP):
        v = o[base + d]
        ss += v * v
    return D.rsqrt(D.warp_sum(ss) / float32(head_dim) + eps)


@cuda.jit
def gated_norm_matvec_residual_kernel(o, z, norm_w, W, h, n, heads, head_dim, eps):
    """Prologue: xs = gated_rms_norm(o, z) per head, into dynamic shared memory (split layout).  Then
    h[row] += W[row] . x.  Launch with 4 * heads * head_dim bytes of dynamic shared memory."""
    xs = cuda.shared.array(0, float32)
    lane = cuda.threadIdx.x % WARP
    warp = cuda.threadIdx.x // WARP
    k = heads * head_dim
    nv = k // 8
    half = 4 * nv
    for hd in range(warp, heads, cuda.blockDim.x // WARP):
        base = hd * head_dim
        r = gated_norm_head(o, base, head_dim, eps, lane)
        for d in range(lane, head_dim, WARP):
            i = base + d
            val = (norm_w[d] * (o[i] * r)) * D.silu(z[i])
            j = i % 8
            if j < 4:
                xs[(i // 8) * 4 + j] = val
            else:
                xs[half + (i // 8) * 4 + j - 4] = val
    cuda.syncthreads()
    for row in range(cuda.grid(1) // WARP, n, cuda.gridsize(1) // WARP):
        acc = D.warp_sum(dot_row_split(W, row * nv, xs, nv, lane))
        if lane == 0:
            h[row] += acc


@cuda.jit
def gated_rms_norm_kernel(o, z, norm_w, x, heads, head_dim, eps):
    """x = gated_rms_norm(o, z) per head, one warp per head (the unfused alternative's first launch)."""
    lane = cuda.threadIdx.x % WARP
    for hd in range(cuda.grid(1) // WARP, heads, cuda.gridsize(1) // WARP):
        base = hd * head_dim
        r = gated_norm_head(o, base, head_dim, eps, lane)
        for d in range(lane, head_dim, WARP):
            i = base + d
            x[i] = (norm_w[d] * (o[i] * r)) * D.silu(z[i])


# --------------------------------------------------------------------------------------------------------------
# The same variants on the matvec v7 skeleton (x staged in shared memory once per block, one resident wave of
# 8-warp blocks, split-K over G warps per row, each row's loads issued before the prologue).  The defaults.
# --------------------------------------------------------------------------------------------------------------
@cuda.jit(device=True)
def stage_norm(h, gw, xs, nv, scratch):
    """xs <- h * (1 + gw) in the split layout (see matvec.dot16_split), by the whole block; returns sum(h^2) over
    all of h (every thread gets it: a block reduction, the same order in every block, so every block computes
    the bit-identical rstd).  Its barriers also publish xs."""
    ss = float32(0)
    q = cuda.threadIdx.x
    while q < 2 * nv:  # (not range(): its trip count would be a 64-bit division by the block size)
        h0, h1, h2, h3 = D.load_f32x4(h, q)
        g0, g1, g2, g3 = D.load_f32x4(gw, q)
        ss += stage_norm4(xs, q, nv, h0, h1, h2, h3, g0, g1, g2, g3)
        q += cuda.blockDim.x
    return D.block_sum(ss, scratch)


@cuda.jit(device=True)
def stage_norm4(xs, q, nv, h0, h1, h2, h3, g0, g1, g2, g3):
    """One thread's step of ``stage_norm`` (and of its variants that get h another way: ``split_down``'s with the
    MLP's accumulator folded in, ``handoff.ll_stage_norm`` from flag-in-data words): stores h[4q:4q+4] * (1 + g)
    at the split layout's place of float4 ``q`` and returns the four squares' sum, for the caller's ``ss +=``.
    The sum is written as explicit fmas: as ``h0*h0 + h1*h1 + ...`` LTO chose which product to contract by the
    context, and ``ll_stage_norm`` with ``ll_wait4`` rounded differently from the other callers (GPU bits test)."""
    one = float32(1)
    j = 4 * ((q & 1) * nv + (q >> 1))
    xs[j] = h0 * (one + g0)
    xs[j + 1] = h1 * (one + g1)
    xs[j + 2] = h2 * (one + g2)
    xs[j + 3] = h3 * (one + g3)
    return D.fma(h3, h3, D.fma(h2, h2, D.fma(h0, h0, h1 * h1)))  # the contraction the other contexts chose


@cuda.jit(device=True)
def combine_pair(acc, parts, it, warp, slot, G):
    """SwiGLU's split: a row slot has G warps, the first G/2 on the gate row and the others on the up row.
    Returns (gate . x, up . x), each summed over its warps in a fixed order.  One barrier per iteration
    (double-buffered like matvec.combine_parts)."""
    buf = (it % 2) * MAX_PARTS
    if cuda.threadIdx.x % WARP == 0:
        parts[buf + warp] = acc
    cuda.syncthreads()
    half = G // 2
    first = buf + slot * G
    a = parts[first]
    b = parts[first + half]
    for j in range(1, half):
        a += parts[first + j]
        b += parts[first + half + j]
    return a, b


@cuda.jit(device=True)
def split_index(i, nv):
    """Where element i (>= 0: shifts and masks, no signed-division fix-ups) of x lives in the split layout."""
    j = i & 7
    q = (i >> 3) * 4 + j
    return q if j < 4 else q + 4 * nv - 4


@cuda.jit(device=True)
def gated_load(o, z, norm_w, base, d, head_dim):
    """(o, z, norm_w) of element base + d of a head; zeros past the head's end.  Unsigned indices: no
    negative-index wraparound code on every access."""
    if d < head_dim:
        i = uint64(base + d)
        return o[i], z[i], norm_w[uint64(d)]
    return float32(0), float32(0), float32(0)


@cuda.jit(device=True)
def gated_put(xs, value, i, d, head_dim, nv):
    if d < head_dim:
        xs[uint64(split_index(i, nv))] = value


@cuda.jit(device=True)
def gated_head(o, z, norm_w, base, lane, head_dim):
    """A lane's four elements of a head of up to 128 (lane + 0/32/64/96): their unscaled gated values
    ``norm_w * o * silu(z)`` and their sum of o^2.  ``head_dim`` 0 stands for a head that is not there (zeros).
    Inlined, so a caller can have two heads' twelve loads each in flight before it uses any of them."""
    oa, za, wa = gated_load(o, z, norm_w, base, lane, head_dim)
    ob, zb, wb = gated_load(o, z, norm_w, base, lane + WARP, head_dim)
    oc, zc, wc = gated_load(o, z, norm_w, base, lane + 2 * WARP, head_dim)
    oe, ze, we = gated_load(o, z, norm_w, base, lane + 3 * WARP, head_dim)
    ss = oa * oa + ob * ob + oc * oc + oe * oe
    return wa * oa * D.silu(za), wb * ob * D.silu(zb), wc * oc * D.silu(zc), we * oe * D.silu(ze), ss


@cuda.jit(device=True)
def gated_head_put(xs, ta, tb, tc, te, r, base, lane, head_dim, nv):
    gated_put(xs, ta * r, base + lane, lane, head_dim, nv)
    gated_put(xs, tb * r, base + lane + WARP, lane + WARP, head_dim, nv)
    gated_put(xs, tc * r, base + lane + 2 * WARP, lane + 2 * WARP, head_dim, nv)
    gated_put(xs, te * r, base + lane + 3 * WARP, lane + 3 * WARP, head_dim, nv)


@cuda.jit(device=True)
def stage_gated(o, z, norm_w, xs, heads, head_dim, eps):
    """xs <- gated_rms_norm(o, z) (per head: o * rstd_head * norm_w * silu(z)) in the split layout, one warp
    per head.  Heads of up to 128 elements (Qwen3.5's): a warp takes two heads per pass (``hd`` and ``hd`` plus
    the warp count) and each lane first loads o, z and norm_w of four elements of each (24 loads in flight
    together: one L2 round trip per pass instead of one per head; a store to shared memory in between would
    keep the compiler from issuing the next loads early, as it cannot tell the arrays apart), keeps the values
    in registers until the warps' sums of o^2 give the heads' rstd, then stores them once.  Longer heads stage
    unscaled values chunk by chunk and rescale them.  Each head's arithmetic is the same either way (the same
    bits).  The caller synchronizes."""
    lane = cuda.threadIdx.x % WARP
    nv = heads * head_dim // 8
    nw = cuda.blockDim.x // WARP
    hd = cuda.threadIdx.x // WARP
    while hd < heads:  # (not range(): its trip count would be a 64-bit division by the warp count)
        base = hd * head_dim
        if head_dim <= 4 * WARP:
            hd2 = hd + nw
            dim2 = head_dim if hd2 < heads else 0  # (warp-uniform: both warp sums run in every lane)
            base2 = hd2 * head_dim
            ta, tb, tc, te, ss = gated_head(o, z, norm_w, base, lane, head_dim)
            ua, ub, uc, ue, ss2 = gated_head(o, z, norm_w, base2, lane, dim2)
            r = D.rsqrt(D.warp_sum(ss) / float32(head_dim) + eps)
            r2 = D.rsqrt(D.warp_sum(ss2) / float32(head_dim) + eps)
            gated_head_put(xs, ta, tb, tc, te, r, base, lane, head_dim, nv)
            gated_head_put(xs, ua, ub, uc, ue, r2, base2, lane, dim2, nv)
            hd += 2 * nw
        else:
            ss = float32(0)
            for d in range(lane, head_dim, 4 * WARP):
                oa, za, wa = gated_load(o, z, norm_w, base, d, head_dim)
                ob, zb, wb = gated_load(o, z, norm_w, base, d + WARP, head_dim)
                oc, zc, wc = gated_load(o, z, norm_w, base, d + 2 * WARP, head_dim)
                oe, ze, we = gated_load(o, z, norm_w, base, d + 3 * WARP, head_dim)
                ss += oa * oa + ob * ob + oc * oc + oe * oe
                gated_put(xs, wa * oa * D.silu(za), base + d, d, head_dim, nv)
                gated_put(xs, wb * ob * D.silu(zb), base + d + WARP, d + WARP, head_dim, nv)
                gated_put(xs, wc * oc * D.silu(zc), base + d + 2 * WARP, d + 2 * WARP, head_dim, nv)
                gated_put(xs, we * oe * D.silu(ze), base + d + 3 * WARP, d + 3 * WARP, head_dim, nv)
            r = D.rsqrt(D.warp_sum(ss) / float32(head_dim) + eps)
            for d in range(lane, head_dim, WARP):
                j = split_index(base + d, nv)
                xs[j] = xs[j] * r
            hd += nw


# Each variant is a device body over a work range (``block`` of ``nblocks``, shared arrays passed in: see
# ``matvec.matvec_rows``), shared by the layered decoder's kernels below and the persistent megakernel.
def norm_matvec_rows(G: int):
    """body(h, norm_w, W, y, n, k, eps, block, nblocks, xs, parts, scratch): y = W @ rms_norm(h).  The block
    stages x = h * (1 + w) and rstd (``stage_norm``: every block computes the bit-identical rstd), then matvec v7
    scaled by rstd.  ``xs`` >= k floats, ``parts`` ``PARTS_LEN``, ``scratch`` 32 (float32 shared arrays)."""

    def make():
        @cuda.jit(device=True)
        def norm_matvec_body(h, norm_w, W, y, n, k, eps, block, nblocks, xs, parts, scratch):
            lane, warp, slot, g, nv, v0, stride, step, row = rows_setup(k, G, block, nblocks)
            cur = load_batch(W, row, n, nv, v0, stride)
            r = D.rsqrt(stage_norm(h, norm_w, xs, nv, scratch) / float32(k) + eps)
            base = row - slot
            it = 0
            while base < n:
                acc = dot_batch(cur, xs, nv, v0, stride, row_limit(row, n, nv))
                cur = load_batch(W, row + step, n, nv, v0, stride)
                acc = combine_parts(D.warp_sum(acc), parts, it, warp, slot, G)
                if g == 0 and lane == 0 and row < n:
                    y[row] = acc * r
                row += step
                base += step
                it += 1
            cuda.syncthreads()

        return norm_matvec_body

    return memo_kernel(("norm_matvec_rows", G), make)


def norm_swiglu_rows(G: int):
    """body(h, norm_w, Wg, Wu, act, n, k, eps, block, nblocks, xs, parts, scratch): act = silu(Wg @ x) * (Wu @ x),
    x = rms_norm(h).  G warps per row pair, the first G/2 on the gate row and the rest on the up row (4 pieces per
    lane each: the plain matvec's shape of work), met in shared memory (``combine_pair``)."""

    def make():
        half = G // 2

        @cuda.jit(device=True)
        def norm_swiglu_body(h, norm_w, Wg, Wu, act, n, k, eps, block, nblocks, xs, parts, scratch):
            lane, warp, slot, p, nv, _v0, _stride, step, row = rows_setup(k, G, block, nblocks)
            up = p >= half
            g = p - half if up else p
            v0 = lane + WARP * g
            stride = WARP * half
            Wm = Wu if up else Wg
            cur = load_batch(Wm, row, n, nv, v0, stride)
            r = D.rsqrt(stage_norm(h, norm_w, xs, nv, scratch) / float32(k) + eps)
            base = row - slot
            it = 0
            while base < n:
                acc = dot_batch(cur, xs, nv, v0, stride, row_limit(row, n, nv))
                cur = load_batch(Wm, row + step, n, nv, v0, stride)
                a, b = combine_pair(D.warp_sum(acc), parts, it, warp, slot, G)
                if p == 0 and lane == 0 and row < n:
                    act[row] = D.silu(a * r) * (b * r)
                row += step
                base += step
                it += 1
            cuda.syncthreads()

        return norm_swiglu_body

    return memo_kernel(("norm_swiglu_rows", G), make)


def gated_norm_matvec_residual_rows(G: int):
    """body(o, z, norm_w, W, h, n, heads, head_dim, eps, block, nblocks, xs, parts): h += W @ gated_rms_norm(o, z).
    The first row's weight loads, then the block stages the gated norm per head (``stage_gated``; ``xs`` >=
    heads * head_dim floats), then matvec v7 + residual."""

    def make():
        @cuda.jit(device=True)
        def gated_norm_body(o, z, norm_w, W, h, n, heads, head_dim, eps, block, nblocks, xs, parts):
            lane, warp, slot, g, nv, v0, stride, step, row = rows_setup(heads * head_dim, G, block, nblocks)
            cur = load_batch(W, row, n, nv, v0, stride)
            stage_gated(o, z, norm_w, xs, heads, head_dim, eps)
            cuda.syncthreads()
            base = row - slot
            it = 0
            while base < n:
                acc = dot_batch(cur, xs, nv, v0, stride, row_limit(row, n, nv))
                cur = load_batch(W, row + step, n, nv, v0, stride)
                acc = combine_parts(D.warp_sum(acc), parts, it, warp, slot, G)
                if g == 0 and lane == 0 and row < n:
                    h[row] += acc
                row += step
                base += step
                it += 1
            cuda.syncthreads()

        return gated_norm_body

    return memo_kernel(("gated_rows", G), make)


def norm_matvec_kernel_v7(G: int):
    """y = W @ rms_norm(h): ``norm_matvec_rows`` over the whole grid."""

    def make():
        body = norm_matvec_rows(G)

        @cuda.jit(launch_bounds=V6_BOUNDS)
        def norm_matvec_v7(h, norm_w, W, y, n, k, eps):
            xs = cuda.shared.array(0, float32)
            parts = cuda.shared.array(PARTS_LEN, float32)
            scratch = cuda.shared.array(WARP, float32)
            body(h, norm_w, W, y, n, k, eps, cuda.blockIdx.x, cuda.gridDim.x, xs, parts, scratch)

        return norm_matvec_v7

    return memo_kernel(("norm_matvec", G), make)


def norm_swiglu_matvec_kernel_v7(G: int):
    """act = silu(Wg @ x) * (Wu @ x), x = rms_norm(h): ``norm_swiglu_rows`` over the whole grid."""

    def make():
        body = norm_swiglu_rows(G)

        @cuda.jit(launch_bounds=V6_BOUNDS)
        def norm_swiglu_matvec_v7(h, norm_w, Wg, Wu, act, n, k, eps):
            xs = cuda.shared.array(0, float32)
            parts = cuda.shared.array(PARTS_LEN, float32)
            scratch = cuda.shared.array(WARP, float32)
            body(h, norm_w, Wg, Wu, act, n, k, eps, cuda.blockIdx.x, cuda.gridDim.x, xs, parts, scratch)

        return norm_swiglu_matvec_v7

    return memo_kernel(("norm_swiglu", G), make)


def gated_norm_matvec_residual_kernel_v7(G: int):
    """h += W @ gated_rms_norm(o, z): ``gated_norm_matvec_residual_rows`` over the whole grid.  No launch bounds:
    holding the first row's loads through the prologue takes ~85 registers (blocks of 16 warps, one per SM, one
    head per warp)."""

    def make():
        body = gated_norm_matvec_residual_rows(G)

        @cuda.jit
        def gated_norm_matvec_residual_v7(o, z, norm_w, W, h, n, heads, head_dim, eps):
            xs = cuda.shared.array(0, float32)
            parts = cuda.shared.array(PARTS_LEN, float32)
            body(o, z, norm_w, W, h, n, heads, head_dim, eps, cuda.blockIdx.x, cuda.gridDim.x, xs, parts)

        return gated_norm_matvec_residual_v7

    return memo_kernel(("gated", G), make)


# instances for the PTX checks (the launchers make the others on demand)
norm_matvec_v7 = norm_matvec_kernel_v7(1)
norm_swiglu_matvec_v7 = norm_swiglu_matvec_kernel_v7(2)
gated_norm_matvec_residual_v7 = gated_norm_matvec_residual_kernel_v7(2)


# --------------------------------------------------------------------------------------------------------------
# Wrappers (launch configurations cached per shape)
# --------------------------------------------------------------------------------------------------------------
GATED_MIN_WARPS = 8  # the version-5 fused gated kernel's blocks: few enough that the prologue is not redone often
GATED_WARPS_V7 = 16  # version 7: one warp per head of Qwen3.5-0.8B's 16 for the prologue

_LAUNCHERS: dict = {}


def _plan_min_warps(rows: int, min_warps: int) -> tuple[int, int]:
    """plan_rows, but with blocks of at least ``min_warps`` warps (fewer, bigger blocks)."""
    blocks, threads = plan_rows(rows)
    warps = threads // WARP
    if warps >= min_warps:
        return blocks, threads
    if SIMULATOR:
        return min(cdiv(rows, min_warps), SIM_MAX_BLOCKS), threads
    return cdiv(rows, min_warps), min_warps * WARP


def _get(key, make):
    lau = _LAUNCHERS.get(key)
    if lau is None:
        lau = _LAUNCHERS[key] = make()
    return lau


def _check_version(what: str, version: int) -> None:
    if version not in (5, 7):
        raise ValueError(f"{what}: version {version}: choose 7 (the default, on matvec v7) or 5 (the original)")


def _rows_launcher(kernel, what, n, k):
    def make():
        check_k(k, 8, what, n)
        grid, block = plan_rows(n)
        return Launcher(kernel, grid, block)

    return _get((what, n, k), make)


def _v7_launcher(what, n, k, config, make):
    """A ``matvec.RowsLauncher`` (made by ``make()``) cached per shape and ``config`` = (warps per block, G or
    None), which overrides the plan (tests, ``bench_kernels --sweep``)."""

    def build():
        check_k(k, 8, what, n)
        return make()

    return _get((what, 7, n, k, config), build)


def launcher_plan(what: str, n: int, k: int, config=None):
    """(blocks, threads, G) of a version-7 fused kernel's launcher once it has run (for reports), or None."""
    return getattr(_LAUNCHERS.get((what, 7, n, k, config)), "plan", None)


def norm_matvec(h, norm_w, W, y, n: int, k: int, eps: float, version: int = 7, config=None) -> None:
    """y[:n] = W @ rms_norm(h[:k], norm_w) (Qwen3.5's (1 + w) weight); W [n, k] bf16 as int32 words.
    ``version`` 7 (default): on the matvec v7 skeleton; 5: the original (the norm folded into every warp)."""
    _check_version("norm_matvec", version)
    if version == 7:
        lau = _v7_launcher("norm_matvec", n, k, config, lambda: RowsLauncher(
            norm_matvec_kernel_v7, n, k, x_shared_bytes(k, "norm_matvec"), *(config or ())))
    else:
        lau = _rows_launcher(norm_matvec_kernel, "norm_matvec", n, k)
    if W.shape[0] < n * k // 2 or h.shape[0] < k or norm_w.shape[0] < k or y.shape[0] < n:
        raise ValueError(f"norm_matvec [{n}, {k}]: W has {W.shape[0]} words, h {h.shape[0]}, norm_w "
                         f"{norm_w.shape[0]}, y {y.shape[0]} elements")
    lau(h, norm_w, W, y, n, k, np.float32(eps))


def _pair_parts(n: int, k: int, resident_warps: int, warps_per_block: int) -> int:
    return 2 * min_parts(k)


def norm_swiglu_matvec(h, norm_w, W_gate, W_up, act, n: int, k: int, eps: float, version: int = 7,
                       config=None) -> None:
    """act[:n] = silu(W_gate @ x) * (W_up @ x), x = rms_norm(h[:k], norm_w); W_gate, W_up [n, k] bf16 words.
    Version 7: ``config`` G counts the warps of a row pair (even: half on the gate row, half on the up row)."""
    _check_version("norm_swiglu_matvec", version)
    if version == 7:
        lau = _v7_launcher("norm_swiglu_matvec", n, k, config, lambda: RowsLauncher(
            norm_swiglu_matvec_kernel_v7, n, k, x_shared_bytes(k, "norm_swiglu_matvec"), *(config or ()),
            choose=_pair_parts, g_min=2 * min_parts(k)))
    else:
        lau = _rows_launcher(norm_swiglu_matvec_kernel, "norm_swiglu_matvec", n, k)
    words = n * k // 2
    if W_gate.shape[0] < words or W_up.shape[0] < words or h.shape[0] < k or norm_w.shape[0] < k \
            or act.shape[0] < n:
        raise ValueError(f"norm_swiglu_matvec [{n}, {k}]: W_gate {W_gate.shape[0]} / W_up {W_up.shape[0]} words "
                         f"(need {words}), h {h.shape[0]}, norm_w {norm_w.shape[0]}, act {act.shape[0]}")
    lau(h, norm_w, W_gate, W_up, act, n, k, np.float32(eps))


def matvec_residual(W, x, h, n: int, k: int, version: int = 7, config=None) -> None:
    """h[:n] += W @ x[:k] in place; W [n, k] bf16 as int32 words.  Version 7 adds exactly what matvec v7 with
    the same G computes."""
    _check_version("matvec_residual", version)
    if version == 7:
        lau = _v7_launcher("matvec_residual", n, k, config, lambda: rows_launcher(7, n, k, config, residual=True))
    else:
        lau = _rows_launcher(matvec_residual_kernel, "matvec_residual", n, k)
    if W.shape[0] < n * k // 2 or x.shape[0] < k or h.shape[0] < n:
        raise ValueError(f"matvec_residual [{n}, {k}]: W has {W.shape[0]} words, x {x.shape[0]}, "
                         f"h {h.shape[0]} elements")
    lau(W, x, h, n, k)


def _gated_launchers(n, heads, head_dim):
    k = heads * head_dim

    def make():
        if heads < 1 or head_dim < 1:
            raise ValueError(f"gated_norm_matvec_residual: heads={heads}, head_dim={head_dim}")
        check_k(k, 8, "gated_norm_matvec_residual (K = heads * head_dim)", n)
        shared = 4 * k
        if shared > SHARED_LIMIT_BYTES:
            raise ValueError(f"gated_norm_matvec_residual: K = {k} needs {shared} bytes of shared memory "
                             f"(limit {SHARED_LIMIT_BYTES}); use fused=False")
        grid, block = _plan_min_warps(n, GATED_MIN_WARPS)
        fused = Launcher(gated_norm_matvec_residual_kernel, grid, block, shared)
        g_blocks, g_threads = plan_rows(heads)
        norm = Launcher(gated_rms_norm_kernel, g_blocks, g_threads)
        return fused, norm

    return _get(("gated", n, heads, head_dim), make)


def gated_norm_matvec_residual(o, z, norm_w, W, h, n: int, heads: int, head_dim: int, eps: float,
                               fused: bool = True, scratch=None, version: int = 7, config=None) -> None:
    """h[:n] += W @ gated_rms_norm(o, z, norm_w) where the norm is per head: o, z [heads * head_dim] fp32,
    norm_w [head_dim] fp32 (a plain weight, not 1 + w), W [n, heads * head_dim] bf16 as int32 words.

    ``fused=False`` runs the unfused pair (``gated_rms_norm_kernel`` into ``scratch``, an fp32 buffer of
    heads * head_dim elements, then ``matvec_residual``); it exists for comparison in the benchmark.
    ``version`` 7 (default): the fused kernel on the matvec v7 skeleton; 5: the original."""
    _check_version("gated_norm_matvec_residual", version)
    fused_lau, norm_lau = _gated_launchers(n, heads, head_dim)
    k = heads * head_dim
    if W.shape[0] < n * k // 2 or o.shape[0] < k or z.shape[0] < k or norm_w.shape[0] < head_dim \
            or h.shape[0] < n:
        raise ValueError(f"gated_norm_matvec_residual [{n}, {k}]: W has {W.shape[0]} words, o {o.shape[0]}, "
                         f"z {z.shape[0]}, norm_w {norm_w.shape[0]}, h {h.shape[0]} elements")
    eps32 = np.float32(eps)
    if fused:
        if version == 7:
            lau = _v7_launcher("gated_norm_matvec_residual", n, k, config, lambda: RowsLauncher(
                gated_norm_matvec_residual_kernel_v7, n, k, 4 * k, *(config or ()),
                default_warps=GATED_WARPS_V7))
            lau(o, z, norm_w, W, h, n, heads, head_dim, eps32)
        else:
            fused_lau(o, z, norm_w, W, h, n, heads, head_dim, eps32)
        return
    if scratch is None or scratch.shape[0] < k:
        raise ValueError(f"gated_norm_matvec_residual(fused=False) needs an fp32 scratch of {k} elements")
    norm_lau(o, z, norm_w, scratch, heads, head_dim, eps32)
    matvec_residual(W, scratch, h, n, k, version=version)


_F = "float32[::1]"
_W = "int32[::1]"
PTX_SIGNATURES = {
    "norm_matvec_kernel": [f"void({_F}, {_F}, {_W}, {_F}, int64, int64, float32)"],
    "norm_swiglu_matvec_kernel": [f"void({_F}, {_F}, {_W}, {_W}, {_F}, int64, int64, float32)"],
    "matvec_residual_kernel": [f"void({_W}, {_F}, {_F}, int64, int64)"],
    "gated_norm_matvec_residual_kernel": [f"void({_F}, {_F}, {_F}, {_W}, {_F}, int64, int64, int64, float32)"],
    "gated_rms_norm_kernel": [f"void({_F}, {_F}, {_F}, {_F}, int64, int64, float32)"],
    "norm_matvec_v7": [f"void({_F}, {_F}, {_W}, {_F}, int64, int64, float32)"],
    "norm_swiglu_matvec_v7": [f"void({_F}, {_F}, {_W}, {_W}, {_F}, int64, int64, float32)"],
    "gated_norm_matvec_residual_v7": [f"void({_F}, {_F}, {_F}, {_W}, {_F}, int64, int64, int64, float32)"],
}
PTX_CHECK_OPTIONS = {"norm_matvec_v7": {"launch_bounds": V6_BOUNDS},
                     "norm_swiglu_matvec_v7": {"launch_bounds": V6_BOUNDS}}

__all__ = ["stage_norm4", "norm_matvec", "norm_swiglu_matvec", "matvec_residual", "gated_norm_matvec_residual",
           "norm_matvec_rows", "norm_swiglu_rows", "gated_norm_matvec_residual_rows", "stage_norm",
           "dot_row_norm", "dot_rows2_norm", "PTX_SIGNATURES"]
