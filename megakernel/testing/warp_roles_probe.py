"""A small kernel with the producer build's warp roles, checkable on its own (simulator and GPU).

Consumer warps (``threads`` of them) sum the pages of a global array that one producer warp streams through a ring
of ``ring`` shared-memory slots: the producer waits for a slot's "empty" mbarrier and issues a bulk copy that
completes on its "full" mbarrier; each consumer warp waits for "full", reads the page, meets the other consumers
at ``syncthreads`` (the narrowed block barrier: a producer counted in would hang it) and leaves the slot through
"empty". Every consumer thread also records ``cuda.blockDim.x`` (narrowed to the consumers). The mechanism of
``megakernel.persistent.warp_roles`` and the producer/consumer hand-off of ``v2.produce`` / ``v2.leave_slot``,
without the rest of the megakernel: when the producer build misbehaves on a GPU, this tells whether the mechanism
does.
"""

from __future__ import annotations

import numpy as np
from numba import cuda
from numba.cuda import int32, int64

from megakernel.persistent import tma, warp_roles

WARP = 32


def build(threads: int, ring: int, page_words: int, leave_out: int = 0, lto: bool = True):
    """The probe kernel ``(src int32[pages * page_words], out int32[blocks, threads + 1])``: every block sums every
    page; ``out[b, t]`` is consumer thread t's sum of its words of every page, ``out[b, threads]`` the block size
    consumer thread 0 saw. ``leave_out`` (bisection): 1 the consumers' ``syncthreads``, 2 the producer's stop
    check (a plain ``mbar_wait``). ``lto``: linked through LTO-IR (numba-cuda's default) or through Numba's PTX;
    both start from the IR the narrowing hook rewrote."""
    T, R, PW, NW = threads, ring, page_words, threads // WARP
    EMPTY0, STOP, PDONE = R, 2 * R, 2 * R + 1
    RING_WORDS, N_BARS = R * PW, 2 * R + 2  # (constants for the shared arrays' sizes)
    warp_roles.install()

    def probe(src, out):
        ring_ = cuda.shared.array(RING_WORDS, int32)
        bars = cuda.shared.array(N_BARS, int64)
        tid = cuda.threadIdx.x
        pages = src.shape[0] // PW
        if tid == 0:
            for s in range(R):
                tma.mbar_init(bars, s, 1)
                tma.mbar_init(bars, EMPTY0 + s, NW)
            bars[STOP] = 0
            bars[PDONE] = -1
            tma.fence_mbarrier_init()
        warp_roles.sync_all()
        if tid >= T:
            if tid == T:
                g = 0
                while g < pages:
                    slot = g % R
                    if g >= R:
                        if leave_out & 2:
                            tma.mbar_wait(bars, EMPTY0 + slot, (g // R - 1) & 1)
                        elif tma.mbar_wait_or_stop(bars, EMPTY0 + slot, (g // R - 1) & 1, STOP) == 0:
                            break
                    tma.fence_proxy_async()
                    tma.mbar_expect(bars, slot, PW * 4)
                    tma.bulk_copy(ring_, slot * PW, src, g * PW, PW, bars, slot)
                    g += 1
                cuda.atomic.exch(bars, PDONE, g)
            return
        acc = int32(0)
        for g in range(pages):
            slot = g % R
            tma.mbar_wait(bars, slot, (g // R) & 1)
            i = tid
            while i < PW:
                acc += ring_[slot * PW + i]
                i += cuda.blockDim.x
            if not leave_out & 1:
                cuda.syncthreads()
            cuda.syncwarp()
            if tid % WARP == 0:
                tma.mbar_arrive(bars, EMPTY0 + slot)
        out[cuda.blockIdx.x, tid] = acc
        if tid == 0:
            out[cuda.blockIdx.x, T] = cuda.blockDim.x
            while tma.flag_value(bars, PDONE) < 0:
                pass

    probe.__name__ = probe.__qualname__ = warp_roles.consumer_name("warp_roles_probe", T)
    return cuda.jit(probe, **({} if lto else warp_roles.NO_LTO))


def run(threads: int = 256, ring: int = 4, page_words: int = 1024, pages: int = 64, blocks: int = 2,
        device_array=None, leave_out: int = 0, lto: bool = True) -> None:
    """Launch the probe with ``threads`` consumers and check every sum and the block size the consumers saw;
    raises AssertionError on a mismatch. ``device_array``: how to move the input to the kernel (GPU: a torch or
    Numba device array; the simulator takes NumPy)."""
    rng = np.random.default_rng(7)
    src = rng.integers(-1000, 1000, size=pages * page_words, dtype=np.int32)
    out = np.zeros((blocks, threads + 1), dtype=np.int32)
    kernel = build(threads, ring, page_words, leave_out, lto)
    if device_array is None:
        d_src, d_out = src, out
    else:
        d_src, d_out = device_array(src), device_array(out)
    kernel[blocks, threads + WARP](d_src, d_out)
    got = out if device_array is None else d_out.copy_to_host()
    want = src.reshape(pages, page_words)[:, :].reshape(pages, -1, threads).sum(axis=(0, 1)) \
        if page_words % threads == 0 else None
    for b in range(blocks):
        assert got[b, threads] == threads, f"block {b}: consumers saw blockDim {got[b, threads]}, not {threads}"
        if want is not None:
            assert np.array_equal(got[b, :threads], want.astype(np.int32)), f"block {b}: wrong page sums"


__all__ = ["build", "run"]
