"""An honest CUDA simulator: fixes to Numba's CPU simulator so kernel tests mean something.

Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) runs a ``@cuda.jit`` kernel as plain Python,
one OS thread per CUDA thread.  That is what lets this tutorial test its kernels on a laptop,
but the stock simulator has gaps that make some tests pass for the wrong reason:

* it runs the blocks of a launch **one after another**, so ``cuda.cg.this_grid().sync()``
  only synchronises one block: a kernel whose blocks exchange data through a grid barrier
  silently computes garbage, with no error;
* it has no warp primitives (``cuda.shfl_down_sync`` and friends are missing);
* ``numba.cuda.libdevice.*`` functions return ``None``;
* ``max_cooperative_grid_blocks`` always says 1.

``install()`` patches the simulator so that:

* all blocks of a launch run **concurrently**, so a grid barrier is a real barrier over every
  thread of every block (a reusable barrier with a generation counter, safe for any number of
  successive syncs);
* warp primitives exist with GPU semantics over 32-lane warps made of consecutive linear thread
  ids of a block: ``shfl_sync``, ``shfl_up_sync``, ``shfl_down_sync``, ``shfl_xor_sync``,
  ``syncwarp``, ``all_sync``, ``any_sync``, ``eq_sync``, ``ballot_sync``, ``match_any_sync``,
  ``match_all_sync``, ``activemask``, ``lanemask_lt``.  Each is a per-warp exchange: every
  lane posts its value, the warp meets at a barrier, every lane reads what it needs;
* an exception in any simulated thread aborts every barrier (no deadlock) and is re-raised in
  the launching thread, same exception type, with the thread and block that raised it;
* a launch where every live thread waits on a barrier that can never complete (divergent
  ``syncthreads``, a warp op only some lanes reach, a block that returned before a grid sync)
  fails with ``SimulatorDeadlock`` instead of hanging;
* spin-waits between blocks work (an atomic counter polled until the other blocks arrive):
  the blocks really run at the same time, and atomics, fences and ``nanosleep`` yield the
  GIL so that a spinning thread does not starve the one it waits for;
* a launch still running after ``LAUNCH_TIMEOUT`` seconds (an endless loop) is aborted;
* a launch of more than ``MAX_SIM_THREADS`` threads is refused: each simulated thread is a
  Python thread, so big launches take minutes.  Tests must use tiny configurations;
* ``max_cooperative_grid_blocks`` returns how many blocks fit under ``MAX_SIM_THREADS``;
* shared and local arrays start filled with 0xFF bytes (NaN for floats, -1 for ints) instead of
  whatever ``np.empty`` returns, so reading memory no thread wrote shows up in results; a static
  shared array is fresh poison at every execution of its declaration (each call of a device
  function that declares one), not one array per source line whose old values hide a missing write;
* data races are reported: ``megakernel.testing.races`` checks every access to shared memory and
  to the kernel's array arguments against happens-before (barriers, syncwarp, threadfence +
  atomics) and raises ``SimulatorRace`` naming the kernel, array, index, both threads and the
  line, whatever order the threads ran in (``MEGAKERNEL_SIM_RACES=off|shared|all``, default all);
* threads start in a schedule's order (``megakernel.testing.schedules``: forward, reverse, or a
  seeded random order with random GIL yields; ``MEGAKERNEL_SIM_SCHEDULE``), named in the message
  of every failure a launch raises so it can be replayed;
* common float32 ``libdevice`` functions get Python fallbacks (see ``LIBDEVICE_FALLBACKS``);
* CPU ``torch.Tensor`` kernel arguments are passed as NumPy views (results land in the tensor),
  so host code can launch the same way it does on the GPU with CUDA tensors; NumPy arrays are not
  copied either (the stock simulator copies each one), so arguments that overlap in memory
  overlap in the kernel, as device arrays do on the GPU;
* a kernel whose name carries ``_consumers_<T>`` (``megakernel.persistent.warp_roles``: a producer warp beside
  ``T`` consumer threads) sees a block of ``T`` threads: ``syncthreads`` waits for those ``T`` alone and refuses
  a producer thread, ``blockDim`` is ``T``, and ``warp_roles.sync_all`` is the barrier of every thread;
* one lock serialises all atomics (the stock simulator has one per kind of atomic);
* ``install()`` refuses numba-cuda releases outside ``SUPPORTED_NUMBA_CUDA``: the layer replaces
  methods of the simulator's private classes;
* ``cuda.jit`` accepts (and ignores) GPU-only code generation options such as ``lineinfo``
  and ``launch_bounds``, so one kernel source serves both targets.

Limits that remain (write kernels so they do not matter):

* warp primitives need **every lane of the warp** to take part (a full mask, no lane returned
  early).  Sub-warp masks raise ``NotImplementedError``; a lane that has exited raises.
* call warp primitives as ``cuda.shfl_xor_sync(...)``: the simulator swaps the module object
  named ``cuda`` in the kernel's globals, so ``from numba.cuda import shfl_xor_sync`` cannot
  work.  Likewise use ``libdevice.expf(x)`` after ``from numba.cuda import libdevice``.
* spin-wait on atomics (``cuda.atomic.add(flag, 0, 0)``, ``cuda.atomic.cas``), not on plain
  loads: on the GPU the compiler may hoist a plain load out of the loop, and here a plain-load
  spin keeps the GIL for a whole switch interval, so the threads it waits for crawl.
* ``activemask()`` reports the lanes that exist and have not exited; the simulator cannot see
  divergence.
* libdevice functions without a fallback still return ``None``: use ``math.*`` for those.
* ``cuda.external_stream`` raises in the simulator (there are no streams); launch on the
  default stream when ``numba.config.ENABLE_CUDASIM`` is set.
* ``cuda.grid``/``threadIdx`` give Python ints, and array elements are NumPy scalars: integer
  overflow and signedness can differ from the GPU's 32/64-bit arithmetic.
* cost: ~0.1-0.3 ms to start each simulated thread, ~20-30 us per thread per barrier or
  warp exchange; a 64x64 warp-per-row matvec on 2x128 threads takes ~0.15 s.  Race detection
  costs ~0.4 us per tracked access (about what the stock array wrapper it replaces cost) and an
  O(threads) vector-clock join per barrier.
* what the race detector cannot see: see ``megakernel.testing.races``.
* one launch at a time; Python floats stay float64 (``math.exp(x)`` returns a Python float in the
  simulator, float32 on the GPU), so float64 promotion is caught by ``megakernel.testing.ptx_check``,
  not here.

Usage: importing ``megakernel`` calls ``install()`` when the simulator is enabled.
``stock_simulator()`` temporarily restores the stock behaviour (the tests use it to show the
difference).  ``install()`` may only be called with ``NUMBA_ENABLE_CUDASIM=1``.
"""

from __future__ import annotations

import ctypes
import math
import re
import struct
import sys
import threading
import time
from contextlib import ExitStack, contextmanager

import numpy as np

from megakernel.testing import races as racemod
from megakernel.testing import schedules
from megakernel.testing.races import SimulatorRace  # noqa: F401  (re-exported)

# Largest launch we agree to simulate (one Python thread per CUDA thread; ~0.1 ms each to
# start, more to run).  Raise it locally if you must, but CI configs should stay tiny.
MAX_SIM_THREADS = 8192
# GIL switch interval used while a launch runs (restored afterwards).  Measured on 2 cores:
# the stock simulator's block manager busy-polls, so a tiny interval (5e-5) helped it; with
# the blocking barriers below, a tiny interval only adds forced thread switches and made
# barrier-heavy kernels 3-6x slower, while 5-10 ms was fastest.  Setting it per launch also
# undoes a small global value a notebook may have set for the stock simulator.
SWITCH_INTERVAL = 5e-3
# Deadlock watchdog: how often the launching thread looks at the barriers, and for how many
# consecutive looks everything must be stuck before the launch is declared deadlocked.
WATCHDOG_PERIOD = 0.25
WATCHDOG_STRIKES = 4
# A launch still running after this many seconds is aborted (a spin-wait that never ends
# hangs on the GPU too, but a test suite should fail instead).  None: no limit.
LAUNCH_TIMEOUT: float | None = 600.0
# After an error, how long the other threads get to notice before they are interrupted.
ABORT_GRACE = 2.0

WARP_SIZE = 32
FULL_MASK = 0xFFFFFFFF


class SimulatorLimitError(RuntimeError):
    """The launch is too big (or invalid) for the simulator."""


class SimulatorDeadlock(RuntimeError):
    """Every live simulated thread waits on a barrier that can never complete."""


class _Aborted(Exception):
    """Raised in simulated threads woken up because another thread failed."""


# --------------------------------------------------------------------------------------
# Barriers
# --------------------------------------------------------------------------------------


class _Barrier:
    """A reusable barrier whose number of parties can shrink as threads exit.

    ``threading.Barrier`` cannot shrink, but ``syncthreads`` on a GPU (and in the stock
    simulator) only waits for threads that have not exited.  Reuse is handled with a
    generation counter: a fast thread that re-enters the barrier counts towards the next
    generation only.  Each simulated thread sleeps on its own pre-acquired lock, which the
    last arriving thread releases: cheaper than ``threading.Condition``, whose woken waiters
    all queue again for the condition's lock.
    """

    __slots__ = (
        "lock", "parties", "count", "gen", "error", "name", "waiters", "arrived", "on_release"
    )

    def __init__(self, parties: int, name: str, on_release=None):
        self.lock = threading.Lock()
        self.parties = parties
        self.count = 0
        self.gen = 0
        self.error: BaseException | None = None
        self.name = name
        self.waiters: list = []
        # Race detection: on_release(threads that arrived) runs when a generation completes,
        # before anyone leaves (it joins their vector clocks).
        self.arrived: list = []
        self.on_release = on_release

    def wait(self, thread) -> None:
        lock = self.lock
        lock.acquire()
        if self.error is not None:
            lock.release()
            raise _Aborted(str(self.error))
        gen = self.gen
        self.count += 1
        if self.on_release is not None:
            self.arrived.append(thread)
        if self.count >= self.parties:
            self._release_locked()  # releases the lock
        else:
            wake = thread.wake
            self.waiters.append(wake)
            thread.waiting_on = (self, gen)
            lock.release()
            wake.acquire()  # released by the last arrival, or by abort()
            thread.waiting_on = None
            if self.gen == gen:
                raise _Aborted(str(self.error))
        if thread.maybe_yield is not None:
            thread.maybe_yield()

    def _release_locked(self) -> None:
        if self.on_release is not None:
            self.on_release(self.arrived)
            self.arrived = []
        waiters = self.waiters
        self.waiters = []
        self.count = 0
        self.gen += 1
        self.lock.release()
        for wake in waiters:
            wake.release()

    def leave(self) -> None:
        """A party exited for good: stop waiting for it."""
        self.lock.acquire()
        self.parties -= 1
        if self.count and self.count >= self.parties:
            self._release_locked()
        else:
            self.lock.release()

    def abort(self, error: BaseException) -> None:
        with self.lock:
            if self.error is None:
                self.error = error
            waiters = self.waiters
            self.waiters = []
        for wake in waiters:
            wake.release()

    def stuck(self, gen: int) -> bool:
        return self.gen == gen and self.error is None


class _GridBarrier(_Barrier):
    """The barrier behind ``this_grid().sync()``: all threads of all blocks.

    On a GPU a block that has finished never arrives at a grid barrier again, so the other
    blocks hang forever.  Here that is an immediate error instead.
    """

    __slots__ = ("dead_block",)

    def __init__(self, parties: int, name: str, on_release=None):
        super().__init__(parties, name, on_release)
        self.dead_block = None

    def _dead_error(self):
        return SimulatorDeadlock(
            f"block {self.dead_block} finished while other blocks use this_grid().sync(): "
            "every block must reach every grid barrier (on the GPU this hangs)"
        )

    def wait(self, thread) -> None:
        if self.dead_block is not None:
            raise self._dead_error()
        super().wait(thread)

    def leave_thread(self, block_finished, block_idx) -> BaseException | None:
        """Returns an error if threads now wait for a block that will never come."""
        self.lock.acquire()
        self.parties -= 1
        if block_finished:
            self.dead_block = block_idx
            if self.count:
                self.lock.release()
                return self._dead_error()
        if self.count and self.count >= self.parties:
            self._release_locked()
        else:
            self.lock.release()
        return None


# --------------------------------------------------------------------------------------
# Warps, blocks, threads
# --------------------------------------------------------------------------------------

# Value types a shuffle accepts on the GPU (numba types i4, i8, f4, f8).
_SHFL_TYPES = (int, float, np.int32, np.int64, np.float32, np.float64)


def _as_i32(bits: int) -> np.int32:
    bits &= FULL_MASK
    return np.int32(bits - (1 << 32) if bits >= 1 << 31 else bits)


class _Warp:
    """Exchange area of one warp: every lane posts a value, meets the others, reads.

    Two buffers alternate between successive warp operations, so a single barrier per
    operation suffices: a lane can only overwrite buffer k again after every lane has passed
    the next operation's barrier, i.e. after everybody has finished reading buffer k.
    """

    __slots__ = ("index", "n", "full", "barrier", "vals", "kinds", "exited", "block_idx")

    def __init__(self, index: int, nlanes: int, block_idx, races=None):
        self.index = index
        self.n = nlanes
        self.full = (1 << nlanes) - 1
        on_release = None
        if races is not None:
            def on_release(lanes):  # only syncwarp orders memory; shuffles and votes do not
                if lanes[-1].warp_kind == "syncwarp":
                    races.join(lanes)
        self.barrier = _Barrier(nlanes, f"warp {index} of block {block_idx}", on_release)
        self.vals = ([None] * WARP_SIZE, [None] * WARP_SIZE)
        self.kinds = ([None] * WARP_SIZE, [None] * WARP_SIZE)
        self.exited = 0
        self.block_idx = block_idx

    def lane_exited(self, lane: int) -> BaseException | None:
        """Returns an error if other lanes now wait for this one in a warp primitive."""
        with self.barrier.lock:
            self.exited |= 1 << lane
            waiting = self.barrier.count
        if waiting:
            return RuntimeError(
                f"lane {lane} of warp {self.index} in block {self.block_idx} exited while "
                "other lanes wait in a warp primitive (partial-warp calls are not supported)"
            )
        return None


class _BlockShared:
    """``cuda.shared`` of one block (the stock simulator shares one across all blocks).

    Like the stock simulator, a static shared array is identified by the source line that
    declares it, so declare each shared array on its own line.  Unlike it, every execution of a
    declaration (the n-th call of a device function that declares one, by each thread) gets a
    fresh poisoned array, so a read of memory this call did not write shows up as NaN instead of
    a value left by an earlier call.  On the GPU it is the same memory every time: with race
    detection on, all calls of one declaration share one shadow, so a race between a late reader
    of call n and an early writer of call n+1 is still reported.
    """

    def __init__(self, dynshared_size: int, races=None):
        self._instances: dict = {}
        self._shadows: dict = {}
        self._races = races
        self._dynshared = np.full(dynshared_size, 0xFF, dtype=np.uint8)
        self._dyn_shadow = None

    def array(self, shape, dtype, alignment=None):
        dtype = _np_dtype(dtype)
        races = self._races
        if shape == 0:  # dynamic shared memory: every such array aliases one buffer
            count = self._dynshared.size // dtype.itemsize
            res = np.frombuffer(self._dynshared.data, dtype=dtype, count=count)
            if races is None:
                return res
            if self._dyn_shadow is None:
                # one shadow per block, per 4-byte word (2 or 1 if the buffer size demands it)
                unit = min(4, self._dynshared.size & -self._dynshared.size or 4)
                shadow = races.shadow(-(-self._dynshared.size // unit), unit.bit_length() - 1,
                                      racemod.SharedDescription(res, None, None), shared=True)
                with _SHARED_LOCK:
                    if self._dyn_shadow is None:
                        self._dyn_shadow = shadow
            return racemod.TrackedArray(res, self._dyn_shadow, 0)
        frame = sys._getframe(1)
        key = (frame.f_code.co_filename, frame.f_lineno)
        calls = threading.current_thread().shared_calls
        n = calls.get(key, 0)
        calls[key] = n + 1
        res = self._instances.get((key, n))
        if res is None:
            fresh = _poisoned(shape, dtype)
            if races is not None:
                shadow = self._shadows.get(key)
                if shadow is None:
                    shadow = self._shadows.setdefault(key, races.shadow(
                        fresh.size, fresh.itemsize.bit_length() - 1,
                        racemod.SharedDescription(fresh, *key), shared=True))
                fresh = racemod.TrackedArray(fresh, shadow, 0)
            # setdefault is atomic, so all threads of the block get the same array.
            res = self._instances.setdefault((key, n), fresh)
        return res


_SHARED_LOCK = threading.Lock()


class _Local:
    def array(self, shape, dtype, alignment=None):
        return _poisoned(shape, _np_dtype(dtype))


def _np_dtype(dtype):
    from numba.cuda import types
    from numba.cuda.np import numpy_support

    if isinstance(dtype, types.Type):
        return numpy_support.as_dtype(dtype)
    return np.dtype(dtype)


def _poisoned(shape, dtype):
    """Uninitialised memory made visible: 0xFF bytes are NaN as floats and -1 as ints."""
    a = np.empty(shape, dtype)
    a.view(np.uint8).fill(0xFF)
    return a


class _Block:
    __slots__ = ("idx", "linear", "barrier", "barrier_all", "consumers", "shared", "state", "live", "warps",
                 "exited")

    def __init__(self, idx, linear: int, nthreads: int, dynshared_size: int, races=None,
                 consumers: int | None = None):
        self.idx = idx
        self.linear = linear
        self.exited: list = []  # finished threads: their last clocks join every later syncthreads
        on_release = None
        if races is not None:
            def on_release(arrived):
                races.join(arrived, self.exited)
        # a kernel with a producer warp (``megakernel.persistent.warp_roles``): syncthreads is the first
        # ``consumers`` threads' barrier; ``barrier_all`` (``sync_all``) is every thread's
        self.consumers = nthreads if consumers is None else consumers
        self.barrier = _Barrier(self.consumers, f"syncthreads of block {idx}", on_release)
        self.barrier_all = _Barrier(nthreads, f"sync_all of block {idx}", on_release)
        self.shared = _BlockShared(dynshared_size, races)
        # syncthreads_count/and/or votes: 0/1 per thread, -1 once a thread has exited
        self.state = np.zeros(nthreads, dtype=np.int8)
        self.live = nthreads
        self.warps = [
            _Warp(w, min(WARP_SIZE, nthreads - w * WARP_SIZE), idx, races)
            for w in range((nthreads + WARP_SIZE - 1) // WARP_SIZE)
        ]


class _SimThread(threading.Thread):
    """One simulated CUDA thread.  The attribute and method names it shares with the stock
    simulator's ``BlockThread`` (threadIdx, blockIdx, thread_id, syncthreads...) are what the
    stock ``FakeCUDAModule`` calls through ``threading.current_thread()``."""

    def __init__(self, launch, block, linear_id, thread_idx, block_idx, target, args):
        super().__init__(daemon=True, name=f"cudasim{tuple(block_idx)}{tuple(thread_idx)}")
        self.launch = launch
        self.block = block
        self.block_linear = block.linear
        self.thread_id = linear_id
        self.tid = len(launch.threads)  # index in the launch (block-major): race detector's id
        self.threadIdx = thread_idx
        self.blockIdx = block_idx
        self.lane = linear_id % WARP_SIZE
        self.warp = block.warps[linear_id // WARP_SIZE]
        self.warp_gen = 0
        self.warp_kind = None
        self.waiting_on = None
        self.shared_calls: dict = {}  # declaration -> how many times this thread executed it
        self.maybe_yield = launch.schedule.yielder(self.tid)
        if launch.races is not None:
            launch.races.init_thread(self)
        self.wake = threading.Lock()  # held; released to wake this thread from a barrier
        self.wake.acquire()
        self._target_fn = target
        self._target_args = args

    def run(self):
        launch = self.launch
        racemod._tls.thread = self
        try:
            # GPUs do not trap on overflow/NaN; debug=True keeps the stock "divide raises".
            np.seterr(all="ignore", divide="raise" if launch.debug else "ignore")
            self._target_fn(*self._target_args)
        except BaseException as exc:  # noqa: BLE001 - everything must reach the launcher
            launch.fail(self, exc)
        finally:
            launch.thread_done(self)

    # -- block level ------------------------------------------------------------------
    def syncthreads(self):
        if self.thread_id >= self.block.consumers:
            raise RuntimeError(f"thread {self.thread_id} of a producer warp called syncthreads (the consumers' "
                               f"barrier: threads 0-{self.block.consumers - 1})")
        self.block.barrier.wait(self)

    def _syncthreads_reduce(self, value, op):
        state = self.block.state
        state[self.thread_id] = 1 if value else 0
        self.syncthreads()
        res = op(state)
        self.syncthreads()
        return res

    def syncthreads_count(self, value):
        return self._syncthreads_reduce(value, lambda s: int(np.count_nonzero(s == 1)))

    def syncthreads_and(self, value):
        return self._syncthreads_reduce(value, lambda s: 0 if np.any(s == 0) else 1)

    def syncthreads_or(self, value):
        return self._syncthreads_reduce(value, lambda s: 1 if np.any(s == 1) else 0)

    # -- warp level -------------------------------------------------------------------
    def warp_exchange(self, kind: str, mask, value):
        """Post ``value``, wait for the whole warp, return the lane -> value list."""
        warp = self.warp
        mask = int(mask) & FULL_MASK
        if mask & warp.full != warp.full:
            raise NotImplementedError(
                f"{kind}: mask {mask:#010x} leaves out lanes of warp {warp.index} "
                f"(lanes {warp.full:#010x} exist); the simulator only supports warp "
                "primitives that the whole warp executes together with a full mask"
            )
        if warp.exited:
            raise RuntimeError(
                f"{kind} in warp {warp.index} of block {warp.block_idx} after lanes "
                f"{warp.exited:#010x} exited; every lane of the warp must take part"
            )
        gen = self.warp_gen
        self.warp_gen = gen ^ 1
        vals = warp.vals[gen]
        kinds = warp.kinds[gen]
        vals[self.lane] = value
        kinds[self.lane] = kind
        self.warp_kind = kind
        warp.barrier.wait(self)
        if self.lane == 0 and kinds.count(kind) != warp.n:
            seen = sorted({k for k in kinds[: warp.n]})
            raise RuntimeError(
                f"lanes of warp {warp.index} in block {warp.block_idx} met in different warp "
                f"primitives {seen}: divergent warp code is not supported by the simulator"
            )
        return vals

    def read_lane(self, kind, vals, src):
        if src >= self.warp.n:
            raise RuntimeError(
                f"{kind}: lane {self.lane} reads lane {src}, which does not exist in warp "
                f"{self.warp.index} (block size not a multiple of 32); on the GPU the value "
                "is undefined"
            )
        return vals[src]


def _sim_thread(what):
    th = threading.current_thread()
    if not isinstance(th, _SimThread):
        raise RuntimeError(
            f"{what} only works inside a kernel launched with megakernel.testing.simulator installed"
        )
    return th


def warp_gather(kind: str, value, mask=FULL_MASK) -> list:
    """Every lane's ``value`` (lane order), exchanged like a shuffle: the building block of
    ``megakernel.device``'s simulated warp reductions (one exchange instead of five)."""
    th = _sim_thread(kind)
    return th.warp_exchange(kind, mask, value)[: th.warp.n]


def lane_id() -> int:
    return _sim_thread("lane_id").lane


# --------------------------------------------------------------------------------------
# The cuda module seen by kernels during a launch
# --------------------------------------------------------------------------------------


def _check_shfl_value(kind, value):
    if type(value) not in _SHFL_TYPES:
        raise TypeError(
            f"{kind}: the GPU only shuffles int32, int64, float32 and float64 values, got "
            f"{type(value).__name__}; cast first (e.g. int32(x))"
        )


class _GridGroup:
    __slots__ = ("_barrier",)

    def __init__(self, barrier):
        self._barrier = barrier

    def sync(self):
        self._barrier.wait(threading.current_thread())


class _Cg:
    def __init__(self, barrier):
        self._group = _GridGroup(barrier)

    def this_grid(self):
        return self._group


_ATOMIC_OPS = (
    "add", "sub", "and_", "or_", "xor", "inc", "dec", "exch", "max", "min",
    "nanmax", "nanmin", "compare_and_swap", "cas",
)
_ATOMIC_LOCK = threading.Lock()


def _make_module_class():
    """Built lazily: importing this module must not import numba.cuda."""
    from numba.cuda.simulator.kernelapi import FakeCUDAAtomic, FakeCUDAModule

    def _atomic(name):
        op = getattr(FakeCUDAAtomic, name)

        def atomic(self, array, *args):
            if type(array) is racemod.TrackedArray:
                # unwrapped: not a plain access; the race detector sees a release/acquire
                index = (0,) * array._a.ndim if name == "compare_and_swap" else args[0]
                th = threading.current_thread()
                with _ATOMIC_LOCK:
                    res = op(self, array._a, *args)
                    self.races.atomic(th, array, index)
            else:
                with _ATOMIC_LOCK:
                    res = op(self, array, *args)
            time.sleep(0)  # let other threads run: atomics are what spin-waits poll
            return res

        atomic.__name__ = name
        return atomic

    # One lock for every kind of atomic (the stock simulator has one per kind, so an atomic max and
    # an atomic exchange on one element could interleave).  Atomics yield the GIL: a thread spinning
    # on a flag (a hand-made inter-block barrier) would otherwise keep it for a whole switch
    # interval per turn while the thread it waits for cannot run.
    TrackingAtomic = type(
        "TrackingAtomic",
        (FakeCUDAAtomic,),
        {name: _atomic(name) for name in _ATOMIC_OPS},
    )

    class HonestCUDAModule(FakeCUDAModule):
        """The object that replaces ``cuda`` inside a kernel during a launch."""

        def __init__(self, launch, grid_dim, block_dim, dynshared_size):
            super().__init__(grid_dim, block_dim, 0)
            self._cg = _Cg(launch.grid_barrier)
            self._local = _Local()
            self._atomic = TrackingAtomic()
            self._atomic.races = self._races = launch.races

        # Fences order memory on the GPU; here memory is always coherent, but the race detector
        # needs them (a fence then an atomic is a release).  They often sit in spin-wait loops,
        # so they yield the GIL like atomics do.
        def threadfence(self):
            if self._races is not None:
                self._races.fence(threading.current_thread(), block_scope=False)
            time.sleep(0)

        def threadfence_block(self):
            if self._races is not None:
                self._races.fence(threading.current_thread(), block_scope=True)
            time.sleep(0)

        threadfence_system = threadfence

        def nanosleep(self, ns):
            time.sleep(0)

        @property
        def shared(self):
            return threading.current_thread().block.shared

        # shuffles: width 32, as numba passes c = 0x1f (idx/down/xor) or 0 (up)
        def shfl_sync(self, mask, value, src_lane):
            _check_shfl_value("shfl_sync", value)
            th = threading.current_thread()
            vals = th.warp_exchange("shfl_sync", mask, value)
            return th.read_lane("shfl_sync", vals, int(src_lane) & 31)

        def shfl_up_sync(self, mask, value, delta):
            _check_shfl_value("shfl_up_sync", value)
            th = threading.current_thread()
            vals = th.warp_exchange("shfl_up_sync", mask, value)
            src = th.lane - (int(delta) & FULL_MASK)
            return value if src < 0 else th.read_lane("shfl_up_sync", vals, src)

        def shfl_down_sync(self, mask, value, delta):
            _check_shfl_value("shfl_down_sync", value)
            th = threading.current_thread()
            vals = th.warp_exchange("shfl_down_sync", mask, value)
            src = th.lane + (int(delta) & FULL_MASK)
            return value if src >= WARP_SIZE else th.read_lane("shfl_down_sync", vals, src)

        def shfl_xor_sync(self, mask, value, lane_mask):
            _check_shfl_value("shfl_xor_sync", value)
            th = threading.current_thread()
            vals = th.warp_exchange("shfl_xor_sync", mask, value)
            src = th.lane ^ (int(lane_mask) & FULL_MASK)
            return value if src >= WARP_SIZE else th.read_lane("shfl_xor_sync", vals, src)

        def syncwarp(self, mask=FULL_MASK):
            threading.current_thread().warp_exchange("syncwarp", mask, None)

        def _votes(self, kind, mask, predicate):
            th = threading.current_thread()
            vals = th.warp_exchange(kind, mask, bool(predicate))
            return vals[: th.warp.n]

        def all_sync(self, mask, predicate):
            return all(self._votes("all_sync", mask, predicate))

        def any_sync(self, mask, predicate):
            return any(self._votes("any_sync", mask, predicate))

        def eq_sync(self, mask, predicate):
            votes = self._votes("eq_sync", mask, predicate)
            return all(votes) or not any(votes)

        def ballot_sync(self, mask, predicate):
            votes = self._votes("ballot_sync", mask, predicate)
            return _as_i32(sum(1 << i for i, v in enumerate(votes) if v))  # int32, as numba

        def match_any_sync(self, mask, value):
            th = threading.current_thread()
            vals = th.warp_exchange("match_any_sync", mask, value)[: th.warp.n]
            return _as_i32(sum(1 << i for i, v in enumerate(vals) if v == value))

        def match_all_sync(self, mask, value):
            th = threading.current_thread()
            vals = th.warp_exchange("match_all_sync", mask, value)[: th.warp.n]
            same = all(v == value for v in vals)
            return (_as_i32(th.warp.full) if same else np.int32(0)), same

        def activemask(self):
            warp = threading.current_thread().warp
            return np.uint32(warp.full & ~warp.exited)

        def lanemask_lt(self):
            return np.uint32((1 << threading.current_thread().lane) - 1)

    return HonestCUDAModule


# --------------------------------------------------------------------------------------
# Launch
# --------------------------------------------------------------------------------------

_active_launch: _Launch | None = None


class _Launch:
    def __init__(self, kernel, grid_dim, block_dim, dynshared_size):
        self.kernel = kernel
        self.name = getattr(kernel.fn, "__qualname__", repr(kernel.fn))
        self.grid_dim = grid_dim
        self.block_dim = block_dim
        self.debug = bool(getattr(kernel, "_debug", False))
        self.block_threads = block_dim[0] * block_dim[1] * block_dim[2]
        self.nthreads = self.block_threads * grid_dim[0] * grid_dim[1] * grid_dim[2]
        self._check_config()
        self.schedule = schedules.current()
        if self.schedule not in schedules.launched:
            schedules.launched.append(self.schedule)
        self.threads: list[_SimThread] = []
        mode = racemod.current_mode()
        self.races = (
            None if mode == "off"
            else racemod.LaunchRaces(self.name, mode, self.threads, self.nthreads)
        )
        on_release = None
        if self.races is not None:
            def on_release(arrived):
                self.races.join(arrived, self.races.exited)
        self.grid_barrier = _GridBarrier(self.nthreads, "this_grid().sync()", on_release)
        # a kernel marked with its consumer threads (``warp_roles.consumer_name``): its code sees a block of that
        # many threads (blockDim, syncthreads); the extra warp is its producer
        from megakernel.persistent.warp_roles import consumers_of

        self.consumers = consumers_of(self.name)
        if self.consumers is not None and not (0 < self.consumers < self.block_threads and block_dim[1] == 1
                                               and block_dim[2] == 1):
            raise SimulatorLimitError(f"{self.name}: {self.consumers} consumer threads in a block of "
                                      f"{tuple(block_dim)} (a 1-D block with more threads is needed)")
        seen = block_dim if self.consumers is None else (self.consumers, 1, 1)
        self.module = _module_class()(self, grid_dim, seen, dynshared_size)
        self.dynshared_size = dynshared_size
        self.lock = threading.Lock()
        self.error: tuple | None = None  # (thread, exception) of the first failure
        self.blocks: list[_Block] = []
        self.live = 0
        self.done = threading.Event()
        self.swapped: set[int] = set()
        self.exits = ExitStack()

    def _check_config(self):
        config = f"grid {tuple(self.grid_dim)} x block {tuple(self.block_dim)}"
        if self.nthreads == 0:
            raise SimulatorLimitError(
                f"{self.name}: {config} launches no thread (the GPU rejects this configuration)"
            )
        if self.block_threads > 1024:
            raise SimulatorLimitError(
                f"{self.name}: a CUDA block has at most 1024 threads, got block "
                f"{tuple(self.block_dim)}"
            )
        if self.nthreads > MAX_SIM_THREADS:
            raise SimulatorLimitError(
                f"{self.name}: launch of {config} = {self.nthreads} threads is more than the "
                f"simulator runs ({MAX_SIM_THREADS}, one Python thread per CUDA thread); pick a "
                "tiny config for simulator tests (a few blocks of 32-128 threads, hidden size ~64)"
            )

    # -- globals swapping for device functions ----------------------------------------
    def swap_in(self, fn):
        from numba.cuda.simulator.kernelapi import swapped_cuda_module

        with self.lock:
            gid = id(fn.__globals__)
            if gid not in self.swapped:
                self.exits.enter_context(swapped_cuda_module(fn, self.module))
                self.swapped.add(gid)

    # -- failure handling ---------------------------------------------------------------
    def fail(self, thread, exc):
        with self.lock:
            if self.error is None or (
                isinstance(self.error[1], _Aborted) and not isinstance(exc, _Aborted)
            ):
                self.error = (thread, exc)
            first = self.error[1]
        for barrier in self._all_barriers():
            barrier.abort(first)

    def _all_barriers(self):
        yield self.grid_barrier
        for b in self.blocks:
            yield b.barrier
            yield b.barrier_all
            for w in b.warps:
                yield w.barrier

    def thread_done(self, th):
        block = th.block
        if self.races is not None:  # before leaving the barriers: the next join must include it
            block.exited.append(th)
            self.races.exited.append(th)
        with self.lock:
            block.live -= 1
            finished = block.live == 0
        block.state[th.thread_id] = -1  # no longer takes part in syncthreads_count/and/or
        if th.thread_id < block.consumers:
            block.barrier.leave()
        block.barrier_all.leave()
        for err in (
            th.warp.lane_exited(th.lane),
            self.grid_barrier.leave_thread(finished, tuple(block.idx)),
        ):
            if err is not None:
                self.fail(None, err)
        with self.lock:
            self.live -= 1
            if self.live == 0:
                self.done.set()

    # -- running ------------------------------------------------------------------------
    def run(self, args):
        from numba.cuda.simulator.kernelapi import Dim3

        fn = self.kernel.fn
        gx, gy, gz = self.grid_dim
        bx, by, bz = self.block_dim
        for k in range(gz):
            for j in range(gy):
                for i in range(gx):
                    bidx = Dim3(i, j, k)
                    block = _Block(bidx, len(self.blocks), self.block_threads, self.dynshared_size,
                                   self.races, self.consumers)
                    self.blocks.append(block)
                    for z in range(bz):
                        for y in range(by):
                            for x in range(bx):
                                tid = x + bx * (y + by * z)
                                self.threads.append(
                                    _SimThread(self, block, tid, Dim3(x, y, z), bidx, fn, args)
                                )
        self.live = len(self.threads)
        # Threads start one by one and run at once (gating them all behind one event was
        # measured 2-3x slower for big launches: thousands of threads waking together), in the
        # schedule's order: the first started usually runs ahead.
        order = self.schedule.start_order(len(self.blocks), self.block_threads)
        try:
            for i in order:
                if self.error is not None:
                    break  # no point starting the rest
                self.threads[i].start()
        except BaseException as exc:  # e.g. the OS refuses more threads
            self.fail(None, exc)
        for th in self.threads:
            if th.ident is None:  # never started
                self.thread_done(th)
        self._wait()
        if self.error is not None:
            self._raise()

    def _wait(self):
        strikes = 0
        aborted_at = None
        started = time.monotonic()
        while not self.done.wait(WATCHDOG_PERIOD):
            if (
                self.error is None
                and LAUNCH_TIMEOUT is not None
                and time.monotonic() - started > LAUNCH_TIMEOUT
            ):
                self.fail(None, SimulatorDeadlock(
                    f"kernel {self.name} still running after {LAUNCH_TIMEOUT} s "
                    "(simulator.LAUNCH_TIMEOUT): endless loop or spin-wait?"
                ))
            if self.error is not None:
                aborted_at = aborted_at or time.monotonic()
                if time.monotonic() - aborted_at > ABORT_GRACE:
                    self._interrupt_stragglers()
                    if time.monotonic() - aborted_at > 2 * ABORT_GRACE:
                        return  # threads stuck in C code; they are daemons, leave them
                continue
            if self._deadlocked():
                strikes += 1
                if strikes >= WATCHDOG_STRIKES:
                    err = SimulatorDeadlock(self._deadlock_report())
                    self.fail(None, err)
            else:
                strikes = 0

    def _deadlocked(self) -> bool:
        waiting = 0
        for th in self.threads:
            if not th.is_alive():
                continue
            w = th.waiting_on
            if w is None or not w[0].stuck(w[1]):
                return False
            waiting += 1
        return waiting > 0

    def _deadlock_report(self) -> str:
        lines = []
        for barrier in self._all_barriers():
            if barrier.count:
                lines.append(f"  {barrier.name}: {barrier.count} of {barrier.parties} arrived")
        return (
            f"kernel {self.name}: every live thread waits on a barrier that cannot complete "
            "(divergent syncthreads, a warp primitive not all lanes reach, an mbarrier phase no copy completes, "
            "...):\n"
            + "\n".join(lines)
        )

    def _interrupt_stragglers(self):
        """Threads spinning in Python loops never see a broken barrier: inject _Aborted."""
        for th in self.threads:
            if th.is_alive() and th.ident is not None:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(th.ident), ctypes.py_object(_Aborted)
                )

    def _raise(self):
        thread, exc = self.error
        if thread is None:
            where = ""
        else:
            where = (
                f" in thread threadIdx={tuple(thread.threadIdx)} "
                f"blockIdx={tuple(thread.blockIdx)}"
            )
        msg = (
            f"simulated kernel {self.name}{where}: {type(exc).__name__}: {exc} [schedule "
            f"{self.schedule}: replay with {schedules.ENV_VAR}={self.schedule}]"
        )
        try:
            new = type(exc)(msg)
        except Exception:  # noqa: BLE001 - exception types with unusual constructors
            new = RuntimeError(msg)
        raise new.with_traceback(exc.__traceback__) from exc


_module_cls = None


def _module_class():
    global _module_cls
    if _module_cls is None:
        _module_cls = _make_module_class()
    return _module_cls


def _launch(kernel, args):
    global _active_launch
    from numba.cuda.errors import normalize_kernel_dimensions
    from numba.cuda.simulator import kernel as kmod
    from numba.cuda.simulator.kernelapi import swapped_cuda_module

    grid_dim, block_dim = normalize_kernel_dimensions(kernel.grid_dim, kernel.block_dim)
    launch = _Launch(kernel, grid_dim, block_dim, kernel.dynshared_size)
    retr: list = []
    fake_args = [_fake_arg(kernel, a, retr) for a in args]
    if launch.races is not None and launch.races.check_global:
        fake_args = launch.races.wrap_arguments(_parameter_names(kernel.fn, len(args)),
                                                [_array_behind(a) for a in fake_args])
    old_interval = sys.getswitchinterval()
    with kmod._push_kernel_context(launch.module):
        _active_launch = launch
        launch.swapped.add(id(kernel.fn.__globals__))
        try:
            with swapped_cuda_module(kernel.fn, launch.module), launch.exits:
                sys.setswitchinterval(SWITCH_INTERVAL)
                launch.run(fake_args)
        finally:
            sys.setswitchinterval(old_interval)
            _active_launch = None
    for wb in retr:
        wb()


_PARAMETER_NAMES: dict = {}


def _parameter_names(fn, nargs: int) -> list[str]:
    """The kernel's parameter names (for race reports)."""
    names = _PARAMETER_NAMES.get(fn)
    if names is None:
        import inspect

        try:
            names = list(inspect.signature(fn).parameters)
        except (TypeError, ValueError):
            names = []
        _PARAMETER_NAMES[fn] = names
    return names[:nargs] + [f"argument {i}" for i in range(len(names), nargs)]


def _array_behind(arg):
    """The NumPy array a kernel argument wraps (other arguments unchanged)."""
    item = getattr(arg, "__dict__", {}).get("_item")
    if item is not None and isinstance(item._ary, np.ndarray) and item._ary.ndim > 0:
        return item._ary
    return arg


def plain_array(arr) -> np.ndarray:
    """The NumPy array behind anything a kernel can receive as an array (for helpers such as
    ``megakernel.device``'s vector loads that work on the raw data)."""
    while not isinstance(arr, np.ndarray):
        if type(arr) is racemod.TrackedArray:
            return arr._a
        inner = arr.__dict__.get("_item")
        arr = inner if inner is not None else arr._ary
    return arr


def _tracker(arr):
    """(the running simulated thread, its launch's race detector), the detector None where ``arr`` is untracked."""
    th = threading.current_thread()
    if type(arr) is not racemod.TrackedArray:
        return th, None
    return th, getattr(getattr(th, "launch", None), "races", None)


def sync_release(arr, index: int, block_scope: bool = True) -> None:
    """The running simulated thread releases (a fence, then an atomic) on ``arr[index]``: what an mbarrier's
    phase completion does for the copy that completed it, or (``block_scope=False``) a ``red.release.gpu``
    (``megakernel.persistent.tma``)."""
    th, races = _tracker(arr)
    if races is not None:
        with _ATOMIC_LOCK:
            races.fence(th, block_scope=block_scope)
            races.atomic(th, arr, index)


def atomic_add_plain(arr, index: int, value: int) -> int:
    """``arr[index] += value`` on the array's memory under the simulator's atomic lock, untracked (the caller
    tells the race detector what it orders); returns the old value. int32 wraps as on the GPU."""
    a = plain_array(arr)
    with _ATOMIC_LOCK:
        old = int(a[index])
        new = old + int(value)
        if a.dtype == np.int32:
            new = (new + (1 << 31)) % (1 << 32) - (1 << 31)
        a[index] = new
    return old


def store_atomic_plain(arr, index: int, value: int) -> None:
    """``arr[index] = value`` as one atomic write (``st.relaxed.gpu``: a reader sees the whole old word or the
    whole new one): under the simulator's atomic lock, and for the race detector an atomic access, which releases
    only what this thread's earlier fences released (a relaxed write orders nothing else by itself)."""
    a = plain_array(arr)
    th, races = _tracker(arr)
    with _ATOMIC_LOCK:
        if races is not None:
            races.atomic(th, arr, index)
        a[index] = value


def sync_acquire(arr, index: int):
    """The running simulated thread reads ``arr[index]`` and acquires what the releases on it so far released,
    both under the atomic lock (so the value read and the releases acquired agree): an mbarrier wait's poll, an
    ``ld.acquire``. Returns the value."""
    a = plain_array(arr)
    th, races = _tracker(arr)
    with _ATOMIC_LOCK:
        if races is not None:
            races.atomic(th, arr, index)
        return a[index]


def sync_all_threads() -> None:
    """Every thread of the running simulated thread's block, producer warps included
    (``megakernel.persistent.warp_roles.sync_all``)."""
    th = threading.current_thread()
    th.block.barrier_all.wait(th)


class MbarrierWait:
    """What a thread spinning on an mbarrier (``megakernel.persistent.tma.mbar_wait``) waits on, for the deadlock
    watchdog: stuck while the mbarrier's completed-phase count is still the one the spin started from. If every
    live thread waits on a barrier or an mbarrier and none moves, no copy can complete any more: a deadlock, reported
    in a second instead of at the launch timeout."""

    def __init__(self, bars, slot: int):
        self.word = plain_array(bars)
        self.slot = slot
        self.name = f"mbarrier {slot}"
        self.count = 0

    def stuck(self, seen) -> bool:
        return int(self.word[self.slot]) == seen


@contextmanager
def waiting_on_mbarrier(bars, slot: int):
    """Mark the running simulated thread as spinning on mbarrier ``slot`` of ``bars`` (``MbarrierWait``)."""
    th = threading.current_thread()
    if not hasattr(th, "waiting_on"):
        yield
        return
    th.waiting_on = (MbarrierWait(bars, slot), int(plain_array(bars)[slot]))
    try:
        yield
    finally:
        th.waiting_on = None


def record_reads(arr, start: int, count: int) -> None:
    """Tell the race detector that elements ``start .. start+count-1`` of 1-D ``arr`` were read
    (a no-op for arrays it does not track)."""
    if type(arr) is racemod.TrackedArray:
        arr.read_run(start, count)


def _fake_arg(kernel, arg, retr):
    """Same argument conversion as the stock simulator, plus CPU torch tensors, and no copy of
    NumPy arrays: the kernel works on the caller's memory, as a GPU kernel works on the device
    array it is given (so arguments that overlap in memory overlap in the kernel too)."""
    import functools

    from numba.cuda.simulator.args import ArgHint, InOut
    from numba.cuda.simulator.cudadrv.devicearray import (
        FakeCUDAArray,
        FakeWithinKernelCUDAArray,
    )

    _, arg = functools.reduce(
        lambda ty_val, ext: ext.prepare_args(*ty_val, stream=0, retr=retr),
        kernel.extensions,
        (None, arg),
    )
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(arg, torch.Tensor):
        if arg.device.type != "cpu":
            raise TypeError("the simulator runs on the CPU: pass CPU tensors")
        arg = arg.detach().numpy()  # shares memory: results land in the tensor
    if (
        isinstance(arg, np.ndarray)
        and arg.ndim > 0
        and arg.dtype.kind in "biufc"
        and (arg.flags.c_contiguous or arg.flags.f_contiguous)
        and arg.flags.writeable
    ):
        ret = FakeCUDAArray(arg)
    elif isinstance(arg, np.ndarray) and arg.ndim > 0:
        ret = InOut(arg).to_device(retr)
    elif isinstance(arg, ArgHint):
        ret = arg.to_device(retr)
    elif isinstance(arg, np.void):
        ret = FakeCUDAArray(arg)
    else:
        ret = arg
    if isinstance(ret, FakeCUDAArray):
        return FakeWithinKernelCUDAArray(ret)
    return ret


# --------------------------------------------------------------------------------------
# libdevice fallbacks (float32 in, float32 out, like the GPU)
# --------------------------------------------------------------------------------------

_U32 = struct.Struct("<I")
_f32 = np.float32


def bits_to_f32(u) -> np.float32:
    """float32 with the bit pattern of the low 32 bits of integer ``u`` (NaN payloads kept)."""
    return np.frombuffer(_U32.pack(int(u) & FULL_MASK), np.float32)[0]


def f32_to_bits(f) -> np.uint32:
    return np.float32(f).view(np.uint32)


def _u1(ufunc):
    return lambda x: ufunc(_f32(x))


def _u2(ufunc):
    return lambda x, y: ufunc(_f32(x), _f32(y))


LIBDEVICE_FALLBACKS = {
    "expf": _u1(np.exp),
    "fast_expf": _u1(np.exp),
    "exp2f": _u1(np.exp2),
    "exp10f": lambda x: np.power(_f32(10), _f32(x)),
    "fast_exp10f": lambda x: np.power(_f32(10), _f32(x)),
    "expm1f": _u1(np.expm1),
    "logf": _u1(np.log),
    "fast_logf": _u1(np.log),
    "log2f": _u1(np.log2),
    "fast_log2f": _u1(np.log2),
    "log10f": _u1(np.log10),
    "fast_log10f": _u1(np.log10),
    "log1pf": _u1(np.log1p),
    "sqrtf": _u1(np.sqrt),
    "rsqrtf": lambda x: _f32(1) / np.sqrt(_f32(x)),
    "tanhf": _u1(np.tanh),
    "sinf": _u1(np.sin),
    "cosf": _u1(np.cos),
    "fast_sinf": _u1(np.sin),
    "fast_cosf": _u1(np.cos),
    "powf": _u2(np.power),
    "fast_powf": _u2(np.power),
    "fdividef": _u2(np.divide),
    "fast_fdividef": _u2(np.divide),
    "fmaxf": _u2(np.fmax),
    "fminf": _u2(np.fmin),
    "fabsf": _u1(np.abs),
    "floorf": _u1(np.floor),
    "ceilf": _u1(np.ceil),
    "truncf": _u1(np.trunc),
    "rintf": _u1(np.rint),
    "erff": lambda x: _f32(math.erf(float(x))),
    "fmaf": lambda x, y, z: _f32(float(_f32(x)) * float(_f32(y)) + float(_f32(z))),
    "isnanf": lambda x: int(math.isnan(x)),
    "isinff": lambda x: int(math.isinf(x)),
    "float_as_int": lambda x: f32_to_bits(x).view(np.int32),
    "float_as_uint": f32_to_bits,
    "int_as_float": bits_to_f32,
    "uint_as_float": bits_to_f32,
}


# --------------------------------------------------------------------------------------
# install / uninstall
# --------------------------------------------------------------------------------------

_saved: dict | None = None
# The numba-cuda releases this layer was written against: it replaces methods of the simulator's
# private classes (FakeCUDAKernel, FakeCUDAModule, FakeCUDAAtomic, FakeWithinKernelCUDAArray...),
# which may change in any release.  Keep in step with pyproject.toml.
SUPPORTED_NUMBA_CUDA = ">=0.30.4,<0.31"
_SUPPORTED_RANGE = ((0, 30, 4), (0, 31))
_GPU_ONLY_JIT_OPTIONS = ("lineinfo", "launch_bounds", "forceinline", "lto", "max_registers")


def _kernel_call(self, *args):
    """Replacement for FakeCUDAKernel.__call__: launches, and device-function calls.

    A device function called during a launch runs directly: its module's ``cuda`` is swapped
    for the launch's module once, on first use, instead of on every call as the stock
    simulator does (device functions are called per element, so this matters)."""
    launch = _active_launch
    if launch is not None and (self._device or isinstance(threading.current_thread(), _SimThread)):
        if id(self.fn.__globals__) not in launch.swapped:
            launch.swap_in(self.fn)
        return self.fn(*args)
    if self._device:  # called from host code
        return _saved["kernel_call"](self, *args)
    return _launch(self, args)


def _max_cooperative_grid_blocks(self, blockdim):
    if isinstance(blockdim, int):
        nthreads = blockdim
    else:
        nthreads = int(np.prod(tuple(blockdim)))
    return max(1, MAX_SIM_THREADS // max(1, nthreads))


def is_installed() -> bool:
    return _saved is not None


def check_numba_cuda_version(version: str | None = None) -> None:
    """Raise unless the installed numba-cuda (or ``version``) is one this layer supports."""
    if version is None:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as installed

        try:
            version = installed("numba-cuda")
        except PackageNotFoundError:
            version = "none"
    numbers = tuple(int(n) for n in re.findall(r"\d+", version)[:3])
    low, high = _SUPPORTED_RANGE
    if not numbers or not low <= numbers < high:
        raise RuntimeError(
            f"megakernel.testing.simulator supports numba-cuda {SUPPORTED_NUMBA_CUDA} (it patches "
            f"private classes of Numba's CUDA simulator), found numba-cuda {version}: install "
            f"'numba-cuda[cu13]{SUPPORTED_NUMBA_CUDA}' (pyproject.toml) or port the layer to this "
            "release"
        )


def install() -> None:
    """Patch Numba's CUDA simulator (idempotent).  Needs NUMBA_ENABLE_CUDASIM=1 and a supported
    numba-cuda (``SUPPORTED_NUMBA_CUDA``)."""
    global _saved
    if _saved is not None:
        return
    from numba.cuda.core import config

    if not config.ENABLE_CUDASIM:
        raise RuntimeError("megakernel.testing.simulator.install() needs NUMBA_ENABLE_CUDASIM=1")
    check_numba_cuda_version()
    import numba.cuda
    from numba.cuda import libdevice
    from numba.cuda import simulator as sim
    from numba.cuda.simulator import kernel as kmod

    stock_jit = numba.cuda.jit

    def jit(func_or_sig=None, **options):
        for opt in _GPU_ONLY_JIT_OPTIONS:
            options.pop(opt, None)
        return stock_jit(func_or_sig, **options)

    jit.__doc__ = stock_jit.__doc__
    saved = {
        "kernel_call": kmod.FakeCUDAKernel.__call__,
        "max_coop": kmod.FakeOverload.max_cooperative_grid_blocks,
        "jit": stock_jit,
        "sim_jit": getattr(sim, "jit", None),
        "libdevice": {name: getattr(libdevice, name) for name in LIBDEVICE_FALLBACKS
                      if hasattr(libdevice, name)},
    }
    kmod.FakeCUDAKernel.__call__ = _kernel_call
    kmod.FakeOverload.max_cooperative_grid_blocks = _max_cooperative_grid_blocks
    numba.cuda.jit = jit
    sim.jit = jit
    for name in saved["libdevice"]:
        setattr(libdevice, name, LIBDEVICE_FALLBACKS[name])
    _saved = saved


def uninstall() -> None:
    """Restore the stock simulator (no-op if not installed)."""
    global _saved
    if _saved is None:
        return
    import numba.cuda
    from numba.cuda import libdevice
    from numba.cuda import simulator as sim
    from numba.cuda.simulator import kernel as kmod

    saved, _saved = _saved, None
    kmod.FakeCUDAKernel.__call__ = saved["kernel_call"]
    kmod.FakeOverload.max_cooperative_grid_blocks = saved["max_coop"]
    numba.cuda.jit = saved["jit"]
    if saved["sim_jit"] is not None:
        sim.jit = saved["sim_jit"]
    for name, fn in saved["libdevice"].items():
        setattr(libdevice, name, fn)


@contextmanager
def stock_simulator():
    """Run a block of code with Numba's unpatched simulator (to show what the layer fixes)."""
    was_installed = is_installed()
    uninstall()
    try:
        yield
    finally:
        if was_installed:
            install()
