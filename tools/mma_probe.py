"""Latencies behind version 11's page consumer, on the GPU: a chain of dependent ``mma.sync.m16n8k16`` (bf16 in,
fp32 out) and of dependent ``ldmatrix.x4``, in clock cycles per instruction (one warp, the global timer around 256 of
them, in ns), and the page consumer (``mma.page_mma``) on one 32 KB page in shared memory, 8 warps, per page.

Usage (GPU): python tools/mma_probe.py"""

from __future__ import annotations

import numpy as np
from numba import cuda
from numba.cuda import float32, int32, uint32

from megakernel.persistent import mma as MM
from megakernel.persistent import tma

N = 256


@cuda.jit
def mma_chain(out, cycles):
    a = uint32(0x3F803F80)  # bf16 1.0, 1.0
    d0 = d1 = d2 = d3 = float32(0)
    start = tma.globaltimer()
    for _ in range(N):
        d0, d1, d2, d3 = MM.mma_bf16(a, a, a, a, a, a, d0, d1, d2, d3)
    stop = tma.globaltimer()
    out[cuda.threadIdx.x] = d0 + d1 + d2 + d3
    if cuda.threadIdx.x == 0:
        cycles[0] = stop - start


@cuda.jit
def ldsm_chain(out, cycles):
    smem = cuda.shared.array(1024, int32)
    lane = cuda.threadIdx.x
    for i in range(lane, 1024, 32):
        smem[i] = 0
    cuda.syncthreads()
    addr = int32(4 * lane)
    start = tma.globaltimer()
    for _ in range(N):
        w0, w1, w2, w3 = MM.ldmatrix_x4(smem, addr)
        addr = int32(4 * lane) + int32(w0 & 1)  # a dependent address
    stop = tma.globaltimer()
    out[lane] = addr
    if lane == 0:
        cycles[1] = stop - start


def page_consumer(reps: int):
    hidden, warps = 1024, 8
    FRAG, PART, load_fragments, page_partials, row_sum = MM.page_mma(hidden, warps, 16, True)

    @cuda.jit
    def kern(page, xs_g, out, cycles):
        ring = cuda.shared.array(8192, int32)
        xs = cuda.shared.array(1024, float32)
        part = cuda.shared.array(PART, float32)
        tid = cuda.threadIdx.x
        lane = tid & 31
        warp = tid >> 5
        for i in range(tid, 8192, 256):
            ring[i] = page[i]
        for i in range(tid, 1024, 256):
            xs[i] = xs_g[i]
        cuda.syncthreads()
        xf = cuda.local.array(FRAG, uint32)
        load_fragments(xf, xs, 128, lane, warp)
        start = tma.globaltimer()
        acc = float32(0)
        for r in range(reps):
            buf = (r & 1) * (PART // 2)
            page_partials(ring, 0, 16, 512, False, 0, xf, part, buf, lane, warp)
            cuda.syncthreads()
            acc += row_sum(part, buf, 2 * warp + ((lane >> 3) & 1), lane)
        stop = tma.globaltimer()
        out[tid] = acc
        if tid == 0:
            cycles[2] = stop - start

    return kern


if __name__ == "__main__":
    out = cuda.device_array(256, np.float32)
    cycles = cuda.to_device(np.zeros(4, np.int64))
    for _ in range(2):
        mma_chain[1, 32](out, cycles)
        ldsm_chain[1, 32](cuda.device_array(32, np.int32), cycles)
    reps = 2000
    kern = page_consumer(reps)
    page = cuda.to_device(np.zeros(8192, np.int32))
    xs = cuda.to_device(np.ones(1024, np.float32))
    for _ in range(2):
        kern[1, 256](page, xs, out, cycles)
    c = cycles.copy_to_host()
    print(f"mma.sync m16n8k16 chain: {c[0] / N:.1f} ns each; ldmatrix.x4 chain: {c[1] / N:.1f} ns each; "
          f"page consumer (16 rows x 1024, 8 warps): {c[2] / reps:.0f} ns a page (global timer)")
