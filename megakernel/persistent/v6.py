"""Persistent megakernel, version 6: version 5 with a phase's weight pages consumed two at a time, four rows per
warp pass.

What changes from version 5, and why. A profiling build of version 5 that copies no weights (``nocopy``) still
needs ~955 us per step at context 512, ~670 us without its mixers: with every page already in shared memory, a
32 KB page took ~0.9 us to consume (the LM head: 110 us for its 118 pages per block), slower than HBM delivers
pages to an SM at the floor (~1.4 us per page for 132 SMs at 3 TB/s, but every other phase is short and pays its
prologue and barrier too). With 8 warps per SM (255 registers) and two rows per warp per page, each warp runs one
dependent chain per row (32 FMAs per lane, then a five-step shuffle reduction) and the block meets at a
``syncthreads`` after every page: latency, not issue slots or shared-memory bandwidth, bounds the consumer.

Version 6 (``page_pairs``, ``v2.quad_rows_pages``) waits for two pages of the same phase and gives each warp four
rows of them per pass (rows ``r`` and ``r + warps`` of each page; a SwiGLU page pair's two gate and two up rows):
four independent sums per lane (``fused_matvec.dot4_row_split``), each x piece read from shared memory once for
all four, four shuffle reductions interleaved, and one block barrier per two pages. A phase with an odd page count
takes its last page alone. Each row's sum keeps its order: the results are bit-identical to versions 3-5.
"""

from __future__ import annotations

from . import v2, v3, v5

VERSION = 6
DESCRIPTION = "version 5 with a phase's pages consumed in pairs, four rows per warp pass"
DEFAULTS = {**v5.DEFAULTS, "page_pairs": True}
OPTIONS = {**v2.OPTIONS, **DEFAULTS}

configure = v3.configure
kernel_key = v2.kernel_key
extra_args = v2.extra_args
POSITIONS_PER_SPLIT = v3.POSITIONS_PER_SPLIT


def build(plan_key, plan, barriers: bool = True, profile: bool = False, **options):
    """Version 2's kernel builder with version 6's defaults (``DEFAULTS``; an option passed wins)."""
    return v2.build(plan_key, plan, barriers, profile, **{**DEFAULTS, **options})


__all__ = ["VERSION", "DESCRIPTION", "DEFAULTS", "POSITIONS_PER_SPLIT", "configure", "build", "kernel_key",
           "extra_args"]
