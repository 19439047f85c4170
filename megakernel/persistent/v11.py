"""Persistent megakernel, version 11: version 10 with the weight pages of hidden-size rows multiplied on the tensor
cores (``mma_pages``).

What changes from version 10, and why. Without any weight copied, version 10 still takes ~830 us per step (NOTES.md
"Persistent megakernel version 10"): the skeleton, not the stream, sets its pace. About a third of it is the page
consumer: a block takes ~0.96 us per 32 KB page on the CUDA cores (~300 instructions a warp: a share of the loads,
a bf16 -> fp32 conversion and an FMA per weight, a shuffle reduction per row). In the phases whose pages are all in
the ring when the phase starts (the input projections: 4 pages a block), that is the phase's length.

Version 11 multiplies the pages whose rows have the hidden size (the DeltaNet and attention input projections,
the MLP's gate/up, the LM head: ~82 % of the weight bytes) with ``mma.sync.m16n8k16`` (``mma.page_mma``): the
warps split k, each keeps its k-span of x as bf16 hi and lo fragments in the 32 registers version 10 held x's
floats in, and a page of 16 rows costs a warp 8 ``ldmatrix`` and 16 ``mma`` instead of ~300 instructions. The
weight rows read their 16-byte chunks rotated row by row, so the 8 rows of an ``ldmatrix`` phase (2 KB apart, one
bank group) hit 8 different bank groups; x's fragments carry the same rotation and only the diagonal of each tile
product is read. The warps' partial sums meet in shared memory: after the page's block barrier (version 10 has it
too) the upper half of the warps finish the rows, 4 each, summing the 8 partials in a fixed order, while warp 0
refills the slot. The other pages (out_proj, o_proj, and
the MLP's down projection, read transposed) keep version 10's consumer.

The bits change: the tensor cores accumulate in fp32 in their own order, and x enters as hi + lo (16 of its 24
mantissa bits; the dropped part is ~1e-5 relative, below the reference tolerance of 1e-4). Version 11 is held to
the reference like version 1, and to its own bit identity across runs and grid sizes (a row's sum does not depend
on which block takes it). Measured: NOTES.md "Persistent megakernel version 11".
"""

from __future__ import annotations

from . import v2, v3, v9, v10

VERSION = 11
DESCRIPTION = "version 10 with the hidden-size weight pages multiplied on the tensor cores (mma.sync, bf16 hi/lo x)"
DEFAULTS = {**v10.DEFAULTS, "mma_pages": True}
OPTIONS = {**v2.OPTIONS, **DEFAULTS}
POSITIONS_PER_SPLIT = v3.POSITIONS_PER_SPLIT
kernel_key = v2.kernel_key
extra_args = v2.extra_args
build = v2.build_with(DEFAULTS)  # version 2's kernel builder with these defaults (an option passed wins)
configure = v9.configure  # version 9's plan (the partials' 1 KB fits the slack next to its ring)

__all__ = ["VERSION", "DESCRIPTION", "DEFAULTS", "POSITIONS_PER_SPLIT", "configure", "build", "kernel_key",
           "extra_args"]
