"""Bulk copies from global to shared memory by the copy engine (Hopper's ``cp.async.bulk``), and the
shared-memory barriers (``mbarrier``) that say when one has landed: the few PTX instructions version 2 of the
megakernel streams its weights with, as Numba intrinsics.

Why: a warp that loads weights into registers can only keep a few hundred bytes in flight, so a block needs many
warps (and few registers each) to cover the ~1 us memory latency at full bandwidth, and every phase boundary
drains them. One thread can instead hand the copy engine a 32 KB range and move on: the bytes land in shared
memory while the block computes, waits at a barrier, or runs a phase that reads no weights at all.

API (``dst``: an int32 shared array, ``src``: an int32 global array, offsets in 32-bit words; ``bars``: an int64
shared array of mbarriers, ``slot`` an index into it):

=====================================  ============================================================================
``mbar_init(bars, slot, count)``        initialise mbarrier ``slot`` to expect ``count`` arrivals per phase
``mbar_expect(bars, slot, nbytes)``     arrive on it and expect ``nbytes`` more bytes of copies this phase
``bulk_copy(dst, d, src, s, n, bars,``  copy words ``src[s:s+n]`` to ``dst[d:d+n]`` (16-byte aligned, n a multiple
``    slot)``                           of 4); completion counts against mbarrier ``slot``
``bulk_copy_evict_first(...)``          the same, with an L2 evict-first cache policy (data read once per token)
``mbar_wait(bars, slot, parity)``       wait until the mbarrier's phase of that parity has completed
``mbar_arrive(bars, slot)``             one of the phase's expected arrivals (a release: a consumer leaving a slot)
``mbar_wait_or_stop(bars, slot,``       ``mbar_wait`` that gives up (returns 0) once ``bars[stop]`` is non-zero
``    parity, stop)``                     (sleeping between checks)
``flag_value(bars, i)``                 a shared int64 flag, read afresh (volatile)
``fence_proxy_async()``                 order this thread's earlier shared-memory accesses before later bulk copies
                                        (the copy engine is another "proxy" than the threads' loads and stores)
``fence_mbarrier_init()``               make initialised mbarriers visible to the copy engine
``prefetch_l2(src, s, n)``              start bringing ``src[s:s+n]`` into L2 (no destination; a hint)
``prefetch_l2_evict_first(src, s, n)``  the same, the lines marked evict-first in L2
``prefetch_line(arr, i)``               one thread: bring the 128-byte line of element ``i`` of the C-contiguous
                                        array ``arr`` (any rank, ``i`` its flat index) into L2 (a hint)
``shared_address(arr)``                 the 32-bit shared-memory address of ``arr[0]`` (for alignment)
``globaltimer()``                       nanoseconds on the GPU's global timer (the same clock on every SM)
``red_release_add(arr, i, v)``          int32 ``arr[i] += v`` in global memory with release semantics (GPU scope)
``ld_acquire(arr, i)``                  int32 ``arr[i]`` read with acquire semantics (GPU scope)
``st_relaxed_u64(arr, i, v)``           int64 ``arr[i] = v`` in global memory, one 64-bit write (relaxed, GPU scope)
``ld_relaxed_u64(arr, i)``              int64 ``arr[i]`` in one 64-bit read from L2 (relaxed, GPU scope)
``bulk_reduce_add_u64(dst, d, src, s,``  the copy engine adds int64 ``src[s:s+n]`` (shared) into ``dst[d:d+n]``
``    n)``                              (global) element by element, atomically; returns once it is done
                                        (``cp.reduce.async.bulk ... add.u64``, then ``wait_group 0``)
=====================================  ============================================================================

In the CUDA simulator a bulk copy is an immediate copy by the issuing thread (which the race detector sees: a slot
refilled while another warp still reads it is a race there); an mbarrier counts its completed phases and the bytes
its current phase still expects, the copy that brings the last byte completes the phase (a release), and a wait
spins until the phase of its parity has completed (an acquire). So the ring logic (slots, parities, the page
table, who waits for what) runs the same code and is checked there; the copy engine's asynchrony and the memory
ordering of the real proxies are what the GPU stress tests check.
"""

from __future__ import annotations

import numpy as np
from numba import config

SIMULATOR = bool(config.ENABLE_CUDASIM)
SUSPEND_NS = 20000  # ``mbar_wait_or_stop``: how long a waiting thread may sleep before it checks its stop flag

if SIMULATOR:
    import time

    from ..testing.simulator import plain_array as _np
    from ..testing.simulator import (SimulatorRace, atomic_add_plain, record_reads, store_atomic_plain,
                                     sync_acquire, sync_release, waiting_on_mbarrier)

    # An mbarrier in the simulator: its int64 word counts the completed phases (so the current phase's parity is
    # the count's low bit); per (array, slot) here: [arrivals per phase, arrivals still expected this phase, bytes
    # still expected this phase]. A phase completes when both of the latter reach 0.
    _PENDING: dict = {}

    def _complete(bars, slot):
        sync_release(bars, slot)  # the copies that completed the phase happen before the waiters' reads
        _np(bars)[slot] += 1

    def _state(bars, slot):
        return _PENDING.setdefault((id(_np(bars)), int(slot)), [1, 1, 0])

    def _maybe_complete(bars, slot, st):
        if st[1] == 0 and st[2] == 0:
            st[1] = st[0]
            _complete(bars, int(slot))

    def mbar_init(bars, slot, count):
        slot = int(slot)
        _np(bars)[slot] = 0
        _PENDING[(id(_np(bars)), slot)] = [int(count), int(count), 0]

    def mbar_expect(bars, slot, nbytes):
        st = _state(bars, slot)
        st[1] -= 1
        st[2] += int(nbytes)
        _maybe_complete(bars, slot, st)

    def mbar_arrive(bars, slot):
        st = _state(bars, slot)
        if st[1] <= 0:
            raise ValueError(f"mbar_arrive: mbarrier {int(slot)} got more arrivals than its count ({st[0]})")
        sync_release(bars, int(slot))  # every arrival releases (what this thread did before it)
        st[1] -= 1
        _maybe_complete(bars, slot, st)
        time.sleep(0)

    def bulk_copy(dst, d, src, s, n, bars, slot):
        d, s, n = int(d), int(s), int(n)
        if n % 4 or d % 4 or s % 4:
            raise ValueError(f"bulk_copy: offsets ({d}, {s}) and size ({n}) must be multiples of 4 words (16 B)")
        out, inp = _np(dst), _np(src)
        if d < 0 or s < 0 or d + n > out.shape[0] or s + n > inp.shape[0]:
            raise IndexError(f"bulk_copy: dst[{d}:{d + n}] of {out.shape[0]} or src[{s}:{s + n}] of "
                             f"{inp.shape[0]} out of bounds")
        record_reads(src, s, n)
        for i in range(n):  # element by element, so the race detector sees the copy's writes (by this thread)
            dst[d + i] = inp[s + i]
        st = _state(bars, slot)
        if st[2] - 4 * n < 0:
            raise ValueError(f"bulk_copy: mbarrier {int(slot)} was told to expect {st[2]} more bytes, "
                             f"this copy brings {4 * n}")
        st[2] -= 4 * n
        _maybe_complete(bars, slot, st)

    def bulk_copy_evict_first(dst, d, src, s, n, bars, slot):
        bulk_copy(dst, d, src, s, n, bars, slot)

    def mbar_wait(bars, slot, parity):
        """Spin until the phase of parity ``parity`` has completed (the current phase's parity differs)."""
        slot = int(slot)
        if (int(sync_acquire(bars, slot)) & 1) != int(parity):
            return
        with waiting_on_mbarrier(bars, slot):  # the deadlock watchdog sees this spin
            while (int(sync_acquire(bars, slot)) & 1) == int(parity):
                time.sleep(0)

    def flag_value(bars, i):
        """The shared int64 flag ``bars[i]``, read afresh (an acquire here, for the race detector)."""
        time.sleep(0)
        return np.int64(sync_acquire(bars, int(i)))

    def mbar_wait_or_stop(bars, slot, parity, stop, backoff=0):
        """``mbar_wait``, unless ``bars[stop]`` (read atomically) becomes non-zero first: returns 1 once the phase
        completed, 0 if stopped (``backoff``: the GPU's sleep between retries)."""
        slot = int(slot)
        with waiting_on_mbarrier(bars, slot):
            while (int(sync_acquire(bars, slot)) & 1) == int(parity):
                if int(sync_acquire(bars, int(stop))) != 0:
                    return 0
                time.sleep(0)
        return 1

    def red_release_add(arr, i, v):
        sync_release(arr, int(i), block_scope=False)
        atomic_add_plain(arr, int(i), v)
        time.sleep(0)

    def ld_acquire(arr, i):
        time.sleep(0)  # what spin loops poll: let the other threads run
        return np.int32(sync_acquire(arr, int(i)))

    def ld_relaxed_u64(arr, i):
        time.sleep(0)  # (spins poll it)
        return np.int64(sync_acquire(arr, int(i)))

    def st_relaxed_u64(arr, i, v):
        """In this project a relaxed 64-bit store writes a flag-in-data word (``handoff``): its upper half is the
        tag a reader waits for, so the simulator also checks that every store to a word changes its tag (a word
        rewritten with the tag it carries is indistinguishable from the old one: a reader could take either)."""
        old = int(_np(arr)[int(i)])
        if old != 0 and (old >> 32) & 0xFFFFFFFF == (int(v) >> 32) & 0xFFFFFFFF:
            raise SimulatorRace(f"st_relaxed_u64: word {int(i)} rewritten with the tag it already carries "
                                f"({(int(v) >> 32) & 0xFFFFFFFF}): a reader waiting for that tag may take the old "
                                "value or the new one")
        store_atomic_plain(arr, int(i), int(v))

    def fence_proxy_async():
        pass

    def bulk_reduce_add_u64(dst, d, src, s, n):
        d, s, n = int(d), int(s), int(n)
        if n % 2 or d % 2 or s % 2:
            raise ValueError(f"bulk_reduce_add_u64: offsets ({d}, {s}) and size ({n}) must be multiples of 2 "
                             "elements (16 B)")
        for i in range(n):  # the stage's reads through the tracked array; the adds under the atomic lock
            atomic_add_plain(dst, d + i, int(src[s + i]))

    def fence_mbarrier_init():
        pass

    def prefetch_l2(src, s, n):
        pass

    def prefetch_l2_evict_first(src, s, n):
        pass

    def prefetch_line(arr, i):
        pass

    def shared_address(arr):
        return int(_np(arr).ctypes.data) & 0xFFFFFFFF

    def globaltimer():
        import time

        return np.int64(time.perf_counter_ns())

else:
    from llvmlite import ir
    from numba.cuda import cgutils, types
    from numba.cuda.extending import intrinsic

    _i32, _i64 = ir.IntType(32), ir.IntType(64)

    def _word_ptr(context, builder, arrty, arr, index):
        """Address (i64, generic) of word ``index`` of a 1-D array."""
        ary = cgutils.create_struct_proxy(arrty)(context, builder, value=arr)
        base = builder.ptrtoint(ary.data, _i64)
        itemsize = context.get_abi_sizeof(context.get_data_type(arrty.dtype))
        return builder.add(base, builder.mul(builder.sext(index, _i64) if index.type.width < 64 else index,
                                             ir.Constant(_i64, itemsize)))

    def _smem32(builder, generic):
        """The shared-window address (32-bit) of a generic address."""
        fnty = ir.FunctionType(_i64, [_i64])
        s64 = builder.asm(fnty, "cvta.to.shared.u64 $0, $1;", "=l,l", [generic], side_effect=False)
        return builder.trunc(s64, _i32)

    def _gmem(builder, generic):
        fnty = ir.FunctionType(_i64, [_i64])
        return builder.asm(fnty, "cvta.to.global.u64 $0, $1;", "=l,l", [generic], side_effect=False)

    def _as_i32(builder, v):
        return builder.trunc(v, _i32) if v.type.width > 32 else (builder.zext(v, _i32) if v.type.width < 32 else v)

    def _is_array(t, ndim=1):
        return isinstance(t, types.Array) and t.ndim == ndim

    @intrinsic
    def mbar_init(typingctx, bars, slot, count):
        if not (_is_array(bars) and isinstance(slot, types.Integer) and isinstance(count, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            addr = _smem32(builder, _word_ptr(context, builder, sig.args[0], args[0], args[1]))
            fnty = ir.FunctionType(ir.VoidType(), [_i32, _i32])
            builder.asm(fnty, "mbarrier.init.shared::cta.b64 [$0], $1;", "r,r", [addr, _as_i32(builder, args[2])],
                        side_effect=True)
            return context.get_dummy_value()

        return types.void(bars, slot, count), codegen

    @intrinsic
    def mbar_expect(typingctx, bars, slot, nbytes):
        if not (_is_array(bars) and isinstance(slot, types.Integer) and isinstance(nbytes, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            addr = _smem32(builder, _word_ptr(context, builder, sig.args[0], args[0], args[1]))
            fnty = ir.FunctionType(ir.VoidType(), [_i32, _i32])
            builder.asm(fnty, "mbarrier.arrive.expect_tx.shared::cta.b64 _, [$0], $1;", "r,r",
                        [addr, _as_i32(builder, args[2])], side_effect=True)
            return context.get_dummy_value()

        return types.void(bars, slot, nbytes), codegen

    _COPY = "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes"

    def _bulk_copy_typer(asm):
        """The typer of a ``(dst, d, src, s, n, bars, slot)`` bulk copy emitting ``asm`` ($0 dst, $1 src, $2 bytes,
        $3 mbarrier)."""

        def typer(typingctx, dst, d, src, s, n, bars, slot):
            if not (_is_array(dst) and _is_array(src) and _is_array(bars)):
                return None

            def codegen(context, builder, sig, args):
                dst_a = _smem32(builder, _word_ptr(context, builder, sig.args[0], args[0], args[1]))
                src_a = _gmem(builder, _word_ptr(context, builder, sig.args[2], args[2], args[3]))
                nbytes = builder.mul(_as_i32(builder, args[4]), ir.Constant(_i32, 4))
                bar_a = _smem32(builder, _word_ptr(context, builder, sig.args[5], args[5], args[6]))
                fnty = ir.FunctionType(ir.VoidType(), [_i32, _i64, _i32, _i32])
                builder.asm(fnty, asm, "r,l,r,r", [dst_a, src_a, nbytes, bar_a], side_effect=True)
                return context.get_dummy_value()

            return types.void(dst, d, src, s, n, bars, slot), codegen

        return typer

    bulk_copy = intrinsic(_bulk_copy_typer(_COPY + " [$0], [$1], $2, [$3];"))
    # the same with an L2 evict-first policy: data read once per token (the weights: 30x the L2) then leaves L2
    # first, so what is reused (code, activations, states, KV) stays there
    bulk_copy_evict_first = intrinsic(_bulk_copy_typer(
        "{ .reg .b64 pol; createpolicy.fractional.L2::evict_first.b64 pol, 1.0; "
        + _COPY + ".L2::cache_hint [$0], [$1], $2, [$3], pol; }"))

    def _try_wait_typer(suspend_ns: int = 0):
        """The typer of ``f(bars, slot, parity)`` -> 1 if the mbarrier's phase of that parity has completed, else 0
        (``try_wait.parity``; with ``suspend_ns`` a suspend-time hint: the thread may sleep in the hardware until the
        phase completes or that many ns pass, so a waiting producer takes no issue slots from the warps beside it)."""
        hint = f", {int(suspend_ns)}" if suspend_ns else ""

        def typer(typingctx, bars, slot, parity):
            if not (_is_array(bars) and isinstance(slot, types.Integer) and isinstance(parity, types.Integer)):
                return None

            def codegen(context, builder, sig, args):
                addr = _smem32(builder, _word_ptr(context, builder, sig.args[0], args[0], args[1]))
                fnty = ir.FunctionType(_i32, [_i32, _i32])
                return builder.asm(
                    fnty,
                    "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [$1], $2" + hint + "; "
                    "selp.u32 $0, 1, 0, p; }",
                    "=r,r,r", [addr, _as_i32(builder, args[2])], side_effect=True)

            return types.uint32(bars, slot, parity), codegen

        return typer

    _mbar_try_wait = intrinsic(_try_wait_typer())
    _mbar_try_wait_suspend = intrinsic(_try_wait_typer(SUSPEND_NS))

    def _one_word_load(asm, width, space, doc):
        """An intrinsic ``f(arr, i)`` loading word ``i`` of a 1-D array with the one instruction ``asm`` ($0 the
        value, $1 the address: 32-bit shared or 64-bit global), typed int32 or int64 by ``width``."""
        rty, ity = (types.int64, _i64) if width == 64 else (types.int32, _i32)

        def typer(typingctx, arr, i):
            if not (_is_array(arr) and isinstance(i, types.Integer)):
                return None

            def codegen(context, builder, sig, args):
                a = _word_ptr(context, builder, sig.args[0], args[0], args[1])
                a, aty, con = (_smem32(builder, a), _i32, "r") if space == "shared" else (_gmem(builder, a), _i64, "l")
                return builder.asm(ir.FunctionType(ity, [aty]), asm, f"={'l' if width == 64 else 'r'},{con}", [a],
                                   side_effect=True)

            return rty(arr, i), codegen

        typer.__doc__ = doc
        return intrinsic(typer)

    _load_volatile = _one_word_load("ld.volatile.shared.u64 $0, [$1];", 64, "shared",
                                    "int64 ``arr[i]`` (shared), volatile: a flag another thread of the block sets.")
    ld_acquire = _one_word_load("ld.acquire.gpu.global.u32 $0, [$1];", 32, "global",
                                "int32 ``arr[i]`` with acquire semantics (GPU scope): what a spin polls; the "
                                "accesses after it are ordered after the releases it read from.")
    ld_relaxed_u64 = _one_word_load("ld.relaxed.gpu.global.b64 $0, [$1];", 64, "global",
                                    "int64 ``arr[i]``, relaxed at GPU scope: one single-copy-atomic 64-bit read from "
                                    "L2 (never a stale L1 line), with no ordering of other accesses.")

    @intrinsic
    def st_relaxed_u64(typingctx, arr, i, v):
        """``st.relaxed.gpu.global.b64``: int64 ``arr[i] = v`` as one single-copy-atomic 64-bit write (a reader
        sees the old word or the new one, never half of each); no ordering of this thread's other accesses."""
        if not (_is_array(arr) and isinstance(i, types.Integer) and isinstance(v, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            a = _gmem(builder, _word_ptr(context, builder, sig.args[0], args[0], args[1]))
            val = args[2] if args[2].type.width == 64 else builder.sext(args[2], _i64)
            builder.asm(ir.FunctionType(ir.VoidType(), [_i64, _i64]), "st.relaxed.gpu.global.b64 [$0], $1;", "l,l",
                        [a, val], side_effect=True)
            return context.get_dummy_value()

        return types.void(arr, i, v), codegen

    @intrinsic
    def mbar_arrive(typingctx, bars, slot):
        """``mbarrier.arrive`` (release, CTA scope): one of the phase's expected arrivals, ordered after what this
        thread (and, through an earlier ``syncwarp``, its warp) did before."""
        if not (_is_array(bars) and isinstance(slot, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            addr = _smem32(builder, _word_ptr(context, builder, sig.args[0], args[0], args[1]))
            builder.asm(ir.FunctionType(ir.VoidType(), [_i32]), "mbarrier.arrive.shared::cta.b64 _, [$0];", "r",
                        [addr], side_effect=True)
            return context.get_dummy_value()

        return types.void(bars, slot), codegen

    @intrinsic
    def red_release_add(typingctx, arr, i, v):
        """``red.release.gpu.global.add.u32``: add ``v`` to int32 ``arr[i]``, ordered after everything this thread
        did (and, through an earlier ``syncthreads``, its block did) before: one instruction, no fence."""
        if not (_is_array(arr) and isinstance(i, types.Integer) and isinstance(v, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            a = _gmem(builder, _word_ptr(context, builder, sig.args[0], args[0], args[1]))
            builder.asm(ir.FunctionType(ir.VoidType(), [_i64, _i32]), "red.release.gpu.global.add.u32 [$0], $1;",
                        "l,r", [a, _as_i32(builder, args[2])], side_effect=True)
            return context.get_dummy_value()

        return types.void(arr, i, v), codegen

    @intrinsic
    def bulk_reduce_add_u64(typingctx, dst, d, src, s, n):
        """``cp.reduce.async.bulk.global.shared::cta.bulk_group.add.u64`` of ``n`` int64 (16-byte aligned, n even),
        committed and awaited (``wait_group 0``), then ``fence.proxy.async.global`` so the copy engine's adds are
        ordered before this thread's later accesses (a release after it publishes them). The shared source must
        have been written before a ``fence_proxy_async`` and a ``syncthreads``."""
        if not (_is_array(dst) and _is_array(src) and isinstance(n, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            dst_a = _gmem(builder, _word_ptr(context, builder, sig.args[0], args[0], args[1]))
            src_a = _smem32(builder, _word_ptr(context, builder, sig.args[2], args[2], args[3]))
            nbytes = builder.mul(_as_i32(builder, args[4]), ir.Constant(_i32, 8))
            builder.asm(ir.FunctionType(ir.VoidType(), [_i64, _i32, _i32]),
                        "cp.reduce.async.bulk.global.shared::cta.bulk_group.add.u64 [$0], [$1], $2; "
                        "cp.async.bulk.commit_group; cp.async.bulk.wait_group 0; fence.proxy.async.global;",
                        "l,r,r", [dst_a, src_a, nbytes], side_effect=True)
            return context.get_dummy_value()

        return types.void(dst, d, src, s, n), codegen

    def no_operand(asm):
        """An intrinsic ``f()`` emitting the operand-less instruction ``asm``."""

        def typer(typingctx):
            def codegen(context, builder, sig, args):
                builder.asm(ir.FunctionType(ir.VoidType(), []), asm, "", [], side_effect=True)
                return context.get_dummy_value()

            return types.void(), codegen

        return intrinsic(typer)

    fence_proxy_async = no_operand("fence.proxy.async.shared::cta;")
    fence_mbarrier_init = no_operand("fence.mbarrier_init.release.cluster;")

    def _prefetch_typer(asm):
        """The typer of a ``(src, s, n)`` L2 prefetch emitting ``asm`` ($0 src, $1 bytes)."""

        def typer(typingctx, src, s, n):
            if not _is_array(src):
                return None

            def codegen(context, builder, sig, args):
                src_a = _gmem(builder, _word_ptr(context, builder, sig.args[0], args[0], args[1]))
                nbytes = builder.mul(_as_i32(builder, args[2]), ir.Constant(_i32, 4))
                builder.asm(ir.FunctionType(ir.VoidType(), [_i64, _i32]), asm, "l,r", [src_a, nbytes],
                            side_effect=True)
                return context.get_dummy_value()

            return types.void(src, s, n), codegen

        return typer

    # ask the copy engine to bring words src[s:s+n] into L2 (no destination, no completion)
    prefetch_l2 = intrinsic(_prefetch_typer("cp.async.bulk.prefetch.L2.global [$0], $1;"))
    # the same, the lines marked evict-first (the weights' policy: they leave L2 before what is reused)
    prefetch_l2_evict_first = intrinsic(_prefetch_typer(
        "{ .reg .b64 pol; createpolicy.fractional.L2::evict_first.b64 pol, 1.0; "
        "cp.async.bulk.prefetch.L2.global.L2::cache_hint [$0], $1, pol; }"))

    @intrinsic
    def prefetch_line(typingctx, arr, i):
        """``prefetch.global.L2`` of the line holding element ``i`` (flat index) of a C-contiguous array."""
        if not (isinstance(arr, types.Array) and isinstance(i, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            a = _gmem(builder, _word_ptr(context, builder, sig.args[0], args[0], args[1]))
            builder.asm(ir.FunctionType(ir.VoidType(), [_i64]), "prefetch.global.L2 [$0];", "l", [a],
                        side_effect=True)
            return context.get_dummy_value()

        return types.void(arr, i), codegen

    @intrinsic
    def shared_address(typingctx, arr):
        """The 32-bit shared-window address of a shared array's first element (to align what follows)."""
        if not _is_array(arr):
            return None

        def codegen(context, builder, sig, args):
            return _smem32(builder, _word_ptr(context, builder, sig.args[0], args[0], ir.Constant(_i64, 0)))

        return types.uint32(arr), codegen

    @intrinsic
    def globaltimer(typingctx):
        """The GPU's global nanosecond timer (%globaltimer: comparable across SMs)."""

        def codegen(context, builder, sig, args):
            return builder.asm(ir.FunctionType(_i64, []), "mov.u64 $0, %globaltimer;", "=l", [], side_effect=True)

        return types.int64(), codegen

    from numba import cuda

    @cuda.jit(device=True)
    def mbar_wait(bars, slot, parity):
        while _mbar_try_wait(bars, slot, parity) == 0:
            pass

    @cuda.jit(device=True)
    def mbar_wait_or_stop(bars, slot, parity, stop, backoff=0):
        """``mbar_wait``, unless the shared flag ``bars[stop]`` becomes non-zero first: returns 1 once the phase
        completed, 0 if stopped. The wait sleeps (a suspend-time hint), then ``backoff`` ns more (``nanosleep``)
        before each retry, and the flag is a plain volatile load, not an atomic (an int64 atomic in shared memory
        is a compare-and-swap loop)."""
        while _mbar_try_wait_suspend(bars, slot, parity) == 0:
            if _load_volatile(bars, stop) != 0:
                return 0
            if backoff > 0:
                cuda.nanosleep(backoff)
        return 1

    @cuda.jit(device=True)
    def flag_value(bars, i):
        """The shared int64 flag ``bars[i]``, read afresh (volatile)."""
        return _load_volatile(bars, i)


__all__ = ["mbar_init", "mbar_expect", "mbar_arrive", "bulk_copy", "mbar_wait", "mbar_wait_or_stop", "flag_value",
           "fence_proxy_async", "fence_mbarrier_init", "shared_address", "globaltimer", "prefetch_l2",
           "prefetch_l2_evict_first", "prefetch_line", "bulk_copy_evict_first", "red_release_add", "ld_acquire",
           "bulk_reduce_add_u64", "st_relaxed_u64", "ld_relaxed_u64"]
