"""Persistent megakernel, version 13: version 12 with each DeltaNet layer's in_proj handed to its items as
flag-in-data words instead of across a grid barrier (``ll_inproj``, ``handoff``).

What changes from version 12, and why. A grid barrier hands data over in three steps: the writers' stores, each
block's release (``red.release.gpu``, compiled to ``MEMBAR.ALL.GPU``, which waits until the block's stores are
acknowledged), and the readers' acquire polls. After an input projection the release is most of the barrier's
latency on the H100 (NOTES.md: 2.3 us after in_proj against 0.9 without the weight stream), because the stores'
acknowledgements come back to the SM behind the weight pages in flight to it. NCCL's "LL" protocol does without
the fence: each value travels with a flag in one 64-bit word written by one single-copy-atomic store, and a reader
that sees the flag it expects has the value written with it.

Version 13 writes every in_proj row twice: as a float (for the out_proj phase, two barriers later: z and the q/k
conv shift's inputs) and as a word ``(tag << 32) | bits(value)`` in the int64 buffer after the residual
accumulator (``v2.ll_offset``). The tag counts the grid barriers of every launch so far (``handoff.ll_tag``: the
control block's ``CTL_LL_BASE``, which block 0 moves on when a launch ends and the host never zeroes, plus the
barriers this launch has passed, plus 1), so a word left from an earlier layer, step or launch never carries it. A block goes from its last in_proj page straight to its DeltaNet items; each item issues its
reads (conv taps and state, then the first read of each word) and spins only on the words it uses until they carry
the tag (``deltanet.deltanet_item(ll_inputs=True)``). 92 grid barriers per token instead of 110 (0.8B). The words'
buffer is rewritten by the next DeltaNet layer's in_proj three barriers later, after every item has read it (the
schedule model checks both: ``schedule.check_dependencies`` and its "~" buffers).

Measured (H100, NOTES.md "Persistent megakernel version 13"): the barriers' latency 147 -> 114 us per step, the
in_proj and DeltaNet phases together 196 -> 214 us (the items wait ~1 us per layer for the words), the step 1,001
-> 987 us; in the benchmark 1,035 tok/s at context 512 against version 12's 1,018 in the same call (+1.7%, +1.9% at
4096). The same arithmetic in the same order: the same bits as version 12 (simulator tests on 1 and 3 blocks; on
the GPU over runs and grid sizes).
"""

from __future__ import annotations

from . import v2, v3, v9, v12

VERSION = 13
DESCRIPTION = ("version 12 with each DeltaNet layer's in_proj handed to its items as flag-in-data words (value and "
               "tag in one 64-bit store), without a grid barrier between them")
DEFAULTS = {**v12.DEFAULTS, "ll_inproj": True}
OPTIONS = {**v2.OPTIONS, **DEFAULTS}
POSITIONS_PER_SPLIT = v3.POSITIONS_PER_SPLIT
kernel_key = v2.kernel_key
extra_args = v2.extra_args
build = v2.build_with(DEFAULTS)  # version 2's kernel builder with these defaults (an option passed wins)
configure = v9.configure  # version 9's plan

__all__ = ["VERSION", "DESCRIPTION", "DEFAULTS", "POSITIONS_PER_SPLIT", "configure", "build", "kernel_key",
           "extra_args"]
