"""The Gated DeltaNet decode step in one launch (after the fused in_proj matvec).

Per token, for every value head ``h`` (reading key head ``hk = h // (Hv/Hk)``) with fp32 state ``S`` [Dk, Dv]::

    qkv   = silu(causal_conv1d_step(qkv_in, conv_state, conv_w))    # depthwise, K taps, state shifted in place
    q, k  = l2norm(q) / sqrt(Dk), l2norm(k)                         # per key head, x * rsqrt(sum x^2 + 1e-6)
    beta  = sigmoid(b[h]);  g = -exp(A_log[h]) * softplus(a[h] + dt_bias[h])
    S     = exp(g) * S                                              # decay FIRST
    delta = beta * (v - S^T k)
    S     = S + k delta^T
    o     = S^T q                                                   # before the gated norm (fused elsewhere)

Why it is split over many blocks
--------------------------------
The state is what this step costs: ``Hv * Dk * Dv * 4`` bytes read and written per layer (1 MiB each way at
the 0.8B shapes; 18.9 MB read + 18.9 MB written per token over the 18 DeltaNet layers). One block per head
(16 blocks, as a published kernel does) leaves 116 of the H100's 132 SMs idle while the state streams. But the
columns of ``S`` are independent once ``q``, ``k`` and the head's scalars are known: column ``j`` needs only
``v_j``, ``beta``, ``exp(g)`` and the Dk-vectors ``q``, ``k``::

    S[:, j] *= exp(g);  pred_j = S[:, j] . k;  delta_j = beta (v_j - pred_j);  S[:, j] += k delta_j;  o_j = S[:, j] . q

So block ``b`` of a 1-D grid of ``Hv * NS`` blocks takes value head ``h = b // NS`` and the ``CW = Dv / NS``
columns ``[s CW, (s+1) CW)`` of split ``s = b % NS``. At the 0.8B shapes ``CW = 16``: 128 blocks of 256
threads, one per SM. Every block recomputes the cheap per-head quantities (the conv of its key head's 2 Dk q/k
channels, both L2 norms, beta, g): ``(2 K) * 2 Dk * 4`` B of inputs, 8 KB per block, mostly from L2, next to
the 8 KB of state it streams each way.

Thread mapping inside a block (``T`` threads): thread ``t`` owns column ``cj = t % CW`` and row group
``rg = t // CW`` of ``RG = T / CW`` groups, i.e. rows ``rg, rg + RG, rg + 2 RG, ...`` (``RPT = Dk / RG`` rows,
8 at the 0.8B shapes, held in registers). A warp therefore reads ``32 / CW`` rows of ``CW`` consecutive
columns of the row-major [Dk, Dv] slab per load instruction (two 64-byte runs at the 0.8B shapes: whole 32-byte
sectors, no waste), and every thread issues its ``RPT`` loads before using any of them (48 registers per
thread at the 0.8B shapes, no local memory). The two column sums
(``S^T k``, ``S^T q``) are reduced over the row groups through shared memory. The element update
``S*exp(g) + k*delta`` rounds exactly like the reference (same operations in the same order), so the state
differs from the reference only through ``delta`` (a Dk-term sum in another order).

Bytes per launch at the 0.8B shapes: state 1,048,576 read + 1,048,576 written; per block 8 KB of conv inputs
(q/k channels, shared with the other 7 blocks of the head through L2) plus its own v channels; ``o`` 8 KB.

The conv state and the one cross-block hazard
---------------------------------------------
``conv_state`` [C, K-1] is updated in place (shift left, append the new input). A value channel is read and
written by the one block that owns its column. But a key head's q/k channels are read by all ``G * NS``
blocks of the value heads that use it (``G = Hv / Hk``), and a block that shifted them in place before another
block read them would corrupt that block's conv. So the q/k channels are written by the LAST of those blocks to
finish reading them: after its reads every block bumps a per-key-head counter (``threadfence`` then
``atomic.add``); the block that sees ``G * NS - 1`` knows every reader is done, writes the shifted q/k state
and resets the counter to 0 for the next launch (the "last block" pattern; no block ever waits, so no
cooperative launch is needed). Exactly one block writes each conv-state channel. (A fixed writer block
instead corrupts ``o`` on the first step in the test simulator, whose blocks run concurrently.) The counters are a small int32
buffer owned by this module, one per CUDA stream; launches of this kernel on one stream are ordered, so one
buffer serves every layer.

Sizes are compile-time constants (a kernel per size tuple, cached). Any ``Dk``, ``Dv`` works (guards fold away
when the sizes divide evenly); the wrapper refuses configurations the kernel cannot run and says which config
field is at fault.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda
from numba.cuda import float32, int32, int64

from megakernel import device as D
from megakernel import launch

__all__ = [
    "deltanet_step",
    "deltanet_item",
    "deltanet_workspace",
    "deltanet_sizes",
    "deltanet_launch_config",
    "deltanet_kernel",
    "item_output",
    "L2_EPS",
    "PTX_SIGNATURES",
]

L2_EPS = 1e-6
MAX_ROWS_PER_THREAD = 32  # state values a thread keeps in registers


def deltanet_sizes(config) -> tuple[int, int, int, int, int]:
    """``(Hk, Hv, Dk, Dv, K)`` of a ``reference.Qwen35Config``: the size arguments of :func:`deltanet_step`."""
    return (
        config.linear_num_key_heads,
        config.linear_num_value_heads,
        config.linear_key_head_dim,
        config.linear_value_head_dim,
        config.linear_conv_kernel_dim,
    )


def _check_sizes(Hk, Hv, Dk, Dv, K):
    for name, field, value in (
        ("Hk", "linear_num_key_heads", Hk),
        ("Hv", "linear_num_value_heads", Hv),
        ("Dk", "linear_key_head_dim", Dk),
        ("Dv", "linear_value_head_dim", Dv),
        ("K", "linear_conv_kernel_dim", K),
    ):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"deltanet_step: {field} ({name}) must be a positive integer, got {value!r}")
    if Hv % Hk:
        raise ValueError(
            f"deltanet_step: linear_num_value_heads (Hv = {Hv}) must be a multiple of linear_num_key_heads "
            f"(Hk = {Hk}): value head h reads key head h // (Hv/Hk)"
        )
    if K < 2:
        raise ValueError(
            f"deltanet_step: linear_conv_kernel_dim (K = {K}) must be >= 2 (the conv state keeps K-1 inputs)"
        )


def deltanet_launch_config(Hk, Hv, Dk, Dv, K, columns_per_block=None, threads=None) -> tuple[int, int]:
    """``(CW, T)``: state columns per block and threads per block (the grid is ``Hv * Dv / CW`` blocks).

    Defaults: ``CW`` = the largest power of two <= 16 dividing ``Dv`` (16 at the 0.8B shapes: 128 blocks);
    ``T`` = enough threads for about 8 state rows each, a multiple of 32, at most 256.
    """
    _check_sizes(Hk, Hv, Dk, Dv, K)
    if columns_per_block is None:
        cw = 16
        while Dv % cw:
            cw //= 2
    else:
        cw = int(columns_per_block)
        if cw < 1 or Dv % cw:
            raise ValueError(
                f"deltanet_step: columns_per_block = {columns_per_block} must divide linear_value_head_dim "
                f"(Dv = {Dv})"
            )
    if threads is None:
        t = 32 * max(1, -(-cw * Dk // 8 // 32))
        t = min(256, max(t, 32 * (-(-cw // 32))))
    else:
        t = int(threads)
    if t % 32 or not 32 <= t <= 1024:
        raise ValueError(f"deltanet_step: threads = {t} must be a multiple of 32 in [32, 1024]")
    if t < cw:
        raise ValueError(f"deltanet_step: threads = {t} is fewer than the {cw} columns of a block")
    rows_per_thread = -(-Dk // (t // cw))
    if rows_per_thread > MAX_ROWS_PER_THREAD:
        raise ValueError(
            f"deltanet_step: linear_key_head_dim (Dk = {Dk}) needs {rows_per_thread} state rows per thread with "
            f"{t} threads and {cw} columns per block (at most {MAX_ROWS_PER_THREAD}): use more threads or fewer "
            "columns per block"
        )
    return cw, t


def deltanet_workspace(Dk: int, CW: int, T: int) -> int:
    """float32 shared-memory elements one ``deltanet_item`` needs: q|k (2 Dk), v (CW), the per-row-group column
    sums (RG x CW) and a block-reduction scratch (32)."""
    return 2 * Dk + CW + (T // CW) * CW + 32


@functools.lru_cache(maxsize=None)
def deltanet_item(Hk: int, Hv: int, Dk: int, Dv: int, K: int, CW: int, T: int, state_first: bool = False,
                  late_shift: bool = False, deferred_shift: bool = False, ll_inputs: bool = False,
                  ll_together: bool = False):
    """The decode step of one work item as a device function (one per size tuple):

        body(item, proj, conv_w, conv_state, A_log, dt_bias, state, o, counters, ws, flag)

    ``item`` in ``[0, Hv * Dv / CW)``: value head ``item // NS``, columns ``[s CW, (s+1) CW)`` of split
    ``s = item % NS`` (the module docstring). ``ws``: a float32 shared array of >= ``deltanet_workspace(Dk, CW, T)``
    elements; ``flag``: an int32 shared array of >= 1; ``counters``: the per-key-head int32 counters of the "last
    reader" hand-over (zero between launches). ``T`` must be the block size. The layered decoder's kernel runs one
    item per block; the megakernel lets each block loop over items. Returns with the block synchronised.

    ``state_first``: issue the state-slab loads before the conv step instead of after the norms, so the item's two
    HBM reads (conv rows, state) overlap instead of following each other (one memory round trip less on the item's
    critical path, for ``RPT`` more live registers through steps 1-4).

    ``late_shift``: the "last reader" count (a fence and an atomic: two memory round trips) is issued where it is
    now, after the norms, but its answer is awaited only after the state columns are done, and the last reader
    shifts the q/k conv state at the very end: the same writes by the same block, off the item's critical path.

    ``deferred_shift``: no "last reader" count at all: the q/k conv state is shifted after the phase, by whoever
    runs ``qk_conv_shift`` once every item of the step has read it (the persistent kernel: in the next phase, past
    a grid barrier). The item's fence and atomic (two memory round trips on its critical path) are gone; the
    counters are neither read nor written.

    ``ll_inputs`` (needs ``deferred_shift``): the body takes one more argument, ``tag``, and ``proj`` is the input
    projection as flag-in-data words (``megakernel.persistent.handoff``: int64, the value's bits and the writing
    phase's tag): the item spins on the words it reads until they carry ``tag``, so it needs no grid barrier
    after the projection that writes them. Its reads are issued together (the conv taps and state, then the first
    read of every word) before it waits on any. ``ll_together``: the words not yet written are re-read together,
    one round trip a round (``handoff.ll_wait4``), not one after another. The same arithmetic: the same bits."""
    G = Hv // Hk
    NS = Dv // CW
    QK = 2 * Dk
    KD = Hk * Dk  # offset of the k channels
    V_OFF = 2 * Hk * Dk  # offset of the v channels
    C = V_OFF + Hv * Dv
    B_OFF = C + Hv * Dv  # proj = [qkv (C) | z (Hv Dv) | b (Hv) | a (Hv)]
    A_OFF = B_OFF + Hv
    KM1 = K - 1
    RG = T // CW  # row groups
    RPT = -(-Dk // RG)  # rows per thread
    ROWS_EXACT = Dk % RG == 0
    READERS = G * NS  # blocks that read one key head's q/k conv state
    EPS = np.float32(L2_EPS)
    SQRT_DK = np.float32(math.sqrt(Dk))  # q / sqrt(Dk), as the reference divides
    VSH = QK  # workspace offsets
    RED = VSH + CW
    SCR = RED + RG * CW
    EARLY = state_first
    DEFER = deferred_shift
    LL = ll_inputs
    if LL and not deferred_shift:
        raise ValueError("deltanet_item: ll_inputs needs deferred_shift (the in-place q/k shift reads proj as floats)")
    TOGETHER = ll_together and ll_inputs
    if LL:
        from ..persistent.handoff import ll_first, ll_value, ll_wait4
    else:  # (never called: the plain body reads proj as floats)
        ll_first = ll_value = ll_wait4 = None
    LATE = late_shift and not deferred_shift
    ONE_QK = QK <= T  # one q/k channel per thread (the 0.8B shapes): its loads can be hoisted

    @cuda.jit(device=True)
    def qk_channel(hk, c):
        """Channel of key head ``hk``'s q (c < Dk) or k (c >= Dk) value ``c``."""
        return hk * Dk + c if c < Dk else KD + hk * Dk + (c - Dk)

    shift_channel = channel_shift(K)

    @cuda.jit(device=True)
    def shift_qk(conv_state, proj, hk, tid):
        """The last reader's in-place shift of key head ``hk``'s q/k conv state (the new input appended)."""
        for c in range(tid, QK, T):
            shift_channel(conv_state, proj, qk_channel(hk, c))

    @cuda.jit(device=True)
    def load_taps(conv_w, conv_state, ch, cw, cs):
        """Channel ``ch``'s conv taps and conv state into ``cw``, ``cs``."""
        for j in range(K):
            cw[j] = conv_w[ch, j]
        for j in range(KM1):
            cs[j] = conv_state[ch, j]

    @cuda.jit(device=True)
    def load_channel(conv_w, conv_state, proj, ch, cw, cs, tag):
        """Channel ``ch``'s conv taps and conv state into ``cw``, ``cs``; returns its new input."""
        load_taps(conv_w, conv_state, ch, cw, cs)
        if LL:
            return ll_value(proj, ch, ll_first(proj, ch), tag)
        return proj[ch]

    @cuda.jit(device=True)
    def conv_step(cw, cs, x):
        """The depthwise causal conv of one channel at this step (the reference's order: oldest input first)."""
        acc = float32(0)
        for j in range(KM1):
            acc += cw[j] * cs[j]
        return acc + cw[KM1] * x

    @cuda.jit(device=True)
    def deltanet_item_tagged(item, proj, conv_w, conv_state, A_log, dt_bias, state, o, counters, ws, flag, tag):
        qk = ws[0:QK]  # conv+silu, then normalised: q [0, Dk) | k [Dk, 2 Dk)
        vsh = ws[VSH:RED]  # this item's v values
        red = ws[RED:SCR]  # per-row-group partial column sums, [RG, CW] row-major
        scratch = ws[SCR:SCR + 32]

        h = item // NS
        s = item % NS
        hk = h // G
        tid = cuda.threadIdx.x
        cj = tid % CW
        rg = tid // CW
        col = s * CW + cj
        active = rg < RG  # T not a multiple of CW: the last threads sit out
        sreg = cuda.local.array(RPT, float32)
        if EARLY and active:
            for m in range(RPT):
                i = rg + RG * m
                if ROWS_EXACT or i < Dk:
                    sreg[m] = state[h, i, col]
        # ---- 0. the inputs from global memory, loaded before any is used (one round trip, not three): the head's
        # scalars, this thread's q/k channel (conv taps, conv state, new input) and v channel
        alog = A_log[h]
        dtb = dt_bias[h]
        cw_qk = cuda.local.array(K, float32)
        cs_qk = cuda.local.array(KM1, float32)
        x_qk = float32(0)
        cw_v = cuda.local.array(K, float32)
        cs_v = cuda.local.array(KM1, float32)
        x_v = float32(0)
        ch = V_OFF + h * Dv + s * CW + tid  # this thread's v channel (threads tid < CW)
        if LL:  # every read issued (taps, state, each word's first read) before waiting on any word's tag
            iq = qk_channel(hk, tid) if ONE_QK and tid < QK else B_OFF + h
            iv = ch if tid < CW else B_OFF + h
            if ONE_QK and tid < QK:
                load_taps(conv_w, conv_state, iq, cw_qk, cs_qk)
            if tid < CW:
                load_taps(conv_w, conv_state, iv, cw_v, cs_v)
            wb = ll_first(proj, B_OFF + h)
            wa = ll_first(proj, A_OFF + h)
            wq = ll_first(proj, iq)
            wv = ll_first(proj, iv)
            if TOGETHER:  # (a thread without a q/k or v channel waits on the b word twice more: no later)
                bx, ax, xq, xv = ll_wait4(proj, B_OFF + h, wb, A_OFF + h, wa, iq, wq, iv, wv, tag, 0)
                if ONE_QK and tid < QK:
                    x_qk = xq
                if tid < CW:
                    x_v = xv
            else:
                bx = ll_value(proj, B_OFF + h, wb, tag)
                ax = ll_value(proj, A_OFF + h, wa, tag)
                if ONE_QK and tid < QK:
                    x_qk = ll_value(proj, iq, wq, tag)
                if tid < CW:
                    x_v = ll_value(proj, iv, wv, tag)
        else:
            bx = proj[B_OFF + h]
            ax = proj[A_OFF + h]
            if ONE_QK and tid < QK:
                x_qk = load_channel(conv_w, conv_state, proj, qk_channel(hk, tid), cw_qk, cs_qk, tag)
            if tid < CW:
                x_v = load_channel(conv_w, conv_state, proj, ch, cw_v, cs_v, tag)
        beta = D.sigmoid(bx)
        g = -float32(math.exp(alog)) * D.softplus(ax + dtb)
        decay = float32(math.exp(g))

        # ---- 1. conv + SiLU of the key head's q/k channels (read only: other items read them too)
        ssq = float32(0)
        ssk = float32(0)
        for c in range(tid, QK, T):  # (one channel per thread, its inputs loaded in step 0, where QK <= T)
            if not ONE_QK:
                x_qk = load_channel(conv_w, conv_state, proj, qk_channel(hk, c), cw_qk, cs_qk, tag)
            y = D.silu(conv_step(cw_qk, cs_qk, x_qk))
            qk[c] = y
            if c < Dk:
                ssq += y * y
            else:
                ssk += y * y

        # ---- 2. this item's v channels: conv, SiLU, and the in-place state shift (only this item owns them)
        if tid < CW:
            vsh[tid] = D.silu(conv_step(cw_v, cs_v, x_v))
            for t in range(KM1 - 1):
                conv_state[ch, t] = cs_v[t + 1]
            conv_state[ch, KM1 - 1] = x_v

        # ---- 3. L2 norms (block_sum's barriers also order every thread's conv-state reads before step 4)
        ssq = D.block_sum(ssq, scratch)
        ssk = D.block_sum(ssk, scratch)
        rq = D.rsqrt(ssq + EPS)
        rk = D.rsqrt(ssk + EPS)
        for c in range(tid, QK, T):
            if c < Dk:
                qk[c] = qk[c] * rq / SQRT_DK
            else:
                qk[c] = qk[c] * rk

        # ---- 4. the last reader of this key head's q/k conv state shifts it in place
        prev = int32(0)
        if tid == 0 and not DEFER:
            cuda.threadfence()
            prev = cuda.atomic.add(counters, hk, 1)
            if not LATE:
                if prev == READERS - 1:
                    counters[hk] = 0  # every reader has arrived: reset for the next launch
                    flag[0] = 1
                else:
                    flag[0] = 0
        cuda.syncthreads()  # also publishes qk (step 3) and vsh (step 2)
        if not DEFER and not LATE and flag[0] != 0:
            shift_qk(conv_state, proj, hk, tid)

        # ---- 5. the state columns: decay, S^T k, delta, rank-1 update, S^T q
        part = float32(0)
        if active:
            if not EARLY:
                for m in range(RPT):  # all loads first: RPT independent loads in flight per thread
                    i = rg + RG * m
                    if ROWS_EXACT or i < Dk:
                        sreg[m] = state[h, i, col]
            for m in range(RPT):
                i = rg + RG * m
                if ROWS_EXACT or i < Dk:
                    v = sreg[m] * decay
                    sreg[m] = v
                    part += v * qk[Dk + i]
            red[rg * CW + cj] = part
        cuda.syncthreads()
        pred = float32(0)
        for r in range(RG):
            pred += red[r * CW + cj]
        delta = (vsh[cj] - pred) * beta
        cuda.syncthreads()  # everybody has read red
        part = float32(0)
        if active:
            for m in range(RPT):
                i = rg + RG * m
                if ROWS_EXACT or i < Dk:
                    v = sreg[m] + qk[Dk + i] * delta
                    state[h, i, col] = v
                    part += v * qk[i]
            red[rg * CW + cj] = part
        cuda.syncthreads()
        if rg == 0:
            out = float32(0)
            for r in range(RG):
                out += red[r * CW + cj]
            o[h * Dv + col] = out
        if LATE:  # step 4's answer, needed only now
            if tid == 0:
                if prev == READERS - 1:
                    counters[hk] = 0
                    flag[0] = 1
                else:
                    flag[0] = 0
            cuda.syncthreads()
            if flag[0] != 0:
                shift_qk(conv_state, proj, hk, tid)
        cuda.syncthreads()  # the workspace and flag are free for the next item

    if LL:
        return deltanet_item_tagged

    @cuda.jit(device=True)
    def deltanet_item_body(item, proj, conv_w, conv_state, A_log, dt_bias, state, o, counters, ws, flag):
        deltanet_item_tagged(item, proj, conv_w, conv_state, A_log, dt_bias, state, o, counters, ws, flag, int64(0))

    return deltanet_item_body


@functools.lru_cache(maxsize=None)
def channel_shift(K: int):
    """``shift_channel(conv_state, proj, ch)``: channel ``ch``'s conv state shifted in place by one step, the step's
    input ``proj[ch]`` appended (the reference's order: oldest input first)."""
    KM1 = K - 1

    @cuda.jit(device=True)
    def shift_channel(conv_state, proj, ch):
        for t in range(KM1 - 1):
            conv_state[ch, t] = conv_state[ch, t + 1]
        conv_state[ch, KM1 - 1] = proj[ch]

    return shift_channel


@functools.lru_cache(maxsize=None)
def qk_conv_shift(Hk: int, Dk: int, K: int, T: int):
    """``deltanet_item(deferred_shift=True)``'s q/k conv-state shift, split over a grid of blocks of ``T`` threads,
    in two halves so its loads can be in flight with other loads the caller waits for anyway (the persistent
    kernel: the gated norm's staging at the start of the out_proj phase):

        shift_load(conv_state, proj, b, nb, vals)    thread ``b T + tid``'s channel (if any): its last K - 2
                                                     inputs and the new one into ``vals`` (a local array of K - 1)
        shift_store(conv_state, proj, b, nb, vals)   that channel's shifted state written back; channels beyond
                                                     the grid's threads (small grids) shifted in place here

    The q/k channels are the conv's first ``2 Hk Dk``; every item of the step must have read them before
    ``shift_store`` (and ``proj`` must still hold the step's input projection)."""
    QKC = 2 * Hk * Dk
    KM1 = K - 1
    shift_channel = channel_shift(K)

    @cuda.jit(device=True)
    def shift_load(conv_state, proj, b, nb, vals):
        c = b * T + cuda.threadIdx.x
        if c < QKC:
            for t in range(KM1 - 1):
                vals[t] = conv_state[c, t + 1]
            vals[KM1 - 1] = proj[c]

    @cuda.jit(device=True)
    def shift_store(conv_state, proj, b, nb, vals):
        c = b * T + cuda.threadIdx.x
        if c < QKC:
            for t in range(KM1):
                conv_state[c, t] = vals[t]
            c += nb * T
            while c < QKC:
                shift_channel(conv_state, proj, c)
                c += nb * T

    return shift_load, shift_store


@functools.lru_cache(maxsize=None)
def item_output(Dk: int, CW: int, T: int):
    """``column_out(ws, c)``: column ``c`` of the last item's ``o``, recomputed from the item's workspace after
    ``deltanet_item``'s body returned (its per-row-group sums are still there): the body's own last sum, in its
    order, so the same bits, without a round trip through global memory (the persistent kernel's ``fused_out``)."""
    RG = T // CW
    RED = 2 * Dk + CW

    @cuda.jit(device=True)
    def column_out(ws, c):
        out = float32(0)
        for r in range(RG):
            out += ws[RED + r * CW + c]
        return out

    return column_out


@functools.lru_cache(maxsize=None)
def deltanet_kernel(Hk: int, Hv: int, Dk: int, Dv: int, K: int, CW: int, T: int):
    """The decode-step kernel for one size tuple: ``deltanet_item`` with one item per block; launch as
    ``[Hv * (Dv // CW), T]`` with arguments ``(proj, conv_w, conv_state, A_log, dt_bias, state, o, counters)``."""
    body = deltanet_item(Hk, Hv, Dk, Dv, K, CW, T)
    WS = deltanet_workspace(Dk, CW, T)

    @cuda.jit
    def deltanet_step_k(proj, conv_w, conv_state, A_log, dt_bias, state, o, counters):
        ws = cuda.shared.array(WS, float32)
        flag = cuda.shared.array(1, int32)
        body(cuda.blockIdx.x, proj, conv_w, conv_state, A_log, dt_bias, state, o, counters, ws, flag)

    return deltanet_step_k


# --------------------------------------------------------------------------------------------------------------
# Launching
# --------------------------------------------------------------------------------------------------------------

_LAUNCHERS: dict = {}
_COUNTERS: dict = {}  # (stream key, Hk) -> (kernel array, the tensor that owns the memory)


def _counters(stream_key, Hk):
    entry = _COUNTERS.get((stream_key, Hk))
    if entry is None:
        import torch

        t = torch.zeros(Hk, dtype=torch.int32, device=launch.kernel_device())
        entry = _COUNTERS[(stream_key, Hk)] = (launch.as_kernel_array(t), t)
    return entry[0]


class _Launch:
    __slots__ = ("run", "counters", "shapes")

    def __init__(self, run, counters, shapes):
        self.run, self.counters, self.shapes = run, counters, shapes


def _launcher(Hk, Hv, Dk, Dv, K, columns_per_block, threads) -> _Launch:
    key = (Hk, Hv, Dk, Dv, K, columns_per_block, threads, launch.current_stream()[0])
    entry = _LAUNCHERS.get(key)
    if entry is None:
        cw, t = deltanet_launch_config(Hk, Hv, Dk, Dv, K, columns_per_block, threads)
        kernel = deltanet_kernel(Hk, Hv, Dk, Dv, K, cw, t)
        C = 2 * Hk * Dk + Hv * Dv
        shapes = (
            (C + Hv * Dv + 2 * Hv,), (C, K), (C, K - 1), (Hv,), (Hv,), (Hv, Dk, Dv), (Hv * Dv,)
        )
        run = launch.configured(kernel, Hv * (Dv // cw), t, launch.current_stream()[1])
        entry = _LAUNCHERS[key] = _Launch(run, _counters(key[-1], Hk), shapes)
    return entry


_ARG_NAMES = ("proj", "conv_w", "conv_state", "A_log", "dt_bias", "state", "o")


def deltanet_step(proj, conv_w, conv_state, A_log, dt_bias, state, o, Hk, Hv, Dk, Dv, K, *,
                  columns_per_block=None, threads=None) -> None:
    """One Gated DeltaNet decode step on torch's current stream (no synchronisation).

    Arguments (kernel arrays from ``launch.as_kernel_array``, fp32, C-contiguous; ``C = 2 Hk Dk + Hv Dv``):

    * ``proj`` [C + Hv Dv + 2 Hv]: the in_proj output ``[qkv (C) | z (Hv Dv) | b (Hv) | a (Hv)]`` with
      ``qkv = [q (Hk Dk) | k (Hk Dk) | v (Hv Dv)]``; z is not read (the gated norm is fused into out_proj);
    * ``conv_w`` [C, K]: depthwise conv taps;
    * ``conv_state`` [C, K-1]: the conv's last K-1 inputs, oldest first; shifted in place;
    * ``A_log``, ``dt_bias`` [Hv] (exact fp32 upcasts of the checkpoint values);
    * ``state`` [Hv, Dk, Dv]: the recurrent state, updated in place;
    * ``o`` [Hv Dv]: ``S^T q`` per value head (written; before the gated norm).

    ``Hk, Hv, Dk, Dv, K``: ``deltanet_sizes(config)``. ``columns_per_block`` / ``threads`` override the launch
    shape (``deltanet_launch_config``). The q/k conv-state hand-over uses a small counter buffer per CUDA
    stream (allocated on first use, left zeroed by every launch): launches on one stream are ordered, so every
    layer shares it, and launches on different streams use different buffers.
    """
    entry = _launcher(Hk, Hv, Dk, Dv, K, columns_per_block, threads)
    args = (proj, conv_w, conv_state, A_log, dt_bias, state, o)
    for name, a, shape in zip(_ARG_NAMES, args, entry.shapes):
        if a.shape != shape:
            raise ValueError(f"deltanet_step: {name} has shape {tuple(a.shape)}, expected {shape}")
    entry.run(*args, entry.counters)


# --------------------------------------------------------------------------------------------------------------
# Compiled for sm_90 by tests/test_kernels_deltanet.py (megakernel.testing.ptx_check): the 0.8B shapes, and a small
# awkward shape where every guard is live (rows not a multiple of the row groups, grouped value heads, K = 3).
# --------------------------------------------------------------------------------------------------------------

deltanet_step_0p8b = deltanet_kernel(16, 16, 128, 128, 4, *deltanet_launch_config(16, 16, 128, 128, 4))
deltanet_step_awkward = deltanet_kernel(2, 4, 12, 20, 3, *deltanet_launch_config(2, 4, 12, 20, 3))
_SIG = ("void(float32[::1], float32[:, ::1], float32[:, ::1], float32[::1], float32[::1], float32[:, :, ::1], "
        "float32[::1], int32[::1])")
PTX_SIGNATURES = {"deltanet_step_0p8b": [_SIG], "deltanet_step_awkward": [_SIG]}
