"""Matrix-vector product y = W x with bf16 weights: the workhorse of batch-1 decode, in five versions.

At batch 1 every weight is read once per token and used for exactly one multiply-add (2 FLOP per 2 bytes), so a
matvec is bound by memory bandwidth, never by arithmetic: its speed is ``bytes of W / time`` and the goal is the
device-copy bandwidth (3.02 TB/s measured on the H100).  The versions below go from naive to that goal, one idea
at a time, in the style of llm.c's ``dev/cuda`` kernels: each has a header saying what it changes and why, and
``python -m megakernel.bench_kernels`` times all of them on the real shapes (figures quoted here are the
248320 x 1024 LM-head matvec on an H100, from ``/work/shared/NUMBA_NOTES.md``; torch/cuBLAS does 2.8 TB/s).

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
      32 partial sums are added with a shuffle butterfly (``device.warp_sum``).  1.22 TB/s.
* v3  8-byte loads (two words, 4 bf16): half the load instructions for the same bytes, more bytes in flight per
      instruction.  2.0 TB/s.
* v4  16-byte loads (``ld.global.v4.u32``, 8 bf16) of W, and of x (``load_f32x4`` through L1: x is a few KB and
      every warp reads all of it, so it stays in L1).  Staging x in shared memory instead was *slower*
      (1.86 TB/s): lane l reading 16 bytes at a stride of 32 bytes is a 2-way bank conflict on every read.
* v5  v4 + four independent 16-byte loads in flight per lane (the loop is unrolled by 4, all loads issued before
      the first multiply), and a grid sized for the GPU instead of one warp per row: up to 8 blocks of 512 threads
      per SM, each warp walking rows ``warp, warp + total_warps, ...``.  Memory latency is ~1 us, so Little's law
      wants ~3 MB in flight at 3 TB/s; 4 x 16 B x 32 lanes = 2 KB per warp, one whole K=1024 row, does it.
      2.9 TB/s, faster than cuBLAS on this shape.  Matrices with few rows (out_proj, o_proj, down: N = 1024) get
      smaller blocks so that every SM gets work (``plan_rows``).

``DEFAULT_VERSION`` is 5; ``fused_matvec`` and ``lm_head`` are built on its inner loop (``dot_row``).
"""

from __future__ import annotations

import torch
from numba import cuda
from numba.cuda import float32

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
# Launching: torch's stream, cached; launch configurations cached.
# --------------------------------------------------------------------------------------------------------------
_STREAMS: dict = {}


def stream():
    """A Numba handle on torch's current CUDA stream (0 in the simulator), cached per torch stream: creating
    ``cuda.external_stream`` per call costs more than the launch.  Inside ``torch.cuda.graph(...)`` the current
    stream is the capture stream, so kernels launched through this are recorded into the graph."""
    if SIMULATOR:
        return 0
    handle = torch.cuda.current_stream().cuda_stream
    s = _STREAMS.get(handle)
    if s is None:
        s = _STREAMS[handle] = launch.launch_stream()
    return s


class Launcher:
    """A kernel with a fixed grid, block and dynamic shared memory; ``launcher(*args)`` launches it on
    :func:`stream`.  The configured Numba launch object is cached per stream (the simulator configures the
    kernel object itself, so there it is configured at every call)."""

    __slots__ = ("kernel", "grid", "block", "shared_bytes", "_configured")

    def __init__(self, kernel, grid: int, block: int, shared_bytes: int = 0):
        self.kernel, self.grid, self.block, self.shared_bytes = kernel, grid, block, shared_bytes
        self._configured: dict = {}

    def __call__(self, *args) -> None:
        if SIMULATOR:
            self.kernel[self.grid, self.block, 0, self.shared_bytes](*args)
            return
        s = stream()
        cfg = self._configured.get(id(s))
        if cfg is None:
            cfg = self._configured[id(s)] = self.kernel[self.grid, self.block, s, self.shared_bytes]
        cfg(*args)

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
# load: coalesced); the 32 lane sums meet in a shuffle butterfly.  H100 LM head: 1.22 TB/s.
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
# 4 floats of x: half the load instructions per byte.  K must be a multiple of 4.  H100 LM head: 2.0 TB/s.
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
def dot16(acc, a, b, c, d, x, v):
    """``acc`` + the dot product of one 16-byte piece of a W row (words a, b, c, d = 8 bf16, piece ``v`` of the
    row) with x[8v : 8v+8], read as two 16-byte loads."""
    x0, x1, x2, x3 = D.load_f32x4(x, 2 * v)
    x4, x5, x6, x7 = D.load_f32x4(x, 2 * v + 1)
    acc += D.bf16_lo(a) * x0 + D.bf16_hi(a) * x1 + D.bf16_lo(b) * x2 + D.bf16_hi(b) * x3
    acc += D.bf16_lo(c) * x4 + D.bf16_hi(c) * x5 + D.bf16_lo(d) * x6 + D.bf16_hi(d) * x7
    return acc


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
# v5: v4 + four 16-byte loads in flight per lane (``dot_row``) + a grid sized to fill the GPU (``plan_rows``:
# up to 8 blocks of 512 threads per SM, warps grid-stride over rows).  H100 LM head: 2.9 TB/s (cuBLAS 2.8).
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
# Dispatcher
# --------------------------------------------------------------------------------------------------------------
VERSIONS = {1: matvec_v1, 2: matvec_v2, 3: matvec_v3, 4: matvec_v4, 5: matvec_v5}
DEFAULT_VERSION = 5
# K must be a multiple of this (v1/v2: whole words; v3: 8-byte pieces; v4/v5: 16-byte pieces)
K_MULTIPLE = {1: 2, 2: 2, 3: 4, 4: 8, 5: 8}
DESCRIPTIONS = {
    1: "thread per row (uncoalesced)",
    2: "warp per row, 4-byte loads",
    3: "warp per row, 8-byte loads",
    4: "warp per row, 16-byte loads of W and x",
    5: "16-byte loads, 4 in flight, grid-stride (default)",
}


def plan(version: int, n: int) -> tuple[int, int]:
    """(blocks, threads) that ``matvec`` launches ``version`` with for N = n rows."""
    if version == 1:
        return plan_one_per_thread(n)
    if version in (2, 3, 4):
        return plan_one_per_warp(n)
    if version == 5:
        return plan_rows(n)
    raise ValueError(f"unknown matvec version {version}; choose from {sorted(VERSIONS)}")


_LAUNCHERS: dict = {}


def _launcher(version: int, n: int, k: int) -> Launcher:
    key = (version, n, k)
    lau = _LAUNCHERS.get(key)
    if lau is None:
        if version not in VERSIONS:
            raise ValueError(f"unknown matvec version {version}; choose from {sorted(VERSIONS)}")
        check_k(k, K_MULTIPLE[version], f"matvec v{version}", n)
        grid, block = plan(version, n)
        lau = _LAUNCHERS[key] = Launcher(VERSIONS[version], grid, block)
    return lau


def matvec(W, x, y, n: int, k: int, version: int = DEFAULT_VERSION) -> None:
    """y[:n] = W @ x[:k] for W [n, k] bf16 as int32 words (n*k/2 of them); x, y fp32.  Launches one kernel on
    torch's current stream; does not synchronize."""
    lau = _launcher(version, n, k)
    if W.shape[0] < n * k // 2 or x.shape[0] < k or y.shape[0] < n:
        raise ValueError(f"matvec: W has {W.shape[0]} words (need {n * k // 2} for [{n}, {k}]), x has "
                         f"{x.shape[0]} (need {k}), y has {y.shape[0]} (need {n})")
    lau(W, x, y, n, k)


_ARGS = "int32[::1], float32[::1], float32[::1], int64, int64"
PTX_SIGNATURES = {f"matvec_v{v}": [f"void({_ARGS})"] for v in VERSIONS}

__all__ = ["VERSIONS", "DEFAULT_VERSION", "K_MULTIPLE", "DESCRIPTIONS", "matvec", "plan", "plan_rows",
           "plan_one_per_warp", "plan_one_per_thread", "sm_count", "stream", "Launcher", "check_k", "dot_row",
           "dot16", "PTX_SIGNATURES"]
