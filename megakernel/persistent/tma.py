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
``fence_proxy_async()``                 order this thread's earlier shared-memory accesses before later bulk copies
                                        (the copy engine is another "proxy" than the threads' loads and stores)
``fence_mbarrier_init()``               make initialised mbarriers visible to the copy engine
``prefetch_l2(src, s, n)``              start bringing ``src[s:s+n]`` into L2 (no destination; a hint)
``prefetch_line(arr, i)``               one thread: bring the 128-byte line of element ``i`` of the C-contiguous
                                        array ``arr`` (any rank, ``i`` its flat index) into L2 (a hint)
``shared_address(arr)``                 the 32-bit shared-memory address of ``arr[0]`` (for alignment)
``globaltimer()``                       nanoseconds on the GPU's global timer (the same clock on every SM)
=====================================  ============================================================================

In the CUDA simulator a bulk copy is an immediate copy by the issuing thread (which the race detector sees: a slot
refilled while another warp still reads it is a race there) and the waits return at once: the ring logic around
them (slots, parities, the page table) runs the same code and is tested there; the asynchrony is what the GPU
stress tests check.
"""

from __future__ import annotations

import numpy as np
from numba import config

SIMULATOR = bool(config.ENABLE_CUDASIM)

if SIMULATOR:
    from ..testing.simulator import plain_array as _np
    from ..testing.simulator import record_reads

    def mbar_init(bars, slot, count):
        _np(bars)[int(slot)] = 0

    def mbar_expect(bars, slot, nbytes):
        pass

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

    def bulk_copy_evict_first(dst, d, src, s, n, bars, slot):
        bulk_copy(dst, d, src, s, n, bars, slot)

    def mbar_wait(bars, slot, parity):
        pass

    def fence_proxy_async():
        pass

    def fence_mbarrier_init():
        pass

    def prefetch_l2(src, s, n):
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

    @intrinsic
    def _mbar_try_wait(typingctx, bars, slot, parity):
        if not (_is_array(bars) and isinstance(slot, types.Integer) and isinstance(parity, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            addr = _smem32(builder, _word_ptr(context, builder, sig.args[0], args[0], args[1]))
            fnty = ir.FunctionType(_i32, [_i32, _i32])
            return builder.asm(
                fnty,
                "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [$1], $2; selp.u32 $0, 1, 0, p; }",
                "=r,r,r", [addr, _as_i32(builder, args[2])], side_effect=True)

        return types.uint32(bars, slot, parity), codegen

    @intrinsic
    def fence_proxy_async(typingctx):
        def codegen(context, builder, sig, args):
            builder.asm(ir.FunctionType(ir.VoidType(), []), "fence.proxy.async.shared::cta;", "", [],
                        side_effect=True)
            return context.get_dummy_value()

        return types.void(), codegen

    @intrinsic
    def prefetch_l2(typingctx, src, s, n):
        """Ask the copy engine to bring words ``src[s:s+n]`` into L2 (no destination, no completion)."""
        if not _is_array(src):
            return None

        def codegen(context, builder, sig, args):
            src_a = _gmem(builder, _word_ptr(context, builder, sig.args[0], args[0], args[1]))
            nbytes = builder.mul(_as_i32(builder, args[2]), ir.Constant(_i32, 4))
            builder.asm(ir.FunctionType(ir.VoidType(), [_i64, _i32]), "cp.async.bulk.prefetch.L2.global [$0], $1;",
                        "l,r", [src_a, nbytes], side_effect=True)
            return context.get_dummy_value()

        return types.void(src, s, n), codegen

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
    def fence_mbarrier_init(typingctx):
        def codegen(context, builder, sig, args):
            builder.asm(ir.FunctionType(ir.VoidType(), []), "fence.mbarrier_init.release.cluster;", "", [],
                        side_effect=True)
            return context.get_dummy_value()

        return types.void(), codegen

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


__all__ = ["mbar_init", "mbar_expect", "bulk_copy", "mbar_wait", "fence_proxy_async", "fence_mbarrier_init",
           "shared_address", "globaltimer", "prefetch_l2", "prefetch_line"]
