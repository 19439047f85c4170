"""How fast a few SMs can pull weights from HBM into L2 for the others: the probe behind the megakernel's
``runahead`` option (NOTES.md, "Persistent megakernel: run-ahead blocks").

The persistent kernel's weight stream stops whenever its consumers stop (a grid barrier, a mixer): each SM's ring
holds ~8 us of streaming. Blocks that consume nothing could keep HBM busy during those stops by prefetching the
next weights into L2, so that the consumers' copies hit L2 afterwards. That only pays if a few SMs can issue
prefetches at HBM's rate, and if the prefetches are not dropped. This probe measures both:

- ``issue``: ``P`` blocks prefetch 1 GB (``cp.async.bulk.prefetch.L2`` of 32 KB per thread and call, or
  ``prefetch.global.L2`` of one 128-byte line per thread and call): the kernel's time is the rate at which they
  can issue (the queues push back when full);
- ``effect``: after L2 is flushed, ``P`` blocks prefetch a 32 MB region, then every SM reads it (``read_region``):
  against the same read cold and with the region already in L2.

    python -m megakernel.bench.l2_prefetch [--blocks 2,8,16,32] [--mb 512] [--region-mb 32] [--json OUT]

Measured on the H200 (NOTES.md): 0.23 TB/s per prefetching SM with either instruction, one 128-byte line request
per SM clock; 16 SMs 2.4-2.7 TB/s, 32 SMs 4.2-4.5. GPU only.
"""

from __future__ import annotations

import json
import statistics
import sys

from numba import cuda

from reference import cli

from ..persistent import tma

PAGE_WORDS = 8192  # 32 KB, the kernel's page


@cuda.jit
def bulk_prefetch(buf, start, n_words, page):
    """Every thread of the grid prefetches pages t, t + threads, ... of ``buf[start:start + n_words]``."""
    t = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    stride = cuda.gridDim.x * cuda.blockDim.x
    pages = n_words // page
    p = t
    while p < pages:
        tma.prefetch_l2(buf, start + p * page, page)
        p += stride


@cuda.jit
def line_prefetch(buf, start, n_words):
    """Every thread of the grid prefetches lines t, t + threads, ... (128 B = 32 words each)."""
    t = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    stride = cuda.gridDim.x * cuda.blockDim.x
    lines = n_words // 32
    p = t
    while p < lines:
        tma.prefetch_line(buf, start + p * 32)
        p += stride


@cuda.jit
def read_region(buf, start, n_words, out):
    """Every thread sums words t, t + threads, ... of ``buf[start:start + n_words]`` (four loads in flight) and
    stores the sum: a read-only pass over the region, so nothing it writes displaces the region from L2."""
    t = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    stride = cuda.gridDim.x * cuda.blockDim.x
    a0 = a1 = a2 = a3 = 0
    i = t
    while i + 3 * stride < n_words:
        a0 += buf[start + i]
        a1 += buf[start + i + stride]
        a2 += buf[start + i + 2 * stride]
        a3 += buf[start + i + 3 * stride]
        i += 4 * stride
    while i < n_words:
        a0 += buf[start + i]
        i += stride
    out[t] = a0 + a1 + a2 + a3


def timed(fn, reps: int = 5) -> float:
    """Median milliseconds of ``fn()`` over ``reps`` runs (CUDA events), after one warm-up."""
    import torch

    fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def gpu_problem() -> str | None:
    """Why this machine cannot run the probe, or None (one line)."""
    from megakernel import launch

    return launch.timing_problem("the L2 prefetch probe")


parser = cli.parser("megakernel.bench.l2_prefetch", __doc__)
parser.add_argument("--blocks", type=cli.positive_int_list, default=[2, 8, 16, 32],
                    help="comma-separated numbers of prefetching blocks (default 2,8,16,32)")
parser.add_argument("--mb", type=cli.positive_int, default=512, help="MB prefetched by the issue test (default 512)")
parser.add_argument("--region-mb", type=cli.positive_int, default=32,
                    help="the effect test's region in MB (default 32)")
parser.add_argument("--json", default=None, help="also write the rows to this JSON file")


def check_args(a) -> None:
    problem = gpu_problem()
    if problem:
        raise cli.UsageError(problem)


@cli.command(parser, validate=check_args)
def main(args) -> int:
    import torch

    from megakernel.launch import as_kernel_array

    blocks = args.blocks
    words = args.mb * (1 << 18)
    region = args.region_mb * (1 << 18)
    flush_words = 512 * (1 << 18)
    buf = torch.ones(words + region + flush_words, dtype=torch.int32, device="cuda")
    kbuf = as_kernel_array(buf)
    rows = []
    copy_ms = timed(lambda: buf[:words].clone())
    print(f"copy of {args.mb} MB (read + write): {copy_ms:.3f} ms, {2 * args.mb / 1024 / copy_ms:.2f} TB/s")
    for p in blocks:
        for kind in ("bulk", "line"):
            for threads in ((32,) if kind == "bulk" else (256, 1024)):
                if kind == "bulk":
                    fn = lambda: bulk_prefetch[p, threads](kbuf, 0, words, PAGE_WORDS)  # noqa: E731
                else:
                    fn = lambda: line_prefetch[p, threads](kbuf, 0, words)  # noqa: E731
                ms = timed(fn)
                rate = args.mb / 1024 / ms  # TB/s (MB / ms / 1e3 ~ GB/ms)
                rows.append({"test": "issue", "kind": kind, "blocks": p, "threads": threads, "ms": ms,
                             "TB_per_s": rate})
                print(f"issue  {kind:4s} {p:3d} blocks x {threads:4d} threads: {args.mb} MB in {ms:.3f} ms = "
                      f"{rate:.2f} TB/s")
    # the effect: a region read cold, after a prefetch by p blocks (and a pause for it to land), and hot
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    sums = torch.empty(sms * 4 * 256, dtype=torch.int32, device="cuda")
    ksums = as_kernel_array(sums)
    flush = buf[words + region:]

    def read():
        read_region[sms * 4, 256](kbuf, words, region, ksums)

    pause = 200_000  # GPU cycles (~100 us) between a prefetch and the read

    def read_us(prepare, sleep=True):
        times = []
        for _ in range(7):
            read_region[sms * 4, 256](kbuf, words + region, flush.numel(), ksums)  # 512 MB through L2
            prepare()
            if sleep:
                torch.cuda._sleep(pause)
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            read()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) * 1e3)
        return statistics.median(times)

    cold = read_us(lambda: None)
    hot = read_us(read)
    print(f"effect: read of a {args.region_mb} MB region: cold {cold:.1f} us, already in L2 {hot:.1f} us")
    rows.append({"test": "effect", "kind": "cold", "us": cold})
    rows.append({"test": "effect", "kind": "hot", "us": hot})
    for p in blocks:
        for kind in ("bulk", "line"):
            if kind == "bulk":
                pre = lambda: bulk_prefetch[p, 32](kbuf, words, region, PAGE_WORDS)  # noqa: E731
            else:
                pre = lambda: line_prefetch[p, 1024](kbuf, words, region)  # noqa: E731
            us = read_us(pre)
            both = read_us(pre, sleep=False)  # the read right behind the prefetch kernel
            rows.append({"test": "effect", "kind": kind, "blocks": p, "us": us, "no_pause_us": both})
            print(f"effect {kind:4s} {p:3d} blocks: the read after the prefetch and a pause {us:.1f} us, right "
                  f"after it {both:.1f} us")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
