"""Matrix-vector product y = W x with bf16 weights: the workhorse of batch-1 decode, in seven versions.

At batch 1 every weight is read once per token and used for exactly one multiply-add (2 FLOP per 2 bytes), so a
matvec is bound by memory bandwidth, never by arithmetic: its speed is ``bytes of W / time`` and the goal is the
device-copy bandwidth (3.0 TB/s measured on the H100).  The versions below go from naive to that goal, one idea
at a time, in the style of llm.c's ``dev/cuda`` kernels: each has a header saying what it changes and why, and
``python -m megakernel.bench.kernels`` times all of them on the real shapes (v2-v5 figures are the 248320 x 1024
LM-head matvec on an H100; torch/cuBLAS does 2.85 TB/s there).

Conventions (shared by ``fused_matvec`` and ``lm_head``):

* ``W`` [N, K] bf16 is passed as int32 words, 1-D: ``launch.as_kernel_array(launch.words(W).view(-1))``, N*K/2
  words, row ``n`` starting at word ``n*K/2``; word ``j`` holds element ``2j`` in its low half and ``2j+1`` in its
  high half, decoded with ``device.bf16_lo``/``bf16_hi`` (a shift or a mask: a bf16 is the top half of a float32).
* ``x`` and ``y`` are fp32 1-D; products and sums are fp32.
* The vectorised versions read W in 16-byte pieces (8 bf16), so K must be a multiple of 8 (rows start on
  16-byte boundaries); the wrappers refuse other K with a ``ValueError`` naming the shape.  ``x`` must start on a
  16-byte boundary too (a whole tensor, or a slice at an offset that is a multiple of 4 floats).  N is arbitrary.
* Wrappers take kernel arrays (already converted) and Python ints, launch on torch's current stream (so kernels
  order with torch ops and can be captured in a CUDA graph) and never synchronize.  Grid sizes are computed once
  per shape and cached; the configured launcher is cached per (shape, stream).

Which threads read which bytes (the whole story of this file):

* v1  one thread per row.  Thread n walks row n: at any instant the 32 threads of a warp read 32 addresses
      K*2 bytes apart, so every 4-byte load pulls a separate 32-byte sector: ~8x the bytes for what is used,
      served only because L1/L2 catch some of the rest.  Uncoalesced.
* v2  one warp per row, lane l reads words l, l+32, ...: a warp's load is 128 contiguous bytes (coalesced).  The
      32 partial sums are added with a shuffle butterfly (``device.warp_sum``).  1.6 TB/s.
* v3  8-byte loads (two words, 4 bf16): half the load instructions for the same bytes, more bytes in flight per
      instruction.  1.8 TB/s.
* v4  16-byte loads (``ld.global.v4.u32``, 8 bf16) of W, and of x (``load_f32x4`` through L1: x is a few KB and
      every warp reads all of it, so it stays in L1).  Staging x in shared memory in its natural layout was
      *slower*: lane l reading 16 bytes at a stride of 32 bytes is a 2-way bank conflict on every read.  2.8 TB/s.
* v5  v4 + four independent 16-byte loads in flight per lane (the loop is unrolled by 4, all loads issued before
      the first multiply), and warps that grid-stride over rows (``plan_rows``: up to 8 blocks of 512 threads per
      SM).  2.8 TB/s on the LM head, but *slower* than v4 on the 5120-row attention matrix (8.7 vs 6.6 us): at 48
      registers only 2 blocks of 512 threads fit on an SM, not 8, so the grid ran in several waves with a ragged
      last one (5120 rows = 320 blocks = 1.2 waves of 264).
* v6  sizes everything from what is really resident, and issues every load of a row before anything waits:
      - one wave: the grid is at most the blocks the compiled kernel can keep resident (CUDA's occupancy
        calculator on the compiled kernel, ``resident_blocks_per_sm``); launch bounds cap it at 64 registers, so
        32 warps per SM; warps grid-stride over the rows, and each row's next loads are issued before the
        current row is reduced;
      - a warp's share of a row is at most 4 pieces per lane, all loaded at once (``load_batch``); rows longer
        than 1024 are split over G warps of a block ("split-K", ``combine_parts``: the G warp sums meet in
        shared memory, added in a fixed order, so results are bit-reproducible).  The few-row shapes (N = 1024:
        out_proj, o_proj, down) thus put 2048-4096 warps to work instead of 1024;
      - x is staged in shared memory once per block in a "split" layout (first and last 4 floats of every
        8-float piece in separate halves) so lane l's two 16-byte reads are contiguous across the warp; the
        first row's weight loads are issued before the staging, so its latency hides behind theirs;
      - G is a compile-time constant (one kernel per G, made on demand): the piece offsets become immediates,
        which is what keeps the kernel under 64 registers.
      Measured: 169.6 us on the LM head (3.0 TB/s; cuBLAS 178.7 us); every Qwen3.5-0.8B shape faster than
      torch's F.linear (table below).  Also tried and dropped: two rows' loads
      in flight per warp (~80-93 registers, half the warps: 5-15 % slower on every shape).
* v7  v6 with the launch plan the sweep picked: blocks of 8 warps (4 per SM instead of 2 of 16: the grid of
      528 blocks splits evenly over the 132 SMs), the fewest warps per row that keep 4 pieces per lane (G = 2 for
      K = 2048 was faster than v6's G = 4 with 2 pieces each), and, when a row is split, x read through L1 in
      its natural layout instead of staged: each warp then needs only its own quarter or half of x and no
      barrier stands between its loads and its dot products (0.4-0.5 us faster on the N = 1024 shapes; for
      K = 1024, G = 1, the staged x stays: equal or slightly faster).

``DEFAULT_VERSION`` is 7; ``fused_matvec`` and ``lm_head`` are built on its pieces (``rows_setup``,
``load_batch``, ``dot_batch``, ``combine_parts``, ``RowsLauncher``); their version-5 kernels use ``dot_row``.

Measured on an H100 (CUDA-graph replay, us per launch, median; GB/s = bytes moved / time; x torch = torch bf16
F.linear time / kernel time; ``python -m megakernel.bench.kernels``, copy bandwidth 3.00 TB/s):

===================  ======  ==============  ======================  ==================================  ==============
shape (rows x K)      torch  v5 (before)     v7 (default)            decoder's fused kernel (v7)         same, on v5
===================  ======  ==============  ======================  ==================================  ==============
in_proj 8224x1024      8.57  9.93 (0.86x)    7.77 2172 GB/s 1.10x    norm_matvec        8.35 2022 1.03x  10.43 (0.82x)
out_proj 1024x2048     5.87  6.07 (0.97x)    3.98 1057 GB/s 1.47x    gated_norm_mv_res  5.05  836 1.16x  7.88 (0.74x)
attn_qkv 5120x1024     6.51  8.61 (0.76x)    5.85 1796 GB/s 1.11x    norm_matvec        6.40 1642 1.02x  9.57 (0.68x)
o_proj 1024x2048       5.87  6.06 (0.97x)    4.01 1049 GB/s 1.46x    matvec_residual    4.14 1017 1.42x  6.81 (0.86x)
gate_up 7168x1024      7.48  8.97 (0.83x)    6.72 2190 GB/s 1.11x    norm_swiglu_mv     7.20 2042 1.04x  7.64 (0.98x)
down 1024x3584         7.46  9.00 (0.83x)    5.38 1368 GB/s 1.39x    matvec_residual    5.67 1299 1.32x  9.73 (0.77x)
lm_head 248320x1024  178.69  183.06 (0.98x)  168.82 3018 GB/s 1.06x  lm_head_argmax   170.77 2984 1.05x  201.55 (0.89x)
===================  ======  ==============  ======================  ==================================  ==============

Fused columns: us, GB/s, x torch (gated_norm_mv_res = gated_norm_matvec_residual, norm_swiglu_mv =
norm_swiglu_matvec).  "Before" (v5 and the v5-based fused kernels) is from the same run; the first H100 run
measured them within 2 %.  The LM head: v7 3.02 TB/s = 100.6 % of the copy bandwidth (a read-only stream beats a copy's read + write);
``lm_head_argmax`` 2.98 TB/s = 99.4 % (target >= 90 %).  Every shape is faster than torch with the plain v7 and
with the fused kernel the decoder launches (which also does the norm / activation / residual work torch would
need separate kernels for).  Plans (blocks x threads, G): 528 x 256, G 1 for K = 1024; 256 x 256, G 2 for
K = 2048; 512 x 256, G 4 for K = 3584; the gated kernel 128 x 512, G 2; SwiGLU 528 x 256, G 2 (one warp per
row of the pair).  Between runs the medians move by up to ~3-7 % on the small shapes (norm_matvec on in_proj:
7.76-8.35 us over three runs); p10-p90 within a run is ~2 %.  The empty-kernel floor in a CUDA graph is 1.2 us.
"""

from __future__ import annotations

from numba import cuda
from numba.cuda import float32, int32

from megakernel import device as D
from megakernel import launch

SIMULATOR = launch.SIMULATOR
WARP = 32

# --------------------------------------------------------------------------------------------------------------
# Grid sizing.  On the GPU the SM count comes from the device; in the simulator (one Python thread per CUDA
# thread) grids are capped small: a couple of blocks of a few warps, so rows are still grid-strided and several
# warps share a block, which is what the tests need to exercise.
# --------------------------------------------------------------------------------------------------------------
BLOCKS_PER_SM = 8          # v5: up to 8 blocks of 512 threads per SM (the measured 2.9 TB/s configuration)
MAX_WARPS_PER_BLOCK = 16   # 512 threads
SIM_SM_COUNT = 1
SIM_MAX_BLOCKS = 2
SIM_MAX_WARPS_PER_BLOCK = 4

_SM_COUNT: int | None = None


def sm_count() -> int:
    """Streaming multiprocessors of the current device (``SIM_SM_COUNT`` in the simulator); cached."""
    global _SM_COUNT
    if _SM_COUNT is None:
        _SM_COUNT = SIM_SM_COUNT if SIMULATOR else int(cuda.get_current_device().MULTIPROCESSOR_COUNT)
    return _SM_COUNT


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def plan_rows(rows: int, sms: int | None = None, simulator: bool = SIMULATOR) -> tuple[int, int]:
    """(blocks, threads per block) for a warp-per-row kernel that grid-strides over ``rows``.

    Blocks of up to 16 warps (512 threads); fewer warps per block while that would leave fewer than 2 blocks per
    SM (so N = 1024 rows on 132 SMs runs 512 blocks of 2 warps, not 64 blocks of 16 that would idle half the
    GPU); at most ``BLOCKS_PER_SM`` blocks per SM, the warps then loop over several rows each.
    """
    if rows < 1:
        raise ValueError(f"need at least one row, got {rows}")
    sms = sms or sm_count()
    if simulator:
        warps = SIM_MAX_WARPS_PER_BLOCK
        while warps > 1 and cdiv(rows, warps) < 2:
            warps //= 2
        return min(cdiv(rows, warps), SIM_MAX_BLOCKS), warps * WARP
    warps = MAX_WARPS_PER_BLOCK
    while warps > 1 and cdiv(rows, warps) < 2 * sms:
        warps //= 2
    return min(cdiv(rows, warps), BLOCKS_PER_SM * sms), warps * WARP


def plan_one_per_warp(rows: int, warps_per_block: int = 8, simulator: bool = SIMULATOR) -> tuple[int, int]:
    """(blocks, threads) giving every row its own warp (v2-v4); capped in the simulator."""
    if simulator:
        warps_per_block = min(warps_per_block, SIM_MAX_WARPS_PER_BLOCK)
    blocks = cdiv(rows, warps_per_block)
    return (min(blocks, SIM_MAX_BLOCKS) if simulator else blocks), warps_per_block * WARP


def plan_one_per_thread(rows: int, threads: int = 128, simulator: bool = SIMULATOR) -> tuple[int, int]:
    """(blocks, threads) giving every row its own thread (v1); capped in the simulator."""
    blocks = cdiv(rows, threads)
    return (min(blocks, SIM_MAX_BLOCKS) if simulator else blocks), threads


# --------------------------------------------------------------------------------------------------------------
# Launching: torch's stream (one cached Numba handle per torch stream, ``launch.current_stream``); launch
# configurations cached per stream.
# --------------------------------------------------------------------------------------------------------------


def stream():
    """A Numba handle on torch's current CUDA stream (0 in the simulator); see ``launch.current_stream``."""
    return launch.current_stream()[1]


class Launcher:
    """A kernel with a fixed grid, block and dynamic shared memory; ``launcher(*args)`` launches it on torch's
    current stream.  The configured Numba launch object is cached per stream (``launch.configured``)."""

    __slots__ = ("kernel", "grid", "block", "shared_bytes", "_configured")

    def __init__(self, kernel, grid: int, block: int, shared_bytes: int = 0):
        self.kernel, self.grid, self.block, self.shared_bytes = kernel, grid, block, shared_bytes
        self._configured: dict = {}

    def __call__(self, *args) -> None:
        key, s = launch.current_stream()
        run = self._configured.get(key)
        if run is None:
            run = self._configured[key] = launch.configured(self.kernel, self.grid, self.block, s,
                                                            self.shared_bytes)
        run(*args)

    def __repr__(self) -> str:
        name = getattr(self.kernel, "__name__", None) or getattr(getattr(self.kernel, "py_func", None),
                                                                  "__name__", "kernel")
        return f"Launcher({name}, grid={self.grid}, block={self.block}, shared={self.shared_bytes})"


def check_k(k: int, multiple: int, what: str, n: int | None = None) -> None:
    """Refuse a K the kernel cannot handle, naming the shape."""
    if k < multiple or k % multiple:
        shape = f"[{n}, {k}]" if n is not None else f"K = {k}"
        raise ValueError(
            f"{what}: weight shape {shape} needs K (the row length) to be a positive multiple of {multiple} "
            f"({'16-byte rows for the vector loads' if multiple == 8 else 'whole words per row'})"
        )


def check_len(name: str, arr, need: int, what: str) -> None:
    if arr.shape[0] < need:
        raise ValueError(f"{what}: {name} has {arr.shape[0]} elements, needs {need}")


# --------------------------------------------------------------------------------------------------------------
# v1: one thread per row.  Adjacent threads read addresses a whole row (K*2 bytes) apart: uncoalesced.
# Only even K is needed (whole words per row).
# --------------------------------------------------------------------------------------------------------------
@cuda.jit
def matvec_v1(W, x, y, n, k):
    half = k // 2
    for row in range(cuda.grid(1), n, cuda.gridsize(1)):
        base = row * half
        acc = float32(0)
        for j in range(half):
            w = W[base + j]
            acc += D.bf16_lo(w) * x[2 * j] + D.bf16_hi(w) * x[2 * j + 1]
        y[row] = acc


# --------------------------------------------------------------------------------------------------------------
# v2: one warp per row, 4-byte word loads, lane l reads words l, l+32, ... (one 128-byte transaction per warp
# load: coalesced); the 32 lane sums meet in a shuffle butterfly.  H100 LM head: 1.6 TB/s.
# --------------------------------------------------------------------------------------------------------------
@cuda.jit
def matvec_v2(W, x, y, n, k):
    lane = cuda.threadIdx.x % WARP
    half = k // 2
    for row in range(cuda.grid(1) // WARP, n, cuda.gridsize(1) // WARP):
        base = row * half
        acc = float32(0)
        for j in range(lane, half, WARP):
            w = W[base + j]
            acc += D.bf16_lo(w) * x[2 * j] + D.bf16_hi(w) * x[2 * j + 1]
        acc = D.warp_sum(acc)
        if lane == 0:
            y[row] = acc


# --------------------------------------------------------------------------------------------------------------
# v3: as v2 with 8-byte loads of W (two words = 4 bf16, ``ld.global.v2.u32``) and 16-byte loads of the matching
# 4 floats of x: half the load instructions per byte.  K must be a multiple of 4.  H100 LM head: 1.8 TB/s.
# --------------------------------------------------------------------------------------------------------------
@cuda.jit
def matvec_v3(W, x, y, n, k):
    lane = cuda.threadIdx.x % WARP
    nq = k // 4  # 8-byte pieces per row
    for row in range(cuda.grid(1) // WARP, n, cuda.gridsize(1) // WARP):
        base = row * nq
        acc = float32(0)
        for j in range(lane, nq, WARP):
            a, b = D.load_u32x2(W, base + j)
            x0, x1, x2, x3 = D.load_f32x4(x, j)
            acc += D.bf16_lo(a) * x0 + D.bf16_hi(a) * x1 + D.bf16_lo(b) * x2 + D.bf16_hi(b) * x3
        acc = D.warp_sum(acc)
        if lane == 0:
            y[row] = acc


@cuda.jit(device=True)
def dot16_x(acc, w, x0, x1, x2, x3, x4, x5, x6, x7):
    """``acc`` plus the 8 bf16 weights of the words ``w`` times ``x0..x7``, in this fixed order."""
    a, b, c, d = w
    acc += D.bf16_lo(a) * x0 + D.bf16_hi(a) * x1 + D.bf16_lo(b) * x2 + D.bf16_hi(b) * x3
    acc += D.bf16_lo(c) * x4 + D.bf16_hi(c) * x5 + D.bf16_lo(d) * x6 + D.bf16_hi(d) * x7
    return acc


@cuda.jit(device=True)
def dot16(acc, a, b, c, d, x, v):
    """``acc`` + the dot product of one 16-byte piece of a W row (words a, b, c, d = 8 bf16, piece ``v`` of the
    row) with x[8v : 8v+8], read as two 16-byte loads."""
    x0, x1, x2, x3 = D.load_f32x4(x, 2 * v)
    x4, x5, x6, x7 = D.load_f32x4(x, 2 * v + 1)
    return dot16_x(acc, (a, b, c, d), x0, x1, x2, x3, x4, x5, x6, x7)


# --------------------------------------------------------------------------------------------------------------
# v4: 16-byte loads of W (``ld.global.v4.u32``, 8 bf16) and of x (``ld.global.v4.f32``, through L1).  One load
# in flight per lane per iteration.  K must be a multiple of 8.
# --------------------------------------------------------------------------------------------------------------
@cuda.jit
def matvec_v4(W, x, y, n, k):
    lane = cuda.threadIdx.x % WARP
    nv = k // 8  # 16-byte pieces per row
    for row in range(cuda.grid(1) // WARP, n, cuda.gridsize(1) // WARP):
        base = row * nv
        acc = float32(0)
        for j in range(lane, nv, WARP):
            a, b, c, d = D.load_u32x4(W, base + j)
            acc = dot16(acc, a, b, c, d, x, j)
        acc = D.warp_sum(acc)
        if lane == 0:
            y[row] = acc


@cuda.jit(device=True)
def dot_row(W, base, x, nv, lane):
    """This lane's share of (row of W starting at 16-byte piece ``base``) . x, K = 8*nv: pieces lane, lane+32,
    ... with four independent 16-byte W loads issued before they are used (then the < 128-piece remainder one
    at a time).  Sum the lanes with ``warp_sum``."""
    acc = float32(0)
    v = lane
    while v + 3 * WARP < nv:
        w0 = D.load_u32x4(W, base + v)
        w1 = D.load_u32x4(W, base + v + WARP)
        w2 = D.load_u32x4(W, base + v + 2 * WARP)
        w3 = D.load_u32x4(W, base + v + 3 * WARP)
        acc = dot16(acc, w0[0], w0[1], w0[2], w0[3], x, v)
        acc = dot16(acc, w1[0], w1[1], w1[2], w1[3], x, v + WARP)
        acc = dot16(acc, w2[0], w2[1], w2[2], w2[3], x, v + 2 * WARP)
        acc = dot16(acc, w3[0], w3[1], w3[2], w3[3], x, v + 3 * WARP)
        v += 4 * WARP
    while v < nv:
        w0 = D.load_u32x4(W, base + v)
        acc = dot16(acc, w0[0], w0[1], w0[2], w0[3], x, v)
        v += WARP
    return acc


# --------------------------------------------------------------------------------------------------------------
# v5: v4 + four 16-byte loads in flight per lane (``dot_row``) + a grid meant to fill the GPU (``plan_rows``:
# up to 8 blocks of 512 threads per SM, warps grid-stride over rows).  H100 LM head: 2.78 TB/s (cuBLAS 2.85);
# only 2 of those blocks are resident per SM at 48 registers, so the grid runs in waves (see the docstring).
# --------------------------------------------------------------------------------------------------------------
@cuda.jit
def matvec_v5(W, x, y, n, k):
    lane = cuda.threadIdx.x % WARP
    nv = k // 8
    for row in range(cuda.grid(1) // WARP, n, cuda.gridsize(1) // WARP):
        acc = D.warp_sum(dot_row(W, row * nv, x, nv, lane))
        if lane == 0:
            y[row] = acc


# --------------------------------------------------------------------------------------------------------------
# v6: x staged in shared memory, one resident wave, split-K for few rows, every load of a row issued up front.
# v7: v6 + 8-warp blocks, the fewest warps per row, x through L1 when a row is split.  (Module docstring.)
# H100: every Qwen3.5-0.8B shape faster than torch F.linear; LM head 168.8 us = 3.02 TB/s (v5: 183 us).
# The pieces below are shared with fused_matvec and lm_head (same skeleton, other prologues and epilogues).
# --------------------------------------------------------------------------------------------------------------
V6_BOUNDS = (1024, 1)      # launch bounds: at most 64 registers per thread (32 warps per SM at least)
V6_WARPS_PER_BLOCK = 16
V7_WARPS_PER_BLOCK = 8     # 4 blocks per SM
SHARED_LIMIT_BYTES = 48 * 1024  # static + dynamic shared memory a block may use without opting in
PIECES_PER_LANE = 4        # a warp's share of a row: at most 4 sixteen-byte pieces per lane, all loaded at once
MAX_PARTS = 32             # warps per block at most (1024 threads)
PARTS_LEN = 2 * MAX_PARTS  # split-K partial sums, double-buffered


@cuda.jit(device=True)
def dot16_split(acc, w, xs, v, nv):
    """Piece ``v`` (words ``w``) against x held "split" in shared memory: x[8v:8v+4] at xs[4v:4v+4] and
    x[8v+4:8v+8] at xs[4nv+4v : 4nv+4v+4], so lane l's two 16-byte reads are contiguous across the warp."""
    x0, x1, x2, x3 = D.load_f32x4(xs, v)
    x4, x5, x6, x7 = D.load_f32x4(xs, nv + v)
    return dot16_x(acc, w, x0, x1, x2, x3, x4, x5, x6, x7)


@cuda.jit(device=True)
def dot16_split2(acc_a, acc_b, wa, wb, xs, v, nv):
    """``dot16_split`` for two rows' pieces ``v`` against the same x (read once), each sum in the same order."""
    x0, x1, x2, x3 = D.load_f32x4(xs, v)
    x4, x5, x6, x7 = D.load_f32x4(xs, nv + v)
    return (dot16_x(acc_a, wa, x0, x1, x2, x3, x4, x5, x6, x7),
            dot16_x(acc_b, wb, x0, x1, x2, x3, x4, x5, x6, x7))


@cuda.jit(device=True)
def dot16_split4(acc_a, acc_b, acc_c, acc_d, wa, wb, wc, wd, xs, v, nv):
    """``dot16_split`` for four rows' pieces ``v`` against the same x (read once), each sum in the same order."""
    x0, x1, x2, x3 = D.load_f32x4(xs, v)
    x4, x5, x6, x7 = D.load_f32x4(xs, nv + v)
    return (dot16_x(acc_a, wa, x0, x1, x2, x3, x4, x5, x6, x7),
            dot16_x(acc_b, wb, x0, x1, x2, x3, x4, x5, x6, x7),
            dot16_x(acc_c, wc, x0, x1, x2, x3, x4, x5, x6, x7),
            dot16_x(acc_d, wd, x0, x1, x2, x3, x4, x5, x6, x7))


if SIMULATOR:
    load_w4 = D.load_u32x4
else:
    from llvmlite import ir as _ir
    from numba.cuda import cgutils as _cgutils
    from numba.cuda import types as _types
    from numba.cuda.extending import intrinsic as _intrinsic

    @_intrinsic
    def load_w4(typingctx, arr, i):
        """``device.load_u32x4`` (words 4i..4i+3, one 16-byte load) from an array known to be in global memory:
        the pointer is cast to the global address space first, so the load stays ``ld.global.v4.u32`` even
        when the array is chosen at run time (a select of two arrays otherwise gives a generic ``ld.v4``)."""
        if not (isinstance(arr, _types.Array) and arr.ndim == 1 and isinstance(arr.dtype, _types.Integer)
                and arr.dtype.bitwidth == 32 and isinstance(i, _types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            ary = _cgutils.create_struct_proxy(sig.args[0])(context, builder, value=args[0])
            idx = args[1]
            if idx.type.width < 64:
                idx = builder.sext(idx, _ir.IntType(64)) if sig.args[1].signed else builder.zext(idx, _ir.IntType(64))
            vty = _ir.VectorType(context.get_data_type(sig.args[0].dtype), 4)
            gptr = builder.addrspacecast(builder.bitcast(ary.data, vty.as_pointer()), vty.as_pointer(1))
            vec = builder.load(builder.gep(gptr, [idx]), align=16)
            vals = [builder.extract_element(vec, _ir.Constant(_ir.IntType(32), j)) for j in range(4)]
            return context.make_tuple(builder, sig.return_type, vals)

        return _types.UniTuple(arr.dtype, 4)(arr, i), codegen


@cuda.jit(device=True)
def row_limit(row, n, nv):
    """Pieces to read of ``row``: all ``nv`` of a real row, none past the last row."""
    return nv if row < n else 0


@cuda.jit(device=True)
def load_batch(W, row, n, nv, v0, stride):
    """This lane's pieces of ``row`` (v0, v0 + stride, v0 + 2 stride, v0 + 3 stride): four independent 16-byte
    loads issued one after the other, none waited for here; zero words for pieces past the row end (nothing is
    read for them, nor for a row >= n)."""
    lim = row_limit(row, n, nv)
    base = row * nv
    w0 = w1 = w2 = w3 = (int32(0), int32(0), int32(0), int32(0))
    if v0 < lim:
        w0 = load_w4(W, base + v0)
        if v0 + stride < lim:
            w1 = load_w4(W, base + v0 + stride)
            if v0 + 2 * stride < lim:
                w2 = load_w4(W, base + v0 + 2 * stride)
                if v0 + 3 * stride < lim:
                    w3 = load_w4(W, base + v0 + 3 * stride)
    return w0, w1, w2, w3


@cuda.jit(device=True)
def dot_batch(b, xs, nv, v0, stride, lim):
    """This lane's share of row . x from the four pieces ``b`` loaded by ``load_batch`` (x split in shared)."""
    acc = float32(0)
    if v0 < lim:
        acc = dot16_split(acc, b[0], xs, v0, nv)
        if v0 + stride < lim:
            acc = dot16_split(acc, b[1], xs, v0 + stride, nv)
            if v0 + 2 * stride < lim:
                acc = dot16_split(acc, b[2], xs, v0 + 2 * stride, nv)
                if v0 + 3 * stride < lim:
                    acc = dot16_split(acc, b[3], xs, v0 + 3 * stride, nv)
    return acc


@cuda.jit(device=True)
def dot_batch_global(b, x, v0, stride, lim):
    """As ``dot_batch`` with x read from global memory (through L1) in its natural layout."""
    acc = float32(0)
    if v0 < lim:
        acc = dot16(acc, b[0][0], b[0][1], b[0][2], b[0][3], x, v0)
        if v0 + stride < lim:
            acc = dot16(acc, b[1][0], b[1][1], b[1][2], b[1][3], x, v0 + stride)
            if v0 + 2 * stride < lim:
                acc = dot16(acc, b[2][0], b[2][1], b[2][2], b[2][3], x, v0 + 2 * stride)
                if v0 + 3 * stride < lim:
                    acc = dot16(acc, b[3][0], b[3][1], b[3][2], b[3][3], x, v0 + 3 * stride)
    return acc


@cuda.jit(device=True)
def rows_setup(k, G, block, nblocks):
    """Who does what: blocks of R * G warps, R row slots of G warps each (G a compile-time constant); warp g of a
    slot reads pieces lane + 32 g, + 32 G, + 64 G, + 96 G of its row.  ``block`` of ``nblocks`` is this block's
    place in the work range (``blockIdx.x`` of ``gridDim.x`` for a kernel of its own; the megakernel passes its
    own).  Returns lane, warp, slot, g, nv (pieces per row), v0 (first piece), stride (32 G), the row step per
    iteration (nblocks * R) and the first row."""
    tid = cuda.threadIdx.x
    lane = tid % WARP
    warp = tid // WARP
    rows_per_block = (cuda.blockDim.x // WARP) // G
    slot = warp // G
    g = warp - slot * G
    step = nblocks * rows_per_block
    row = block * rows_per_block + slot
    return lane, warp, slot, g, k // 8, lane + WARP * g, WARP * G, step, row


@cuda.jit(device=True)
def stage_split(x, xs, nv):
    """xs <- x (8 nv floats) in the split layout, by the whole block (16-byte global reads). (A while loop: a
    ``range`` with the block size as its step divides out its trip count, a 64-bit division.)"""
    q = cuda.threadIdx.x
    while q < 2 * nv:
        a, b, c, d = D.load_f32x4(x, q)
        j = 4 * ((q & 1) * nv + (q >> 1))
        xs[j] = a
        xs[j + 1] = b
        xs[j + 2] = c
        xs[j + 3] = d
        q += cuda.blockDim.x


@cuda.jit(device=True)
def combine_parts(acc, parts, it, warp, slot, G):
    """Split-K: the G warp sums of each row slot, added in a fixed order (g = 0, 1, ...); every lane of the
    slot's warps gets the row's total.  One barrier per iteration (``parts`` is double-buffered by iteration
    parity, so a fast warp cannot overwrite sums a slow warp has not read yet).  Whole block; G constant."""
    if G == 1:
        return acc
    buf = (it % 2) * MAX_PARTS
    if cuda.threadIdx.x % WARP == 0:
        parts[buf + warp] = acc
    cuda.syncthreads()
    first = buf + slot * G
    s = parts[first]
    for j in range(1, G):
        s += parts[first + j]
    return s


_KERNELS: dict = {}


def memo_kernel(key, make):
    """Kernels made by the factories below, one per (kind, G, ...): compiled on first launch, kept."""
    kernel = _KERNELS.get(key)
    if kernel is None:
        kernel = _KERNELS[key] = make()
    return kernel


def matvec_rows(G: int, residual: bool = False, x_shared: bool = True):
    """The v6/v7 matvec as a device function over a work range (one per G, residual, x_shared; G a compile-time
    constant: the piece offsets become immediates):

        body(W, x, y, n, k, block, nblocks, xs, parts)      y = W @ x   (or y += W @ x with ``residual``)

    ``block`` of ``nblocks``: this block's place among the blocks sharing the rows; ``xs``: a float32 shared array
    of >= k elements (x staged there in the split layout when ``x_shared``; otherwise x is read through L1 in its
    natural layout, each warp loading only the pieces it needs, with no barrier before the dots); ``parts``: a
    float32 shared array of ``PARTS_LEN``.  The layered decoder's kernel calls it with ``blockIdx.x, gridDim.x``;
    the persistent megakernel with its own block index and grid size.  Every thread of the block must call it; it
    returns with the block synchronised, its shared arrays free for reuse (the contract of every ``*_rows`` /
    ``*_item`` body in ``megakernel.kernels``)."""

    def make():
        @cuda.jit(device=True)
        def matvec_rows_body(W, x, y, n, k, block, nblocks, xs, parts):
            lane, warp, slot, g, nv, v0, stride, step, row = rows_setup(k, G, block, nblocks)
            cur = load_batch(W, row, n, nv, v0, stride)  # issued before x is staged: the latencies overlap
            if x_shared:
                stage_split(x, xs, nv)
                cuda.syncthreads()
            base = row - slot  # the block's first row this iteration: the loop is uniform over the block
            it = 0
            while base < n:
                lim = row_limit(row, n, nv)
                if x_shared:
                    acc = dot_batch(cur, xs, nv, v0, stride, lim)
                else:
                    acc = dot_batch_global(cur, x, v0, stride, lim)
                cur = load_batch(W, row + step, n, nv, v0, stride)  # the next row's pieces, before the reduction
                acc = combine_parts(D.warp_sum(acc), parts, it, warp, slot, G)
                if g == 0 and lane == 0 and row < n:
                    if residual:
                        y[row] += acc
                    else:
                        y[row] = acc
                row += step
                base += step
                it += 1
            cuda.syncthreads()  # xs and parts are free for whatever the block does next

        return matvec_rows_body

    return memo_kernel(("matvec_rows", G, residual, x_shared), make)


def rows_matvec_kernel(G: int, residual: bool = False, x_shared: bool = True):
    """The v6/v7 kernel for G warps per row: ``matvec_rows`` over the whole grid."""

    def make():
        body = matvec_rows(G, residual, x_shared)

        @cuda.jit(launch_bounds=V6_BOUNDS)
        def matvec_v6(W, x, y, n, k):
            xs = cuda.shared.array(0, float32)
            parts = cuda.shared.array(PARTS_LEN, float32)
            body(W, x, y, n, k, cuda.blockIdx.x, cuda.gridDim.x, xs, parts)

        return matvec_v6

    return memo_kernel(("matvec", G, residual, x_shared), make)


def min_parts(k: int) -> int:
    """The fewest warps per row (a power of two) that keep every warp's share at <= 4 pieces per lane."""
    need = cdiv(cdiv(k // 8, WARP), PIECES_PER_LANE)
    g = 1
    while g < need:
        g *= 2
    return g


def parts_spread(n: int, k: int, resident_warps: int, warps_per_block: int) -> int:
    """v6's rule: from ``min_parts(k)``, double G while every row-part still gets a resident warp and each warp
    keeps at least one 32-piece chunk (few-row shapes spread over more warps)."""
    chunks = cdiv(k // 8, WARP)
    G = min_parts(k)
    while 2 * G <= min(chunks, warps_per_block) and warps_per_block % (2 * G) == 0 and 2 * G * n <= resident_warps:
        G *= 2
    return G


def parts_fewest(n: int, k: int, resident_warps: int, warps_per_block: int) -> int:
    """v7's rule: ``min_parts(k)`` (measured: K = 2048 runs faster on 2 warps per row with 4 pieces each than on
    4 with 2; K = 3584 the same on 4 or 8)."""
    return min_parts(k)


def plan_split(n: int, k: int, blocks_per_sm: int, sms: int, warps_per_block: int, G: int,
               g_min: int | None = None) -> tuple[int, int, int]:
    """(blocks, threads, G) for a v6/v7-family kernel: blocks of ``warps_per_block`` warps, R = warps / G rows
    per block and iteration, one resident wave (at most ``blocks_per_sm * sms`` blocks, rows grid-strided)."""
    if n < 1:
        raise ValueError(f"need at least one row, got {n}")
    g_min = min_parts(k) if g_min is None else g_min
    if G < g_min or warps_per_block % G or warps_per_block > MAX_PARTS:
        raise ValueError(f"[{n}, {k}]: G = {G} warps per row must divide the {warps_per_block} warps of a block "
                         f"(<= {MAX_PARTS}) and be >= {g_min} (at most {PIECES_PER_LANE} pieces per lane)")
    if blocks_per_sm < 1:
        raise ValueError(f"[{n}, {k}]: a block of {warps_per_block} warps does not fit on an SM (registers)")
    return min(blocks_per_sm * sms, cdiv(n, warps_per_block // G)), warps_per_block * WARP, G


def resident_blocks_per_sm(kernel, args, threads: int, shared_bytes: int = 0) -> int:
    """Blocks of ``threads`` of the compiled ``kernel`` (for these argument types) one SM holds at once (CUDA's
    occupancy calculator; 0 if one block does not fit); ``SIM_MAX_BLOCKS`` in the simulator."""
    if SIMULATOR:
        return SIM_MAX_BLOCKS
    compiled = kernel.compile(tuple(kernel.typeof_pyval(a) for a in args))
    return compiled.max_cooperative_grid_blocks(threads, shared_bytes) // sm_count()


def kernel_registers(kernel, args) -> int | None:
    if SIMULATOR:
        return None
    return kernel.compile(tuple(kernel.typeof_pyval(a) for a in args)).regs_per_thread


class RowsLauncher:
    """Launches a v6/v7-family kernel made by ``make(G)``.  The plan is made at the first call: G from ``choose``
    (or given), the grid from the real occupancy of the compiled kernel (``plan_split``).  ``shared_bytes``: an
    int, or a function of G.  ``warps_per_block`` and ``G`` override the defaults (tests, the sweep)."""

    __slots__ = ("make", "n", "k", "shared", "warps", "G", "choose", "g_min", "plan", "kernel", "registers",
                 "_launcher")

    def __init__(self, make, n, k, shared_bytes=0, warps_per_block=None, G=None, *, choose=parts_fewest,
                 g_min=None, default_warps=None):
        self.make, self.n, self.k = make, n, k
        self.shared = shared_bytes if callable(shared_bytes) else (lambda G, b=shared_bytes: b)
        if warps_per_block is None:
            warps_per_block = SIM_MAX_WARPS_PER_BLOCK if SIMULATOR else (default_warps or V7_WARPS_PER_BLOCK)
        self.warps, self.G, self.choose = warps_per_block, G, choose
        self.g_min = min_parts(k) if g_min is None else g_min
        self.plan = self.kernel = self.registers = self._launcher = None
        if G is not None:
            plan_split(n, k, 1, 1, self.warps, G, self.g_min)  # refuse an impossible configuration now

    def _setup(self, args) -> Launcher:
        threads = self.warps * WARP
        sms = sm_count()
        G = self.G
        if G is None:
            g0 = self.g_min
            occ = resident_blocks_per_sm(self.make(g0), args, threads, self.shared(g0))
            G = self.choose(self.n, self.k, occ * sms * self.warps, self.warps)
        self.kernel = self.make(G)
        occ = resident_blocks_per_sm(self.kernel, args, threads, self.shared(G))
        self.plan = plan_split(self.n, self.k, occ, sms, self.warps, G, self.g_min)
        self.registers = kernel_registers(self.kernel, args)
        return Launcher(self.kernel, self.plan[0], self.plan[1], self.shared(G))

    def __call__(self, *args) -> None:
        lau = self._launcher
        if lau is None:
            lau = self._launcher = self._setup(args)
        lau(*args)

    def __repr__(self) -> str:
        return f"RowsLauncher(n={self.n}, k={self.k}, plan={self.plan}, registers={self.registers})"


def x_shared_bytes(k: int, what: str) -> int:
    """Dynamic shared memory for x staged in shared memory (4 k bytes), refused past the 48 KB default."""
    if 4 * k > SHARED_LIMIT_BYTES:
        raise ValueError(f"{what}: K = {k} needs {4 * k} bytes of shared memory for x (limit "
                         f"{SHARED_LIMIT_BYTES}); use version 5")
    return 4 * k


def v7_kernel(G: int, residual: bool = False):
    """v7's kernel for G: x staged in shared memory for one warp per row, read through L1 when split."""
    return rows_matvec_kernel(G, residual=residual, x_shared=G == 1)


def v7_shared_bytes(k: int, what: str):
    need = x_shared_bytes(k, what) if min_parts(k) == 1 else 0
    return lambda G: need if G == 1 else 0


# instances for VERSIONS and the PTX checks (the launchers make the others on demand): v6's kernel for one warp
# per row (x staged; v7 uses it too), v7's split-K kernels (x through L1) for G = 2 and, with the residual add, 4
matvec_v6 = rows_matvec_kernel(1)
matvec_v7 = v7_kernel(2)
matvec_v7_residual = v7_kernel(4, residual=True)


# --------------------------------------------------------------------------------------------------------------
# Dispatcher
# --------------------------------------------------------------------------------------------------------------
VERSIONS = {1: matvec_v1, 2: matvec_v2, 3: matvec_v3, 4: matvec_v4, 5: matvec_v5, 6: matvec_v6, 7: matvec_v7}
DEFAULT_VERSION = 7
# K must be a multiple of this (v1/v2: whole words; v3: 8-byte pieces; v4-v7: 16-byte pieces)
K_MULTIPLE = {1: 2, 2: 2, 3: 4, 4: 8, 5: 8, 6: 8, 7: 8}
DESCRIPTIONS = {
    1: "thread per row (uncoalesced)",
    2: "warp per row, 4-byte loads",
    3: "warp per row, 8-byte loads",
    4: "warp per row, 16-byte loads of W and x",
    5: "16-byte loads, 4 in flight, grid-stride",
    6: "x staged in shared, one resident wave, split-K, all loads of a row up front",
    7: "v6 + 8-warp blocks, fewest warps per row, x through L1 when split (default)",
}
ROWS_VERSIONS = {6, 7}  # planned by RowsLauncher (occupancy of the compiled kernel)
# variants timed next to v6/v7 by ``bench_kernels --sweep`` (v7's plan, x always in shared / always through L1)
SWEEP_KERNELS = {"v7_shared": True, "v7_l1": False}


def plan(version: int, n: int) -> tuple[int, int]:
    """(blocks, threads) that ``matvec`` launches ``version`` with for N = n rows (v6/v7: the plan of the
    launcher once it has run, else None)."""
    if version == 1:
        return plan_one_per_thread(n)
    if version in (2, 3, 4):
        return plan_one_per_warp(n)
    if version == 5:
        return plan_rows(n)
    if version in ROWS_VERSIONS:
        for (v, nn, _k, _c), lau in _LAUNCHERS.items():
            if v == version and nn == n and lau.plan is not None:
                return lau.plan[:2]
        return None
    raise ValueError(f"unknown matvec version {version}; choose from {sorted(VERSIONS)}")


_LAUNCHERS: dict = {}


def rows_launcher(version, n: int, k: int, config=None, residual: bool = False) -> RowsLauncher:
    """The launcher of a v6/v7-family matvec (``version`` 6, 7 or a ``SWEEP_KERNELS`` name)."""
    what = f"matvec v{version}" if isinstance(version, int) else f"matvec {version}"
    check_k(k, 8, what, n)
    cfg = config or ()
    if version == 6:
        return RowsLauncher(lambda G: rows_matvec_kernel(G, residual), n, k, x_shared_bytes(k, what), *cfg,
                            choose=parts_spread, default_warps=V6_WARPS_PER_BLOCK)
    if version == 7:
        return RowsLauncher(lambda G: v7_kernel(G, residual), n, k, v7_shared_bytes(k, what), *cfg)
    shared = SWEEP_KERNELS[version]
    return RowsLauncher(lambda G: rows_matvec_kernel(G, residual, shared), n, k,
                        x_shared_bytes(k, what) if shared else 0, *cfg)


def _launcher(version, n: int, k: int, config=None):
    key = (version, n, k, config)
    lau = _LAUNCHERS.get(key)
    if lau is None:
        if version in ROWS_VERSIONS or version in SWEEP_KERNELS:
            lau = rows_launcher(version, n, k, config)
        elif version not in VERSIONS:
            raise ValueError(f"unknown matvec version {version}; choose from {sorted(VERSIONS)}")
        else:
            check_k(k, K_MULTIPLE[version], f"matvec v{version}", n)
            grid, block = plan(version, n)
            lau = Launcher(VERSIONS[version], grid, block)
        _LAUNCHERS[key] = lau
    return lau


def matvec(W, x, y, n: int, k: int, version=DEFAULT_VERSION, config=None) -> None:
    """y[:n] = W @ x[:k] for W [n, k] bf16 as int32 words (n*k/2 of them); x, y fp32.  Launches one kernel on
    torch's current stream; does not synchronize.  ``config`` (v6/v7): (warps per block, G or None) instead
    of the planned ones."""
    lau = _launcher(version, n, k, config)
    if W.shape[0] < n * k // 2 or x.shape[0] < k or y.shape[0] < n:
        raise ValueError(f"matvec: W has {W.shape[0]} words (need {n * k // 2} for [{n}, {k}]), x has "
                         f"{x.shape[0]} (need {k}), y has {y.shape[0]} (need {n})")
    lau(W, x, y, n, k)


_ARGS = "int32[::1], float32[::1], float32[::1], int64, int64"
_V6 = ("matvec_v6", "matvec_v7", "matvec_v7_residual")
PTX_SIGNATURES = {name: [f"void({_ARGS})"] for name in [f"matvec_v{v}" for v in VERSIONS] + ["matvec_v7_residual"]}
PTX_CHECK_OPTIONS = {name: {"launch_bounds": V6_BOUNDS} for name in _V6}

__all__ = ["VERSIONS", "DEFAULT_VERSION", "K_MULTIPLE", "DESCRIPTIONS", "matvec", "plan", "plan_rows",
           "plan_split", "plan_one_per_warp", "plan_one_per_thread", "sm_count", "stream", "Launcher",
           "RowsLauncher", "rows_launcher", "check_k", "dot_row", "dot16", "dot16_split", "min_parts",
           "PTX_SIGNATURES"]
