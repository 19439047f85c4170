"""Registers, spills and stack of persistent kernel builds, without a GPU: the kernel is compiled and linked for the
H100 as a launch there does (LTO-IR through nvJitLink for sm_90a, the whole program at once;
``megakernel.testing.ptx_check``), and the assembler's report is read. ``--ptx`` (or a ``+nolto`` variant): Numba's
PTX assembled on its own instead, each out-of-line function compiled separately with the full call ABI (larger
stack frames; NOTES.md, "the producer warp built through LTO"). The
register count sets how many warps an SM holds; a spill turns registers into local-memory traffic through an L1
that the kernel's shared-memory ring leaves small (NOTES.md, "Persistent megakernel").

Usage: python tools/ptxas_report.py [VARIANTS] [--ptx]
  VARIANTS  comma-separated, as tools/profile_persistent.py spells them ("4", "3+ef", "4+ool+oolrows"; default "4"),
            at the real 0.8B shapes. Run with the simulator off (NUMBA_ENABLE_CUDASIM unset)."""

from __future__ import annotations

import os
import sys

os.environ.pop("NUMBA_ENABLE_CUDASIM", None)

from numba import types  # noqa: E402

from megakernel.persistent import plan as P  # noqa: E402
from megakernel.persistent.decoder import VERSIONS  # noqa: E402
from megakernel.persistent.profile import parse_variant  # noqa: E402
from megakernel.testing import ptx_check  # noqa: E402
from reference.config import Qwen35Config  # noqa: E402


def arg_types(version: int) -> tuple:
    """The launch's argument types, in ``PersistentDecoder._args`` order (only dtypes, ranks and layouts matter)."""
    f32, i32, i64, i16 = types.float32, types.int32, types.int64, types.int16
    arr = types.Array
    args = [arr(i32, 1, "C"), arr(f32, 1, "C"), arr(f32, 3, "A"),  # weights: words, floats, conv taps (strided)
            arr(f32, 3, "C"), arr(f32, 4, "C"), arr(i16, 4, "C"), arr(i16, 4, "C"), arr(i32, 1, "C"),  # state
            arr(f32, 1, "C"), arr(f32, 2, "C"), arr(f32, 3, "C"), arr(f32, 3, "C"),  # scratch, q, partials m/l, o
            arr(i32, 1, "C"), arr(i64, 1, "C"), arr(i64, 1, "C"), arr(i32, 1, "C"), arr(i32, 1, "C"),
            arr(f32, 2, "C"), arr(i64, 2, "C")]  # ctl, best, best_sample, tokens, counters, trace, prof
    if version >= 2:
        args += [arr(i32, 3, "C"), arr(i32, 1, "C"), arr(i64, 1, "C")]  # page table (int32), pages per block, h_acc
    return tuple(args)


def report(variant: str, lto: bool = True) -> dict:
    """The assembler's figures for the kernel (the largest register count and frame over its functions, the
    summed spills), linked through LTO-IR as the GPU links it, or (``lto=False``) from Numba's PTX assembled on its
    own, as ``nolto`` builds it."""
    version, options = parse_variant(variant)
    nobar = options.pop("_nobar", False)
    module = VERSIONS[version]
    plan = P.make_plan(Qwen35Config.qwen35_0_8b(), 1024, 256, 1)
    if hasattr(module, "configure"):
        plan = module.configure(plan, **options)
    kernel = module.build(module.kernel_key(plan), plan, not nobar, False, **options)
    regs = options.get("max_registers") or kernel.targetoptions.get("max_registers") or None  # (producer: 168)
    if lto:  # as the GPU links it (numba-cuda's default where nvJitLink is installed)
        library = ptx_check.compile_library_sm90a(kernel, arg_types(version))
        _, log = ptx_check.assemble_lto(library, max_registers=regs)
    else:
        ptx = ptx_check.compile_ptx_sm90(kernel, arg_types(version))
        _, log = ptx_check.assemble(ptx, max_registers=regs)
    functions = ptx_check.parse_ptxas_log(log).values()
    return {"variant": variant, "registers": max(f.get("registers", 0) for f in functions),
            "spill_stores": sum(f.get("spill_store_bytes", 0) for f in functions),
            "spill_loads": sum(f.get("spill_load_bytes", 0) for f in functions),
            "stack": max(f.get("stack_bytes", 0) for f in functions)}


if __name__ == "__main__":
    argv = [a for a in sys.argv[1:] if a != "--ptx"]
    for v in (argv[0] if argv else "4").split(","):
        r = report(v, lto="--ptx" not in sys.argv and "+nolto" not in v)
        print(f"{v:24s} {r['registers']:4d} registers  spill stores {r['spill_stores']:6d} B  spill loads "
              f"{r['spill_loads']:6d} B  stack {r['stack']:6d} B")
