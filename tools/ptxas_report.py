"""Registers, spills and stack of a persistent kernel build, without a GPU: Numba compiles the kernel to PTX for
sm_90 and ``ptxas -v`` reports what the GPU would run (the register count sets how many warps an SM holds, a spill
turns registers into local-memory traffic through an L1 the kernel's shared-memory ring leaves small).

Usage: python tools/ptxas_report.py [VARIANTS] [--ptx DIR]
  VARIANTS  as tools/profile_persistent.py ("3", "3+early", ...; default "3"); the synthetic 0.8B config.
Needs the CUDA toolkit's ``ptxas`` on PATH (the GPU machine's driver is not needed)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("NUMBA_ENABLE_CUDASIM", None)

import numba  # noqa: E402
from numba import cuda, types  # noqa: E402

import numba.cuda.dispatcher as _dispatcher  # noqa: E402


class _SM90:
    """What Numba asks the current device while compiling device functions (no GPU here: an H100)."""
    compute_capability = (9, 0)


_dispatcher.get_current_device = lambda: _SM90()

from megakernel.persistent import plan as P  # noqa: E402
from megakernel.persistent.decoder import VERSIONS  # noqa: E402
from reference.config import Qwen35Config  # noqa: E402

from megakernel.persistent.profile import parse_variant as parse  # noqa: E402


def arg_types(config, plan, version) -> tuple:
    """The launch's argument types (what ``PersistentDecoder._args`` passes), built from the config alone."""
    f32, i32, i64, i16 = types.float32, types.int32, types.int64, types.int16
    C, A = "C", "A"
    arr = types.Array
    common = [arr(i32, 1, C), arr(f32, 1, C), arr(f32, 3, A),  # weights: words, floats, conv weights (strided)
              arr(f32, 3, C), arr(f32, 4, C), arr(i16, 4, C), arr(i16, 4, C), arr(i32, 1, C),  # state
              arr(f32, 1, C), arr(f32, 2, C), arr(f32, 3, C), arr(f32, 3, C),  # scratch, q, partial m/l, partial o
              arr(i32, 1, C), arr(i64, 1, C), arr(i64, 1, C), arr(i32, 1, C), arr(i32, 1, C), arr(f32, 2, C),
              arr(i64, 2, C)]  # ctl, best, best_sample, tokens, counters, trace, prof
    if version >= 2:
        common += [arr(i64, 3, C), arr(i32, 1, C)]  # page table, pages per block
    return tuple(common)


def report(variant: str, ptx_dir: Path | None = None) -> dict:
    version, options = parse(variant)
    nobar = options.pop("_nobar", False)
    module = VERSIONS[version]
    config = Qwen35Config.qwen35_0_8b()
    plan = P.make_plan(config, 1024, 256, 1)
    if hasattr(module, "configure"):
        plan = module.configure(plan, **options)
    kern = module.build(module.kernel_key(plan), plan, not nobar, False, **options)
    ptx, _ = cuda.compile_ptx(kern.py_func, arg_types(config, plan, version), cc=(9, 0))
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(ptx_dir or tmp) / f"persistent_{variant.replace('+', '_')}.ptx"
        src.parent.mkdir(parents=True, exist_ok=True)
        version = subprocess.run(["ptxas", "--version"], capture_output=True, text=True).stdout
        release = re.search(r"release (\d+)\.(\d+)", version)
        if release:  # NVVM may be newer than ptxas: declare the PTX ISA this ptxas reads (13.0 -> 9.0)
            ptx = re.sub(r"^\.version \d+\.\d+", f".version {int(release[1]) - 4}.{release[2]}", ptx, count=1,
                         flags=re.M)
        src.write_text(ptx)
        out = subprocess.run(["ptxas", "-arch=sm_90", "-v", "-c", "-o", os.devnull, str(src)],
                             capture_output=True, text=True)
    text = out.stdout + out.stderr
    regs = re.findall(r"Used (\d+) registers", text)
    spill = re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    stack = re.findall(r"(\d+) bytes stack frame", text)
    if out.returncode != 0 or not regs:
        raise SystemExit(f"ptxas failed for {variant}:\n{text[-2000:]}")
    return {"variant": variant, "registers": int(regs[-1]), "spill_stores": int(spill[-1][0]),
            "spill_loads": int(spill[-1][1]), "stack": int(stack[-1]), "ptxas": text}


if __name__ == "__main__":
    args = sys.argv[1:]
    ptx_dir = None
    if "--ptx" in args:
        i = args.index("--ptx")
        ptx_dir = Path(args[i + 1])
        del args[i:i + 2]
    for v in (args[0] if args else "3").split(","):
        r = report(v, ptx_dir)
        print(f"{v:28s} {r['registers']:4d} registers  spill stores {r['spill_stores']:6d} B  "
              f"spill loads {r['spill_loads']:6d} B  stack {r['stack']:6d} B")
