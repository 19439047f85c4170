"""The matvec variants one decode step needs, each one launch, built on matvec v5.

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

Memory-traffic reasoning, variant by variant:

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
  per head, then its warps stream W rows against it.  x is stored "split": the first 4 floats of every 8-float
  piece in the first half of the array, the last 4 in the second half, so lane l's two 16-byte reads are
  contiguous across the warp (conflict-free; the natural layout would be a 2-way bank conflict, see matvec v4).
  Blocks are at least 8 warps so that few blocks redo the prologue (N = 1024: 128 blocks, 2 MB of L2 reads of o
  and z in total against 4 MB of weights).  The alternative, a tiny ``gated_rms_norm`` kernel writing x to
  global memory followed by ``matvec_residual``, is kept (``fused=False``) and timed next to the fused kernel by
  ``megakernel.bench_kernels``; the fused kernel is the default because it saves a launch (a kernel boundary in
  a CUDA graph costs about as much as this matvec's 1.4 us of weight streaming).  Until the H100 table says
  otherwise, that is a reasoned choice, not a measured one.

Shapes and alignment as in :mod:`megakernel.kernels.matvec`: W [n, k] bf16 as int32 words, K a multiple of 8
(``ValueError`` otherwise), fp32 vectors starting on 16-byte boundaries (``o``, ``z`` and the gated norm weight
are read with scalar loads and may sit at any offset).  Wrappers launch on torch's current stream and never
synchronize.
"""

from __future__ import annotations

import numpy as np
from numba import cuda
from numba.cuda import float32

from megakernel import device as D

from .matvec import SIM_MAX_BLOCKS, SIMULATOR, WARP, Launcher, cdiv, check_k, dot_row, plan_rows

SHARED_LIMIT_BYTES = 48 * 1024  # static + dynamic shared memory a block may use without opting in


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
    a, b, c, d = p
    ag += D.bf16_lo(a) * x0 + D.bf16_hi(a) * x1 + D.bf16_lo(b) * x2 + D.bf16_hi(b) * x3
    ag += D.bf16_lo(c) * x4 + D.bf16_hi(c) * x5 + D.bf16_lo(d) * x6 + D.bf16_hi(d) * x7
    a, b, c, d = q
    au += D.bf16_lo(a) * x0 + D.bf16_hi(a) * x1 + D.bf16_lo(b) * x2 + D.bf16_hi(b) * x3
    au += D.bf16_lo(c) * x4 + D.bf16_hi(c) * x5 + D.bf16_lo(d) * x6 + D.bf16_hi(d) * x7
    return ag, au, ss


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
def dot16_split(acc, w, xs, v, nv):
    """Piece ``v`` against x held "split" (see the module docstring): x[8v:8v+4] at xs[4v:4v+4] and
    x[8v+4:8v+8] at xs[4nv+4v : 4nv+4v+4]."""
    x0, x1, x2, x3 = D.load_f32x4(xs, v)
    x4, x5, x6, x7 = D.load_f32x4(xs, nv + v)
    a, b, c, d = w
    acc += D.bf16_lo(a) * x0 + D.bf16_hi(a) * x1 + D.bf16_lo(b) * x2 + D.bf16_hi(b) * x3
    acc += D.bf16_lo(c) * x4 + D.bf16_hi(c) * x5 + D.bf16_lo(d) * x6 + D.bf16_hi(d) * x7
    return acc


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
# Wrappers (launch configurations cached per shape)
# --------------------------------------------------------------------------------------------------------------
GATED_MIN_WARPS = 8  # the fused gated kernel's blocks: few enough blocks that the prologue is not redone often

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


def _rows_launcher(kernel, what, n, k):
    def make():
        check_k(k, 8, what, n)
        grid, block = plan_rows(n)
        return Launcher(kernel, grid, block)

    return _get((what, n, k), make)


def norm_matvec(h, norm_w, W, y, n: int, k: int, eps: float) -> None:
    """y[:n] = W @ rms_norm(h[:k], norm_w) (Qwen3.5's (1 + w) weight); W [n, k] bf16 as int32 words."""
    lau = _rows_launcher(norm_matvec_kernel, "norm_matvec", n, k)
    if W.shape[0] < n * k // 2 or h.shape[0] < k or norm_w.shape[0] < k or y.shape[0] < n:
        raise ValueError(f"norm_matvec [{n}, {k}]: W has {W.shape[0]} words, h {h.shape[0]}, norm_w "
                         f"{norm_w.shape[0]}, y {y.shape[0]} elements")
    lau(h, norm_w, W, y, n, k, np.float32(eps))


def norm_swiglu_matvec(h, norm_w, W_gate, W_up, act, n: int, k: int, eps: float) -> None:
    """act[:n] = silu(W_gate @ x) * (W_up @ x), x = rms_norm(h[:k], norm_w); W_gate, W_up [n, k] bf16 words."""
    lau = _rows_launcher(norm_swiglu_matvec_kernel, "norm_swiglu_matvec", n, k)
    words = n * k // 2
    if W_gate.shape[0] < words or W_up.shape[0] < words or h.shape[0] < k or norm_w.shape[0] < k \
            or act.shape[0] < n:
        raise ValueError(f"norm_swiglu_matvec [{n}, {k}]: W_gate {W_gate.shape[0]} / W_up {W_up.shape[0]} words "
                         f"(need {words}), h {h.shape[0]}, norm_w {norm_w.shape[0]}, act {act.shape[0]}")
    lau(h, norm_w, W_gate, W_up, act, n, k, np.float32(eps))


def matvec_residual(W, x, h, n: int, k: int) -> None:
    """h[:n] += W @ x[:k] in place; W [n, k] bf16 as int32 words."""
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
                               fused: bool = True, scratch=None) -> None:
    """h[:n] += W @ gated_rms_norm(o, z, norm_w) where the norm is per head: o, z [heads * head_dim] fp32,
    norm_w [head_dim] fp32 (a plain weight, not 1 + w), W [n, heads * head_dim] bf16 as int32 words.

    ``fused=False`` runs the unfused pair (``gated_rms_norm_kernel`` into ``scratch``, an fp32 buffer of
    heads * head_dim elements, then ``matvec_residual``); it exists for comparison in the benchmark."""
    fused_lau, norm_lau = _gated_launchers(n, heads, head_dim)
    k = heads * head_dim
    if W.shape[0] < n * k // 2 or o.shape[0] < k or z.shape[0] < k or norm_w.shape[0] < head_dim \
            or h.shape[0] < n:
        raise ValueError(f"gated_norm_matvec_residual [{n}, {k}]: W has {W.shape[0]} words, o {o.shape[0]}, "
                         f"z {z.shape[0]}, norm_w {norm_w.shape[0]}, h {h.shape[0]} elements")
    eps32 = np.float32(eps)
    if fused:
        fused_lau(o, z, norm_w, W, h, n, heads, head_dim, eps32)
        return
    if scratch is None or scratch.shape[0] < k:
        raise ValueError(f"gated_norm_matvec_residual(fused=False) needs an fp32 scratch of {k} elements")
    norm_lau(o, z, norm_w, scratch, heads, head_dim, eps32)
    matvec_residual(W, scratch, h, n, k)


_F = "float32[::1]"
_W = "int32[::1]"
PTX_SIGNATURES = {
    "norm_matvec_kernel": [f"void({_F}, {_F}, {_W}, {_F}, int64, int64, float32)"],
    "norm_swiglu_matvec_kernel": [f"void({_F}, {_F}, {_W}, {_W}, {_F}, int64, int64, float32)"],
    "matvec_residual_kernel": [f"void({_W}, {_F}, {_F}, int64, int64)"],
    "gated_norm_matvec_residual_kernel": [f"void({_F}, {_F}, {_F}, {_W}, {_F}, int64, int64, int64, float32)"],
    "gated_rms_norm_kernel": [f"void({_F}, {_F}, {_F}, {_F}, int64, int64, float32)"],
}

__all__ = ["norm_matvec", "norm_swiglu_matvec", "matvec_residual", "gated_norm_matvec_residual",
           "dot_row_norm", "dot_rows2_norm", "PTX_SIGNATURES"]
