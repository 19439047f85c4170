"""Persistent megakernel, version 10: version 9 with the attention decode body inline (``inline_decode``).

What changes from version 9, and why. Versions 6-9 call the mixer bodies (DeltaNet, attention prepare, decode,
combine) out of line (``phases._out_of_line``: LLVM's ``noinline``), so each gets its own register allocation
instead of raising the whole kernel's. A call has a price that the machine code shows (``ptxas -v`` and
``nvdisasm`` of an sm_90 build, NOTES.md "Persistent megakernel version 10"):

* its arguments: Numba passes an array as its whole descriptor (pointer, shape, strides and three fields the body
  never reads), so a call with ten arrays takes ~60 64-bit parameters, most through the caller's stack frame
  (616 bytes): stored by the caller, loaded by the callee, per thread;
* the callee's saved registers: the decode body needs ~100 live values (its group's queries, accumulators and
  two positions' keys and values per lane), more than the calling convention leaves free, so it stores 79
  registers on entry and reloads them on return (``ptxas``: 316 bytes of spills).

Together up to ~0.9 KB of local-memory stores and loads per thread and call, through an L1 that the ring's
shared memory leaves at ~28 KB. Version 10 compiles the decode body into the kernel (the DeltaNet, prepare and
combine bodies stay out of line): the kernel goes from 224 to 255 registers with 92 bytes of spill stores, all at
the mixers' call sites, none in the page loops.

Measured (H100, profiling builds at context 512, three calls; NOTES.md): version 9 1,044-1,046 us per step,
version 10 1,019-1,022; 994 tok/s in the benchmark against version 9's 977 in the same call. The decode phase
itself hardly moved (53 -> 51 us per step). The phases' critical paths summed 85 us less, and the time between the
last arrival at a barrier and the first departure grew by 58 us: the new register allocation moved work across the
profiling build's timer stamps, so between these two builds only the step time compares. One kernel of ~14,000
instructions has one register allocation and one code layout, and moving the decode body's 34 KB of code into it
moves both for every phase. Two neighbours were slower or no better: every
mixer body inline (1,090 us), and the remaining calls passing each array as an address and a shape
(``lean_calls``: 1,014 against 1,019, the DeltaNet phase unchanged), so the arguments are not what the calls
cost. Each such choice has to be measured, not derived. The same arithmetic in the same order: the same bits as
versions 7-9.
"""

from __future__ import annotations

from . import v2, v3, v9

VERSION = 10
DESCRIPTION = "version 9 with the attention decode body compiled into the kernel instead of called out of line"
DEFAULTS = {**v9.DEFAULTS, "inline_decode": True}
OPTIONS = {**v2.OPTIONS, **DEFAULTS}
POSITIONS_PER_SPLIT = v3.POSITIONS_PER_SPLIT
kernel_key = v2.kernel_key
extra_args = v2.extra_args
build = v2.build_with(DEFAULTS)  # version 2's kernel builder with these defaults (an option passed wins)
configure = v9.configure  # version 9's plan: room for the copy descriptors in shared memory

__all__ = ["VERSION", "DESCRIPTION", "DEFAULTS", "POSITIONS_PER_SPLIT", "configure", "build", "kernel_key",
           "extra_args"]
