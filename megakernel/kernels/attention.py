"""Gated attention decode (after the fused q|k|v matvec): prepare, split attention, combine.

Three launches per attention layer and token::

    attn_prepare   q = rope(rms_norm(query)), k = rope(rms_norm(k)) -> KV cache (bf16) at `position`; q, gate out
    attn_decode    flash-decoding: every block scores one split of the context for a group of query heads
    attn_combine   merge the splits (rescale by exp(m_i - m)), normalise, times sigmoid(gate) -> o_proj input

Sizes (``attention_sizes(config)``): ``Hq`` query heads, ``Hkv`` KV heads (query head ``h`` reads KV head
``h // (Hq/Hkv)``), head dim ``Dh``, rotary dims ``R`` (the first ``R`` dims of each head, rotate_half pairing
``i <-> i + R/2``). 0.8B: 8, 2, 256, 64.

attn_prepare
------------
Grid: ``Hq + Hkv`` blocks of ``min(256, Dh rounded up to 32)`` threads. Block ``b < Hq`` normalises query
head ``b`` (RMSNorm with ``(1 + q_norm_w)`` over Dh, eps), applies RoPE and writes ``q_out[b]``, and copies
the gate half of the head to ``gate_out``; block ``Hq + j`` does the same for key head ``j`` (``k_norm_w``),
writes it to ``k_cache[j, position]`` as bf16 (round to nearest even) and writes value head ``j`` (not normed)
to ``v_cache[j, position]``. A thread that rotates dim ``d < R`` recomputes its partner's normalised value
(same operations, same bits) instead of exchanging it through shared memory. The angle is
``float32(position) * inv_freq[i]`` (fp32, as the reference), and cos/sin come from :func:`sincos`, an fp32
Cody-Waite reduction plus polynomials accurate to about 1 ulp (libdevice's ``cosf`` drags in a float64,
local-memory slow path for huge arguments). All arithmetic follows the reference's order, so ``q_out`` and the
cache differ from it only through the sum of squares (another summation order) and cos/sin (a few ulp).

attn_decode
-----------
Grid ``(Hkv, n_splits)``; block ``(j, s)`` serves the ``G = Hq/Hkv`` query heads that share KV head ``j``, so
its keys and values are read once for all of them, over positions ``[s L / n, (s+1) L / n)`` (integer
division: splits differ by at most one position, none is empty while ``n <= L``). Each of the block's ``NW``
warps takes every ``NW``-th position of the split, two at a time; lane ``l`` holds dims ``l, l+32, l+64, ...``
of the ``G`` queries (registers), so a warp reads a key or value row as ``Dh/32`` coalesced 64-byte runs, and
issues the ``4 Dh/32`` loads of a pair of positions before using any. Per position: ``G`` dot products (warp
shuffle sums) scaled by ``1/sqrt(Dh)``; per pair the online softmax per head: running max ``m``,
``l = sum exp(s - m)`` and ``acc = sum exp(s - m) v`` (rescaled by ``exp(m_old - m_new)``). The warps then
merge through shared memory and the block writes, per query head, ``(m, l)`` to ``partial_ml[h, s]`` and the
unnormalised ``acc`` to ``partial_o[h, s]``. Bytes: ``2 * Hkv * L * Dh * 2`` (K and V, bf16) plus
``Hq * n * (Dh + 2) * 4`` of partials: 2 KB per position at the 0.8B shapes. Registers: the ``G * Dh/32``
query values and as many accumulators per lane (32 + 32 at the 0.8B shapes, 168 registers in all: one block of
8 warps per SM); the wrapper refuses ``G > 8`` or ``G * Dh/32 > 64``, which would spill to local memory.

attn_combine
------------
Grid ``Hq`` blocks; block ``h`` takes ``m = max_i m_i``, weights ``w_i = exp(m_i - m)`` (0 for an empty
split), ``L = sum_i l_i w_i`` and writes ``out[h*Dh + d] = (sum_i acc_i[d] w_i) / L * sigmoid(gate[h*Dh + d])``.
A thread's partials come ``COMBINE_BATCH`` (16) splits at a time, the first batch loaded before the block's
reductions of ``m`` and ``L``: the sum over the splits is still taken in split order, but its loads cost one L2
round trip per 16 splits instead of one per few (a combine of 32 splits was a ~5 us chain of round trips).

:func:`attention_splits` picks ``n_splits``: one per ``POSITIONS_PER_SPLIT`` (64) positions, at most
``MAX_SPLITS`` (128). At the 0.8B shapes a position costs 1 KB per KV head, so a split streams 64 KB per block
against ~4 KB of partials written (and read back by the combine); a 4k context gives ``2 x 64`` blocks, about
one per SM, and from 8k on ``2 x 128``.

Layouts (all kernel arrays from ``launch.as_kernel_array``, C-contiguous): KV caches are 3-D int16
``[Hkv, capacity, Dh]`` (``launch.halves`` of a bf16 cache); ``q_out`` / ``q`` fp32 ``[Hq, Dh]``;
``gate_out`` / ``gate`` / ``out`` fp32 ``[Hq * Dh]``; ``partial_ml`` fp32 ``[Hq, S, 2]`` and ``partial_o`` fp32
``[Hq, S, Dh]`` for any ``S >= n_splits`` (allocate ``S = MAX_SPLITS`` once).
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import numpy as np
from numba import cuda
from numba.cuda import float32, int16, int32, uint32

from megakernel import device as D
from megakernel import launch

__all__ = [
    "prepare_item",
    "group_query_item",
    "decode_item",
    "combine_item",
    "combine_cols_item",
    "combine_columns",
    "combine_cols_workspace",
    "decode_workspace",
    "combine_workspace",
    "splits_for_length",
    "attn_prepare",
    "attn_decode",
    "attn_combine",
    "attention_splits",
    "split_count",
    "split_count_device",
    "attention_sizes",
    "sincos",
    "MAX_SPLITS",
    "POSITIONS_PER_SPLIT",
    "PTX_SIGNATURES",
]

MAX_SPLITS = 128
COMBINE_BATCH = 16  # partials a combine thread loads at once (an L2 round trip per batch, not per split)
POSITIONS_PER_SPLIT = 64
MAX_GROUP = 8  # query heads per KV head in one attn_decode block (G = 16 spills the per-lane arrays to local memory)
MAX_LANE_VALUES = 64  # G * ceil(Dh / 32): query values (and as many accumulators) per lane, in registers
MAX_ANGLE = 4.0e6  # sincos reduces arguments exactly below ~2^22 * pi / 2


def attention_sizes(config) -> tuple[int, int, int, int]:
    """``(Hq, Hkv, Dh, R)`` of a ``reference.Qwen35Config``: the size arguments of the attention wrappers."""
    return config.num_attention_heads, config.num_key_value_heads, config.head_dim, config.rotary_dim


def split_count(length, positions_per_split, max_splits, cap):
    """The one rule for how many splits of the context attention decode uses for ``length`` positions: one per
    ``positions_per_split`` positions, at most ``max_splits`` and, if ``cap`` > 0, at most ``cap`` (the persistent
    kernel's one item per block), at least 1. Plain Python, also compiled as a device function
    (``split_count_device``), so the host (plans, the schedule) and the kernels cannot disagree."""
    n = (length + positions_per_split - 1) // positions_per_split
    n = min(max_splits, n)
    if cap > 0:
        n = min(cap, n)
    return max(1, n)


split_count_device = cuda.jit(device=True)(split_count)


def attention_splits(length: int, positions_per_split: int = POSITIONS_PER_SPLIT, max_splits: int = MAX_SPLITS,
                     cap: int = 0) -> int:
    """How many splits of the context ``attn_decode`` should use for ``length`` positions (>= 1; ``split_count``)."""
    if length < 1:
        raise ValueError(f"attention needs at least one cached position, got length {length}")
    return int(split_count(int(length), int(positions_per_split), int(max_splits), int(cap)))


# --------------------------------------------------------------------------------------------------------------
# Device helpers: fp32 sin/cos (with D.fma), bf16 bits for an int16 cache
# --------------------------------------------------------------------------------------------------------------

def _split_pio2():
    """pi/2 as three float32 pieces (Cody-Waite), from a 60-digit rational pi."""
    pi = Fraction("3.141592653589793238462643383279502884197169399375105820974944")
    rest = pi / 2
    parts = []
    for _ in range(3):
        p = np.float32(float(rest))
        parts.append(p)
        rest -= Fraction(float(p))
    return parts


_PIO2_1, _PIO2_2, _PIO2_3 = (np.float32(-p) for p in _split_pio2())
_TWO_OVER_PI = np.float32(2 / math.pi)
_ROUND_MAGIC = np.float32(12582912.0)  # 1.5 * 2^23: adding it rounds to an integer
# Taylor coefficients on [-pi/4, pi/4] (truncation error < 1e-11, far below float32 rounding)
_S3, _S5, _S7, _S9, _S11 = (np.float32(c) for c in (-1 / 6, 1 / 120, -1 / 5040, 1 / 362880, -1 / 39916800))
_C2, _C4, _C6, _C8, _C10, _C12 = (
    np.float32(c) for c in (-1 / 2, 1 / 24, -1 / 720, 1 / 40320, -1 / 3628800, 1 / 479001600)
)


@cuda.jit(device=True)
def sincos(a):
    """(sin a, cos a) for float32 ``a`` with ``|a| < MAX_ANGLE``, absolute error ~1e-7 (about 1 ulp).

    ``a = j pi/2 + r``: ``j = rint(a 2/pi)``, ``r`` by a three-piece fma reduction (the first step is exact),
    then polynomials in ``r`` on [-pi/4, pi/4] and the quadrant ``j mod 4`` picks signs and swaps."""
    j = D.fma(a, _TWO_OVER_PI, _ROUND_MAGIC) - _ROUND_MAGIC
    r = D.fma(j, _PIO2_1, a)
    r = D.fma(j, _PIO2_2, r)
    r = D.fma(j, _PIO2_3, r)
    r2 = r * r
    ps = D.fma(D.fma(D.fma(D.fma(_S11, r2, _S9), r2, _S7), r2, _S5), r2, _S3)
    sin_r = D.fma(ps * r2, r, r)
    pc = D.fma(D.fma(D.fma(D.fma(D.fma(_C12, r2, _C10), r2, _C8), r2, _C6), r2, _C4), r2, _C2)
    cos_r = D.fma(pc, r2, float32(1))
    quadrant = int32(j) & int32(3)
    if quadrant == 0:
        return sin_r, cos_r
    if quadrant == 1:
        return cos_r, -sin_r
    if quadrant == 2:
        return -sin_r, -cos_r
    return -cos_r, sin_r


@cuda.jit(device=True)
def _bf16_i16(x):
    """float32 -> bf16 (round to nearest even) as the int16 a torch bf16 tensor viewed as int16 holds."""
    b = D.f32_to_bf16_bits(x)
    return int16(int32(b) - int32((b & uint32(0x8000)) << uint32(1)))


# --------------------------------------------------------------------------------------------------------------
# Position and length: a host integer (baked into the launch) or a device int32[1] holding the position of the
# token being decoded (= tokens already cached), so one captured CUDA graph serves every step. Each kernel is
# compiled in one of the two flavours; these pick the read.
# --------------------------------------------------------------------------------------------------------------


@cuda.jit(device=True)
def _scalar(p):
    return p


@cuda.jit(device=True)
def _position_in_memory(p):
    return int32(p[0])


@cuda.jit(device=True)
def _length_in_memory(p):
    return int32(p[0]) + int32(1)  # the new token is cached before attention reads the cache


@cuda.jit(device=True)
def _splits_given(n_splits, length):
    return n_splits


@cuda.jit(device=True)
def splits_for_length(max_splits, length):
    """Splits in use for ``length`` positions when the grid was sized for the cache capacity (``max_splits``):
    ``split_count`` with POSITIONS_PER_SPLIT; blocks past it have nothing to do."""
    return int32(split_count_device(int32(length), int32(POSITIONS_PER_SPLIT), int32(max_splits), int32(0)))


# --------------------------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------------------------


def _threads_for(n: int) -> int:
    return min(256, 32 * ((n + 31) // 32))


@functools.lru_cache(maxsize=None)
def _rope_at(Dh: int, R: int):
    """``y = rope_at(proj, base, is_q, q_norm_w, k_norm_w, inv_freq, pos, r, d)``: dim ``d`` of the head at
    ``proj[base:]`` normalised (times ``r`` = 1 / rms, then ``1 + w``, w from ``q_norm_w`` or ``k_norm_w``) and
    rotated at the float32 position ``pos`` (the partner dim recomputed, not exchanged): the arithmetic
    ``prepare_item`` and ``group_query_item`` share, so a query made by either has the same bits. (The weight is
    picked per element: picking the array costs the persistent kernel registers.)"""
    HALF = R // 2

    @cuda.jit(device=True)
    def rope_at(proj, base, is_q, q_norm_w, k_norm_w, inv_freq, pos, r, d):
        w = q_norm_w[d] if is_q else k_norm_w[d]
        y = proj[base + d] * r * (float32(1) + w)
        if d < R:
            lo = d < HALF
            p = d + HALF if lo else d - HALF
            wp = q_norm_w[p] if is_q else k_norm_w[p]
            yp = proj[base + p] * r * (float32(1) + wp)
            sn, cs = sincos(pos * inv_freq[d if lo else p])
            if lo:
                y = y * cs + (-yp) * sn  # x * cos + rotate_half(x) * sin, rotate_half = [-x2, x1]
            else:
                y = y * cs + yp * sn
        return y

    return rope_at


@functools.lru_cache(maxsize=None)
def prepare_item(Hq: int, Hkv: int, Dh: int, R: int, eps: float, T: int):
    """``attn_prepare`` for one work item as a device function (one per size tuple; ``T`` = the block size):

        body(b, proj, q_norm_w, k_norm_w, inv_freq, position, k_cache, v_cache, q_out, gate_out, scratch)

    item ``b < Hq``: query head ``b`` (norm, RoPE -> ``q_out[b]``, its gate half -> ``gate_out``); item ``Hq + j``:
    key head ``j`` (norm, RoPE -> ``k_cache[j, position]`` as bf16) and value head ``j`` -> ``v_cache[j, position]``.
    ``position``: an integer; ``scratch``: a float32 shared array of >= 32. Returns with the block synchronised."""
    K_OFF = Hq * 2 * Dh  # proj = [q|gate per head (Hq 2 Dh) | k (Hkv Dh) | v (Hkv Dh)]
    V_OFF = K_OFF + Hkv * Dh
    EPS = np.float32(eps)
    DH_F = np.float32(Dh)
    rope_at = _rope_at(Dh, R)

    @cuda.jit(device=True)
    def attn_prepare_body(b, proj, q_norm_w, k_norm_w, inv_freq, position, k_cache, v_cache, q_out, gate_out,
                          scratch):
        tid = cuda.threadIdx.x
        is_q = b < Hq
        j = b - Hq
        base = b * 2 * Dh if is_q else K_OFF + j * Dh
        acc = float32(0)
        for d in range(tid, Dh, T):
            x = proj[base + d]
            acc += x * x
        r = D.rsqrt(D.block_sum(acc, scratch) / DH_F + EPS)
        pos = float32(position)
        for d in range(tid, Dh, T):
            y = rope_at(proj, base, is_q, q_norm_w, k_norm_w, inv_freq, pos, r, d)
            if is_q:
                q_out[b, d] = y
                gate_out[b * Dh + d] = proj[base + Dh + d]
            else:
                k_cache[j, position, d] = _bf16_i16(y)
                v_cache[j, position, d] = _bf16_i16(proj[V_OFF + j * Dh + d])
        cuda.syncthreads()

    return attn_prepare_body


@functools.lru_cache(maxsize=None)
def group_query_item(Hq: int, Hkv: int, Dh: int, R: int, eps: float, T: int):
    """The queries of one KV head's group, normed and rotated as ``prepare_item`` does (the same sum, the same
    ``rope_at``: the same bits), into shared memory instead of the global ``q`` (the persistent kernel's folded
    attention: each decode item makes the queries it scores with, so no grid barrier separates prepare from
    decode):

        body(kvh, proj, q_norm_w, inv_freq, position, qs, scratch)

    writes query head ``kvh G + g`` (``G = Hq / Hkv``) to ``qs[g Dh:(g + 1) Dh]``. Returns with the block
    synchronised."""
    G = Hq // Hkv
    EPS = np.float32(eps)
    DH_F = np.float32(Dh)
    rope_at = _rope_at(Dh, R)

    @cuda.jit(device=True)
    def group_query_body(kvh, proj, q_norm_w, inv_freq, position, qs, scratch):
        tid = cuda.threadIdx.x
        pos = float32(position)
        for g in range(G):
            base = (kvh * G + g) * 2 * Dh
            acc = float32(0)
            for d in range(tid, Dh, T):
                x = proj[base + d]
                acc += x * x
            r = D.rsqrt(D.block_sum(acc, scratch) / DH_F + EPS)  # its barriers also order the last head's writes
            for d in range(tid, Dh, T):
                qs[g * Dh + d] = rope_at(proj, base, True, q_norm_w, q_norm_w, inv_freq, pos, r, d)
        cuda.syncthreads()

    return group_query_body


@functools.lru_cache(maxsize=None)
def prepare_kernel(Hq: int, Hkv: int, Dh: int, R: int, eps: float, T: int, device_position: bool = False):
    """``attn_prepare`` for one size tuple (``prepare_item``, one item per block); launch as ``[Hq + Hkv, T]`` with
    ``(proj, q_norm_w, k_norm_w, inv_freq, position, k_cache, v_cache, q_out, gate_out)``; ``position`` is an
    integer, or with ``device_position`` an int32[1] device array holding it."""
    READ_POSITION = _position_in_memory if device_position else _scalar
    body = prepare_item(Hq, Hkv, Dh, R, eps, T)

    @cuda.jit
    def attn_prepare_k(proj, q_norm_w, k_norm_w, inv_freq, position_arg, k_cache, v_cache, q_out, gate_out):
        scratch = cuda.shared.array(32, float32)
        body(cuda.blockIdx.x, proj, q_norm_w, k_norm_w, inv_freq, READ_POSITION(position_arg), k_cache, v_cache,
             q_out, gate_out, scratch)

    return attn_prepare_k


def _decode_warps(Hq, Hkv, Dh):
    """Warps per attn_decode block: 8, fewer if the per-warp partials would not fit in 40 KB of shared memory."""
    G = Hq // Hkv
    return max(1, min(8, 40960 // (4 * G * Dh + 8 * G)))


def decode_workspace(Hq: int, Hkv: int, Dh: int, NW: int) -> int:
    """float32 shared-memory elements one ``decode_item`` needs: per warp and query head of the group, the running
    max, the running sum and the Dh accumulators."""
    return NW * (Hq // Hkv) * (Dh + 2)


@functools.lru_cache(maxsize=None)
def decode_item(Hq: int, Hkv: int, Dh: int, NW: int, staged: bool = False):
    """``attn_decode`` for one work item as a device function (one per size tuple; ``NW`` = warps per block):

        body(kvh, split, n_splits, length, q, k_cache, v_cache, partial_ml, partial_o, ws)

    scores positions ``[split L / n, (split+1) L / n)`` of KV head ``kvh`` for its ``G = Hq/Hkv`` query heads and
    writes their partials (module docstring). ``length``, ``n_splits``: integers (1 <= n_splits <= length);
    ``ws``: a float32 shared array of >= ``decode_workspace(Hq, Hkv, Dh, NW)``. Returns with the block
    synchronised.

    ``staged``: ``q`` is the group's queries in shared memory, ``q[g Dh + d]`` (``group_query_item``), and may lie in
    ``ws``: every warp loads them into registers, then the block synchronises before the merge reuses ``ws``."""
    G = Hq // Hkv
    E = -(-Dh // 32)  # dims per lane
    EXACT = Dh % 32 == 0
    T = 32 * NW
    SCALE = np.float32(Dh**-0.5)
    NEG_INF = np.float32(-np.inf)
    L_OFF = NW * G  # ws = [m (NW G) | l (NW G) | acc (NW G Dh)]
    A_OFF = 2 * NW * G
    STAGED = staged

    @cuda.jit(device=True)
    def attn_decode_body(kvh, split, n_splits, length, q, k_cache, v_cache, partial_ml, partial_o, ws):
        tid = cuda.threadIdx.x
        lane = tid % 32
        warp = tid // 32
        h0 = kvh * G
        start = (split * length) // n_splits
        end = ((split + 1) * length) // n_splits

        qr = cuda.local.array((G, E), float32)
        acc = cuda.local.array((G, E), float32)
        k0 = cuda.local.array(E, float32)
        v0 = cuda.local.array(E, float32)
        k1 = cuda.local.array(E, float32)
        v1 = cuda.local.array(E, float32)
        m_run = cuda.local.array(G, float32)
        l_run = cuda.local.array(G, float32)
        for g in range(G):
            m_run[g] = NEG_INF
            l_run[g] = float32(0)
            for e in range(E):
                d = lane + 32 * e
                acc[g, e] = float32(0)
                if STAGED:
                    qr[g, e] = q[g * Dh + d] if (EXACT or d < Dh) else float32(0)
                else:
                    qr[g, e] = q[h0 + g, d] if (EXACT or d < Dh) else float32(0)
        if STAGED:
            cuda.syncthreads()  # every warp has its queries: ws is free for the merge

        # Two positions per iteration (t0 and t1 = t0 + NW): 4 E independent loads in flight per lane, and
        # one rescale of the accumulators per pair.
        for t0 in range(start + warp, end, 2 * NW):
            t1 = t0 + NW
            pair = t1 < end
            for e in range(E):
                d = lane + 32 * e
                if EXACT or d < Dh:
                    k0[e] = D.bf16_to_f32(k_cache[kvh, t0, d])
                    v0[e] = D.bf16_to_f32(v_cache[kvh, t0, d])
                    if pair:
                        k1[e] = D.bf16_to_f32(k_cache[kvh, t1, d])
                        v1[e] = D.bf16_to_f32(v_cache[kvh, t1, d])
                    else:
                        k1[e] = float32(0)
                        v1[e] = float32(0)
                else:
                    k0[e] = float32(0)
                    v0[e] = float32(0)
                    k1[e] = float32(0)
                    v1[e] = float32(0)
            for g in range(G):
                dot0 = float32(0)
                dot1 = float32(0)
                for e in range(E):
                    dot0 += qr[g, e] * k0[e]
                    dot1 += qr[g, e] * k1[e]
                s0 = D.warp_sum(dot0) * SCALE
                s1 = D.warp_sum(dot1) * SCALE if pair else NEG_INF
                m_new = m_run[g]
                if s0 > m_new:
                    m_new = s0
                if s1 > m_new:
                    m_new = s1
                alpha = float32(math.exp(m_run[g] - m_new))  # exp(-inf) = 0 on a warp's first position
                p0 = float32(math.exp(s0 - m_new))
                p1 = float32(math.exp(s1 - m_new))  # 0 without a second position
                l_run[g] = l_run[g] * alpha + p0 + p1
                m_run[g] = m_new
                for e in range(E):
                    acc[g, e] = acc[g, e] * alpha + p0 * v0[e] + p1 * v1[e]

        # merge the warps of the block
        for g in range(G):
            if lane == 0:
                ws[warp * G + g] = m_run[g]
                ws[L_OFF + warp * G + g] = l_run[g]
            for e in range(E):
                d = lane + 32 * e
                if EXACT or d < Dh:
                    ws[A_OFF + (warp * G + g) * Dh + d] = acc[g, e]
        cuda.syncthreads()
        for idx in range(tid, G * Dh, T):
            g = idx // Dh
            d = idx % Dh
            m = NEG_INF
            for w in range(NW):
                if ws[w * G + g] > m:
                    m = ws[w * G + g]
            o = float32(0)
            lsum = float32(0)
            for w in range(NW):
                mw = ws[w * G + g]
                f = float32(math.exp(mw - m)) if mw > NEG_INF else float32(0)
                o += ws[A_OFF + (w * G + g) * Dh + d] * f
                lsum += ws[L_OFF + w * G + g] * f
            partial_o[h0 + g, split, d] = o
            if d == 0:
                partial_ml[h0 + g, split, 0] = m
                partial_ml[h0 + g, split, 1] = lsum
        cuda.syncthreads()

    return attn_decode_body


@functools.lru_cache(maxsize=None)
def decode_kernel(Hq: int, Hkv: int, Dh: int, NW: int, device_length: bool = False):
    """``attn_decode`` for one size tuple and ``NW`` warps per block (``decode_item``, block (x, y) = item
    (kvh, split)); launch as ``[(Hkv, n_splits), 32 NW]`` with ``(q, k_cache, v_cache, length, n_splits,
    partial_ml, partial_o)``. With ``device_length``, ``length`` is the int32[1] device position (length =
    position + 1) and ``n_splits`` the grid's split count (sized for the cache capacity): blocks past the splits
    that ``length`` needs return at once."""
    READ_LENGTH = _length_in_memory if device_length else _scalar
    SPLITS = splits_for_length if device_length else _splits_given
    body = decode_item(Hq, Hkv, Dh, NW)
    WS = decode_workspace(Hq, Hkv, Dh, NW)

    @cuda.jit
    def attn_decode_k(q, k_cache, v_cache, length_arg, grid_splits, partial_ml, partial_o):
        length = READ_LENGTH(length_arg)
        n_splits = SPLITS(grid_splits, length)
        if cuda.blockIdx.y >= n_splits:
            return  # the whole block: no barrier is left waiting
        ws = cuda.shared.array(WS, float32)
        body(cuda.blockIdx.x, cuda.blockIdx.y, n_splits, length, q, k_cache, v_cache, partial_ml, partial_o, ws)

    return attn_decode_k


def combine_workspace() -> int:
    """float32 shared-memory elements one ``combine_item`` needs: a weight per split and a reduction scratch."""
    return MAX_SPLITS + 32


@functools.lru_cache(maxsize=None)
def split_weights(T: int):
    """The combine's reductions over the splits, one copy for ``combine_item`` and ``combine_cols_item`` so that both
    take the same sums (``T`` = the block size; thread ``t`` takes splits ``t, t + T, ...``):

        thread_max(h, n_splits, partial_ml) -> this thread's largest ``m_i`` (``block_max`` gives ``m``)
        weights(h, n_splits, partial_ml, m, wsh) -> this thread's share of ``L = sum_i l_i w_i`` (``block_sum``
            gives ``L``), each ``w_i = exp(m_i - m)`` (0 for an empty split) written to ``wsh[i]``"""
    NEG_INF = np.float32(-np.inf)

    @cuda.jit(device=True)
    def thread_max(h, n_splits, partial_ml):
        m = NEG_INF
        for i in range(cuda.threadIdx.x, n_splits, T):
            mi = partial_ml[h, i, 0]
            if mi > m:
                m = mi
        return m

    @cuda.jit(device=True)
    def weights(h, n_splits, partial_ml, m, wsh):
        lsum = float32(0)
        for i in range(cuda.threadIdx.x, n_splits, T):
            mi = partial_ml[h, i, 0]
            w = float32(math.exp(mi - m)) if mi > NEG_INF else float32(0)  # an empty split weighs 0
            wsh[i] = w
            lsum += partial_ml[h, i, 1] * w
        return lsum

    return thread_max, weights


@functools.lru_cache(maxsize=None)
def combine_item(Hq: int, Dh: int, T: int, gate_stride: int = 0, batch: int = 0):
    """``attn_combine`` for one query head as a device function (``T`` = the block size):

        body(h, n_splits, partial_ml, partial_o, gate, out, ws)

    ``ws``: a float32 shared array of >= ``combine_workspace()``. Returns with the block synchronised. Head ``h``'s
    gate is ``gate[h * gate_stride:][:Dh]`` (default ``Dh``: a packed gate; ``2 Dh`` reads it straight from the
    q|gate projection, ``gate = proj[Dh:]``). ``batch``: the partials a thread loads at once (default
    ``COMBINE_BATCH``; with at least as many as there are splits, the body waits for one round trip of partials,
    the first, loaded with the m/L pairs and the gate before the block's reductions). The same sums in the same
    order whatever the batch."""
    thread_max, weights = split_weights(T)
    GS = gate_stride or Dh
    B = batch or COMBINE_BATCH

    @cuda.jit(device=True)
    def attn_combine_body(h, n_splits, partial_ml, partial_o, gate, out, ws):
        wsh = ws[0:MAX_SPLITS]
        scratch = ws[MAX_SPLITS:MAX_SPLITS + 32]
        tid = cuda.threadIdx.x
        # this thread's first batch of partials and its first gate value, loaded before the reductions (they do not
        # depend on them)
        vals = cuda.local.array(B, float32)
        for k in range(B):
            vals[k] = partial_o[h, k, tid] if (k < n_splits and tid < Dh) else float32(0)
        g0 = gate[h * GS + tid] if tid < Dh else float32(0)
        m = D.block_max(thread_max(h, n_splits, partial_ml), scratch)
        lsum = D.block_sum(weights(h, n_splits, partial_ml, m, wsh), scratch)  # its barriers also publish wsh
        d = tid
        while d < Dh:
            o = float32(0)
            i0 = 0
            while i0 < n_splits:  # the splits in order, B loads in flight at a time (one round trip per batch)
                if i0 > 0 or d > tid:
                    for k in range(B):
                        vals[k] = partial_o[h, i0 + k, d] if i0 + k < n_splits else float32(0)
                for k in range(B):
                    if i0 + k < n_splits:
                        o += vals[k] * wsh[i0 + k]
                i0 += B
            gd = g0 if d == tid else gate[h * GS + d]
            out[h * Dh + d] = o / lsum * D.sigmoid(gd)
            d += T
        cuda.syncthreads()

    return attn_combine_body


def combine_columns(Dh: int, T: int, cols: int) -> int:
    """``combine_cols_item``'s column width for a wish of ``cols``: the largest width <= ``cols`` that divides both
    ``Dh`` (a head's columns split evenly) and ``T`` (whole row groups of threads)."""
    return max(c for c in range(1, max(1, min(cols, Dh, T)) + 1) if Dh % c == 0 and T % c == 0)


def combine_cols_workspace(cols: int) -> int:
    """float32 shared-memory elements one ``combine_cols_item`` of width ``cols`` needs: ``combine_workspace()``
    and every split's partials of its columns."""
    return combine_workspace() + cols * MAX_SPLITS


@functools.lru_cache(maxsize=None)
def combine_cols_item(Hq: int, Dh: int, T: int, cols: int):
    """``attn_combine`` over ``cols`` columns of a query head, with all of its partials in one L2 round trip:

        body(item, n_splits, partial_ml, partial_o, gate, out, ws)

    item ``h * (Dh / cols) + c``: columns ``[c cols, (c+1) cols)`` of head ``h`` (``cols`` from
    ``combine_columns``). ``combine_item`` gives each thread a column and the splits ``COMBINE_BATCH`` at a time:
    at the persistent kernel's 16 positions per split a 512-token context has 33 splits, three round trips one
    after the other. Here the block's ``T / cols`` row groups of threads share a head's columns: thread ``(r, j)``
    loads split ``r + k T/cols`` of column ``j`` for every ``k`` at once (at most ``MAX_SPLITS / (T/cols)`` loads,
    issued together with the splits' ``(m, l)`` and the gate), parks them in shared memory, and after the block's
    reductions of ``m`` and ``L`` (``split_weights``, as in ``combine_item``: the same sums on the same threads) the
    first row group sums its column over the splits in split order, as ``combine_item`` does: the same bits, on
    ``Dh / cols`` times as many blocks. ``ws``: >= ``combine_cols_workspace(cols)`` floats. Returns with the block
    synchronised."""
    if Dh % cols or T % cols:
        raise ValueError(f"combine_cols_item: cols = {cols} must divide head_dim ({Dh}) and the block size ({T})")
    thread_max, weights = split_weights(T)
    CPH = Dh // cols  # items per head
    RG = T // cols  # row groups
    B = -(-MAX_SPLITS // RG)  # loads per thread: every split at once
    BUF = combine_workspace()

    @cuda.jit(device=True)
    def attn_combine_cols_body(item, n_splits, partial_ml, partial_o, gate, out, ws):
        wsh = ws[0:MAX_SPLITS]
        scratch = ws[MAX_SPLITS:MAX_SPLITS + 32]
        buf = ws[BUF:BUF + cols * MAX_SPLITS]  # [split, column]
        tid = cuda.threadIdx.x
        h = item // CPH
        j = tid % cols
        r = tid // cols
        d = (item % CPH) * cols + j
        vals = cuda.local.array(B, float32)
        for k in range(B):  # every load first (a store to shared memory in between would hold the next back)
            i = r + k * RG
            vals[k] = partial_o[h, i, d] if i < n_splits else float32(0)
        g0 = gate[h * Dh + d] if r == 0 else float32(0)
        m = thread_max(h, n_splits, partial_ml)  # (its loads issued before the stores below)
        for k in range(B):
            i = r + k * RG
            if i < n_splits:
                buf[i * cols + j] = vals[k]
        m = D.block_max(m, scratch)
        lsum = D.block_sum(weights(h, n_splits, partial_ml, m, wsh), scratch)  # its barriers also publish wsh, buf
        if r == 0:
            o = float32(0)
            for i in range(n_splits):  # split order, as combine_item sums
                o += buf[i * cols + j] * wsh[i]
            out[h * Dh + d] = o / lsum * D.sigmoid(g0)
        cuda.syncthreads()

    return attn_combine_cols_body


@functools.lru_cache(maxsize=None)
def combine_kernel(Hq: int, Dh: int, T: int, device_length: bool = False):
    """``attn_combine`` for one size tuple (``combine_item``, one query head per block); launch as ``[Hq, T]`` with
    ``(partial_ml, partial_o, gate, out, n_splits, length)``; with ``device_length`` the splits in use follow the
    device-held length as in ``decode_kernel`` (``length`` is ignored otherwise)."""
    READ_LENGTH = _length_in_memory if device_length else _scalar
    SPLITS = splits_for_length if device_length else _splits_given
    body = combine_item(Hq, Dh, T)
    WS = combine_workspace()

    @cuda.jit
    def attn_combine_k(partial_ml, partial_o, gate, out, grid_splits, length_arg):
        n_splits = SPLITS(grid_splits, READ_LENGTH(length_arg))
        ws = cuda.shared.array(WS, float32)
        body(cuda.blockIdx.x, n_splits, partial_ml, partial_o, gate, out, ws)

    return attn_combine_k


# --------------------------------------------------------------------------------------------------------------
# Launching
# --------------------------------------------------------------------------------------------------------------


def _check_sizes(Hq, Hkv, Dh, R):
    for name, field, value in (
        ("Hq", "num_attention_heads", Hq),
        ("Hkv", "num_key_value_heads", Hkv),
        ("Dh", "head_dim", Dh),
        ("R", "rotary dims (head_dim * partial_rotary_factor)", R),
    ):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"attention: {field} ({name}) must be a positive integer, got {value!r}")
    if Hq % Hkv:
        raise ValueError(
            f"attention: num_attention_heads (Hq = {Hq}) must be a multiple of num_key_value_heads (Hkv = {Hkv})"
        )
    if R % 2 or R > Dh:
        raise ValueError(
            f"attention: rotary dims R = head_dim * partial_rotary_factor = {R} must be even and <= head_dim "
            f"({Dh}) (rotate_half pairs dim i with i + R/2)"
        )


_PREPARE: dict = {}


def attn_prepare(proj, q_norm_w, k_norm_w, inv_freq, position, k_cache, v_cache, q_out, gate_out,
                 Hq, Hkv, Dh, R, eps=1e-6) -> None:
    """Norms, RoPE and the KV-cache append for one token at ``position`` (launch on torch's stream, no sync).

    ``proj`` fp32 [Hq 2 Dh + 2 Hkv Dh]: ``[q_proj (per head [query Dh | gate Dh]) | k_proj | v_proj]``;
    ``q_norm_w``, ``k_norm_w`` fp32 [Dh] (zero-centred, applied as ``1 + w``); ``inv_freq`` fp32 [R/2];
    ``k_cache``, ``v_cache`` int16 [Hkv, capacity, Dh] (bf16 bits), position ``position`` written;
    ``q_out`` fp32 [Hq, Dh]; ``gate_out`` fp32 [Hq Dh]. ``eps``: ``rms_norm_eps``. ``position``: an integer, or
    an int32[1] device array holding it (then one captured CUDA graph serves every step; the caller keeps it
    inside the cache).
    """
    skey, stream = launch.current_stream()
    on_device = _device_held(position, "position")
    key = (Hq, Hkv, Dh, R, eps, on_device, skey)
    entry = _PREPARE.get(key)
    if entry is None:
        _check_sizes(Hq, Hkv, Dh, R)
        T = _threads_for(Dh)
        kernel = prepare_kernel(Hq, Hkv, Dh, R, float(eps), T, on_device)
        shapes = ((Hq * 2 * Dh + 2 * Hkv * Dh,), (Dh,), (Dh,), (R // 2,), (Hq, Dh), (Hq * Dh,))
        entry = _PREPARE[key] = (launch.configured(kernel, Hq + Hkv, T, stream), shapes)
    run, shapes = entry
    for name, a, shape in zip(("proj", "q_norm_w", "k_norm_w", "inv_freq", "q_out", "gate_out"),
                              (proj, q_norm_w, k_norm_w, inv_freq, q_out, gate_out), shapes):
        if a.shape != shape:
            raise ValueError(f"attn_prepare: {name} has shape {tuple(a.shape)}, expected {shape}")
    _check_cache(k_cache, v_cache, Hkv, Dh)
    if not on_device and (not 0 <= position < k_cache.shape[1] or position >= MAX_ANGLE):
        raise ValueError(f"attn_prepare: position {position} outside the KV cache (capacity {k_cache.shape[1]})")
    run(proj, q_norm_w, k_norm_w, inv_freq, position, k_cache, v_cache, q_out, gate_out)


def _device_held(value, what: str) -> bool:
    """True for an int32[1] device array, False for an integer; anything else is refused."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return False
    if getattr(value, "shape", None) == (1,) and np.dtype(value.dtype) == np.int32:
        return True
    raise ValueError(f"attention: {what} must be an integer or an int32[1] device array, got {value!r}")


def _check_cache(k_cache, v_cache, Hkv, Dh):
    if (k_cache.ndim != 3 or k_cache.shape[0] != Hkv or k_cache.shape[2] != Dh
            or v_cache.shape != k_cache.shape):
        raise ValueError(
            f"attention: KV caches must be int16 [Hkv={Hkv}, capacity, Dh={Dh}], got {tuple(k_cache.shape)} and "
            f"{tuple(v_cache.shape)}"
        )


_DECODE: dict = {}


def attn_decode(q, k_cache, v_cache, length, partial_ml, partial_o, n_splits, Hq, Hkv, Dh, R=None, *,
                threads=None) -> None:
    """Split attention over cache positions ``[0, length)`` for every query head (launch on torch's stream).

    ``q`` fp32 [Hq, Dh] (after norm and RoPE, from ``attn_prepare``); caches int16 [Hkv, capacity, Dh];
    ``partial_ml`` fp32 [Hq, S, 2] and ``partial_o`` fp32 [Hq, S, Dh] with ``S >= n_splits``; ``n_splits`` from
    :func:`attention_splits` (any ``1 <= n_splits <= MAX_SPLITS`` works). ``R`` is accepted for a uniform
    ``*attention_sizes(config)`` call and not used. ``threads``: block size (a multiple of 32), default 8 warps.
    """
    skey, stream = launch.current_stream()
    on_device = _device_held(length, "length")
    key = (Hq, Hkv, Dh, n_splits, threads, on_device, skey)
    entry = _DECODE.get(key)
    if entry is None:
        _check_sizes(Hq, Hkv, Dh, 2 if R is None else R)
        if not 1 <= n_splits <= MAX_SPLITS:
            raise ValueError(f"attn_decode: n_splits = {n_splits} must be in [1, {MAX_SPLITS}]")
        group, per_lane = Hq // Hkv, -(-Dh // 32)
        if group > MAX_GROUP or group * per_lane > MAX_LANE_VALUES:
            raise ValueError(
                f"attn_decode: num_attention_heads / num_key_value_heads = {group} query heads per KV head with "
                f"head_dim {Dh}: each lane keeps {group} x {per_lane} query values and as many accumulators in "
                f"registers; this kernel handles at most {MAX_GROUP} heads per group and {MAX_LANE_VALUES} values "
                "(more would go to local memory)"
            )
        nw = _decode_warps(Hq, Hkv, Dh) if threads is None else threads // 32
        if threads is not None and (threads % 32 or not 32 <= threads <= 1024):
            raise ValueError(f"attn_decode: threads = {threads} must be a multiple of 32 in [32, 1024]")
        if 4 * nw * (Hq // Hkv) * (Dh + 2) > 48 * 1024:
            raise ValueError(
                f"attn_decode: {nw} warps x {Hq // Hkv} heads x head_dim {Dh} exceed 48 KB of shared memory"
            )
        kernel = decode_kernel(Hq, Hkv, Dh, nw, on_device)
        entry = _DECODE[key] = launch.configured(kernel, (Hkv, n_splits), 32 * nw, stream)
    if q.shape != (Hq, Dh):
        raise ValueError(f"attn_decode: q has shape {tuple(q.shape)}, expected {(Hq, Dh)}")
    _check_cache(k_cache, v_cache, Hkv, Dh)
    _check_partials(partial_ml, partial_o, Hq, Dh, n_splits)
    if not on_device and not 1 <= length <= k_cache.shape[1]:
        raise ValueError(f"attn_decode: length {length} must be in [1, capacity {k_cache.shape[1]}]")
    entry(q, k_cache, v_cache, length, n_splits, partial_ml, partial_o)


def _check_partials(partial_ml, partial_o, Hq, Dh, n_splits):
    if (partial_ml.ndim != 3 or partial_ml.shape[0] != Hq or partial_ml.shape[2] != 2
            or partial_o.ndim != 3 or partial_o.shape[0] != Hq or partial_o.shape[2] != Dh
            or min(partial_ml.shape[1], partial_o.shape[1]) < n_splits):
        raise ValueError(
            f"attention: partial_ml must be fp32 [Hq={Hq}, S, 2] and partial_o [Hq, S, Dh={Dh}] with "
            f"S >= n_splits = {n_splits}; got {tuple(partial_ml.shape)} and {tuple(partial_o.shape)}"
        )


_COMBINE: dict = {}


def attn_combine(partial_ml, partial_o, gate, out, n_splits, Hq, Hkv, Dh, R=None, length=None) -> None:
    """Merge the ``n_splits`` partials of :func:`attn_decode` and apply the output gate (torch's stream).

    ``gate`` fp32 [Hq Dh] (from ``attn_prepare``); ``out`` fp32 [Hq Dh]: ``softmax(q k^T / sqrt(Dh)) v *
    sigmoid(gate)``, the input of o_proj. ``Hkv``, ``R`` are accepted for a uniform call and not used.
    ``length``: the int32[1] device position when ``attn_decode`` was given one (``n_splits`` is then the grid's
    split count); None with a host ``n_splits``.
    """
    skey, stream = launch.current_stream()
    on_device = length is not None and _device_held(length, "length")
    key = (Hq, Dh, on_device, skey)
    entry = _COMBINE.get(key)
    if entry is None:
        _check_sizes(Hq, Hkv, Dh, 2 if R is None else R)
        T = _threads_for(Dh)
        entry = _COMBINE[key] = launch.configured(combine_kernel(Hq, Dh, T, on_device), Hq, T, stream)
    if not 1 <= n_splits <= MAX_SPLITS:
        raise ValueError(f"attn_combine: n_splits = {n_splits} must be in [1, {MAX_SPLITS}]")
    if gate.shape != (Hq * Dh,) or out.shape != (Hq * Dh,):
        raise ValueError(f"attn_combine: gate and out must be fp32 [{Hq * Dh}], got {gate.shape}, {out.shape}")
    _check_partials(partial_ml, partial_o, Hq, Dh, n_splits)
    entry(partial_ml, partial_o, gate, out, n_splits, length if on_device else 0)


# --------------------------------------------------------------------------------------------------------------
# Compiled for sm_90 by tests/test_kernels_attention.py (megakernel.testing.ptx_check): the 0.8B shapes and an awkward
# one (head dim not a multiple of 32, GQA 3:1, one warp).
# --------------------------------------------------------------------------------------------------------------

attn_prepare_0p8b = prepare_kernel(8, 2, 256, 64, 1e-6, _threads_for(256))
attn_decode_0p8b = decode_kernel(8, 2, 256, _decode_warps(8, 2, 256))
attn_combine_0p8b = combine_kernel(8, 256, _threads_for(256))
attn_prepare_awkward = prepare_kernel(3, 1, 24, 12, 1e-6, _threads_for(24))
attn_decode_awkward = decode_kernel(3, 1, 24, 1)
attn_combine_awkward = combine_kernel(3, 24, _threads_for(24))
attn_prepare_0p8b_graph = prepare_kernel(8, 2, 256, 64, 1e-6, _threads_for(256), True)
attn_decode_0p8b_graph = decode_kernel(8, 2, 256, _decode_warps(8, 2, 256), True)
attn_combine_0p8b_graph = combine_kernel(8, 256, _threads_for(256), True)
_PREPARE_SIG = ("void(float32[::1], float32[::1], float32[::1], float32[::1], int64, int16[:, :, ::1], "
                "int16[:, :, ::1], float32[:, ::1], float32[::1])")
_DECODE_SIG = ("void(float32[:, ::1], int16[:, :, ::1], int16[:, :, ::1], int64, int64, float32[:, :, ::1], "
               "float32[:, :, ::1])")
_COMBINE_SIG = "void(float32[:, :, ::1], float32[:, :, ::1], float32[::1], float32[::1], int64, int64)"
_POS = "int32[::1]"
_PREPARE_SIG_GRAPH = _PREPARE_SIG.replace("int64", _POS)
_DECODE_SIG_GRAPH = _DECODE_SIG.replace("int64, int64", f"{_POS}, int64")
_COMBINE_SIG_GRAPH = _COMBINE_SIG.replace("int64, int64", f"int64, {_POS}")
PTX_SIGNATURES = {
    "attn_prepare_0p8b": [_PREPARE_SIG],
    "attn_decode_0p8b": [_DECODE_SIG],
    "attn_combine_0p8b": [_COMBINE_SIG],
    "attn_prepare_awkward": [_PREPARE_SIG],
    "attn_decode_awkward": [_DECODE_SIG],
    "attn_combine_awkward": [_COMBINE_SIG],
    "attn_prepare_0p8b_graph": [_PREPARE_SIG_GRAPH],
    "attn_decode_0p8b_graph": [_DECODE_SIG_GRAPH],
    "attn_combine_0p8b_graph": [_COMBINE_SIG_GRAPH],
}
