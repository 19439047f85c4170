"""Persistent megakernel, version 14: version 13 with the residual stream handed to the MLP's norm as flag-in-data
words (``ll_residual``, its pending words re-read together: ``ll_together=2``) and each block's copy descriptors
packed beside its mbarriers (``packed_descs``).

What changes from version 13, and why. Three build options that each measured within a call's noise of version 13
alone (NOTES.md, eleventh to thirteenth rounds), measured together in one process, interleaved with version 13
(``python -m megakernel.bench.ab``), where the calls' drift cancels out:

* ``ll_residual``: after out_proj and o_proj (24 grid barriers per token at the 0.8B's sizes) every block needs
  all of h for the MLP's RMSNorm. The residual phase also writes each new row of h as a flag-in-data word
  (``handoff``), and the MLP's norm spins on the words instead of waiting at a barrier; the MLP's accumulator
  alternates between two regions by layer parity, so a fast block's MLP never adds into the region a slow block
  is still folding (``v2.residual_regions``; the schedule model checks it). 68 barriers per token instead of 92.
* ``ll_together=2``: the MLP's norm re-reads every word not yet written in each round, so a round costs one L2
  round trip, not one per word (``handoff.ll_wait4``).
* ``packed_descs``: the copy thread's next descriptor is read from shared memory beside the mbarriers, indexed by
  a carried counter (no table row arithmetic, no 64-bit remainder), shortening the refill after each page.

The same arithmetic in the same order: the same bits as version 13 (simulator tests on 1 and 3 blocks under the
reverse schedule; on the GPU over runs and grid sizes). The shared norm's sum of squares is explicit fmas
(``fused_matvec.stage_norm4``), so the compiler cannot round it differently beside the words' wait loop.

Measured (H200, 2026-11-28, NOTES.md "fourteenth round"): in one process, interleaved with version 13 over five
rounds, 2.0% / 2.2% / 2.1% faster at contexts 16 / 512 / 4096, faster in every round; in the benchmark 1,264 tok/s
at 512 against version 13's 1,204 and the CUDA graph's 1,098 in the same call. The profiling build shows the two
level (849 us per step): the barriers' 114.5 + 22.7 us become 52.9 + 16.0, and the merged phases grow by as much.
Not measured on an H100.
"""

from __future__ import annotations

from . import v2, v3, v9, v13

VERSION = 14
DESCRIPTION = ("version 13 with the residual stream handed to the MLP's norm as flag-in-data words (no grid barrier "
               "between), their pending words re-read together, and the copy descriptors packed beside the mbarriers")
DEFAULTS = {**v13.DEFAULTS, "ll_residual": True, "ll_together": 2, "packed_descs": True}
OPTIONS = {**v2.OPTIONS, **DEFAULTS}
POSITIONS_PER_SPLIT = v3.POSITIONS_PER_SPLIT
kernel_key = v2.kernel_key
extra_args = v2.extra_args
build = v2.build_with(DEFAULTS)  # version 2's kernel builder with these defaults (an option passed wins)
configure = v9.configure  # version 9's plan

__all__ = ["VERSION", "DESCRIPTION", "DEFAULTS", "POSITIONS_PER_SPLIT", "configure", "build", "kernel_key",
           "extra_args"]
