"""Keep the mixer phases out of line: one register allocation per phase instead of one for the whole kernel.

A persistent kernel is one function: NVVM inlines every device function into it and the register allocator then
sees the matvec loops, the DeltaNet recurrence and the attention's per-lane query/accumulator arrays as one
program, hoists values across phases and spills (ptxas on version 2 at the 0.8B shapes: 255 registers and 736 B
of spill stores, most of it around the attention arrays). Marking the heavy bodies ``noinline`` makes each a real
call with its own allocation (``tools/profile_persistent.py`` and NOTES.md give the effect). Numba has no option
for it, so ``noinline(fn)`` registers a device function and ``install()`` adds LLVM's ``noinline`` attribute to it
when Numba lowers it (the same hook Numba itself uses to keep functions out of line for full debug info).
``lean_wrapper`` (below) makes such a call pass each array as its address and shape.
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


# --------------------------------------------------------------------------------------------------------------
# Lean calls: arrays passed as an address and a shape
# --------------------------------------------------------------------------------------------------------------
# Numba passes an array to a device function as its whole descriptor: meminfo, parent, item count, item size,
# data pointer, shape and strides (7 words for a vector, 11 for a 3-D array). Inside one kernel that costs
# nothing; across a real call it is ~60 parameters for a mixer body, most of them through the caller's stack
# frame (local memory). ``lean_wrapper`` builds a call that passes each array as its data pointer and shape
# instead (1 + ndim words) and rebuilds a C-contiguous array of that shape on the other side (Numba's ``carray``).
# Measured (NOTES.md "Persistent megakernel version 10"): the kernel's stack frame 664 -> 208 B, the step within
# noise; the build option ``lean_calls`` keeps it for the record.

from numba.core import types  # noqa: E402

from megakernel.device import SIMULATOR  # noqa: E402

if not SIMULATOR:
    from numba.cuda.np.numpy_support import carray as _carray
    from numba.core.extending import intrinsic

    @intrinsic
    def address(typingctx, arr):
        """The data pointer of an array (a ``CPointer`` of its dtype)."""
        if not isinstance(arr, types.Array):
            return None

        def codegen(context, builder, sig, args):
            return context.make_array(sig.args[0])(context, builder, args[0]).data

        return types.CPointer(arr.dtype)(arr), codegen

    view = _carray  # (ptr, shape) -> the C-contiguous array at ptr
else:
    def address(arr):
        """In the simulator the "pointer" is the array itself (``view`` checks what the GPU assumes)."""
        return arr

    def view(ptr, shape):
        from megakernel.testing.simulator import plain_array

        a = plain_array(ptr)
        if tuple(ptr.shape) != tuple(shape) or not a.flags.c_contiguous:
            raise AssertionError(f"a lean call's array of shape {tuple(ptr.shape)} (C-contiguous: "
                                 f"{a.flags.c_contiguous}) is viewed as a C-contiguous array of shape {tuple(shape)}")
        return ptr


def lean_wrapper(body, arrays: tuple[int, ...], nargs: int):
    """``call(a0, ..., a{nargs-1})`` -> ``body(...)`` through an out-of-line function that receives the arguments
    at the positions ``arrays`` as (address, shape) pairs (each must be C-contiguous: the simulator checks) and the
    others as they are. ``call`` itself is inlined into its caller."""
    from numba import cuda

    names = [f"a{i}" for i in range(nargs)]
    inner_params, outer_args, body_args = [], [], []
    for i, n in enumerate(names):
        if i in arrays:
            inner_params += [f"p{i}", f"s{i}"]
            outer_args += [f"address({n})", f"{n}.shape"]
            body_args.append(f"view(p{i}, s{i})")
        else:
            inner_params.append(n)
            outer_args.append(n)
            body_args.append(n)
    src = (f"def inner({', '.join(inner_params)}):\n    body({', '.join(body_args)})\n"
           f"def outer({', '.join(names)}):\n    inner_jit({', '.join(outer_args)})\n")
    scope = {"body": body, "address": address, "view": view, "__name__": __name__}
    exec(compile(src, f"<lean call of {getattr(body, '__name__', 'body')}>", "exec"), scope)
    inner_jit = cuda.jit(device=True)(scope["inner"])
    scope["inner_jit"] = noinline(inner_jit)
    return cuda.jit(device=True)(scope["outer"])


__all__ += ["address", "view", "lean_wrapper"]
