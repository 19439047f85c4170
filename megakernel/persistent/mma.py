"""A weight page's matrix-vector product on the tensor cores (version 11): ``ldmatrix`` and ``mma.sync`` as Numba
intrinsics, their simulator models, and the page consumer built on them.

Why: the CUDA cores take ~300 instructions per warp to multiply a 32 KB page (16 rows x 1,024 bf16) by x: per
weight a load share, a bf16 -> fp32 conversion and an FMA, then a shuffle reduction per row. Most of a block's
time between pages that are already in shared memory goes there (NOTES.md, "Persistent megakernel version 11").
One ``mma.sync.m16n8k16`` multiplies a 16 x 16 bf16 tile by a 16 x 8 one into fp32 in one instruction.

How a matrix-vector product becomes a tile product (``D = A B``, A 16 x 16, B 16 x 8, D 16 x 8):

* **B holds the weights**: column ``n`` of B is 16 consecutive k of page row ``n`` (8 rows per product, one
  ``ldmatrix.x4`` loads two row groups x two 8-k halves). The sum over k can be taken in any order, so row ``n``
  reads its k chunks (8 k, 16 bytes) **rotated** by its index in the matrix modulo 8: the rows lie 2 KB apart in
  the page (a bank multiple), and unrotated the 8 rows of an ``ldmatrix`` phase would hit one bank group (8-way
  conflicts); rotated by 8 consecutive values they hit 8 different ones.
* **A holds x, split in two bf16 terms** (x = hi + lo, 16 of fp32's 24 mantissa bits; the rest is below the
  reference tolerance): A row ``m < 8`` carries hi rotated by ``m``, row ``m + 8`` carries lo with the same
  rotation. Then ``D[m][n] + D[m + 8][n]``, ``m`` the rotation of the row in column ``n``, is that row's dot
  product over this tile's k; the other 112 outputs are products of mismatched chunks, never read. A row's
  rotation follows its index in the matrix, not its place in the page, so its chunks are summed in the same order
  on any grid.
* **The warps split k**: warp ``w`` takes a contiguous span of ``ceil(k / 16 / warps)`` k-steps, and holds its A
  fragments (4 words a step) in registers for the whole phase, where version 10 held x as floats: 32 words a lane
  at the 0.8B's hidden size 1,024. A page costs a warp 8 ``ldmatrix`` and 16 ``mma`` per 16 rows.
* **The warps' partial sums** (16 per warp and page) go to shared memory; after the page's block barrier each warp
  of the upper half finishes 4 rows (each 8-lane group one), summing the 8 warps' partials in a fixed tree order
  (warp 0's thread 0 refills the slot meanwhile): the bits do not depend on the grid, the
  run, or which block takes which rows.

The tensor cores accumulate in fp32 in their own order: the bits differ from version 10's (which match versions
7-9); version 11 is held to the reference's tolerance and to its own repeat-run and cross-grid bit identity.

API (``arr``: a 1-D int32/uint32 shared array, ``i`` a word index, 16-byte aligned):

================================================  ===================================================================
``ldmatrix_x4(arr, i)``                           warp-collective: lane ``l`` gives the address of row ``l % 8`` of
                                                  8 x 8 bf16 matrix ``l // 8``; returns the lane's 4 fragment words
                                                  (matrix q: row ``l // 4``, columns ``2 (l % 4)`` and ``+ 1``)
``mma_bf16(a0, a1, a2, a3, b0, b1, c0, c1,``      warp-collective ``mma.sync.aligned.m16n8k16.row.col.f32.bf16``:
``    c2, c3)``                                   the lane's A, B and C fragments in, its D fragment out (4 floats)
``pack_bf16x2(lo, hi)``                           two float32 rounded to bf16 (nearest even) in one word, ``lo`` in
                                                  the low half (``cvt.rn.bf16x2.f32``)
================================================  ===================================================================

In the CUDA simulator both are warp exchanges (``testing.simulator.warp_gather``): ``ldmatrix_x4`` hands each lane
the words the GPU's fragment layout gives it (and tells the race detector which rows each lane's address names),
``mma_bf16`` assembles A, B and C from the 32 lanes' fragments and computes ``A B + C`` in float64, rounded to
fp32 once (the GPU's tensor cores round differently: the tests hold both to the reference's tolerance).
"""

from __future__ import annotations

import numpy as np
from numba import config, cuda
from numba.cuda import float32, uint32

from megakernel import device as D

SIMULATOR = bool(config.ENABLE_CUDASIM)
WARP = 32
TILE_K = 16        # k of one mma
CHUNK = 8          # k of one ldmatrix row (16 bytes)
MAX_FRAG_WORDS = 32  # A fragment words a lane keeps (8 k-steps: the 0.8B's 1,024 over 8 warps)

if SIMULATOR:
    from ..testing.simulator import lane_id as _lane_id
    from ..testing.simulator import plain_array as _np
    from ..testing.simulator import record_reads, warp_gather

    _BF16 = (np.arange(1 << 16, dtype=np.uint32) << 16).view(np.float32)

    def _full_warp(kind, values):
        if len(values) != WARP:
            raise RuntimeError(f"{kind} is warp-collective: it needs all 32 lanes of a warp")
        return values

    def ldmatrix_x4(arr, i):
        a = _np(arr)
        if a.ndim != 1 or a.dtype.itemsize != 4:
            raise TypeError(f"ldmatrix_x4 needs a 1-D 32-bit array, got {a.dtype} x {a.ndim}")
        i = int(i)
        if i % 4 or a.ctypes.data % 16:
            raise ValueError(f"ldmatrix_x4: row address (word {i}) is not 16-byte aligned")
        if i < 0 or i + 4 > a.shape[0]:
            raise IndexError(f"ldmatrix_x4: row at word {i} is out of bounds for {a.shape[0]} words")
        addrs = _full_warp("ldmatrix_x4", warp_gather("ldmatrix_x4", i))
        record_reads(arr, i, 4)  # this lane's row: the 32 lanes' rows are what the collective reads
        lane = _lane_id()
        words = a.view(np.uint32)
        return tuple(np.uint32(words[addrs[8 * q + lane // 4] + lane % 4]) for q in range(4))

    def _bf16_pair(w):
        w = int(w) & 0xFFFFFFFF
        return _BF16[w & 0xFFFF], _BF16[w >> 16]

    def pack_bf16x2(lo, hi):
        return np.uint32(int(D.f32_to_bf16_bits(np.float32(lo))) | (int(D.f32_to_bf16_bits(np.float32(hi))) << 16))

    def mma_bf16(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        frags = _full_warp("mma_bf16", warp_gather("mma_bf16", (a0, a1, a2, a3, b0, b1, c0, c1, c2, c3)))
        A = np.zeros((16, 16), np.float64)
        B = np.zeros((16, 8), np.float64)
        C = np.zeros((16, 8), np.float64)
        for lane, f in enumerate(frags):
            g, c = lane // 4, 2 * (lane % 4)
            A[g, c:c + 2] = _bf16_pair(f[0])
            A[g + 8, c:c + 2] = _bf16_pair(f[1])
            A[g, c + 8:c + 10] = _bf16_pair(f[2])
            A[g + 8, c + 8:c + 10] = _bf16_pair(f[3])
            B[c:c + 2, g] = _bf16_pair(f[4])
            B[c + 8:c + 10, g] = _bf16_pair(f[5])
            C[g, c:c + 2] = f[6], f[7]
            C[g + 8, c:c + 2] = f[8], f[9]
        Dm = (A @ B + C).astype(np.float32)
        lane = _lane_id()
        g, c = lane // 4, 2 * (lane % 4)
        return Dm[g, c], Dm[g, c + 1], Dm[g + 8, c], Dm[g + 8, c + 1]

else:
    from llvmlite import ir
    from numba.cuda import types
    from numba.cuda.extending import intrinsic

    from .tma import _as_i32, _is_array, _smem32, _word_ptr

    _i32, _f32 = ir.IntType(32), ir.FloatType()

    @intrinsic
    def ldmatrix_x4(typingctx, arr, i):
        if not (_is_array(arr) and isinstance(i, types.Integer)):
            return None

        def codegen(context, builder, sig, args):
            addr = _smem32(builder, _word_ptr(context, builder, sig.args[0], args[0], args[1]))
            out = builder.asm(ir.FunctionType(ir.LiteralStructType([_i32] * 4), [_i32]),
                              "ldmatrix.sync.aligned.m8n8.x4.shared.b16 {$0, $1, $2, $3}, [$4];",
                              "=r,=r,=r,=r,r", [addr], side_effect=True)  # (ordered after the page's wait)
            vals = [builder.extract_value(out, k) for k in range(4)]
            return context.make_tuple(builder, sig.return_type, vals)

        return types.UniTuple(types.uint32, 4)(arr, i), codegen

    @intrinsic
    def pack_bf16x2(typingctx, lo, hi):
        if not (lo == types.float32 and hi == types.float32):
            return None

        def codegen(context, builder, sig, args):
            return builder.asm(ir.FunctionType(_i32, [_f32, _f32]), "cvt.rn.bf16x2.f32 $0, $1, $2;", "=r,f,f",
                               [args[1], args[0]], side_effect=False)

        return types.uint32(lo, hi), codegen

    @intrinsic
    def mma_bf16(typingctx, a0, a1, a2, a3, b0, b1, c0, c1, c2, c3):
        if not (all(isinstance(t, types.Integer) for t in (a0, a1, a2, a3, b0, b1))
                and all(t == types.float32 for t in (c0, c1, c2, c3))):
            return None

        def codegen(context, builder, sig, args):
            ints = [_as_i32(builder, v) for v in args[:6]]
            out = builder.asm(ir.FunctionType(ir.LiteralStructType([_f32] * 4), [_i32] * 6 + [_f32] * 4),
                              "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {$0, $1, $2, $3}, "
                              "{$4, $5, $6, $7}, {$8, $9}, {$10, $11, $12, $13};",
                              "=f,=f,=f,=f,r,r,r,r,r,r,f,f,f,f", ints + list(args[6:]), side_effect=False)
            vals = [builder.extract_value(out, k) for k in range(4)]
            return context.make_tuple(builder, sig.return_type, vals)

        return types.UniTuple(types.float32, 4)(a0, a1, a2, a3, b0, b1, c0, c1, c2, c3), codegen


def mma_supported(hidden: int, warps: int) -> bool:
    """Whether rows of ``hidden`` values fit the consumer: whole 16-k steps, at most ``MAX_FRAG_WORDS`` fragment
    words a lane."""
    steps = hidden // TILE_K
    return hidden % TILE_K == 0 and 4 * -(-steps // warps) <= MAX_FRAG_WORDS


def page_mma(hidden: int, warps: int, rows_cap: int, full: bool, chains: int = 1):
    """The tensor-core consumer of pages whose rows have ``hidden`` values, for blocks of ``warps`` warps; a page
    holds at most ``rows_cap`` partial rows (a gate/up page's gate and up rows both count). ``full``: every warp
    has the same number of k-steps (the compiler drops the guards). ``chains``: independent accumulators per row
    group (k-step t adds into chain ``t % chains``; the chains summed in order at the end): a warp's products are
    a chain of dependent ``mma`` (~29 cycles each on an H100), which with two warps per scheduler is the page's
    latency. Returns (FRAG, PART, load_fragments,
    page_partials, row_sum):

        FRAG                                          words of a lane's A fragments (a local uint32 array)
        PART                                          floats of the partials buffer (two pages' worth)
        load_fragments(xf, xs, nv, lane, warp)        xf <- this lane's hi/lo A fragments of x (split layout xs)
        page_partials(ring, base, nrows, kw, gate_up, s, xf, part, buf, lane, warp)
                                                      this warp's partial sums of the page's rows -> part[buf]
        row_sum(part, buf, p, lane) -> v              partial row p summed over the warps (8-lane groups)
    """
    KS = hidden // TILE_K
    TM = -(-KS // warps)          # k-steps of the widest warp
    FRAG = 4 * TM
    RP = rows_cap
    PART = 2 * warps * RP
    NW = warps

    @cuda.jit(device=True)
    def steps_of(warp):
        return min(max(KS - warp * TM, 0), TM)

    NCH = 2 * TM                  # chunks of a full warp's span
    ONE = rows_cap <= 16          # every page in one pass (16 rows, or 8 gate/up pairs)
    CH = max(1, min(chains, TM))
    ACC = 8 * CH
    POW2 = NCH & (NCH - 1) == 0

    @cuda.jit(device=True)
    def wrap(c, nch):
        """``c mod nch`` for 0 <= c < 2 nch + 8; a mask or a constant divisor where every warp's span is full."""
        if full:
            return c & (NCH - 1) if POW2 else c % NCH
        return c % nch

    @cuda.jit(device=True)
    def load_fragments(xf, xs, nv, lane, warp):
        """Lane ``l`` of warp ``w`` holds, for each of w's k-steps t, A's rows ``l // 4`` (hi) and ``l // 4 + 8``
        (lo) at columns ``2 (l % 4)``, ``+1`` of both 8-k halves: x's chunk ``(l // 4 + half + 2t) mod`` the
        span's chunks (the rotation its weight row reads with). x comes from the split layout (``fused_matvec
        .stage_norm``: piece v's values 0-3 at 4v, 4-7 at 4(nv + v)), a pair per 8-byte load."""
        tw = steps_of(warp)
        nch = max(2 * tw, 2)
        m = lane >> 2
        e2 = 2 * (lane & 3)
        off = e2 if e2 < 4 else 4 * nv + e2 - 4  # the pair's place within its piece, split layout
        c0 = 2 * warp * TM
        for t in range(TM):
            if full or t < tw:
                for half in range(2):
                    v = c0 + wrap(m + half + 2 * t, nch)  # the piece (chunk) index in the row
                    x0, x1 = D.load_f32x2(xs, (4 * v + off) >> 1)
                    hi = pack_bf16x2(x0, x1)
                    xf[4 * t + 2 * half] = hi
                    xf[4 * t + 2 * half + 1] = pack_bf16x2(x0 - D.bf16_lo(hi), x1 - D.bf16_hi(hi))

    @cuda.jit(device=True)
    def page_partials(ring, base, nrows, kw, gate_up, s, xf, part, buf, lane, warp):
        """This warp's share (its k-span) of every row of the page at word ``base`` (``nrows`` rows of ``kw``
        words; a gate/up page: ``nrows`` gate rows then as many up rows), 16 rows (8 gate/up pairs) a pass, into
        ``part[buf + warp * RP + p]``: p = row (a gate/up page: 2 row, 2 row + 1 for gate and up). ``s``: the page's
        first row modulo 8 in its matrix: a row's rotation is its index in the matrix modulo 8 (x's A row of that
        rotation pairs with it), so its chunks are summed in the same order whichever page and position it has:
        the bits do not depend on the grid."""
        tw = steps_of(warp)
        nch = max(2 * tw, 2)
        q = lane >> 3
        i = lane & 7
        grp = q >> 1
        span = 2 * warp * TM * 4  # word offset of the warp's first chunk in a row
        step = 8 if gate_up else 16
        g = lane >> 2
        n0 = 2 * (lane & 3)  # this lane's D columns n0, n0 + 1; the one whose row has rotation g is its output
        first = g == ((s + n0) & 7)
        mine = first or g == ((s + n0 + 1) & 7)
        col = n0 if first else n0 + 1
        p0 = 0
        while p0 < nrows:
            if gate_up:
                r = min(p0 + i, nrows - 1)
                row = base + grp * nrows * kw + r * kw
            else:
                r = min(p0 + grp * 8 + i, nrows - 1)
                row = base + r * kw
            cc = wrap(((s + i) & 7) + (q & 1), nch)
            acc = cuda.local.array(ACC, float32)  # chain c: acc[8c .. 8c + 3] group 0, acc[8c + 4 ..] group 1
            for k in range(ACC):
                acc[k] = float32(0)
            for t in range(TM):
                if full or t < tw:
                    w0, w1, w2, w3 = ldmatrix_x4(ring, row + span + 4 * cc)
                    c = 8 * (t % CH)
                    acc[c], acc[c + 1], acc[c + 2], acc[c + 3] = mma_bf16(
                        xf[4 * t], xf[4 * t + 1], xf[4 * t + 2], xf[4 * t + 3], w0, w1,
                        acc[c], acc[c + 1], acc[c + 2], acc[c + 3])
                    acc[c + 4], acc[c + 5], acc[c + 6], acc[c + 7] = mma_bf16(
                        xf[4 * t], xf[4 * t + 1], xf[4 * t + 2], xf[4 * t + 3], w2, w3,
                        acc[c + 4], acc[c + 5], acc[c + 6], acc[c + 7])
                    cc = wrap(cc + 2, nch)
            for c in range(8, ACC, 8):  # the chains in order
                for k in range(8):
                    acc[k] += acc[c + k]
            a0, a1, a2, a3 = acc[0], acc[1], acc[2], acc[3]
            b0, b1, b2, b3 = acc[4], acc[5], acc[6], acc[7]
            if first:  # D[g][col] (x's hi) + D[g + 8][col] (lo), both row groups
                va = a0 + a2
                vb = b0 + b2
            else:
                va = a1 + a3
                vb = b1 + b3
            if mine:
                if gate_up:
                    if p0 + col < nrows:
                        part[buf + warp * RP + 2 * (p0 + col)] = va
                        part[buf + warp * RP + 2 * (p0 + col) + 1] = vb
                else:
                    if p0 + col < nrows:
                        part[buf + warp * RP + p0 + col] = va
                    if p0 + 8 + col < nrows:
                        part[buf + warp * RP + p0 + 8 + col] = vb
            if ONE:  # (at most one pass: no loop, a smaller page loop body)
                break
            p0 += step

    @cuda.jit(device=True)
    def row_sum(part, buf, p, lane):
        """Partial ``p`` summed over the warps, in a fixed order, on each 8-lane group (lane ``l`` adds warps
        ``l % 8``, ``l % 8 + 8``, ... in turn, then a tree over the group's lanes; every lane of the group ends with
        the sum)."""
        src = lane & 7
        v = part[buf + src * RP + p] if src < NW else float32(0)
        for w in range(src + 8, NW, 8):  # (blocks of more than 8 warps)
            v += part[buf + w * RP + p]
        v += cuda.shfl_xor_sync(D.FULL_MASK, v, 1)
        v += cuda.shfl_xor_sync(D.FULL_MASK, v, 2)
        v += cuda.shfl_xor_sync(D.FULL_MASK, v, 4)
        return v

    return FRAG, PART, load_fragments, page_partials, row_sum


def split_layout(x: np.ndarray) -> np.ndarray:
    """x in ``fused_matvec``'s split layout (as the kernels stage it): piece v's first 4 values at 4v, its last 4
    at 4(nv + v)."""
    p = np.asarray(x, np.float32).reshape(-1, 8)
    return np.concatenate([p[:, :4].reshape(-1), p[:, 4:].reshape(-1)]).astype(np.float32)


def make_page_kernel(hidden: int, warps: int, rows_cap: int, chains: int = 1):
    """The consumer on its own, for the tests, notebook 07 and checks by hand: a kernel of one block of ``warps``
    warps, ``kern[1, 32 * warps](page, nrows, gate_up, s, xs, out)``, that stages one page (int32 words: ``nrows``
    rows of ``hidden`` bf16, or ``nrows`` gate rows then as many up rows) and x (float32, ``split_layout``) in
    shared memory, runs ``page_partials`` with the page's first row index mod 8 ``s``, and writes each partial
    row's sum over the warps to ``out`` (a gate/up page: gate row r at 2r, up row r at 2r + 1)."""
    FRAG, PART, load_fragments, page_partials, row_sum = page_mma(hidden, warps, rows_cap,
                                                                  full=(hidden // TILE_K) % warps == 0, chains=chains)
    kw = hidden // 2
    nv = hidden // 8
    RING = rows_cap * kw

    @cuda.jit
    def page_kernel(page, nrows, gate_up, s, xs_g, out):
        ring = cuda.shared.array(RING, np.int32)
        xs = cuda.shared.array(hidden, float32)
        part = cuda.shared.array(PART, float32)
        tid = cuda.threadIdx.x
        lane = tid & 31
        warp = tid >> 5
        for i in range(tid, page.shape[0], warps * 32):
            ring[i] = page[i]
        for i in range(tid, hidden, warps * 32):
            xs[i] = xs_g[i]
        cuda.syncthreads()
        xf = cuda.local.array(FRAG, uint32)
        load_fragments(xf, xs, nv, lane, warp)
        page_partials(ring, 0, nrows, kw, gate_up != 0, s, xf, part, PART // 2, lane, warp)
        cuda.syncthreads()
        n = 2 * nrows if gate_up != 0 else nrows
        for r in range(warp * 2, n, 2 * warps):  # (the same trip count on every lane: the sum shuffles)
            p = r + ((lane >> 3) & 1)
            v = row_sum(part, PART // 2, min(p, n - 1), lane)
            if lane & 0x17 == 0 and p < n:
                out[p] = v

    return page_kernel


__all__ = ["ldmatrix_x4", "mma_bf16", "pack_bf16x2", "mma_supported", "page_mma", "make_page_kernel",
           "split_layout", "SIMULATOR"]
