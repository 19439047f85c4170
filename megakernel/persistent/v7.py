"""Persistent megakernel, version 7: version 6 with each MLP in one phase, its down projection split over the
blocks and summed in fixed point by the copy engine (``fused_down``, ``fd_chunk=4``, ``fd_bulk``).

What changes from version 6, and why. In a version-6 step at context 512 on the H100 (``timeline_v6_ctx512``) the
MLP's down projection costs ~5.5 us per layer: the grid barrier after gate/up (every block needs all of ``act``),
the down phase's prologue (``act`` staged from L2), its 1-2 pages, the residual epilogue and its own barrier, for
7.3 MB of weights the ring streams in ~2.5 us. Version 7 keeps each block's rows of ``act`` in its shared memory
and multiplies them by the same rows of ``W_down^T`` (stored transposed: one contiguous run per block, streamed
through the ring like every page), then adds the block's [D] partial into the residual stream's accumulator
``h_acc``: no block waits for another's ``act``, 24 barriers and 24 prologues fewer per step (110 instead of 134).

The partials meet as 64-bit fixed-point integers (``split_down``): a chunk of 4 rows is summed in fp32, then
converted; integer sums do not depend on their order, and a block's rows come in whole chunks, so the bits are
the same on every run and every grid size, as the stress tests demand. They differ from version 6's (whose down
rows are fp32 dot products in a warp's order); the checks against the reference hold both to the same
tolerances. Each block's [D] sums go into ``h_acc`` in one bulk reduction by the copy engine
(``cp.reduce.async.bulk ... add.u64``); the phases that read the residual stream next read
``h + from_fixed(h_acc)``, and the next residual phase folds it into h and clears it.

Measured (H100, profiling builds at context 512, each call with its own baseline; NOTES.md): version 6
1,208-1,222 us per step; the fused MLP with 2 x 512 thread atomics per block 1,241-1,247 (the atomics cost ~100
us: 135k per layer on one 8 KB vector); with 4-row chunks read at once 1,191-1,202; with one bulk reduction per
block instead of the atomics **1,145-1,160** (within 2% of no reduction at all, 1,133-1,141). Benchmark (tg128):
897 / 882 / 835 / 575 tok/s at contexts 16 / 512 / 4096 / 32768, against version 6's 840 / 831 / 789 / 559.

Tried and not kept (``v2.OPTIONS``): replicas of the accumulator (``fd_reps``) or its elements spread over more
L2 lines (``fd_stride``): the atomics' cost moved from the MLP's barrier to the next phase's reads; each DeltaNet
layer's out_proj in its DeltaNet phase too (``fused_out``: each item adds its columns' share after a hand-off of
its head's sum of squares; 18 barriers fewer, 1,170 against 1,144 us: the phase got 8 us shorter than the two it
replaced, but reading a second accumulator made in_proj and the MLP ~30 us slower); the LM head's last pages
claimed at run time by whichever block is free (``lm_pool``: its spread fell from 29 to 13 us, but the claim code
in the copy thread's path made every other phase slower: 1,228-1,236 against 1,160 us).
"""

from __future__ import annotations

from . import v2, v3, v6

VERSION = 7
DESCRIPTION = "version 6 with each MLP in one phase: the down projection split over the blocks, summed in fixed point"
DEFAULTS = {**v6.DEFAULTS, "fused_down": True, "fd_chunk": 4, "fd_bulk": True}
OPTIONS = {**v2.OPTIONS, **DEFAULTS}
POSITIONS_PER_SPLIT = v3.POSITIONS_PER_SPLIT
kernel_key = v2.kernel_key
extra_args = v2.extra_args
build = v2.build_with(DEFAULTS)  # version 2's kernel builder with these defaults (an option passed wins)


def configure(plan, **options):
    """Version 3's plan and version 2's ring, with room in the workspace for the block's rows of act."""
    return v3.configure(plan, **{"fused_down": True, **options})


__all__ = ["VERSION", "DESCRIPTION", "DEFAULTS", "POSITIONS_PER_SPLIT", "configure", "build", "kernel_key",
           "extra_args"]
