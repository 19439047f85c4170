"""Pieces every persistent kernel version shares: the scratch/weight offsets of a plan, the grid barrier, and the
mixer phases (the DeltaNet recurrence and attention), which run the layered decoder's device bodies
(``deltanet_item``, ``prepare_item``, ``decode_item``, ``combine_item``) over work items spread round-robin over
the blocks. The versions differ in how they run the matvec phases and where the barriers go.
"""

from __future__ import annotations

import numpy as np
from numba import cuda
from numba.cuda import int32, int64

from ..kernels import attention as attn
from ..kernels import deltanet as dn
from ..kernels.matvec import WARP
from ..layout import arena_layout
from . import plan as P
from . import tma

_LOW32 = np.int64(0xFFFFFFFF)
_HALF32 = np.int64(0x80000000)


@cuda.jit(device=True)
def seed_bits(ctl):
    """The sampling seed's two 32-bit halves from the control block, as their bits (not signed int32 values)."""
    return int64(ctl[P.CTL_SEED_LO]) & _LOW32, int64(ctl[P.CTL_SEED_HI]) & _LOW32


@cuda.jit(device=True)
def close_launch(first, position, pos0, done, ctl, token, count):
    """Thread 0 of block 0, after the launch's last barrier: advance the device position by the steps done and
    report them, the last token (the next launch may continue from it) and the barriers passed."""
    if first:
        position[0] = pos0 + done
        ctl[P.CTL_DONE] = done
        ctl[P.CTL_LAST] = token
        ctl[P.CTL_BARRIERS] = count


class Offsets:
    """A plan's sizes and offsets as plain attributes (a kernel factory reads them into closure constants)."""

    def __init__(self, plan):
        c = plan.config
        lay = arena_layout(c)
        self.T = plan.threads
        self.NW = plan.threads // WARP
        self.D = c.hidden_size
        self.F = c.intermediate_size
        self.V = c.vocab_size
        self.EPS = np.float32(c.rms_norm_eps)
        self.L = c.num_hidden_layers
        self.KIND, self.SLOT = plan.layer_table()
        self.HAS_LIN = bool((self.KIND == 0).any())
        self.HAS_ATT = bool((self.KIND == 1).any())
        self.Hk, self.Hv, self.Dk, self.Dv, self.KC = dn.deltanet_sizes(c)
        self.C = c.conv_dim
        self.HVDV = c.value_dim
        self.P_LIN = self.C + self.HVDV + 2 * self.Hv
        self.N_DN = plan.deltanet_items
        self.Hq, self.Hkv, self.Dh, self.R = attn.attention_sizes(c)
        self.HQDH = self.Hq * self.Dh
        self.P_ATT = 2 * self.HQDH + 2 * self.Hkv * self.Dh
        self.S_MAX = plan.max_splits
        sc = plan.scratch
        self.H0, self.PL0, self.OL0, self.PA0 = sc["h"][0], sc["proj_lin"][0], sc["o_lin"][0], sc["proj_att"][0]
        self.GT0, self.AO0, self.ACT0, self.LG0 = sc["gate"][0], sc["attn_out"][0], sc["act"][0], sc["logits"][0]
        self.lay = lay


@cuda.jit(device=True)
def stamp(prof, k):
    """Thread 0: the global timer into ``prof[block, k]`` (a profiling build's barrier arrivals and departures, in
    the first two thirds of the buffer; the last third holds the page waits, ``profile.read_timeline``)."""
    if cuda.threadIdx.x == 0 and k < prof.shape[1] // 3 * 2:
        prof[cuda.blockIdx.x, k] = tma.globaltimer()


def make_counter_halves():
    """(arrive, wait): the counter barrier of ``make_barrier(counter=True)`` in its two halves, for thread 0 after
    the block's ``syncthreads``, so that it can do something useful between them (version 2's L2 prefetches):

    ``gen, last = arrive(ctl)``: read the generation, fence (release the block's writes), add 1 to the arrival
        count; the last block to arrive resets the count, fences and bumps the generation (``last`` = 1);
    ``wait(ctl, gen, last)``: unless it was the last, spin (atomic reads) until the generation moves past
        ``gen``; then fence (acquire)."""
    COUNT, GEN = P.CTL_BAR_COUNT, P.CTL_BAR_GEN

    @cuda.jit(device=True)
    def arrive(ctl):
        gen = cuda.atomic.add(ctl, GEN, 0)
        cuda.threadfence()
        last = 0
        if cuda.atomic.add(ctl, COUNT, 1) == cuda.gridDim.x - 1:
            cuda.atomic.exch(ctl, COUNT, 0)
            cuda.threadfence()
            cuda.atomic.add(ctl, GEN, 1)
            last = 1
        return gen, last

    @cuda.jit(device=True)
    def wait(ctl, gen, last):
        if last == 0:
            while cuda.atomic.add(ctl, GEN, 0) == gen:
                pass
        cuda.threadfence()

    return arrive, wait


def make_barrier(enabled: bool, profile: bool = False, counter: bool = False, monotonic: bool = False,
                 count_smem: bool = False, arriver: int = 0, release_stamp: bool = False):
    """``count = barrier(grid, count, prof)``: a grid barrier (counted, so the host can check the schedule), or
    with ``enabled=False`` only the count: the test-only switch that shows what the barriers are for.

    ``counter``: instead of the cooperative ``grid.sync()``, a counter barrier in the control block (``grid`` is
    then the ``ctl`` array): thread 0 of each block reads the generation, fences (release), adds 1 to the arrival
    count; the last to arrive resets the count, fences and bumps the generation; the others spin (atomic reads)
    until it changes, then fence (acquire). The grid is still launched cooperatively (co-residency).

    ``monotonic``: one arrival counter that only ever grows (``CTL_ARRIVALS``, mod 2^32; ``grid`` is then
    ``(ctl, base)``, base = the counter when the launch started, ``make_barrier_handle``): after the block's
    ``syncthreads`` thread 0 adds 1 with release semantics (``red.release.gpu``, no separate fence) and polls
    with acquire loads until the counter reaches base + blocks x (barriers passed + 1). No generation to read
    first, no reset, no last-arriver's extra round trips: a block leaves one L2 round trip after the last
    arrival. ``make_barrier_close`` (block 0, after the launch's last barrier) stores the next launch's base.

    With ``profile``, thread 0 of every block records the GPU's global timer when it arrives at barrier ``k`` (after
    a block barrier: when the block's last warp arrives) and
    when it leaves it, in ``prof[block, 2k]`` and ``prof[block, 2k + 1]`` (``prof``: int64 [blocks, 2 x barriers
    of the launch]): the phase a block worked on before barrier ``k`` took ``prof[b, 2k] - prof[b, 2k - 1]``, its
    wait ``prof[b, 2k + 1] - prof[b, 2k]`` (``megakernel.persistent.profile`` turns that into a timeline).

    ``count_smem`` (with ``monotonic``): the barriers passed are counted in shared memory (``grid`` is then
    ``(ctl, base, cnt)``, ``cnt`` an int64 shared array of one element, zeroed when the launch starts) instead of the
    ``count`` the kernel carries from barrier to barrier, which then has no use left and is compiled away. Why:
    a value carried through the whole kernel and read once per phase is what the register allocator spills first,
    and version 10's ``count`` was reloaded from local memory (a miss in an L1 of ~28 KB) before every barrier's
    arrival (measured: the step within noise; NOTES.md). ``barrier_count(grid, count)`` gives the count for the
    launch's end.

    ``arriver`` (with ``monotonic``): the thread that arrives and polls (default 0). Thread 0 is also the copy
    thread of the weight ring: its release fence (``MEMBAR.GPU``) orders every memory operation it issued before,
    so another thread's arrival might not wait behind the copies it started (measured: no difference, NOTES.md).

    ``release_stamp`` (profiling builds with ``monotonic``, timing only): the arriving thread records, in the
    buffer's last third where page waits go, the time from the block's arrival stamp to the moment its release-add
    has issued (the release's ``MEMBAR.ALL.GPU`` drained): a barrier's latency split into the last block's release
    and the polls (``profile.Timeline.page_wait`` then holds these, not page waits)."""
    ENABLED = enabled
    ARRIVER = arriver
    SMEM = count_smem and monotonic and enabled
    PROFILE = profile
    COUNTER = counter
    MONO = monotonic
    ARR = P.CTL_ARRIVALS
    RELEASE_STAMP = release_stamp and profile and monotonic
    counter_arrive, counter_wait = make_counter_halves()

    @cuda.jit(device=True)
    def monotonic_sync(grid, count, prof):
        ctl, base = grid[0], grid[1]
        cuda.syncthreads()  # the block's work is done
        if cuda.threadIdx.x == ARRIVER:
            if SMEM:
                count = grid[2][0]
                grid[2][0] = count + 1  # read by the block after the syncthreads below
            target = (base + int64(cuda.gridDim.x) * (count + 1)) & _LOW32
            tma.red_release_add(ctl, ARR, 1)
            if RELEASE_STAMP:
                e = prof.shape[1] // 3  # (``count``: the barriers passed, also with ``count_smem``)
                if count < e:
                    prof[cuda.blockIdx.x, 2 * e + count] = tma.globaltimer() - prof[cuda.blockIdx.x, 2 * count]
            while ((int64(tma.ld_acquire(ctl, ARR)) & _LOW32) - target) & _LOW32 >= _HALF32:
                pass
        cuda.syncthreads()

    @cuda.jit(device=True)
    def counter_sync(ctl):
        cuda.syncthreads()  # the block's work is done
        if cuda.threadIdx.x == 0:
            gen, last = counter_arrive(ctl)
            counter_wait(ctl, gen, last)
        cuda.syncthreads()

    @cuda.jit(device=True)
    def barrier(grid, count, prof):
        if PROFILE:
            cuda.syncthreads()  # (a producer build's consumer warps meet at no barrier per page: not in step)
            stamp(prof, 2 * (grid[2][0] if SMEM else count))
        if ENABLED:
            if MONO:
                monotonic_sync(grid, count, prof)
            elif COUNTER:
                counter_sync(grid)
            else:
                grid.sync()
        if PROFILE:
            stamp(prof, 2 * (grid[2][0] - 1 if SMEM else count) + 1)
        return count + 1

    return barrier


def make_barrier_count(count_smem: bool = False, monotonic: bool = False):
    """``n = barrier_count(grid, count)``: the barriers passed so far (``count``, or with ``count_smem`` the block's
    shared counter, ``make_barrier``)."""
    SMEM = count_smem and monotonic

    @cuda.jit(device=True)
    def barrier_count(grid, count):
        if SMEM:
            return int32(grid[2][0])
        return count

    return barrier_count


def make_splits(plan):
    """``ns = splits(length, nb)``: attention-decode splits in use for ``length`` cached positions on a grid of
    ``nb`` blocks: ``attention.split_count`` with the plan's ``positions_per_split`` and ``max_splits``; with
    ``plan.splits_fit_grid`` also at most one item per block (``nb // Hkv`` splits: a second round of items would
    double the phase)."""
    PPS, S_MAX = plan.positions_per_split, plan.max_splits
    FIT = plan.splits_fit_grid
    HKV = max(1, plan.config.num_key_value_heads)

    @cuda.jit(device=True)
    def splits(length, nb):
        return attn.split_count_device(length, PPS, S_MAX, max(1, nb // HKV) if FIT else 0)

    return splits


# the array arguments of the mixer bodies (``lean_calls``): deltanet_item(item, proj, conv_w, conv_state, A_log,
# dt_bias, state, o, counters, ws, flag); prepare_item(item, proj, q_norm_w, k_norm_w, inv_freq, pos, k_cache,
# v_cache, q_out, gate_out, scratch); combine_item(h, n_splits, partial_ml, partial_o, gate, out, ws);
# decode_item(kvh, split, n_splits, length, q, k_cache, v_cache, partial_ml, partial_o, ws)
DN_ARRAYS = tuple(range(1, 11))
PREP_ARRAYS = (1, 2, 3, 4, 6, 7, 8, 9, 10)
COMB_ARRAYS = (2, 3, 4, 5, 6)
DEC_ARRAYS = (4, 5, 6, 7, 8, 9)


def make_mixers(plan, barrier, out_of_line: bool = False, state_first: bool = False, fold_attention: bool = False,
                deltanet_out_of_line: bool = False, inline_decode: bool = False, late_shift: bool = False,
                twice: bool = False, lean_calls: bool = False, deferred_shift: bool = False,
                combine_batch: int = 0, ll_inproj: bool = False, combine_cols: int = 0, ll_together: bool = False):
    """(deltanet_core, attention_core): the phases between a layer's input projection and its output projection.

    deltanet_core(j, Wf, conv_ws, conv, rec, scr, counters, b, nb, ws, flag, grid, count, prof) -> count
        the DeltaNet items of linear layer ``j`` (conv, norms, decay, the state update, o = S^T q), then a barrier;
    attention_core(j, Wf, kc, vc, pos, scr, q, pml, po, counters, b, nb, ws, scratch, flag, grid, count, prof)
        -> count: prepare (norms, RoPE, KV write), barrier, split attention, barrier, combine (* sigmoid(gate)),
        barrier.

    ``out_of_line``: call the bodies through ``noinline`` wrappers, so each gets its own register allocation
    (``megakernel.persistent.noinline``; the layered kernels keep inlining the same bodies). ``state_first``: the
    DeltaNet body's state loads before its conv step (``deltanet.deltanet_item``). ``fold_attention``: attention in
    one phase and one barrier (``make_folded_attention``; the same bits). ``late_shift``: the DeltaNet body awaits
    its "last reader" count only after the state columns (``deltanet.deltanet_item``; the same bits). ``twice``
    (timing only, wrong results): each item's body runs twice in a row (the second run finds its code and its
    inputs on the SM: what a run costs cold and warm). ``deferred_shift``: the DeltaNet body leaves the q/k conv
    state to the caller (``deltanet.qk_conv_shift`` after the phase's barrier; no "last reader" count).
    ``combine_batch``: the partials an attention-combine thread loads at once (``attention.combine_item(batch=)``).
    ``combine_cols``: the combine over items of that many columns of a head (``attention.combine_cols_item``; width
    from ``attention.combine_columns``), every split's partials loaded at once; the same bits.
    ``ll_inproj`` (with ``deferred_shift``): the DeltaNet items read the input projection as flag-in-data words
    (``handoff``), with no grid barrier between the projection and them; ``deltanet_core`` then takes two more
    arguments, the words and their tag: ``deltanet_core(..., grid, count, prof, words, tag)``. ``ll_together``:
    the items re-read the words not yet written together (``deltanet.deltanet_item(ll_together=True)``).
    """
    if ll_inproj and (not deferred_shift or lean_calls):
        raise ValueError("make_mixers: ll_inproj needs deferred_shift and does not combine with lean_calls")
    o = Offsets(plan)
    T, NW, EPS = o.T, o.NW, o.EPS
    Hk, Hv, Dk, Dv, KC = o.Hk, o.Hv, o.Dk, o.Dv, o.KC
    P_LIN, HVDV, N_DN = o.P_LIN, o.HVDV, o.N_DN
    Hq, Hkv, Dh, R, HQDH, P_ATT = o.Hq, o.Hkv, o.Dh, o.R, o.HQDH, o.P_ATT
    PL0, OL0, PA0, GT0, AO0 = o.PL0, o.OL0, o.PA0, o.GT0, o.AO0
    lay = o.lay
    F_ALOG, F_DT, LSS = lay.A_log, lay.dt_bias, lay.lin_small_stride
    F_QN, F_KN, ASS, F_FREQ = lay.q_norm, lay.k_norm, lay.att_small_stride, lay.inv_freq
    splits = make_splits(plan)
    dn_body = (dn.deltanet_item(Hk, Hv, Dk, Dv, KC, plan.cw, T, state_first, late_shift, deferred_shift,
                                ll_inproj, ll_together) if o.HAS_LIN else None)
    LL = ll_inproj
    prep_body = attn.prepare_item(Hq, Hkv, Dh, R, float(EPS), T) if o.HAS_ATT else None
    dec_body = attn.decode_item(Hq, Hkv, Dh, NW) if o.HAS_ATT else None
    CC = attn.combine_columns(Dh, T, combine_cols) if combine_cols and o.HAS_ATT else 0
    if o.HAS_ATT:
        comb_body = (attn.combine_cols_item(Hq, Dh, T, CC) if CC
                     else attn.combine_item(Hq, Dh, T, batch=combine_batch))
    else:
        comb_body = None
    N_COMB = Hq * (Dh // CC) if CC else Hq  # combine items
    lean = lean_calls  # pass the bodies' arrays (at the positions *_ARRAYS) as (address, shape) pairs
    if out_of_line:
        dn_body, prep_body, comb_body = (_out_of_line(f, arrays if lean else None) if f is not None else None
                                         for f, arrays in ((dn_body, DN_ARRAYS), (prep_body, PREP_ARRAYS),
                                                           (comb_body, COMB_ARRAYS)))
        if not inline_decode and dec_body is not None:
            dec_body = _out_of_line(dec_body, DEC_ARRAYS if lean else None)
    elif deltanet_out_of_line and dn_body is not None:  # the attention bodies stay inline
        dn_body = _out_of_line(dn_body, DN_ARRAYS if lean else None)
    folded = make_folded_attention(plan, barrier, prep_body, out_of_line) if fold_attention and o.HAS_ATT else None
    REPS = 2 if twice else 1

    if LL:  # the items read the projection's flag-in-data words
        @cuda.jit(device=True)
        def run_item(item, scr, words, conv_w, conv_state, a_log, dt_bias, state, o_lin, counters, ws, flag, tag):
            dn_body(item, words, conv_w, conv_state, a_log, dt_bias, state, o_lin, counters, ws, flag, tag)
    else:
        @cuda.jit(device=True)
        def run_item(item, scr, words, conv_w, conv_state, a_log, dt_bias, state, o_lin, counters, ws, flag, tag):
            dn_body(item, scr[PL0:PL0 + P_LIN], conv_w, conv_state, a_log, dt_bias, state, o_lin, counters, ws, flag)

    @cuda.jit(device=True)
    def deltanet_items(j, Wf, conv_ws, conv, rec, scr, counters, b, nb, ws, flag, words, tag):
        o_lin = scr[OL0:OL0 + HVDV]
        a_log = Wf[F_ALOG + j * LSS:F_ALOG + j * LSS + Hv]
        dt_bias = Wf[F_DT + j * LSS:F_DT + j * LSS + Hv]
        item = b
        while item < N_DN:  # (while loops: a range() stepping by the grid size divides out its trip count)
            for _ in range(REPS):
                run_item(item, scr, words, conv_ws[j], conv[j], a_log, dt_bias, rec[j], o_lin, counters, ws, flag,
                         tag)
            item += nb

    if LL:
        @cuda.jit(device=True)
        def deltanet_core(j, Wf, conv_ws, conv, rec, scr, counters, b, nb, ws, flag, grid, count, prof, words, tag):
            deltanet_items(j, Wf, conv_ws, conv, rec, scr, counters, b, nb, ws, flag, words, tag)
            return barrier(grid, count, prof)
    else:
        @cuda.jit(device=True)
        def deltanet_core(j, Wf, conv_ws, conv, rec, scr, counters, b, nb, ws, flag, grid, count, prof):
            deltanet_items(j, Wf, conv_ws, conv, rec, scr, counters, b, nb, ws, flag, scr, 0)
            return barrier(grid, count, prof)

    @cuda.jit(device=True)
    def attention_phases(j, Wf, kc, vc, pos, scr, q, pml, po, counters, b, nb, ws, scratch, flag, grid, count,
                         prof):
        proj_att = scr[PA0:PA0 + P_ATT]
        gate = scr[GT0:GT0 + HQDH]
        attn_out = scr[AO0:AO0 + HQDH]
        qn = Wf[F_QN + j * ASS:F_QN + j * ASS + Dh]
        kn = Wf[F_KN + j * ASS:F_KN + j * ASS + Dh]
        inv_freq = Wf[F_FREQ:F_FREQ + R // 2]
        item = b
        while item < Hq + Hkv:
            for _ in range(REPS):
                prep_body(item, proj_att, qn, kn, inv_freq, pos, kc[j], vc[j], q, gate, scratch)
            item += nb
        count = barrier(grid, count, prof)
        length = pos + 1
        ns = splits(length, nb)
        item = b
        while item < Hkv * ns:
            for _ in range(REPS):
                dec_body(item // ns, item % ns, ns, length, q, kc[j], vc[j], pml, po, ws)
            item += nb
        count = barrier(grid, count, prof)
        item = b
        while item < N_COMB:
            for _ in range(REPS):
                comb_body(item, ns, pml, po, gate, attn_out, ws)
            item += nb
        return barrier(grid, count, prof)

    return deltanet_core, (folded if folded is not None else attention_phases)


def make_deltanet_item(plan, out_of_line: bool = False, state_first: bool = False, late_shift: bool = False):
    """The DeltaNet item body (``deltanet.deltanet_item`` at the plan's sizes), out of line if asked: for a phase
    that runs the items itself (the ``fused_out`` build option)."""
    o = Offsets(plan)
    body = dn.deltanet_item(o.Hk, o.Hv, o.Dk, o.Dv, o.KC, plan.cw, o.T, state_first, late_shift)
    return _out_of_line(body) if out_of_line else body


def make_folded_attention(plan, barrier, prep_body, out_of_line: bool = False):
    """``attention_core`` in one phase (``fold_attention``): the same arithmetic as the three phases, the same bits,
    one grid barrier instead of three.

    A decode item (KV head ``kvh``, split ``s``) makes its group's ``G`` queries itself, in its workspace
    (``attention.group_query_item``, the prepare body's arithmetic); the item of the last split, whose positions
    hold the new one (no other split reads it), first writes the head's new key and value to the cache
    (``prep_body``'s item ``Hq + kvh``; the block's ``syncthreads`` makes its global writes visible to its own
    threads). After writing its partials each item counts itself in on its KV head's counter (a release-add,
    ``plan.counter_slots``). The group's ``G`` query heads are then combined in parallel, in ``combine_item``'s
    order, with the gate read from the projection: head g by the block that scored split g % ns, which waits
    (acquire-polls) until all ``ns`` items are in; the combining blocks count themselves out and the last resets
    the counter for the next layer.
    ``prep_body``: ``make_mixers``' prepare body; ``out_of_line``: the other bodies through ``noinline`` wrappers
    too."""
    o = Offsets(plan)
    T, NW, EPS = o.T, o.NW, o.EPS
    Hq, Hkv, Dh, R, HQDH, P_ATT = o.Hq, o.Hkv, o.Dh, o.R, o.HQDH, o.P_ATT
    G = Hq // Hkv
    PA0, AO0 = o.PA0, o.AO0
    CNT0 = P.counter_slots(plan.config)[0]
    lay = o.lay
    F_QN, F_KN, ASS, F_FREQ = lay.q_norm, lay.k_norm, lay.att_small_stride, lay.inv_freq
    splits = make_splits(plan)
    query_body = attn.group_query_item(Hq, Hkv, Dh, R, float(EPS), T)
    dec_body = attn.decode_item(Hq, Hkv, Dh, NW, staged=True)
    comb_body = attn.combine_item(Hq, Dh, T, gate_stride=2 * Dh)
    if out_of_line:
        query_body, dec_body, comb_body = (_out_of_line(f) for f in (query_body, dec_body, comb_body))

    @cuda.jit(device=True)
    def count_in(counters, kvh):
        """After an item's partials (the block synchronised): thread 0 counts the item in on its KV head's counter
        (``red.release``: the block's partials are visible before the count)."""
        if cuda.threadIdx.x == 0:
            tma.red_release_add(counters, CNT0 + kvh, 1)

    @cuda.jit(device=True)
    def wait_head(counters, kvh, target):
        """Until the KV head's counter reaches ``target`` (thread 0 polls with ``ld.acquire``; the block's
        ``syncthreads`` passes the acquire on)."""
        if cuda.threadIdx.x == 0:
            while tma.ld_acquire(counters, CNT0 + kvh) < target:
                pass
        cuda.syncthreads()

    @cuda.jit(device=True)
    def attention_folded(j, Wf, kc, vc, pos, scr, q, pml, po, counters, b, nb, ws, scratch, flag, grid, count,
                         prof):
        proj_att = scr[PA0:PA0 + P_ATT]
        gate = scr[PA0 + Dh:PA0 + P_ATT]  # head h's gate at h 2 Dh: the q|gate rows of the projection
        attn_out = scr[AO0:AO0 + HQDH]
        qn = Wf[F_QN + j * ASS:F_QN + j * ASS + Dh]
        kn = Wf[F_KN + j * ASS:F_KN + j * ASS + Dh]
        inv_freq = Wf[F_FREQ:F_FREQ + R // 2]
        qs = ws[0:G * Dh]  # the group's queries, loaded into registers before the decode body reuses ws
        length = pos + 1
        ns = splits(length, nb)
        for item in range(b, Hkv * ns, nb):
            kvh = item // ns
            split = item % ns
            query_body(kvh, proj_att, qn, inv_freq, pos, qs, scratch)
            if split == ns - 1:  # the split that scores the new position writes it first
                prep_body(Hq + kvh, proj_att, qn, kn, inv_freq, pos, kc[j], vc[j], q, gate, scratch)  # q, gate unused
            dec_body(kvh, split, ns, length, qs, kc[j], vc[j], pml, po, ws)
            count_in(counters, kvh)
        # the combine: query head g of a KV head by the block that scored its split g % ns (heads in parallel on
        # min(G, ns) blocks), once all ns items are in; those blocks then count themselves out, and the last one
        # resets the counter for the next layer. A block waits only after all its own items (no deadlock).
        waiters = min(G, ns)
        for kvh in range(Hkv):
            for w in range(waiters):
                if (kvh * ns + w) % nb == b:
                    wait_head(counters, kvh, ns)
                    for g in range(w, G, waiters):
                        comb_body(kvh * G + g, ns, pml, po, gate, attn_out, ws)
                    if cuda.threadIdx.x == 0:
                        if cuda.atomic.add(counters, CNT0 + kvh, 1) == ns + waiters - 1:
                            counters[CNT0 + kvh] = 0
        return barrier(grid, count, prof)

    return attention_folded


def make_barrier_handle(counter: bool = False, monotonic: bool = False):
    """``grid = handle(ctl)``: what ``make_barrier(..., counter, monotonic)``'s barrier takes as ``grid``: the
    control block for the counter barrier, (control block, this launch's base arrival count) for the monotonic
    one, the cooperative grid group otherwise."""
    if monotonic:
        BASE = P.CTL_BAR_BASE

        @cuda.jit(device=True)
        def handle(ctl):
            return ctl, int64(ctl[BASE]) & _LOW32
    elif counter:
        @cuda.jit(device=True)
        def handle(ctl):
            return ctl
    else:
        @cuda.jit(device=True)
        def handle(ctl):
            return cuda.cg.this_grid()
    return handle


def make_barrier_close(enabled: bool, monotonic: bool = False):
    """``close(first, grid, count)``: after a launch's last barrier (``count`` passed), thread 0 of block 0 stores
    the monotonic barrier's arrivals so far as the next launch's base (the kernel boundary orders it before the
    next launch reads it). Nothing for the other barriers."""
    ACTIVE = enabled and monotonic
    BASE = P.CTL_BAR_BASE

    @cuda.jit(device=True)
    def close(first, grid, count):
        if ACTIVE:
            if first:
                ctl, base = grid[0], grid[1]
                v = (base + int64(cuda.gridDim.x) * count) & _LOW32
                ctl[BASE] = int32(v - (_LOW32 + 1) if v >= _HALF32 else v)

    return close


def make_prefetchers(plan):
    """(prefetch_deltanet, prefetch_kv): L2 prefetches of what a block's mixer items will read from HBM, issued a
    phase ahead (the mixer's loads then hit L2 instead of queueing behind the weight stream).

    prefetch_deltanet(j, b, nb, rec, conv, Wf): the state slabs, conv-state and conv-weight rows of block ``b``'s
        DeltaNet items of linear layer ``j``;
    prefetch_kv(j, pos, b, nb, kc, vc): the K and V rows block ``b``'s attention-decode items of attention layer
        ``j`` will score at position ``pos`` (at most ``KV_PREFETCH_BYTES`` per item and tensor).
    """
    o = Offsets(plan)
    T = o.T
    Hk, Hv, Dk, Dv, K = o.Hk, o.Hv, o.Dk, o.Dv, o.KC
    G = max(1, Hv // max(Hk, 1))
    CW = plan.cw
    NS = max(1, Dv // CW)
    N_DN = o.N_DN
    C = o.C
    KM1 = K - 1
    KD = Hk * Dk
    V_OFF = 2 * Hk * Dk
    F_CONV, CS = o.lay.conv_w, o.lay.conv_stride
    Hkv, Dh = o.Hkv, o.Dh
    KV_ROWS = max(1, KV_PREFETCH_BYTES // (2 * Dh))
    LINE_F = 32  # float32 elements per 128-byte line
    LINE_H = 64  # bf16 elements per line
    splits = make_splits(plan)

    @cuda.jit(device=True)
    def span(arr, start, n, per_line, first, stride):
        """Lines of ``arr[start:start+n]`` (flat), one per thread from ``first`` in steps of ``stride``."""
        for i in range(first, (n + per_line - 1) // per_line + 1 if n > 0 else 0, stride):
            tma.prefetch_line(arr, start + min(i * per_line, n - 1))

    @cuda.jit(device=True)
    def prefetch_deltanet(j, b, nb, rec, conv, Wf):
        tid = cuda.threadIdx.x
        for item in range(b, N_DN, nb):
            h = item // NS
            s = item % NS
            hk = h // G
            for r in range(tid, Dk, T):  # the state slab: Dk rows of CW columns
                tma.prefetch_line(rec, ((j * Hv + h) * Dk + r) * Dv + s * CW)
            span(conv, (j * C + hk * Dk) * KM1, Dk * KM1, LINE_F, tid, T)
            span(conv, (j * C + KD + hk * Dk) * KM1, Dk * KM1, LINE_F, tid, T)
            span(conv, (j * C + V_OFF + h * Dv + s * CW) * KM1, CW * KM1, LINE_F, tid, T)
            span(Wf, F_CONV + j * CS + hk * Dk * K, Dk * K, LINE_F, tid, T)
            span(Wf, F_CONV + j * CS + (KD + hk * Dk) * K, Dk * K, LINE_F, tid, T)
            span(Wf, F_CONV + j * CS + (V_OFF + h * Dv + s * CW) * K, CW * K, LINE_F, tid, T)

    @cuda.jit(device=True)
    def prefetch_kv(j, pos, b, nb, kc, vc):
        tid = cuda.threadIdx.x
        length = pos + 1
        ns = splits(length, nb)
        for item in range(b, Hkv * ns, nb):
            kvh = item // ns
            split = item % ns
            start = (split * length) // ns
            end = min(((split + 1) * length) // ns, start + KV_ROWS)
            base = ((j * Hkv + kvh) * kc.shape[2] + start) * Dh
            span(kc, base, (end - start) * Dh, LINE_H, tid, T)
            span(vc, base, (end - start) * Dh, LINE_H, tid, T)

    return prefetch_deltanet, prefetch_kv


KV_PREFETCH_BYTES = 64 * 1024


def _out_of_line(body, arrays: tuple[int, ...] | None = None):
    """A ``noinline`` wrapper around a device body (the body itself stays inlinable for the layered kernels).
    ``arrays``: the positions of the body's array arguments, passed as (address, shape) pairs instead of Numba's
    whole descriptors (``noinline.lean_wrapper``: fewer parameters through the stack)."""
    from .noinline import lean_wrapper, noinline

    import inspect

    n = len(inspect.signature(body.py_func).parameters)
    if arrays is not None:
        return lean_wrapper(body, arrays, n)

    @cuda.jit(device=True)
    def call(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10):
        body(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10)

    @cuda.jit(device=True)
    def call7(a0, a1, a2, a3, a4, a5, a6):
        body(a0, a1, a2, a3, a4, a5, a6)

    @cuda.jit(device=True)
    def call10(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9):
        body(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9)

    @cuda.jit(device=True)
    def call12(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11):
        body(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11)

    wrapper = {11: call, 7: call7, 10: call10, 12: call12}[n]
    return noinline(wrapper)


__all__ = ["Offsets", "make_barrier", "make_barrier_close", "make_barrier_count", "make_counter_halves", "stamp",
           "make_mixers",
           "make_deltanet_item",
           "make_folded_attention", "make_prefetchers", "make_barrier_handle", "seed_bits", "close_launch"]
