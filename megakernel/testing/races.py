"""Race detection for simulated kernels: happens-before with vector clocks, per element of shared and global memory.

A data race is two accesses to one element by two threads, at least one a write, that nothing orders. On the GPU
it gives whatever the hardware's timing gives; in the simulator the accesses come in one particular order, so the
result is usually right. This module finds such pairs no matter in which order they ran, in the FastTrack style:

* every simulated thread has a vector clock: its own epoch counter and, for every other thread, the last epoch of
  that thread it is ordered after.  Orderings come from
  - ``syncthreads`` (and its count/and/or forms): joins the clocks of every thread of the block,
  - ``this_grid().sync()``: joins every thread of the launch,
  - ``syncwarp``: joins the lanes of the warp (shuffles and votes do NOT order memory, as on the GPU: the
    compiler may move a shared-memory access across a shuffle),
  - a ``threadfence`` followed by an atomic (release) and an atomic on the same element by another thread
    (acquire): the acquirer is ordered after everything the releaser did before its fence.  An atomic without a
    fence before it releases nothing, so a missing fence is reported, deterministically, at the first access
    that relied on it.  ``threadfence_block`` releases to threads of the same block only.  Threads that exited
    count as arrived at every later barrier of their block and grid;
* every tracked element remembers the epoch of its last write and the epochs of the reads since; an access
  checks them against the accessing thread's clock, and raises :class:`SimulatorRace` (kernel, array, index,
  both threads, the line) when one is not ordered before it.  Atomics are exempt (they are not recorded).

What it tracks: shared arrays (static and dynamic) and, in mode ``all``, the kernel's array arguments (global
memory), including the vector loads of ``megakernel.device``.  Local arrays are private; module-level NumPy
constants are read-only.

What it cannot see (see NOTES.md): races on memory it does not track (arrays reached other than through the
kernel's arguments); a race between a plain access and an atomic on the same element; orderings the GPU gives
only through warp-synchronous execution without ``syncwarp`` (reported as races: they are races since Volta);
missing acquire fences (an atomic orders what follows it immediately); races between launches (kernel boundaries
order everything); races that the run never executes (a branch not taken in the test's configuration); reads of
memory nobody wrote (that is what the NaN poison of shared memory is for).  Dynamic shared memory is tracked per
4-byte word, so two threads writing the two halves of one word are reported.

Modes (``MEGAKERNEL_SIM_RACES`` or :func:`detection`): ``off``; ``shared`` (shared memory only); ``all`` (shared
and global memory, the default).
"""

from __future__ import annotations

import math
import os
import sys
import threading
from contextlib import contextmanager

import numpy as np

ENV_VAR = "MEGAKERNEL_SIM_RACES"
MODES = ("off", "shared", "all")
DEFAULT_MODE = "all"
# A region with more tracking units than this gets a dictionary shadow (memory grows with the elements touched)
# instead of two lists of its size.
DENSE_SHADOW_LIMIT = 1 << 22

# The simulated thread running now: set by the simulator when a thread starts (a thread-local attribute is
# faster to read than threading.current_thread(), and this is read at every access).
_tls = threading.local()
_NP_INTS = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)
_THIS_DIR = os.path.dirname(os.path.abspath(__file__))


class SimulatorRace(RuntimeError):
    """Two simulated threads accessed one element, at least one writing, with nothing ordering them."""


# --------------------------------------------------------------------------------------------------------------
# Mode
# --------------------------------------------------------------------------------------------------------------

_mode_override: str | None = None


def parse_mode(text: str, source: str = ENV_VAR) -> str:
    mode = text.strip().lower()
    if mode not in MODES:
        raise ValueError(f"{source}={text!r}: expected one of {', '.join(MODES)}")
    return mode


def current_mode() -> str:
    """The mode of a launch starting now: :func:`detection`'s, else the environment's, else ``all``."""
    if _mode_override is not None:
        return _mode_override
    text = os.environ.get(ENV_VAR, "").strip()
    return parse_mode(text) if text else DEFAULT_MODE


@contextmanager
def detection(mode: str):
    """Launches in this block check for races in ``mode`` (``off``, ``shared`` or ``all``)."""
    global _mode_override
    mode = parse_mode(mode, source="detection")
    before, _mode_override = _mode_override, mode
    try:
        yield mode
    finally:
        _mode_override = before


# --------------------------------------------------------------------------------------------------------------
# Clocks
# --------------------------------------------------------------------------------------------------------------


class _Clock:
    """A vector clock, one entry per thread of the launch, never modified once made: ``arr`` for joins and
    ``lst`` (the same numbers) for the per-access lookups (a list indexes ~4x faster than an array)."""

    __slots__ = ("arr", "lst")

    def __init__(self, arr: np.ndarray):
        self.arr = arr
        self.lst = arr.tolist()


class _SyncVar:
    """What atomics on one element have released: a grid-scope clock and block-scope clocks per block."""

    __slots__ = ("grid", "blocks", "version")

    def __init__(self):
        self.grid: np.ndarray | None = None
        self.blocks: dict = {}
        self.version = 0


def _merge(arr, snapshot):
    """``arr`` (or nothing) joined with a fence snapshot ``(clock, own epoch counter, tid)``."""
    vc, clk, tid = snapshot
    out = vc.arr.copy() if arr is None else np.maximum(arr, vc.arr)
    if out[tid] < clk:
        out[tid] = clk
    return out


class LaunchRaces:
    """Race-detection state of one launch. Thread attributes it maintains (on the simulator's thread objects):
    ``tid`` (index in ``threads``), ``clk`` (own epoch counter), ``epoch`` (``clk * nt + tid``: one int that
    names the thread's current epoch), ``vc`` (a :class:`_Clock`), ``fence``/``fence_block`` (the clock at the
    last threadfence / threadfence_block), ``acquired``/``released`` (per atomic element: what it has joined /
    last released there)."""

    def __init__(self, kernel_name: str, mode: str, threads: list, nthreads: int):
        self.kernel = kernel_name
        self.check_global = mode == "all"
        self.threads = threads  # filled by the launch, in tid order
        self.nt = nthreads
        self._zero = _Clock(np.zeros(nthreads, np.int64))
        self.exited: list = []  # finished threads: they count as arrived at every later grid barrier
        self.syncs: dict = {}

    def init_thread(self, th) -> None:
        th.vc = self._zero
        th.clk = 1
        th.epoch = self.nt + th.tid
        th.fence = th.fence_block = None
        th.acquired = {}
        th.released = {}

    # -- orderings ------------------------------------------------------------------------------------------
    def join(self, participants, exited=()) -> None:
        """A barrier completes: every participant is ordered after everything any participant (or an exited
        thread) did before it.  Called by the last thread to arrive, while the others sleep."""
        clocks = {}
        tids = []
        clks = []
        for group in (participants, exited):
            for th in group:
                clocks[id(th.vc)] = th.vc
                tids.append(th.tid)
                clks.append(th.clk)
        if len(clocks) == 1:
            arr = next(iter(clocks.values())).arr.copy()
        else:
            arr = np.maximum.reduce([c.arr for c in clocks.values()])
        arr[tids] = clks
        vc = _Clock(arr)
        nt = self.nt
        for th in participants:
            th.vc = vc
            th.clk += 1
            th.epoch += nt

    def fence(self, th, block_scope: bool) -> None:
        snapshot = (th.vc, th.clk, th.tid)
        th.fence_block = snapshot
        if not block_scope:
            th.fence = snapshot
        th.clk += 1
        th.epoch += self.nt

    def atomic(self, th, arr: TrackedArray, index) -> None:
        """An atomic by ``th`` on ``arr[index]`` (called under the simulator's atomic lock): acquire what earlier
        atomics there released, then release ``th``'s last fences."""
        key = (id(arr._sh), arr._unit(index if type(index) is not list else tuple(index)))
        block = th.block_linear
        sv = self.syncs.get(key)
        if sv is not None and th.acquired.get(key) != sv.version:
            arrs = [th.vc.arr]
            if sv.grid is not None:
                arrs.append(sv.grid)
            if block in sv.blocks:
                arrs.append(sv.blocks[block])
            if len(arrs) > 1:
                th.vc = _Clock(np.maximum.reduce(arrs))
            th.acquired[key] = sv.version
        fence, fence_block = th.fence, th.fence_block
        if fence_block is None:
            return
        last = th.released.get(key)
        if last is not None and last[0] is fence and last[1] is fence_block:
            return
        if sv is None:
            sv = self.syncs[key] = _SyncVar()
        if fence is not None:
            sv.grid = _merge(sv.grid, fence)
        sv.blocks[block] = _merge(sv.blocks.get(block), fence_block)
        sv.version += 1
        th.acquired[key] = sv.version
        th.released[key] = (fence, fence_block)

    # -- tracked memory -------------------------------------------------------------------------------------
    def shadow(self, nunits: int, shift: int, describe, shared: bool) -> _Shadow:
        return _Shadow(self, nunits, shift, describe, shared)

    def wrap_arguments(self, names, values) -> list:
        """The kernel's arguments with every NumPy array replaced by a :class:`TrackedArray`.  Arguments that
        overlap in memory (views of one buffer) share one shadow, so a race between them is seen."""
        arrays = [(i, a) for i, a in enumerate(values) if isinstance(a, np.ndarray) and a.ndim > 0 and a.size]
        spans = sorted(((*_byte_bounds(a), i, a) for i, a in arrays), key=lambda s: s[0])
        regions: list[list] = []  # [lo, hi, members]
        for lo, hi, i, a in spans:
            if regions and lo < regions[-1][1]:
                regions[-1][1] = max(regions[-1][1], hi)
                regions[-1][2].append((i, a))
            else:
                regions.append([lo, hi, [(i, a)]])
        out = list(values)
        for lo, hi, members in regions:
            g = 0
            for _, a in members:
                g = math.gcd(g, a.itemsize, _address(a) - lo, *a.strides)
            unit = min(8, g & -g)  # a power of two that divides every element's offset and size
            first_i, first = members[0]
            names_here = [names[i] for i, _ in members]
            describe = _GlobalDescription(names[first_i], first, _address(first) - lo, names_here[1:])
            sh = self.shadow(-(-(hi - lo) // unit), unit.bit_length() - 1, describe, shared=False)
            for i, a in members:
                out[i] = TrackedArray(a, sh, _address(a) - lo)
        return out

    def describe_thread(self, tid: int) -> str:
        th = self.threads[tid]
        return f"blockIdx={tuple(th.blockIdx)} threadIdx={tuple(th.threadIdx)}"


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def _byte_bounds(a: np.ndarray) -> tuple[int, int]:
    """[first byte, one past the last byte) of ``a``'s elements (any strides)."""
    lo = hi = _address(a)
    for n, s in zip(a.shape, a.strides):
        if s < 0:
            lo += (n - 1) * s
        else:
            hi += (n - 1) * s
    return lo, hi + a.itemsize


# --------------------------------------------------------------------------------------------------------------
# Shadow memory
# --------------------------------------------------------------------------------------------------------------


class _Sparse(dict):
    """Shadow list of a huge region: only touched units take memory."""

    def __missing__(self, key):
        return -1


class _Shadow:
    """Per tracking unit (an element, or a 4-byte word of dynamic shared memory): ``W`` the epoch of the last
    write (-1: none), ``R`` the reads since: -1, one epoch, or ``{tid: clk}`` when several unordered threads
    read (FastTrack's read-shared state)."""

    __slots__ = ("W", "R", "shift", "describe", "shared", "state", "nt")

    def __init__(self, state: LaunchRaces, nunits: int, shift: int, describe, shared: bool):
        if nunits <= DENSE_SHADOW_LIMIT:
            self.W = [-1] * nunits
            self.R = [-1] * nunits
        else:
            self.W = _Sparse()
            self.R = _Sparse()
        self.shift = shift
        self.describe = describe
        self.shared = shared
        self.state = state
        self.nt = state.nt

    def read(self, x0: int, span: int, th) -> None:
        W, R, nt = self.W, self.R, self.nt
        e = th.epoch
        tid = th.tid
        known = th.vc.lst
        for x in range(x0, x0 + span):
            r = R[x]
            if r == e:
                continue
            if type(r) is dict and r.get(tid) == th.clk:
                continue  # read it before in this epoch (a write since then would have been checked)
            w = W[x]
            if w >= 0 and w != e:
                c, u = divmod(w, nt)
                if u != tid and c > known[u]:
                    self._race(x, th, "read", u, "wrote")
            if r == -1:
                R[x] = e
            elif type(r) is dict:
                r[tid] = th.clk
            else:
                c, u = divmod(r, nt)
                if u == tid or c <= known[u]:
                    R[x] = e  # the earlier read is ordered before this one: one epoch still says it all
                else:
                    R[x] = {u: c, tid: th.clk}

    def write(self, x0: int, span: int, th) -> None:
        W, R, nt = self.W, self.R, self.nt
        e = th.epoch
        tid = th.tid
        known = th.vc.lst
        for x in range(x0, x0 + span):
            w = W[x]
            if w == e:
                continue  # wrote it before in this epoch: other threads' reads since were checked then
            if w >= 0:
                c, u = divmod(w, nt)
                if u != tid and c > known[u]:
                    self._race(x, th, "write", u, "wrote")
            r = R[x]
            if r != -1:
                if type(r) is dict:
                    for u, c in r.items():
                        if u != tid and c > known[u]:
                            self._race(x, th, "write", u, "read")
                else:
                    c, u = divmod(r, nt)
                    if u != tid and c > known[u]:
                        self._race(x, th, "write", u, "read")
                R[x] = -1
            W[x] = e

    def _race(self, x: int, th, doing: str, other: int, did: str):
        state = self.state
        kind = {("read", "wrote"): "read-after-write", ("write", "read"): "write-after-read",
                ("write", "wrote"): "write-after-write"}[doing, did]
        raise SimulatorRace(
            f"{kind} race in kernel {state.kernel} on {self.describe(x << self.shift)}: thread "
            f"{state.describe_thread(th.tid)} {doing}s it{_kernel_lines()}, thread {state.describe_thread(other)} "
            f"{did} it, and no barrier (syncthreads, grid sync, syncwarp) or threadfence + atomic orders the two"
        )


def _kernel_lines() -> str:
    """' at file:line (function) < caller ...' for the innermost frames outside megakernel/testing."""
    frames = []
    f = sys._getframe(2)
    while f is not None and len(frames) < 3:
        path = f.f_code.co_filename
        if os.path.dirname(os.path.abspath(path)) != _THIS_DIR:
            frames.append(f"{os.path.basename(path)}:{f.f_lineno} ({f.f_code.co_name})")
        elif f.f_code.co_name == "run":  # the simulated thread's body: the kernel starts above it
            break
        f = f.f_back
    return (" at " + " < ".join(frames)) if frames else ""


class _GlobalDescription:
    """Names an element of a global region by the first kernel argument that covers it."""

    def __init__(self, name: str, a: np.ndarray, offset: int, aliases: list):
        self.name, self.a, self.offset, self.aliases = name, a, offset, aliases

    def __call__(self, byte: int) -> str:
        alias = f" (the same memory as {', '.join(self.aliases)})" if self.aliases else ""
        return f"global array {_element(self.name, self.a, byte - self.offset)}{alias}"


def _element(name: str, a: np.ndarray, byte: int) -> str:
    """``name[i, j]`` for the element of ``a`` that contains byte offset ``byte`` (from ``a``'s first element)."""
    if a.flags.c_contiguous and 0 <= byte < a.nbytes:
        index = np.unravel_index(byte // a.itemsize, a.shape)
        return f"{name}[{', '.join(str(int(i)) for i in index)}]"
    return f"{name} (byte offset {byte})"


class SharedDescription:
    """Names an element of a static shared array (declared at ``path:line``) or of dynamic shared memory."""

    def __init__(self, a: np.ndarray, path: str | None, line: int | None):
        self.a, self.path, self.line = a, path, line

    def __call__(self, byte: int) -> str:
        if self.path is None:
            return f"{_element('dynamic shared memory', self.a, byte)} (as {self.a.dtype})"
        name = _declared_name(self.path, self.line)
        return f"shared array {_element(name, self.a, byte)} declared at {os.path.basename(self.path)}:{self.line}"


def _declared_name(path: str, line: int) -> str:
    import linecache
    import re

    m = re.match(r"\s*(\w+)\s*=", linecache.getline(path, line))
    return m.group(1) if m else "?"


# --------------------------------------------------------------------------------------------------------------
# Tracked arrays
# --------------------------------------------------------------------------------------------------------------


class TrackedArray:
    """What a kernel sees instead of a NumPy array whose accesses are checked: indexing reads or writes the array
    and records the access in the shadow of its memory region.  Slices and rows are tracked views of the same
    shadow.  ``_b0``: byte offset of the first element in the region; ``_bs``: byte strides; ``_shift``: log2
    of the region's tracking unit; ``_span``: tracking units per element.  Indexing is written out for speed (it
    runs for every element a simulated kernel touches)."""

    __slots__ = ("_a", "_sh", "_b0", "_bs", "_dims", "_span", "_shift", "_s0", "_n0", "_s1", "_nd")

    def __init__(self, a: np.ndarray, sh: _Shadow, b0: int):
        self._a = a
        self._sh = sh
        self._b0 = b0
        self._bs = a.strides
        self._dims = a.shape
        self._nd = a.ndim
        self._s0 = a.strides[0] if a.ndim else 0
        self._n0 = a.shape[0] if a.ndim else 0
        self._s1 = a.strides[1] if a.ndim > 1 else 0
        self._shift = sh.shift
        self._span = max(1, a.itemsize >> sh.shift)

    def _unit(self, idx):
        if type(idx) is tuple:
            b = self._b0
            for i, s, n in zip(idx, self._bs, self._dims):
                if i < 0:
                    i += n
                b += i * s
        else:
            if idx < 0:
                idx += self._n0
            b = self._b0 + idx * self._s0
        return b >> self._shift

    def _element_unit(self, idx):
        """The tracking unit of ``idx`` if it names one element, else None."""
        if type(idx) is tuple:
            if len(idx) != self._nd:
                return None
            for i in idx:
                if type(i) is not int and type(i) not in _NP_INTS:
                    return None
        elif self._nd != 1 or (type(idx) is not int and type(idx) not in _NP_INTS):
            return None
        return self._unit(idx)

    def _units(self, idx):
        """Every tracking unit that ``self._a[idx]`` covers (slices, fancy indices)."""
        byte = np.full(self._dims, self._b0, dtype=np.int64)
        for axis, (n, s) in enumerate(zip(self._dims, self._bs)):
            shape = [1] * len(self._dims)
            shape[axis] = n
            byte += (np.arange(n, dtype=np.int64) * s).reshape(shape)
        return (np.asarray(byte[idx]).ravel() >> self._shift).tolist()

    def __getitem__(self, idx):
        v = self._a[idx]
        if type(v) is np.ndarray:
            return self._view(v)
        if type(idx) is not tuple:
            if idx < 0:
                idx += self._n0
            b = self._b0 + idx * self._s0
        elif len(idx) == 2:
            i, j = idx
            if i < 0:
                i += self._n0
            if j < 0:
                j += self._dims[1]
            b = self._b0 + i * self._s0 + j * self._s1
        else:
            b = self._b0
            for i, s, n in zip(idx, self._bs, self._dims):
                if i < 0:
                    i += n
                b += i * s
        x = b >> self._shift
        th = _tls.thread
        sh = self._sh
        R = sh.R
        r = R[x]
        e = th.epoch
        if r == e:
            return v  # read before in this epoch
        if r == -1 and self._span == 1:
            w = sh.W[x]
            if w == -1 or w == e:  # first read, nothing or only this epoch wrote it: nothing to check
                R[x] = e
                return v
        sh.read(x, self._span, th)
        return v

    def __setitem__(self, idx, value):
        th = _tls.thread
        sh = self._sh
        if sh.shared and th.maybe_yield is not None:
            th.maybe_yield()
        if type(idx) is int and self._nd == 1:
            if idx < 0:
                idx += self._n0
            x = (self._b0 + idx * self._s0) >> self._shift
        else:
            x = self._element_unit(idx)
        if x is None:
            for x in self._units(idx):
                sh.write(x, self._span, th)
        elif sh.W[x] != th.epoch or self._span != 1:
            sh.write(x, self._span, th)
        self._a[idx] = value

    def read_run(self, start: int, count: int) -> None:
        """Record reads of elements ``start .. start+count-1`` of a 1-D array (a vector load)."""
        th = _tls.thread
        sh = self._sh
        R, W, e, span, shift, step = sh.R, sh.W, th.epoch, self._span, self._shift, self._s0
        b = self._b0 + start * step
        for _ in range(count):
            x = b >> shift
            r = R[x]
            if r != e:
                if r == -1 and span == 1 and (W[x] == -1 or W[x] == e):
                    R[x] = e
                else:
                    sh.read(x, span, th)
            b += step

    def _view(self, v: np.ndarray) -> TrackedArray:
        return TrackedArray(v, self._sh, self._b0 + _address(v) - _address(self._a))

    def view(self, dtype):
        return self._view(self._a.view(dtype))

    def reshape(self, *shape):
        return self._view(self._a.reshape(*shape))

    @property
    def shape(self):
        from numba.cuda.simulator.cudadrv.devicearray import FakeShape

        return FakeShape(self._a.shape)

    def __len__(self):
        return len(self._a)

    # The array's read-only properties, spelled out: a __getattr__ fallback would make every attribute access of
    # the indexing code above ~3x slower (CPython's generic attribute path).
    size = property(lambda self: self._a.size)
    ndim = property(lambda self: self._a.ndim)
    dtype = property(lambda self: self._a.dtype)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    flags = property(lambda self: self._a.flags)

    def __repr__(self):
        return f"TrackedArray({self._a!r})"


def plain(arr):
    """The NumPy array behind a tracked array (anything else unchanged)."""
    return arr._a if type(arr) is TrackedArray else arr
