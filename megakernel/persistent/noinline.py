"""Keep the mixer phases out of line: one register allocation per phase instead of one for the whole kernel.

A persistent kernel is one function: NVVM inlines every device function into it and the register allocator then
sees the matvec loops, the DeltaNet recurrence and the attention's per-lane query/accumulator arrays as one
program, hoists values across phases and spills (ptxas on version 2 at the 0.8B shapes: 255 registers and 736 B
of spill stores, most of it around the attention arrays). Marking the heavy bodies ``noinline`` makes each a real
call with its own allocation (``tools/profile_persistent.py`` and NOTES.md give the effect). Numba has no option
for it, so ``noinline(fn)`` registers a device function and ``install()`` adds LLVM's ``noinline`` attribute to it
when Numba lowers it (the same hook Numba itself uses to keep functions out of line for full debug info).
"""

from __future__ import annotations

_NAMES: set[tuple[str, str]] = set()
_installed = False


def noinline(fn):
    """Mark a ``cuda.jit(device=True)`` function (or its Python function) to be compiled out of line."""
    py = getattr(fn, "py_func", fn)
    _NAMES.add((py.__module__, py.__qualname__))
    install()
    return fn


def install() -> None:
    global _installed
    if _installed:
        return
    from numba.cuda import lowering

    original = lowering.CUDALower.pre_lower

    def pre_lower(self):
        original(self)
        fd = self.fndesc
        if (fd.modname, fd.qualname) in _NAMES:
            attributes = self.builder.function.attributes
            if "alwaysinline" not in attributes:
                attributes.add("noinline")

    lowering.CUDALower.pre_lower = pre_lower
    _installed = True


__all__ = ["noinline", "install"]
