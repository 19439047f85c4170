"""The megakernel's page consumer alone: how fast an SM turns 32 KB weight pages already in shared memory into rows.

    python -m megakernel.bench.consumer [--pages 4000] [--reps 5] [--variants v5,no-sync,...]

The persistent kernel (versions 2-5) streams every weight through a ring of shared-memory pages; with every copy
switched off (the ``nocopy`` profile build) a step still takes ~960 us, ~1 us per 32 KB page, against the ~1.4 us
per page an SM may spend at the bandwidth floor. This benchmark isolates that consumer: one block per SM, a ring of
6 pages of random bf16 rows of the hidden size (1024: 16 rows a page, as in the input projections, gate/up and the
LM head) filled once, x staged in the split layout, and the page loop of ``persistent.v2`` (the same device
functions: ``dot2_row_split`` / ``xreg_dots``, ``warp_sum``, ``lm_head.argmax_key``, the mbarrier wait and the
refill's expect) run over ``--pages`` pages, with parts switched off variant by variant to see what each costs:

======================  =====================================================================================
``v5``                   the kernel's loop: wait for the slot's mbarrier, two rows per warp pass, warp sums,
                         the LM head's epilogue (store the logit, keep the best argmax key), a block barrier, and
                         thread 0 re-arms the slot (an expect of 0 bytes, as the ``nocopy`` build does)
``v3``                   one row per warp pass (version 3's consumer)
``xregs``                ``v5`` with x in registers (``fused_matvec.xreg_dots``)
``no-sync``              ``v5`` without the mbarrier wait, block barrier and re-arm: warps run free
``no-epilogue``          ``v5`` without the stores and argmax keys (the sums kept in a register)
``no-reduce``            ``v5`` without the warp sums (lane 0's partial sum stands in for the row's)
``dots-only``            none of the three: the dot products alone
``split-sums``           ``v5`` with the two rows of a pass summed in one butterfly (``device.warp_sum2``) and
                         finished by lanes 0 and 16 (the ``split_sums`` build option)
``xregs-split-sums``     both
``16-warps``             ``v5``'s loop with 512 threads, one row per warp pass (the registers the megakernel's
                         mixers need allow only 8 warps; this shows what more warps would buy)
======================  =====================================================================================

The ``stream-RxP`` variants time the weight ring alone (``make_stream_kernel``): thread 0 keeps R slots of P KB in
flight with the copy engine from the block's own stretch of a 1 GiB buffer, every thread waits for each page's
mbarrier, the block synchronises and thread 0 refills the slot (``-consume``: the warps also consume each page as
``v5`` does; ``-ef``: evict-first copies). The kernel's ring is ``stream-6x32``.

Reported per variant: median us per page per SM (every SM runs its own pages; time / pages), the rate the whole
chip consumes at (132 SMs x 32 KB per page time), and that rate over the weight floor's 3.0 TB/s. GPU only.
"""

from __future__ import annotations

import sys

import numpy as np

from reference import cli

K = 1024            # row length (the hidden size of Qwen3.5-0.8B)
PAGE_WORDS = 8192   # 32 KB pages
RING = 6
FLOOR_TBS = 3.0     # the measured copy bandwidth the weight floor uses (NOTES.md)

VARIANTS = {  # name: (sync, epilogue, reduce, paired, xregs, threads, split sums)
    "v5": (True, True, True, True, False, 256, False),
    "v3": (True, True, True, False, False, 256, False),
    "xregs": (True, True, True, True, True, 256, False),
    "split-sums": (True, True, True, True, False, 256, True),
    "xregs-split-sums": (True, True, True, True, True, 256, True),
    "no-sync": (False, True, True, True, False, 256, False),
    "no-epilogue": (True, False, True, True, False, 256, False),
    "no-reduce": (True, True, False, True, False, 256, False),
    "dots-only": (False, False, False, True, False, 256, False),
    "16-warps": (True, True, True, False, False, 512, False),
}


def make_kernel(sync: bool, epilogue: bool, reduce: bool, paired: bool, xregs: bool, threads: int,
                split: bool = False):
    """The page loop of one variant (``VARIANTS``) as a kernel ``(src, x, y, best, pages)``."""
    from numba import cuda
    from numba.cuda import float32, int32, int64

    from megakernel import device as D
    from megakernel.kernels import lm_head as lmh
    from megakernel.kernels.fused_matvec import dot2_row_split, dot_row_split, xreg_dots
    from megakernel.kernels.matvec import WARP, stage_split
    from megakernel.persistent import tma

    NW = threads // WARP
    NV = K // 8
    KW = K // 2
    RPP = PAGE_WORDS // KW
    XS = 2 * NV * 4
    load_x, _dot_x, dot2_x = xreg_dots(NV // WARP)
    STEP = 2 * NW if paired else NW
    XR = NV // WARP * 8

    @cuda.jit(device=True)
    def finish(row, acc, mine, y, lane):
        if reduce:
            acc = D.warp_sum(acc)
        if epilogue:
            if lane == 0:
                y[row] = acc
            key = lmh.argmax_key(acc, row)
            if key > mine:
                mine = key
        else:
            mine += int64(acc != acc)  # keep the sum alive
        return mine

    @cuda.jit(device=True)
    def finish_split(row_a, row_b, a, c, mine, y, lane):
        v = D.warp_sum2(a, c)
        row = row_b if lane >= 16 else row_a
        if lane % 16 == 0:
            y[row] = v
        key = lmh.argmax_key(v, row)
        if key > mine:
            mine = key
        return mine

    @cuda.jit
    def consume(src, x, y, best, pages):
        smem_w = cuda.shared.array(0, int32)
        smem_f = cuda.shared.array(0, float32)
        bars = cuda.shared.array(RING, int64)
        xs = smem_f[0:XS]
        ring = smem_w[XS:XS + RING * PAGE_WORDS]
        tid = cuda.threadIdx.x
        lane = tid % WARP
        warp = tid // WARP
        for i in range(tid, RING * PAGE_WORDS, threads):
            ring[i] = src[i]
        stage_split(x, xs, NV)
        if tid == 0:
            for s in range(RING):
                tma.mbar_init(bars, s, 1)
                tma.mbar_expect(bars, s, 0)  # completes the slot's first phase: the page "arrived"
            tma.fence_mbarrier_init()
        cuda.syncthreads()
        xr = cuda.local.array(XR, float32)
        if xregs:
            load_x(xr, xs, NV, lane)
        mine = int64(lmh.INT64_MIN)
        for p in range(pages):
            slot = p % RING
            if sync:
                tma.mbar_wait(bars, slot, (p // RING) & 1)
            base = slot * PAGE_WORDS
            row0 = p * RPP
            for r in range(warp, RPP, STEP):
                if paired and r + NW < RPP:
                    if xregs:
                        a, c = dot2_x(ring, (base + r * KW) // 4, (base + (r + NW) * KW) // 4, xr, NV, lane)
                    else:
                        a, c = dot2_row_split(ring, (base + r * KW) // 4, (base + (r + NW) * KW) // 4, xs, NV, lane)
                    if split:
                        mine = finish_split(row0 + r, row0 + r + NW, a, c, mine, y, lane)
                    else:
                        mine = finish(row0 + r, a, mine, y, lane)
                        mine = finish(row0 + r + NW, c, mine, y, lane)
                else:
                    mine = finish(row0 + r, dot_row_split(ring, (base + r * KW) // 4, xs, NV, lane), mine, y, lane)
            if sync:
                cuda.syncthreads()
                if tid == 0:
                    tma.fence_proxy_async()
                    tma.mbar_expect(bars, slot, 0)
        if lane == 0:
            best[cuda.blockIdx.x * NW + warp] = mine

    return consume


STREAMS = {  # name: (ring slots, page KB, consume the pages, evict-first copies)
    "stream-6x32": (6, 32, False, False),
    "stream-6x32-ef": (6, 32, False, True),
    "stream-3x64": (3, 64, False, False),
    "stream-4x48": (4, 48, False, False),
    "stream-12x16": (12, 16, False, False),
    "stream-24x8": (24, 8, False, False),
    "stream-5x40": (5, 40, False, False),
    "stream-7x28": (7, 28, False, False),
    "stream-8x24": (8, 24, False, False),
    "stream-2x96": (2, 96, False, False),
    "stream-6x32-consume": (6, 32, True, True),
    "stream-12x16-consume": (12, 16, True, True),
}
STREAM_SOURCE_BYTES = 1 << 30  # 1 GiB of weights: each block streams its own 8 MB, ~20x the L2 chip-wide


def make_stream_kernel(ring: int, page_kb: int, consume: bool, evict_first: bool, threads: int = 256):
    """The weight ring alone (``persistent.v2``'s stream): thread 0 keeps ``ring`` slots of ``page_kb`` KB in
    flight with the copy engine, every thread waits for each page's mbarrier, the block synchronises and thread 0
    refills the slot; with ``consume`` the warps also consume each page as ``v5`` does. A kernel
    ``(src, x, y, best, pages)``: block b streams pages from its own stretch of ``src``."""
    from numba import cuda
    from numba.cuda import float32, int32, int64

    from megakernel import device as D
    from megakernel.kernels.fused_matvec import dot2_row_split
    from megakernel.kernels.matvec import WARP, stage_split
    from megakernel.persistent import tma

    R = ring
    PW = page_kb * 256
    NW = threads // WARP
    NV = K // 8
    KW = K // 2
    RPP = PW // KW
    XS = 2 * NV * 4
    copy = tma.bulk_copy_evict_first if evict_first else tma.bulk_copy

    @cuda.jit
    def stream(src, x, y, best, pages):
        smem_w = cuda.shared.array(0, int32)
        smem_f = cuda.shared.array(0, float32)
        bars = cuda.shared.array(R, int64)
        xs = smem_f[0:XS]
        ring_ = smem_w[XS:XS + R * PW]
        tid = cuda.threadIdx.x
        lane = tid % WARP
        warp = tid // WARP
        npg = src.shape[0] // cuda.gridDim.x // PW
        first = cuda.blockIdx.x * npg * PW
        stage_split(x, xs, NV)
        if tid == 0:
            for s in range(R):
                tma.mbar_init(bars, s, 1)
            tma.fence_mbarrier_init()
            for g in range(min(R, pages)):
                tma.mbar_expect(bars, g, 4 * PW)
                copy(ring_, g * PW, src, first + (g % npg) * PW, PW, bars, g)
        cuda.syncthreads()
        acc = float32(0)
        for p in range(pages):
            slot = p % R
            tma.mbar_wait(bars, slot, (p // R) & 1)
            if consume:
                base = slot * PW
                for r in range(warp, RPP, 2 * NW):
                    if r + NW < RPP:
                        a, c = dot2_row_split(ring_, (base + r * KW) // 4, (base + (r + NW) * KW) // 4, xs, NV, lane)
                        acc += D.warp_sum(a) + D.warp_sum(c)
            cuda.syncthreads()
            if tid == 0 and p + R < pages:
                tma.fence_proxy_async()
                tma.mbar_expect(bars, slot, 4 * PW)
                copy(ring_, slot * PW, src, first + ((p + R) % npg) * PW, PW, bars, slot)
        if lane == 0:
            y[cuda.blockIdx.x * NW + warp] = acc

    return stream


def gpu_problem() -> str | None:
    """Why this machine cannot run the benchmark, or None (one line)."""
    from megakernel import launch

    return launch.timing_problem("the consumer benchmark",
                                 "NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_persistent.py -k bits")


parser = cli.parser("megakernel.bench.consumer", __doc__)
parser.add_argument("--pages", type=int, default=4000, help="pages per SM per launch (default 4000)")
parser.add_argument("--reps", type=int, default=5, help="timed launches per variant (median; default 5)")
parser.add_argument("--variants", type=cli.name_list(list(VARIANTS) + list(STREAMS), "variant"),
                    default=list(VARIANTS), help=f"comma-separated, of {', '.join(list(VARIANTS) + list(STREAMS))} "
                                                 f"(default: the consumer ones, {', '.join(VARIANTS)})")


def check_args(a) -> None:
    if a.pages < 1 or a.reps < 1:
        raise cli.UsageError(f"--pages and --reps must be at least 1, got {a.pages} and {a.reps}")
    problem = gpu_problem()
    if problem:
        raise cli.UsageError(problem)


@cli.command(parser, validate=check_args)
def main(args) -> int:
    import torch

    from megakernel.launch import allow_dynamic_shared, as_kernel_array

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    g = torch.Generator().manual_seed(0)
    src = torch.randint(-2**31, 2**31 - 1, (RING * PAGE_WORDS,), dtype=torch.int32, generator=g)
    src &= ~0x7F807F80  # finite bf16 halves (exponents below the all-ones pattern)
    x = torch.randn(K, generator=g)
    dev = torch.device("cuda")
    src, x = src.to(dev), x.to(dev)
    y = torch.empty(args.pages * (PAGE_WORDS // (K // 2)) + 64, device=dev)
    best = torch.empty(sms * 16, dtype=torch.int64, device=dev)
    shared = 4 * 2 * K + 4 * RING * PAGE_WORDS
    print(f"{sms} SMs, 1 block each, {args.pages} pages of 32 KB per SM per launch, median of {args.reps}")
    print(f"{'variant':<22}{'threads':>8}{'regs':>6}{'us/page':>10}{'chip TB/s':>11}{'x floor':>9}")
    weights = None
    for name in args.variants:
        if name in STREAMS:
            R_, kb, _, _ = STREAMS[name]
            if weights is None:
                weights = torch.randint(0, 1 << 30, (STREAM_SOURCE_BYTES // 4,), dtype=torch.int32, device=dev)
            kern, threads, kshared = make_stream_kernel(*STREAMS[name]), 256, 4 * 2 * K + R_ * kb * 1024
            a = [as_kernel_array(t) for t in (weights, x, y, best)] + [np.int32(8)]
            page_bytes = kb * 1024
        else:
            kern, threads, kshared = make_kernel(*VARIANTS[name]), VARIANTS[name][5], shared
            a = [as_kernel_array(t) for t in (src, x, y, best)] + [np.int32(8)]
            page_bytes = 4 * PAGE_WORDS
        compiled = kern.compile(tuple(kern.typeof_pyval(v) for v in a))
        allow_dynamic_shared(compiled, kshared)
        launch = kern[sms, threads, 0, kshared]
        launch(*a)  # warm-up
        a = a[:-1]
        times = []
        for _ in range(args.reps):
            t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0.record()
            launch(*a, np.int32(args.pages))
            t1.record()
            torch.cuda.synchronize()
            times.append(t0.elapsed_time(t1) * 1e3)
        us = float(np.median(times)) / args.pages
        tbs = sms * page_bytes / us / 1e6
        print(f"{name:<22}{threads:>8}{compiled.regs_per_thread:>6}{us:>10.3f}{tbs:>11.2f}{tbs / FLOOR_TBS:>9.2f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
