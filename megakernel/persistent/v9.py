"""Persistent megakernel, version 9: version 8 with the page loops' index arithmetic made cheap (``lean``).

What changes from version 8, and why. Nsight Compute's per-instruction samples of the LM head (its phase is a
loop over ~118 pages per block) counted ~365 instructions issued per warp per page, of which the page's
arithmetic (16-byte shared loads, bf16 unpacking, the products, the warp sums) is ~150. The rest was index
arithmetic that Python's integer semantics put there: the page's ring slot ``cursor % R`` and mbarrier parity
``(cursor // R) & 1`` as signed 64-bit divisions by the ring's size (5 or 6 pages: multiply-high sequences
with floor corrections) on every page and in every warp, the copy thread's ``issued % R`` and ``g % pages`` (a
64-bit division subroutine, on the path every other warp waits for at the next page's barrier), a ``range()``
whose trip count is divided out, ``// 4`` with its sign correction, and a branch around each of a lane's x
pieces although every lane has all of them at the 0.8B's hidden size. With two warps per scheduler, a
dependent chain of integer instructions is time the page's loads and products wait for.

Version 9 carries the slot and parity from page to page (one increment and compare), takes the copy thread's
remainders in 32-bit unsigned arithmetic, shifts instead of floor-dividing, walks a warp's rows with a while
loop, and drops the per-piece guard where x fills every lane's registers. The same pages in the same order and
the same sums in the same order: the same bits as versions 7 and 8 (a simulator test compares them exactly).
"""

from __future__ import annotations

from . import v2, v3, v7, v8

VERSION = 9
DESCRIPTION = "version 8 with the page loops' index arithmetic made cheap (slot and parity carried, 32-bit remainders)"
DEFAULTS = {**v8.DEFAULTS, "lean": True}
OPTIONS = {**v2.OPTIONS, **DEFAULTS}
POSITIONS_PER_SPLIT = v3.POSITIONS_PER_SPLIT
kernel_key = v2.kernel_key
extra_args = v2.extra_args
build = v2.build_with(DEFAULTS)  # version 2's kernel builder with these defaults (an option passed wins)
configure = v7.configure

__all__ = ["VERSION", "DESCRIPTION", "DEFAULTS", "POSITIONS_PER_SPLIT", "configure", "build", "kernel_key",
           "extra_args"]
