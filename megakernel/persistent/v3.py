"""Persistent megakernel, version 3: version 2 with four times as many attention-decode work items.

What changes from version 2, and why. The profile of version 2 (NOTES.md, H100, context 512) shows the attention
decode phase as the longest mixer per layer: ~20 us on its critical block while the median block idles, because a
work item (one KV head x one split of the context) covers 64 cached positions, and the items are few (2 KV heads x 8
splits = 16 items for 132 blocks at context 512). A block walks its 64 positions in 4 dependent rounds per warp,
each a round trip to memory that queues behind the weight stream. Version 3 gives each item 16 positions
(``POSITIONS_PER_SPLIT``): 64 items at context 512, one round per warp, the same total bytes; the combine merges
4x more partials per head (reads of a few KB from L2). On long contexts the splits stop at one item per block
(``nb // Hkv`` splits, ``plan.splits_fit_grid``): a second round of items, and a combine over 128 partials,
made context 4096 4 % slower than version 2 before that cap. Everything else (the weight ring, the phases, the barriers)
is version 2's; the only code that differs is the plan (``positions_per_split``), which sizes the partial buffers
and the item count (``phases.make_splits``, ``schedule.step_phases``).

Measured and not kept (NOTES.md, "Persistent megakernel"): prefetching the mixers' HBM inputs into L2 one phase
ahead (the DeltaNet phase got faster, the projection it overlapped slower by more), a counter barrier in the
control block (no faster than ``grid.sync()`` at 132 blocks), a shallower ring (4 pages: within noise).
"""

from __future__ import annotations

import dataclasses

from . import plan as P
from . import v2

VERSION = 3
DESCRIPTION = "version 2 with 16 cached positions per attention-decode item (4x the items)"
POSITIONS_PER_SPLIT = 16
OPTIONS = v2.OPTIONS


def configure(plan, **options):
    """Version 2's ring on a plan with ``POSITIONS_PER_SPLIT`` positions per attention item."""
    replanned = P.make_plan(plan.config, plan.capacity, plan.threads, plan.blocks,
                            positions_per_split=POSITIONS_PER_SPLIT)
    replanned = dataclasses.replace(replanned, splits_fit_grid=True)
    return v2.configure(replanned, **options)


kernel_key = v2.kernel_key
build = v2.build
extra_args = v2.extra_args

__all__ = ["VERSION", "DESCRIPTION", "POSITIONS_PER_SPLIT", "configure", "build", "kernel_key", "extra_args"]
