"""A producer warp beside the consumer warps: the block as the consumers see it.

Warp specialisation (the ``producer`` build option): a block runs ``T`` consumer threads (the kernel's
phases, exactly as before) and one more warp whose lane 0 only streams weight pages into the ring. The producer
never takes part in a block barrier: it hands pages over through mbarriers ("full": the copy landed, "empty":
every consumer warp has left the slot). So the consumers' block barriers must count the consumers alone, and the
shared device functions that size their loops by the block (``cuda.blockDim.x``: the embedding rows, the block
sums, the argmax over warps) must see ``T`` threads, not ``T + 32``.

The kernel's source stays the layered kernels' source (one implementation of each op). What changes is the
machine-level meaning of two things in a kernel whose name carries the mark ``_consumers_<T>``
(``consumer_name``), rewritten in the LLVM IR Numba hands to NVVM (``narrow_ir``):

* every ``cuda.syncthreads()`` (``llvm.nvvm.barrier0``, PTX ``bar.sync 0``: all threads of the block) becomes
  ``bar.sync 1, T`` (a named barrier for the first ``T`` threads; warps arrive in order, so those are the
  consumer warps), a convergent call as the intrinsic is;
* every read of ``cuda.blockDim.x`` (``llvm.nvvm.read.ptx.sreg.ntid.x``) becomes the constant ``T``.

``install()`` hooks the IR's one way out of Numba (``CUDACodeLibrary.llvm_strs``), so both of numba-cuda's
paths to a cubin see it: through LTO-IR and nvJitLink (the default where nvJitLink is installed) and through PTX
(``NO_LTO``). The out-of-line mixer bodies are modules of the same library and are narrowed with it (only
consumers call them). The first hook rewrote the PTX instead, and so forced a build without LTO, or a link of
the PTX that LTO emits: both compile the PTX in ``ptxas``'s separate-compilation mode, each out-of-line body on
its own with the full call ABI (the kernel's stack frame 720 or 264 B instead of 160), and on the H100 every
mixer phase ran ~1.6x slower that way, with a producer warp or without. ``sync_all()`` is the one barrier over
every thread of the block (``bar.sync 2``: the mbarriers' initialisation, before the roles split). In the
simulator (``megakernel.testing.simulator``) a launch of a marked kernel gives ``syncthreads`` the first ``T``
threads as parties, ``blockDim`` the consumers' size, and refuses a ``syncthreads`` from a producer thread.
"""

from __future__ import annotations

import re

from megakernel.device import SIMULATOR

MARK = "_consumers_"
NAMED_BARRIER = 1  # the consumers' block barrier
ALL_BARRIER = 2    # every thread of the block (``sync_all``)

_MARK_RE = re.compile(MARK + r"(\d+)")
_DONE = "; megakernel.persistent.warp_roles: block barriers and blockDim narrowed to"
_BAR0_RE = re.compile(r'call void @"?llvm\.nvvm\.barrier0"?\(\)')
_NTID_RE = re.compile(r'call i32 @"?llvm\.nvvm\.read\.ptx\.sreg\.ntid\.x"?\(\)[^\n]*')
# block-wide barriers it does not rewrite: the reducing forms of barrier 0, the numbered intrinsics, named
# barrier 1 or a bar.red / bar.arrive in inline assembly
_OTHER_BARRIERS_RE = re.compile(r'llvm\.nvvm\.barrier(0\.|\.)|"[^"\n]*\bbar(rier)?\.(sync|arrive|red)[^"\n]*\s1\s*,'
                                r'|"[^"\n]*\bbar(rier)?\.(red|arrive)')


def consumer_name(name: str, threads: int) -> str:
    """A kernel function name that marks ``threads`` consumer threads."""
    return f"{name}{MARK}{int(threads)}"


def consumers_of(name: str) -> int | None:
    """The consumer thread count a (possibly mangled) kernel name carries, or None for an ordinary kernel."""
    m = _MARK_RE.search(name)
    return int(m.group(1)) if m else None


def narrow_ir(ir: str, threads: int) -> str:
    """One LLVM IR module with the block as ``threads`` consumer threads see it (see the module's docstring),
    its first line a comment that says so. Refuses IR with a block-wide barrier it does not rewrite (named
    barrier 1 already, a reducing ``__syncthreads_count``-like barrier, ``bar.arrive``)."""
    if threads % 32 or threads <= 0:
        raise ValueError(f"consumer threads must be a positive multiple of 32, got {threads}")
    bad = _OTHER_BARRIERS_RE.search(_BAR0_RE.sub("", ir).replace('"llvm.nvvm.barrier0"', ""))
    if bad:
        raise ValueError(f"narrow_ir: a block-wide barrier it does not narrow: {bad.group(0)!r}")
    out = _BAR0_RE.sub(f'call void asm sideeffect "bar.sync {NAMED_BARRIER}, {threads};", "~{{memory}}"() '
                       f'convergent nounwind', ir)
    return f"{_DONE} {threads} consumer threads\n" + _NTID_RE.sub(f"add i32 {threads}, 0", out)


_installed = False


def install() -> None:
    """Narrow the IR of every marked kernel Numba compiles from now on (GPU builds; a no-op in the simulator)."""
    global _installed
    if _installed or SIMULATOR:
        return
    from numba.cuda.codegen import CUDACodeLibrary

    original = CUDACodeLibrary.llvm_strs  # a property: each module of the library (the kernel and what it calls)

    def llvm_strs(self):
        irs = original.fget(self)
        threads = consumers_of(str(getattr(self, "_entry_name", None) or getattr(self, "name", "")))
        if threads is None or all(ir.startswith(_DONE) for ir in irs):
            return irs
        self._llvm_strs = [ir if ir.startswith(_DONE) else narrow_ir(ir, threads) for ir in irs]
        return self._llvm_strs

    CUDACodeLibrary.llvm_strs = property(llvm_strs)
    _installed = True


# ``cuda.jit(fn, **NO_LTO)``: a kernel built through Numba's PTX and ``ptxas`` instead of LTO-IR (pass the
# function as the first argument: numba-cuda 0.30's ``cuda.jit(lto=False)(fn)`` drops the option)
NO_LTO = {} if SIMULATOR else {"lto": False}


def block_registers(threads: int) -> int:
    """The registers a thread a block of ``threads`` can have when it alone fills an SM: the SM's 64 K registers
    are handed out in groups of 4 warps (9 warps take 12 warps' worth: 168), in steps of 8."""
    return 65536 // (-(-threads // 128) * 128) // 8 * 8


def register_split(consumers: int, producers: int, producer_regs: int) -> tuple[int, int]:
    """``setmaxnreg``'s budget: (the registers a thread the kernel is compiled for, the consumers' share once the
    producer warps gave theirs back). An SM's 64 K registers are handed out in groups of 4 warps; a launch gets
    what its whole block fits in, and ``setmaxnreg`` moves registers between warpgroups (4 warps) within it."""
    total = consumers + producers
    if not SIMULATOR and (producers % 128 or consumers % 128):  # (the simulator moves no registers)
        raise ValueError(f"setmaxnreg moves registers between whole warpgroups: {consumers} consumer and "
                         f"{producers} producer threads are not multiples of 128")
    if producer_regs % 8 or not 24 <= producer_regs <= 256:
        raise ValueError(f"producer registers {producer_regs}: a multiple of 8 from 24 to 256")
    return block_registers(total), min(256, (65536 - producers * producer_regs) // consumers // 8 * 8)


if SIMULATOR:
    def set_max_registers(increase: bool, n: int):
        """``setmaxnreg`` (no registers to move in the simulator)."""
        def no_op():
            pass

        return no_op

    def sync_all():
        """Every thread of the block, producer included."""
        from megakernel.testing.simulator import sync_all_threads

        sync_all_threads()
else:
    from .tma import no_operand

    sync_all = no_operand(f"bar.sync {ALL_BARRIER};")  # every thread of the block (``narrow_ir`` leaves it alone)

    def set_max_registers(increase: bool, n: int):
        """An intrinsic ``f()``: ``setmaxnreg.inc`` (or ``.dec``) ``.sync.aligned.u32 n``: this warpgroup's
        registers a thread raised (lowered) to ``n`` (sm_90a; every thread of the warpgroup executes it)."""
        return no_operand(f"setmaxnreg.{'inc' if increase else 'dec'}.sync.aligned.u32 {int(n)};")


__all__ = ["MARK", "NO_LTO", "consumer_name", "consumers_of", "narrow_ir", "install", "sync_all",
           "block_registers", "register_split", "set_max_registers"]
