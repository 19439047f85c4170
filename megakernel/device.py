"""Device functions shared by every Numba kernel of the tutorial.

Kernels call these as ordinary functions; this module picks, once at import time, an
implementation for where the kernel will run:

* on the GPU (``numba.config.ENABLE_CUDASIM`` false), the bit-level helpers are small
  ``@intrinsic`` functions that emit exactly the LLVM IR we want (a bit cast is a register
  move, a 16-byte load is one ``ld.global.v4.u32``); the rest are ``@cuda.jit(device=True)``;
* in the CUDA simulator, the same names are plain Python (NumPy scalars), and the warp
  reductions exchange values through ``megakernel.testing.simulator`` (which must be installed;
  importing ``megakernel`` does that).

Why the bit tricks: torch bf16 tensors cannot be passed to Numba (their array interface type
``|V2`` is untyped), so kernels receive the raw bits, e.g. ``w.view(torch.int32)``: each 32-bit
word holds two bf16 values, element ``2i`` in the low half and ``2i+1`` in the high half
(little endian).  A bf16 is the top half of a float32, so decoding is a shift or a mask plus
a bit cast: ``bf16_lo(w) == bits_to_f32(w << 16)``, ``bf16_hi(w) == bits_to_f32(w & 0xFFFF0000)``.

Numeric rule for kernel code (here and elsewhere): never let a Python float literal into
arithmetic, ``x * 0.5`` makes the GPU compute in float64.  Write ``x * float32(0.5)``.
``megakernel.testing.ptx_check`` finds violations in the compiled PTX.

API (``w``: a 32-bit word, any integer type; ``f``: float32)

=============================  ==========================================================
``bits_to_f32(u)``             float32 with the bit pattern of the low 32 bits of ``u``
``f32_to_bits(f)``             uint32 bit pattern of a float32
``bf16_lo(w)``/``bf16_hi(w)``  the low / high bf16 of a word, as float32
``bf16_to_f32(h)``             one bf16 given as 16 bits (e.g. from an int16 view)
``f32_to_bf16_bits(f)``        round to nearest even -> bf16 bits in the low 16 bits (uint32);
                               NaN -> 0x7FFF (the GPU's canonical NaN)
``load_u32x4(a, i)``           words ``4i..4i+3`` of a 1-D int32/uint32 array, one 16-byte load
``load_u32x2(a, i)``           words ``2i, 2i+1``, one 8-byte load
``load_f32x4(a, i)``           elements ``4i..4i+3`` of a 1-D float32 array, one 16-byte load
``load_f32x2(a, i)``           elements ``2i, 2i+1`` of a 1-D float32 array, one 8-byte load
``warp_sum(x)``                sum over the 32 lanes, every lane gets it (xor butterfly)
``warp_sum2(a, b)``            ``warp_sum(a)`` on lanes 0-15, ``warp_sum(b)`` on lanes 16-31 (five shuffles)
``warp_max(x)``                max over the 32 lanes (NaN propagates)
``warp_argmax(v, i)``          (max value, its index) over the lanes; ties -> smallest index,
                               NaN counts as the largest value (as ``torch.argmax``)
``block_sum(x, s)``            sum over a 1-D block (``s``: float32 shared array of >= 32)
``block_max(x, s)``            max over a 1-D block
``sigmoid``, ``silu``,         float32 activations (``softplus`` as torch: beta 1,
``softplus``, ``rsqrt``        threshold 20)
``fast_exp``, ``fast_sigmoid`` ``__expf``-based (``ex2.approx``), a few ulp
=============================  ==========================================================

Vector loads take 1-D C-contiguous arrays; a row ``w[r]`` or a slice ``w[a:b]`` of a
C-contiguous array qualifies.  The address must be a multiple of the load size, so the
array's base must be 16-byte aligned (8 for ``load_u32x2``) and ``i`` counts whole vectors.  Allocations from torch
and Numba are 256-byte aligned; a slice or a row of a matrix is aligned only if its offset is
(e.g. rows of a bf16 matrix need a column count that is a multiple of 8).  There is no
bounds check and no negative-index wraparound on the GPU (the simulator checks both, and
alignment, and raises).

Warp functions need all 32 lanes of a warp to call them together (full-mask shuffles), so
launch blocks whose size is a multiple of 32.  Shuffles move int32, int64, float32 and
float64 only: pass indices as int32/int64, not uint32 (and Numba widens int32 sums to
int64).  Every lane gets bit-identical results (up to the sign of a zero in ``warp_max``);
the simulator replays the same xor butterfly in NumPy after one warp exchange, so it
produces the GPU's bits too (checked on an H100 with
``NUMBA_ENABLE_CUDASIM=0 pytest tests/test_device_functions.py``).

bf16 NaN: torch's CPU conversion writes 0xFFFF, its CUDA conversion and ``cvt.rn.bf16.f32``
0x7FFF; ``f32_to_bf16_bits`` writes 0x7FFF and matches torch bit for bit on everything else
(ties to even, denormals, overflow to inf).
"""

from __future__ import annotations

import math

import numpy as np
from numba import config
from numba import cuda
from numba.cuda import float32, uint32

WARP_SIZE = 32
FULL_MASK = 0xFFFFFFFF

__all__ = [
    "WARP_SIZE",
    "FULL_MASK",
    "bits_to_f32",
    "f32_to_bits",
    "bf16_lo",
    "bf16_hi",
    "bf16_to_f32",
    "f32_to_bf16_bits",
    "load_u32x4",
    "load_u32x2",
    "load_f32x4",
    "load_f32x2",
    "warp_sum",
    "warp_sum2",
    "warp_max",
    "warp_argmax",
    "block_sum",
    "block_max",
    "fast_exp",
    "sigmoid",
    "fast_sigmoid",
    "silu",
    "softplus",
    "rsqrt",
    "fma",
]

SIMULATOR = bool(config.ENABLE_CUDASIM)

if not SIMULATOR:
    # ----------------------------------------------------------------------------------
    # GPU: intrinsics that lower straight to LLVM IR
    # ----------------------------------------------------------------------------------
    from llvmlite import ir
    from numba.cuda import cgutils, libdevice, types
    from numba.cuda.core.errors import NumbaTypeError
    from numba.cuda.extending import intrinsic

    _i32 = ir.IntType(32)
    _i64 = ir.IntType(64)
    _f32 = ir.FloatType()

    def _to_i32(builder, value):
        """Low 32 bits of any integer (zero-extending narrower ones: bits, not numbers)."""
        width = value.type.width
        if width > 32:
            return builder.trunc(value, _i32)
        if width < 32:
            return builder.zext(value, _i32)
        return value

    def _check_int(name, ty):
        if not isinstance(ty, types.Integer):
            raise NumbaTypeError(f"{name} expects an integer word, got {ty}")

    @intrinsic
    def bits_to_f32(typingctx, u):
        _check_int("bits_to_f32", u)

        def codegen(context, builder, sig, args):
            return builder.bitcast(_to_i32(builder, args[0]), _f32)

        return types.float32(u), codegen

    @intrinsic
    def f32_to_bits(typingctx, f):
        if f != types.float32:
            raise NumbaTypeError(
                f"f32_to_bits expects float32, got {f} (a Python float literal in the "
                "arithmetic makes float64: use float32(...))"
            )

        def codegen(context, builder, sig, args):
            return builder.bitcast(args[0], _i32)

        return types.uint32(f), codegen

    @intrinsic
    def bf16_lo(typingctx, w):
        _check_int("bf16_lo", w)

        def codegen(context, builder, sig, args):
            bits = builder.shl(_to_i32(builder, args[0]), ir.Constant(_i32, 16))
            return builder.bitcast(bits, _f32)

        return types.float32(w), codegen

    @intrinsic
    def bf16_hi(typingctx, w):
        _check_int("bf16_hi", w)

        def codegen(context, builder, sig, args):
            bits = builder.and_(_to_i32(builder, args[0]), ir.Constant(_i32, 0xFFFF0000))
            return builder.bitcast(bits, _f32)

        return types.float32(w), codegen

    def _vector_load_intrinsic(name, n, element_ok, what):
        """An intrinsic ``f(arr, i)`` returning elements ``n*i .. n*i+n-1`` of ``arr`` as a
        tuple, read by one ``n * 4``-byte load (LLVM ``<n x T>`` with matching alignment;
        NVVM never merges scalar loads into vector loads by itself)."""

        def typer(typingctx, arr, i):
            if not (
                isinstance(arr, types.Array)
                and arr.ndim == 1
                and arr.layout == "C"
                and element_ok(arr.dtype)
            ):
                raise NumbaTypeError(f"{name} needs a 1-D C-contiguous {what} array, got {arr}")
            if not isinstance(i, types.Integer):
                raise NumbaTypeError(f"{name}: index must be an integer, got {i}")

            def codegen(context, builder, sig, args):
                arrty, idxty = sig.args
                ary = cgutils.create_struct_proxy(arrty)(context, builder, value=args[0])
                idx = args[1]
                if idx.type.width < 64:
                    idx = builder.sext(idx, _i64) if idxty.signed else builder.zext(idx, _i64)
                elem = context.get_data_type(arrty.dtype)
                vty = ir.VectorType(elem, n)
                ptr = builder.gep(builder.bitcast(ary.data, vty.as_pointer()), [idx])
                vec = builder.load(ptr, align=4 * n)
                vals = [builder.extract_element(vec, ir.Constant(_i32, k)) for k in range(n)]
                return context.make_tuple(builder, sig.return_type, vals)

            return types.UniTuple(arr.dtype, n)(arr, i), codegen

        typer.__name__ = name
        return intrinsic(typer)

    def _is_word(dt):
        return isinstance(dt, types.Integer) and dt.bitwidth == 32

    load_u32x4 = _vector_load_intrinsic("load_u32x4", 4, _is_word, "int32/uint32")
    load_u32x2 = _vector_load_intrinsic("load_u32x2", 2, _is_word, "int32/uint32")
    load_f32x4 = _vector_load_intrinsic("load_f32x4", 4, lambda dt: dt == types.float32, "float32")
    load_f32x2 = _vector_load_intrinsic("load_f32x2", 2, lambda dt: dt == types.float32, "float32")

    @cuda.jit(device=True)
    def fast_exp(x):
        return libdevice.fast_expf(x)

    @cuda.jit(device=True)
    def _expf(x):
        return math.exp(x)  # float32 in, expf out

    @cuda.jit(device=True)
    def _log1pf(x):
        return math.log1p(x)

    @cuda.jit(device=True)
    def _sqrtf(x):
        return math.sqrt(x)

    @cuda.jit(device=True)
    def fma(a, b, c):
        # One rounding, and the operation fixed: a product left to the compiler may be contracted into an fma
        # with either neighbour, chosen by the context the code is inlined into (LTO links the whole kernel), so
        # two inlined copies of one expression can round differently (NOTES.md, "fma contraction").
        return cuda.fma(a, b, c)

    # Warp reductions: xor butterflies, so every lane ends with the same bits.
    @cuda.jit(device=True)
    def warp_sum(x):
        x += cuda.shfl_xor_sync(FULL_MASK, x, 16)
        x += cuda.shfl_xor_sync(FULL_MASK, x, 8)
        x += cuda.shfl_xor_sync(FULL_MASK, x, 4)
        x += cuda.shfl_xor_sync(FULL_MASK, x, 2)
        x += cuda.shfl_xor_sync(FULL_MASK, x, 1)
        return x

    @cuda.jit(device=True)
    def warp_sum2(a, b):
        """Two warp sums in five shuffles instead of ten: lanes 0-15 end with ``warp_sum(a)``, lanes 16-31 with
        ``warp_sum(b)``, the same bits (the first step pairs lane l's a with lane l^16's, as ``warp_sum`` does, but
        each lane sends the value the other half keeps; the other four steps stay within a half)."""
        upper = (cuda.laneid & 16) != 0
        x = (b if upper else a) + cuda.shfl_xor_sync(FULL_MASK, a if upper else b, 16)
        x += cuda.shfl_xor_sync(FULL_MASK, x, 8)
        x += cuda.shfl_xor_sync(FULL_MASK, x, 4)
        x += cuda.shfl_xor_sync(FULL_MASK, x, 2)
        x += cuda.shfl_xor_sync(FULL_MASK, x, 1)
        return x

    @cuda.jit(device=True)
    def _max_step(x, off):
        y = cuda.shfl_xor_sync(FULL_MASK, x, off)
        return y if (y > x or y != y) else x  # y != y: NaN propagates

    @cuda.jit(device=True)
    def warp_max(x):
        x = _max_step(x, 16)
        x = _max_step(x, 8)
        x = _max_step(x, 4)
        x = _max_step(x, 2)
        return _max_step(x, 1)

    @cuda.jit(device=True)
    def _argmax_takes(v, i, ov, oi):
        """True when (ov, oi) beats (v, i): larger value, NaN largest, ties -> lower index."""
        if ov != ov:
            return v == v or oi < i
        return ov > v or (ov == v and oi < i)

    @cuda.jit(device=True)
    def _argmax_step(v, i, off):
        ov = cuda.shfl_xor_sync(FULL_MASK, v, off)
        oi = cuda.shfl_xor_sync(FULL_MASK, i, off)
        if _argmax_takes(v, i, ov, oi):
            return ov, oi
        return v, i

    @cuda.jit(device=True)
    def warp_argmax(value, index):
        v, i = _argmax_step(value, index, 16)
        v, i = _argmax_step(v, i, 8)
        v, i = _argmax_step(v, i, 4)
        v, i = _argmax_step(v, i, 2)
        return _argmax_step(v, i, 1)

else:
    # ----------------------------------------------------------------------------------
    # Simulator: plain Python on NumPy scalars
    # ----------------------------------------------------------------------------------
    from megakernel.testing import simulator as _sim
    from megakernel.testing.simulator import bits_to_f32, f32_to_bits

    # bf16 bits -> float32, for all 65536 patterns: an exact bit cast at table-lookup speed.
    _BF16 = (np.arange(1 << 16, dtype=np.uint32) << 16).view(np.float32)

    def bf16_lo(w):
        return _BF16[int(w) & 0xFFFF]

    def bf16_hi(w):
        return _BF16[(int(w) >> 16) & 0xFFFF]

    def _vector_load(name, n, kinds):
        nbytes = 4 * n

        def load(arr, i):
            a = _sim.plain_array(arr)
            if a.ndim != 1 or a.dtype.itemsize != 4 or a.dtype.kind not in kinds:
                raise TypeError(f"{name} needs a 1-D {kinds!r}-kind 32-bit array, got {a.dtype}")
            if not a.flags.c_contiguous:
                raise TypeError(f"{name} needs a C-contiguous array")
            if a.ctypes.data % nbytes:
                raise ValueError(
                    f"{name}: array base address is not {nbytes}-byte aligned (a slice or row at "
                    "an unaligned offset); the GPU would fault or read the wrong words"
                )
            j = n * int(i)
            if j < 0 or j + n > a.shape[0]:
                raise IndexError(f"{name}: vector {int(i)} is out of bounds for {a.shape[0]} elements")
            _sim.record_reads(arr, j, n)  # the race detector sees vector loads like element reads
            return tuple(a[j : j + n])

        load.__name__ = name
        return load

    load_u32x4 = _vector_load("load_u32x4", 4, "iu")
    load_u32x2 = _vector_load("load_u32x2", 2, "iu")
    load_f32x4 = _vector_load("load_f32x4", 4, "f")
    load_f32x2 = _vector_load("load_f32x2", 2, "f")

    def fast_exp(x):
        return np.exp(np.float32(x))

    # float32 math that, like the GPU, overflows to inf instead of raising OverflowError
    # (Python's math.exp(1000.0) raises; expf(1000) on the GPU is inf).
    def _expf(x):
        return np.exp(np.float32(x))

    def _log1pf(x):
        return np.log1p(np.float32(x))

    def _sqrtf(x):
        return np.sqrt(np.float32(x))

    def fma(a, b, c):
        # a*b is exact in float64 (24 x 24 bits); one rounding there and one to float32 (a true fma rounds
        # once: the two differ only in rare halfway cases, which the tests' tolerances cover).
        return np.float32(np.float64(a) * np.float64(b) + np.float64(c))

    _LANES = np.arange(WARP_SIZE)

    def _warp_values(kind, x):
        vals = _sim.warp_gather(kind, x)
        if len(vals) != WARP_SIZE:
            raise RuntimeError(f"{kind} needs a full warp of 32 lanes (block size multiple of 32)")
        return np.array(vals, dtype=np.asarray(x).dtype)

    # The reductions gather the 32 lane values in one warp exchange, then replay the GPU's
    # xor butterfly in NumPy (same operations in the same order, so the same bits): one
    # barrier instead of five, which is most of a simulated reduction's cost.
    def warp_sum(x):
        v = _warp_values("warp_sum", x)
        for off in (16, 8, 4, 2, 1):
            v = v + v[_LANES ^ off]
        return v[_sim.lane_id()]

    def warp_sum2(a, b):
        va = _warp_values("warp_sum2", a)
        vb = _warp_values("warp_sum2", b)
        upper = (_LANES & 16) != 0
        v = np.where(upper, vb, va) + np.where(upper, va, vb)[_LANES ^ 16]
        for off in (8, 4, 2, 1):
            v = v + v[_LANES ^ off]
        return v[_sim.lane_id()]

    def warp_max(x):
        v = _warp_values("warp_max", x)
        for off in (16, 8, 4, 2, 1):
            y = v[_LANES ^ off]
            v = np.where((y > v) | (y != y), y, v)
        return v[_sim.lane_id()]

    def warp_argmax(value, index):
        pairs = _sim.warp_gather("warp_argmax", (value, index))
        if len(pairs) != WARP_SIZE:
            raise RuntimeError("warp_argmax needs a full warp of 32 lanes")
        v = np.array([p[0] for p in pairs], dtype=np.asarray(value).dtype)
        i = np.array([p[1] for p in pairs], dtype=np.asarray(index).dtype)
        for off in (16, 8, 4, 2, 1):
            ov, oi = v[_LANES ^ off], i[_LANES ^ off]
            take = np.where(ov != ov, (v == v) | (oi < i), (ov > v) | ((ov == v) & (oi < i)))
            v = np.where(take, ov, v)
            i = np.where(take, oi, i)
        lane = _sim.lane_id()
        return v[lane], i[lane]


# --------------------------------------------------------------------------------------
# Same source on both targets
# --------------------------------------------------------------------------------------

bf16_to_f32 = bf16_lo  # a lone bf16 (16 bits, zero- or sign-extended) decodes like a low half


@cuda.jit(device=True)
def f32_to_bf16_bits(f):
    # Round to nearest even on the bit pattern (what torch's CPU and CUDA code do): add
    # 0x7FFF plus the lowest kept bit, then drop the low 16 bits.  NaN must not go through
    # that (0x7F800001 would round to inf).
    u = f32_to_bits(f)
    if (u & uint32(0x7FFFFFFF)) > uint32(0x7F800000):
        return uint32(0x7FFF)
    return uint32((u + uint32(0x7FFF) + ((u >> uint32(16)) & uint32(1))) >> uint32(16))


@cuda.jit(device=True)
def block_sum(x, scratch):
    """Sum of float32 ``x`` over a 1-D block (blockDim.x a multiple of 32, <= 1024); every
    thread gets the result.  ``scratch``: a float32 shared array of at least 32 elements,
    free to reuse once this returns."""
    lane = cuda.threadIdx.x % WARP_SIZE
    warp = cuda.threadIdx.x // WARP_SIZE
    s = warp_sum(x)
    if lane == 0:
        scratch[warp] = s
    cuda.syncthreads()
    v = scratch[lane] if lane < cuda.blockDim.x // WARP_SIZE else float32(0)
    v = warp_sum(v)
    cuda.syncthreads()
    return v


@cuda.jit(device=True)
def block_max(x, scratch):
    """Max of float32 ``x`` over a 1-D block; same rules as ``block_sum``."""
    lane = cuda.threadIdx.x % WARP_SIZE
    warp = cuda.threadIdx.x // WARP_SIZE
    m = warp_max(x)
    if lane == 0:
        scratch[warp] = m
    cuda.syncthreads()
    v = scratch[lane] if lane < cuda.blockDim.x // WARP_SIZE else float32(-math.inf)
    v = warp_max(v)
    cuda.syncthreads()
    return v


@cuda.jit(device=True)
def sigmoid(x):
    return float32(1) / (float32(1) + _expf(-x))


@cuda.jit(device=True)
def fast_sigmoid(x):
    return float32(1) / (float32(1) + fast_exp(-x))


@cuda.jit(device=True)
def silu(x):
    return x / (float32(1) + _expf(-x))


@cuda.jit(device=True)
def softplus(x):
    # torch.nn.functional.softplus(x) (beta 1, threshold 20)
    if x > float32(20):
        return x
    return _log1pf(_expf(x))


@cuda.jit(device=True)
def rsqrt(x):
    # Correctly rounded sqrt and division (not rsqrt.approx): matches torch.rsqrt closely.
    return float32(1) / _sqrtf(x)

