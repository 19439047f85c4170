"""Persistent megakernel, version 9: version 8 with the page loops' bookkeeping made cheap (``lean``) and the copy
descriptors in shared memory (``smem_descs``).

What changes from version 8, and why. Nsight Compute's per-instruction samples of version 7's LM head (a loop over
~118 pages per block) counted ~365 instructions issued per warp per page, of which the page's arithmetic (16-byte
shared loads, bf16 unpacking, the products, the warp sums) is ~150, and put 37% of the warps' samples at the
page's block barrier, waiting for one warp. Two things made that warp, and every warp, slow:

1. Index arithmetic that Python's integer semantics put on every page (``lean``): the ring slot ``cursor % R``
   and mbarrier parity ``(cursor // R) & 1`` as signed 64-bit divisions by the ring's size, the copy thread's
   ``issued % R`` and ``g % pages`` (a 64-bit division subroutine), a ``range()`` whose trip count is divided
   out, ``// 4`` with its sign correction, a branch around each of a lane's x pieces (every lane has all of them
   at the 0.8B's hidden size), and, once per phase, the block's row split and the loops stepping by the block or
   grid size as 64-bit divisions (29 call sites of the division helper in version 8's machine code, 8 left). The
   slot and parity are now carried from page to page, the remainders and quotients are 32-bit unsigned, offsets
   are shifted, loops are while loops; the down projection's consumer loads a chunk's ``act`` values once for
   both of a thread's columns and indexes shared memory unsigned (``split_down.down_t_consumer(lean=True)``:
   ~640 instructions per warp per page before, the most of any phase). Issued per warp per LM head page: 365 ->
   308.
2. The copy thread's descriptor loads (``smem_descs``). Thread 0 read the next page's copy descriptor from the
   page table in global memory, one page ahead; with the weight stream saturating HBM the load came back late
   (Nsight Compute: ``long_sb`` stalls on warp 0's instructions that consume it), and the other seven warps
   waited for warp 0 at the next page's barrier. Each block now copies its rows of the table (16 bytes a page,
   376 pages per block at 132 blocks) into static shared memory when a launch starts; the decoder refuses a grid
   whose blocks would take more pages than the ``DESC_PAGES`` it has room for. With the loads gone, the LM head
   is paced by the stream (its copy thread's measured page waits rose from 6 to 63 us per step) instead of by
   its barrier.

The same pages through the same slots in the same order, the same sums in the same order: the same bits as
versions 7 and 8 (a simulator test compares them exactly). Measured on the H100 at context 512 (NOTES.md
"Persistent megakernel version 9"): 1,107 -> 1,021 us per profiled step against version 8 in the same call (the
descriptors in shared memory ~17 us of it), 993 tok/s in the benchmark against the layered CUDA graph's 973 in the
same call (51% of the floor; the graph, which shares the norm and staging bodies, got ~3% faster too).
"""

from __future__ import annotations

from . import v2, v3, v7, v8

VERSION = 9
DESCRIPTION = ("version 8 with cheap page-loop bookkeeping: 32-bit remainders and carried slots, and the copy "
               "descriptors in shared memory")
DEFAULTS = {**v8.DEFAULTS, "lean": True, "smem_descs": True}
OPTIONS = {**v2.OPTIONS, **DEFAULTS}
POSITIONS_PER_SPLIT = v3.POSITIONS_PER_SPLIT
kernel_key = v2.kernel_key
extra_args = v2.extra_args
build = v2.build_with(DEFAULTS)  # version 2's kernel builder with these defaults (an option passed wins)


def configure(plan, **options):
    """Version 7's plan, with room for the copy descriptors in shared memory (unless ``smem_descs=False``)."""
    return v7.configure(plan, **{"smem_descs": True, **options})


__all__ = ["VERSION", "DESCRIPTION", "DEFAULTS", "POSITIONS_PER_SPLIT", "configure", "build", "kernel_key",
           "extra_args"]
