"""Persistent megakernel, version 4: version 3 with the weight stream marked evict-first in L2, and two rows per
warp pass in the matvec consumer.

What changes from version 3, and why. Inside the megakernel every small phase ran 2-3x slower than the same device
body as a kernel: a DeltaNet item took ~13 us (5.5 us as the layered kernel), an attention-decode item of 16
positions ~14 us. Version 3's profile could not be explained by the item's own memory traffic: deferring the ring's
refills until after the mixer (so no weight page was in flight while the item ran) changed nothing, and neither did
issuing the item's state loads first. What the megakernel shares with nothing else is L2: it streams 1.5 GB of
weights per token through a 50 MB L2, so every line that is reused (the kernel's ~290 KB of code, which no SM's
instruction cache holds, the activations written by one phase and read by the next, the conv state, the KV rows)
is evicted between two uses and comes back from HBM behind the stream's queue. The weights are read exactly once
per token, so version 4 issues their copies with an L2 evict-first policy (``tma.bulk_copy_evict_first``,
``createpolicy.fractional.L2::evict_first``): they leave L2 first, the rest stays. On the H100 at context 512
(``tools/profile_persistent.py``, NOTES.md) that alone took a step from 1,723 to 1,475 us: DeltaNet 258 -> 166 us,
attention decode 87 -> 59 us, the MLP phases 5-10 % faster.

The second change is in the consumer of a page (``paired_rows``): a warp computes two rows at once, a SwiGLU row's
gate and up rows, otherwise rows ``r`` and ``r + warps`` (``fused_matvec.dot2_row_split``): each x piece is read
from shared memory once for both rows and twice the loads are in flight. Without the barriers and mixers, the
page consumers' arithmetic cost ~135 us per step over the bare stream (683 against 548 us, version 3). Each row's
sum is formed in the same order as before, so the results are bit-identical to version 3's.

Measured and not kept as defaults (build switches, ``v2.OPTIONS``; NOTES.md): refills deferred around the mixers
(slower: the stall moves to the next projection), the DeltaNet state loaded first (within noise), the matvec
consumer and the mixers out of line (one copy of the code instead of six, but calls, spills and a
lower-quality schedule made every phase slower: 1,912 us).
"""

from __future__ import annotations

from . import v2, v3

VERSION = 4
DESCRIPTION = "version 3 with the weight stream evict-first in L2 and two rows per warp pass"
DEFAULTS = {"evict_first": True, "paired_rows": True}
OPTIONS = {**v2.OPTIONS, **DEFAULTS}

configure = v3.configure
kernel_key = v2.kernel_key
extra_args = v2.extra_args
POSITIONS_PER_SPLIT = v3.POSITIONS_PER_SPLIT
build = v2.build_with(DEFAULTS)  # version 2's kernel builder with these defaults (an option passed wins)


__all__ = ["VERSION", "DESCRIPTION", "DEFAULTS", "POSITIONS_PER_SPLIT", "configure", "build", "kernel_key",
           "extra_args"]
