"""A producer warp beside the consumer warps: the block as the consumers see it.

Warp specialisation (``producer`` build option, version 13): a block runs ``T`` consumer threads (the kernel's
phases, exactly as before) and one more warp whose lane 0 only streams weight pages into the ring. The producer
never takes part in a block barrier: it hands pages over through mbarriers ("full": the copy landed, "empty":
every consumer warp has left the slot). So the consumers' block barriers must count the consumers alone, and the
shared device functions that size their loops by the block (``cuda.blockDim.x``: the embedding rows, the block
sums, the argmax over warps) must see ``T`` threads, not ``T + 32``.

The kernel's source stays the layered kernels' source (one implementation of each op). What changes is the
machine-level meaning of two things in a kernel whose name carries the mark ``_consumers_<T>``
(``consumer_name``):

* every ``bar.sync 0`` (``cuda.syncthreads()``: all threads of the block) becomes ``bar.sync 1, T`` (a named
  barrier for the first ``T`` threads; warps arrive in order, so those are the consumer warps);
* every read of ``%ntid.x`` (``cuda.blockDim.x``) becomes the constant ``T``.

``install()`` hooks Numba's PTX generation (``CUDACodeLibrary.get_asm_strs``) to apply ``narrow_ptx`` to such
kernels, which must be compiled through PTX (``JIT_OPTIONS``: numba-cuda links through LTO-IR by default where
nvJitLink is installed, and refusing that is the hook's other half); the out-of-line mixer bodies sit in the same
PTX module and are narrowed with it (only consumers call them). ``sync_all()`` is the one barrier over every
thread of the block (``bar.sync 2``: the mbarriers' initialisation, before the roles split). In the simulator
(``megakernel.testing.simulator``) a launch of a marked kernel gives ``syncthreads`` the first ``T`` threads as
parties, ``blockDim`` the consumers' size, and refuses a ``syncthreads`` from a producer thread.
"""

from __future__ import annotations

import re

from megakernel.device import SIMULATOR

MARK = "_consumers_"
NAMED_BARRIER = 1  # the consumers' block barrier
ALL_BARRIER = 2    # every thread of the block (``sync_all``)

_MARK_RE = re.compile(MARK + r"(\d+)")
_DONE = "// megakernel.persistent.warp_roles: block barriers and blockDim narrowed to"
_BAR0_RE = re.compile(r"\b(bar|barrier)\.sync(\.aligned)?\s+0\s*;")
_NTID_RE = re.compile(r"(mov\.u32\s+%r\d+,\s*)%ntid\.x\s*;")


def consumer_name(name: str, threads: int) -> str:
    """A kernel function name that marks ``threads`` consumer threads."""
    return f"{name}{MARK}{int(threads)}"


def consumers_of(name: str) -> int | None:
    """The consumer thread count a (possibly mangled) kernel name carries, or None for an ordinary kernel."""
    m = _MARK_RE.search(name)
    return int(m.group(1)) if m else None


def narrow_ptx(ptx: str, threads: int) -> str:
    """``ptx`` with the block as ``threads`` consumer threads see it (see the module's docstring), its first line
    a comment that says so. Refuses PTX that uses named barrier 1 already (narrowed before, say) or a block-wide
    barrier form it does not rewrite (``bar.red`` / ``bar.arrive`` on barrier 0)."""
    if threads % 32 or threads <= 0:
        raise ValueError(f"consumer threads must be a positive multiple of 32, got {threads}")
    if re.search(r"\b(bar|barrier)(\.sync|\.arrive|\.red)[^;]*\s1\s*,", ptx):
        raise ValueError("the kernel's PTX already uses named barrier 1")
    out = _BAR0_RE.sub(f"bar.sync {NAMED_BARRIER}, {threads};", ptx)
    if re.search(r"\bbar(rier)?\.(red|arrive)[^;]*\s0\s*[;,]", out):
        raise ValueError("narrow_ptx: a block-wide barrier form it does not narrow (bar.red / bar.arrive 0)")
    return f"{_DONE} {threads} consumer threads\n" + _NTID_RE.sub(lambda m: f"{m.group(1)}{threads};", out)


_installed = False


def install() -> None:
    """Narrow the PTX of every marked kernel Numba compiles from now on (GPU builds; a no-op in the simulator)."""
    global _installed
    if _installed or SIMULATOR:
        return
    from numba.cuda.codegen import CUDACodeLibrary

    original = CUDACodeLibrary.get_asm_strs

    def get_asm_strs(self, cc=None):
        ptxes = original(self, cc=cc)
        threads = consumers_of(str(getattr(self, "_entry_name", None) or getattr(self, "name", "")))
        if threads is None:
            return ptxes
        narrowed = [narrow_ptx(p, threads) if consumers_of(p) and _DONE not in p else p for p in ptxes]
        if narrowed != ptxes:  # cached narrowed, so the cubin is linked from what was checked
            self._ptx_cache[self._ensure_cc(cc)] = narrowed
        return narrowed

    original_ltoir = CUDACodeLibrary.get_ltoir

    def get_ltoir(self, cc=None):  # link-time optimisation never makes PTX: nothing to narrow
        if consumers_of(str(getattr(self, "_entry_name", None) or getattr(self, "name", ""))) is not None:
            raise ValueError("a kernel with a producer warp must be compiled without LTO (cuda.jit(lto=False)): "
                             "its barriers are narrowed in its PTX")
        return original_ltoir(self, cc=cc)

    CUDACodeLibrary.get_asm_strs = get_asm_strs
    CUDACodeLibrary.get_ltoir = get_ltoir
    _installed = True


# ``cuda.jit(fn, **JIT_OPTIONS)`` for a marked kernel: through PTX, no LTO-IR (pass the function as the first
# argument: numba-cuda 0.30's ``cuda.jit(lto=False)(fn)`` drops the option)
JIT_OPTIONS = {} if SIMULATOR else {"lto": False}


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

    sync_all = no_operand(f"bar.sync {ALL_BARRIER};")  # every thread of the block (``narrow_ptx`` leaves it alone)

    def set_max_registers(increase: bool, n: int):
        """An intrinsic ``f()``: ``setmaxnreg.inc`` (or ``.dec``) ``.sync.aligned.u32 n``: this warpgroup's
        registers a thread raised (lowered) to ``n`` (sm_90a; every thread of the warpgroup executes it)."""
        return no_operand(f"setmaxnreg.{'inc' if increase else 'dec'}.sync.aligned.u32 {int(n)};")


__all__ = ["MARK", "JIT_OPTIONS", "consumer_name", "consumers_of", "narrow_ptx", "install", "sync_all",
           "block_registers", "register_split", "set_max_registers"]
