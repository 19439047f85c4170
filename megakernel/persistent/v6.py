"""Persistent megakernel, version 6: version 5 with a cheaper page consumer and the mixers out of line.

What changes from version 5, and why. With no weight copied at all (the ``nocopy`` profile build) version 5 still
needs ~960 us per step at context 512 on the H100, ~1 us per 32 KB page. The page consumer alone, timed on the GPU
by ``megakernel.bench.consumer`` (one block per SM, pages resident, version 5's loop): 0.92-0.94 us per page, of
which the dot products are 0.55, the two warp sums per pass 0.17, the epilogue 0.19 and the slot's wait and block
barrier 0.07; 16 warps instead of 8 were no faster (0.97: the loop is bound by instructions issued, not by
latency). So version 6 issues fewer instructions per page, three build switches (``v2.OPTIONS``), each computing
version 3's sums in version 3's order, so the bits are unchanged:

* ``split_sums``: a warp's two rows of a pass are summed in one five-shuffle butterfly (``device.warp_sum2``:
  the first row's sum on lanes 0-15, the second's on lanes 16-31, each in ``warp_sum``'s order) and finished by
  lanes 0 and 16 together (one argmax key per lane instead of two): 0.92 -> 0.78 us per page alone;
* ``xregs``: in the phases whose rows have the hidden size (the input projections, gate/up, the LM head: ~80 % of
  the bytes) each lane keeps its 32 values of x in registers for the whole phase and reads only weights from the
  ring (``fused_matvec.xreg_dots``): with the split sums 0.68 us per page;
* ``out_of_line``: the DeltaNet and attention bodies are real calls with their own register allocation
  (``persistent.noinline``), so the matvec skeleton no longer pays their register pressure (spill stores 548 ->
  316 B): the DeltaNet phase 140 -> 124 us per step, the projections a few percent faster, the attention prepare
  and decode ~10 us slower.

Together, per step at context 512 (profile builds, ``tools/profile_persistent.py``): H100 1,245 -> 1,214 us
(2.5 %), H200 1,142 -> 1,075 us (6 %); the benchmark (tg128, H100): 826 -> 836 tok/s at context 512. The H100
gains less: there the weight stream, not the consumer, sets most phases' pace, and the ring of 6 x 32 KB copies
streams only ~2.7 TB/s even alone (NOTES.md, "Persistent megakernel version 6").

Measured and not kept (``v2.OPTIONS``): ``early_residual`` (a residual phase loads its rows of h before the dot
products: gate/up and down got slower); ``l2_mixer`` (L2 prefetches of the pages beyond the ring when a mixer
starts: the mixers' own reads queue behind them, DeltaNet 143 -> 193-386 us per step); ``fold_attention`` (one
phase and one barrier per attention layer instead of three, version 5's bits: each decode item makes its queries,
the blocks of a KV head's first splits combine its query heads once all its items are in; the attention phases
got slower, 113 -> 138-145 us per step: the query making and the hand-off now sit on the critical path);
``deltanet_out_of_line`` (only the DeltaNet body out of line: slower than both).
"""

from __future__ import annotations

from . import v2, v3, v5

VERSION = 6
DESCRIPTION = "version 5 with two rows per warp butterfly, x in registers and the mixer bodies out of line"
DEFAULTS = {**v5.DEFAULTS, "split_sums": True, "xregs": True, "out_of_line": True}
OPTIONS = {**v2.OPTIONS, **DEFAULTS}

configure = v3.configure
kernel_key = v2.kernel_key
extra_args = v2.extra_args
POSITIONS_PER_SPLIT = v3.POSITIONS_PER_SPLIT
build = v2.build_with(DEFAULTS)  # version 2's kernel builder with these defaults (an option passed wins)


__all__ = ["VERSION", "DESCRIPTION", "DEFAULTS", "POSITIONS_PER_SPLIT", "configure", "build", "kernel_key",
           "extra_args"]
