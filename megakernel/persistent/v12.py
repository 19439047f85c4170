"""Persistent megakernel, version 12: version 10 with the DeltaNet items' "last reader" hand-off taken off their
critical path (``deferred_shift``) and their state slabs loaded first (``state_first``).

What changes from version 10, and why. A DeltaNet layer's q/k conv state (the last three inputs of each of its
2 Hk Dk q/k channels) is read by every item of its key head (``G x NS`` items: 8 at the 0.8B's sizes), so the
item that shifts it in place must be the last to have read it. Versions 1-11 count the readers: each item fences
(``threadfence``: its earlier writes made visible at the GPU's scope) and adds 1 to its key head's counter, and the
one that brings the count to ``G x NS`` shifts the state and resets the counter. That fence and that atomic are two
dependent memory round trips in the middle of every item, between its norms and its state columns, on every
DeltaNet layer's critical path.

Version 12 leaves the shift to the next phase. After the DeltaNet phase's grid barrier every item has read the
state, so the out_proj phase can shift it with plain loads and stores, no count: each thread of the grid takes
one channel (``deltanet.qk_conv_shift``), its loads in flight with those of the gated norm's staging (which the
phase waits for anyway) and its stores right after. The step's input projection, which the shift appends, is still
in the scratch arena then (the next DeltaNet layer's in_proj rewrites it, two barriers later). With the round
trips gone from the middle of the item, its state slab is loaded at its start, with its other inputs
(``state_first``, measured within noise in version 6 when the counter still stood between them).

Measured (H100, profiling builds at context 512, two calls; NOTES.md "Persistent megakernel version 12"): the
DeltaNet phase 104-106 -> 82 us per step, out_proj +3-4 us (the shift's stores), the step 1,028 -> 1,000 us; in
the benchmark 1,025 tok/s at context 512 against version 10's 1,007 and the CUDA graph's 981 in the same call. The
same arithmetic in the same order: the same bits as versions 7-10 (a simulator test compares them exactly, with
the conv state).
"""

from __future__ import annotations

from . import v2, v3, v9, v10

VERSION = 12
DESCRIPTION = ("version 10 with the DeltaNet q/k conv-state shift moved to the next phase (no reader count on the "
               "items' critical path) and the state slabs loaded first")
DEFAULTS = {**v10.DEFAULTS, "deferred_shift": True, "state_first": True}
OPTIONS = {**v2.OPTIONS, **DEFAULTS}
POSITIONS_PER_SPLIT = v3.POSITIONS_PER_SPLIT
kernel_key = v2.kernel_key
extra_args = v2.extra_args
build = v2.build_with(DEFAULTS)  # version 2's kernel builder with these defaults (an option passed wins)
configure = v9.configure  # version 9's plan

__all__ = ["VERSION", "DESCRIPTION", "DEFAULTS", "POSITIONS_PER_SPLIT", "configure", "build", "kernel_key",
           "extra_args"]
