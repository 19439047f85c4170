"""Persistent megakernel, version 1: every phase of a decode step in one launch, a grid barrier after each.

What it does. One cooperative launch of ``blocks`` x ``threads`` (every block resident at once: the grid is sized
from the compiled kernel's occupancy, ``max_cooperative_grid_blocks``) loops over N decode steps. Each step runs the
phases below in order; every block takes its share of each phase (matvec rows, or work items) by calling the SAME
device bodies the layered decoder's kernels are thin wrappers of (``megakernel.kernels``: ``norm_matvec_rows``,
``deltanet_item``, ``prepare_item``, ...), with its block index and the grid size as the work range; then all
blocks meet at ``this_grid().sync()`` before the next phase reads what this one wrote::

    embed                                   h = embed[token]                                         1 barrier
    DeltaNet layer:  in_proj | deltanet items | out_proj (gated norm) | MLP gate/up | MLP down         5 barriers
    attention layer: qkv | prepare items | decode items | combine items | o_proj | gate/up | down     7 barriers
    LM head + argmax (the last block to finish publishes the token)                                  1 barrier
    [sampling: Gumbel-max over the logits, seeded by (seed, position)]                               [1 barrier]

For Qwen3.5-0.8B that is 1 + 18 x 5 + 6 x 7 + 1 = 134 grid barriers per greedy token (135 sampled), the same
count as the layered decoder's 135 launches: version 1 replaces each launch by a barrier, and nothing else. The
token chosen at the end of a step feeds the next step's embedding without leaving the GPU; the host reads the
tokens once per launch. ``megakernel.persistent.schedule`` is the same list as Python data (drawn by notebook 07,
checked by the tests, counted against the kernel's own barrier count).

Why it is not faster than the layered CUDA graph (see NOTES.md for the H100 numbers): a barrier costs ~1-1.5 us,
but worse, every phase ends with its slowest warp and every block then starts its next weight loads cold, so the
memory system idles at each of the 134 boundaries; and the register count of the kernel is the maximum over its
phases (attention decode's ~168), which leaves one block of 8 warps per SM for the matvecs. Version 2 attacks both.

Arguments: the two weight arenas and a strided view of the conv taps [n_linear, C, K]; the decode state (conv,
DeltaNet, K and V caches, position); the scratch arena plus 2-D/3-D views of it for the attention phases (a
``reshape`` inside a kernel needs a runtime helper that CUDA cannot link); the control block, the two argmax
buffers (greedy, sampled), the token history, the DeltaNet hand-over counters and the per-layer trace.

Memory ordering. ``this_grid().sync()`` orders every global-memory access before it against every access after it
(it includes the fence). The two hand-offs inside a phase are the layered kernels' own and unchanged: the DeltaNet
q/k conv-state "last reader" counter and the argmax's "last block" ticket, each a ``threadfence`` before an atomic.
"""

from __future__ import annotations

from numba import cuda
from numba.cuda import float32, int32, int64

from megakernel import device as D

from ..kernels import fused_matvec as fm
from ..kernels import lm_head as lmh
from ..kernels import matvec as mv
from ..kernels.embedding import embed_rows
from ..kernels.matvec import PARTS_LEN, WARP
from . import plan as P
from .phases import Offsets, close_launch, make_barrier, make_mixers, seed_bits

VERSION = 1
DESCRIPTION = "grid barrier after every phase (134 per 0.8B token); the layered kernels' bodies as phases"


def kernel_key(plan) -> tuple:
    """What a compiled kernel depends on (not the grid size: one kernel serves every grid)."""
    c = plan.config
    return (c, plan.capacity, plan.threads)


_BUILT: dict = {}


def build(plan_key, plan, barriers: bool = True, profile: bool = False, **options):
    """The version-1 kernel for a plan (compiled on first launch; one per ``kernel_key`` and ``barriers``)."""
    if options:
        raise ValueError(f"persistent v1 has no build options (got {sorted(options)})")
    kernel = _BUILT.get((plan_key, barriers, profile))
    if kernel is None:
        kernel = _BUILT[(plan_key, barriers, profile)] = _build(plan, barriers, profile)
    return kernel


def _build(plan, barriers: bool, profile: bool = False, max_registers: int | None = None):
    """The version-1 kernel for a plan. ``barriers=False`` removes every grid barrier: a test-only switch that
    shows the barriers are what makes the result right (the kernel is then wrong, never hangs)."""
    o = Offsets(plan)
    lay = o.lay
    T, D_, F, V, EPS, L, KIND, SLOT = o.T, o.D, o.F, o.V, o.EPS, o.L, o.KIND, o.SLOT
    HAS_LIN, HAS_ATT = o.HAS_LIN, o.HAS_ATT
    Hv, Dv, C, P_LIN, HVDV = o.Hv, o.Dv, o.C, o.P_LIN, o.HVDV
    P_ATT, HQDH = o.P_ATT, o.HQDH
    H0, PL0, OL0, PA0, AO0, ACT0, LG0 = o.H0, o.PL0, o.OL0, o.PA0, o.AO0, o.ACT0, o.LG0
    W_IN, W_OUT, LIN_S = lay.lin_in, lay.lin_out, lay.lin_stride
    W_QKV, W_O, ATT_S = lay.att_qkv, lay.att_o, lay.att_stride
    W_GATE, W_UP, W_DOWN, MLP_S = lay.mlp_gate, lay.mlp_up, lay.mlp_down, lay.mlp_stride
    W_EMB, W_LM = lay.embed, lay.lm_head
    F_IN, F_POST, NS_ = lay.input_norm, lay.post_norm, lay.norm_stride
    F_FINAL, F_GN, LSS = lay.final_norm, lay.gated_norm, lay.lin_small_stride
    # the shared bodies
    in_body = fm.norm_matvec_rows(plan.G_in)
    sw_body = fm.norm_swiglu_rows(plan.G_sw)
    out_body = fm.gated_norm_matvec_residual_rows(plan.G_out)
    o_body = mv.matvec_rows(plan.G_o, residual=True, x_shared=plan.G_o == 1)
    down_body = mv.matvec_rows(plan.G_down, residual=True, x_shared=plan.G_down == 1)
    lm_body = lmh.lm_head_argmax_rows(plan.G_lm)
    MAX_REGISTERS = max_registers
    barrier = make_barrier(barriers, profile)
    deltanet_core, attention_core = make_mixers(plan, barrier)

    # One device function per layer kind: the arena slices are made where they are used, so they live in
    # registers for one phase only (slices made once at the top of the kernel stay live across the whole step
    # loop, which costs registers).
    @cuda.jit(device=True)
    def deltanet_layer(i, j, Ww, Wf, conv_ws, conv, rec, scr, counters, b, nb, ws, parts, scratch, flag, grid,
                       count, prof):
        h = scr[H0:H0 + D_]
        proj_lin = scr[PL0:PL0 + P_LIN]
        in_norm = Wf[F_IN + i * NS_:F_IN + i * NS_ + D_]
        w_in = Ww[W_IN + j * LIN_S:W_IN + j * LIN_S + P_LIN * D_ // 2]
        in_body(h, in_norm, w_in, proj_lin, P_LIN, D_, EPS, b, nb, ws, parts, scratch)
        count = barrier(grid, count, prof)
        count = deltanet_core(j, Wf, conv_ws, conv, rec, scr, counters, b, nb, ws, flag, grid, count, prof)
        o_lin = scr[OL0:OL0 + HVDV]
        z = scr[PL0 + C:PL0 + C + HVDV]
        gn = Wf[F_GN + j * LSS:F_GN + j * LSS + Dv]
        w_out = Ww[W_OUT + j * LIN_S:W_OUT + j * LIN_S + D_ * HVDV // 2]
        out_body(o_lin, z, gn, w_out, h, D_, Hv, Dv, EPS, b, nb, ws, parts)
        return barrier(grid, count, prof)

    @cuda.jit(device=True)
    def attention_layer(i, j, Ww, Wf, kc, vc, pos, scr, q, pml, po, counters, b, nb, ws, parts, scratch, flag, grid,
                        count, prof):
        h = scr[H0:H0 + D_]
        proj_att = scr[PA0:PA0 + P_ATT]
        in_norm = Wf[F_IN + i * NS_:F_IN + i * NS_ + D_]
        w_qkv = Ww[W_QKV + j * ATT_S:W_QKV + j * ATT_S + P_ATT * D_ // 2]
        in_body(h, in_norm, w_qkv, proj_att, P_ATT, D_, EPS, b, nb, ws, parts, scratch)
        count = barrier(grid, count, prof)
        count = attention_core(j, Wf, kc, vc, pos, scr, q, pml, po, counters, b, nb, ws, scratch, flag, grid, count,
                               prof)
        attn_out = scr[AO0:AO0 + HQDH]
        w_o = Ww[W_O + j * ATT_S:W_O + j * ATT_S + D_ * HQDH // 2]
        o_body(w_o, attn_out, h, D_, HQDH, b, nb, ws, parts)
        return barrier(grid, count, prof)

    @cuda.jit(device=True)
    def mlp(i, Ww, Wf, scr, b, nb, ws, parts, scratch, grid, count, prof):
        h = scr[H0:H0 + D_]
        act = scr[ACT0:ACT0 + F]
        post_norm = Wf[F_POST + i * NS_:F_POST + i * NS_ + D_]
        m = i * MLP_S
        w_gate = Ww[W_GATE + m:W_GATE + m + F * D_ // 2]
        w_up = Ww[W_UP + m:W_UP + m + F * D_ // 2]
        sw_body(h, post_norm, w_gate, w_up, act, F, D_, EPS, b, nb, ws, parts, scratch)
        count = barrier(grid, count, prof)
        w_down = Ww[W_DOWN + m:W_DOWN + m + D_ * F // 2]
        down_body(w_down, act, h, D_, F, b, nb, ws, parts)
        return barrier(grid, count, prof)

    @cuda.jit(device=True)
    def lm_head_and_token(Ww, Wf, scr, best, best_s, sample, inv_t, seed_lo, seed_hi, pos, b, nb, ws, parts,
                          scratch, keys, grid, count, prof):
        h = scr[H0:H0 + D_]
        logits = scr[LG0:LG0 + V]
        lm_w = Ww[W_LM:W_LM + V * D_ // 2]
        final_norm = Wf[F_FINAL:F_FINAL + D_]
        lm_body(h, final_norm, lm_w, logits, V, D_, EPS, best, b, nb, ws, parts, scratch, keys)
        count = barrier(grid, count, prof)
        if sample:
            lmh.sample_gumbel_rows(logits, V, inv_t, seed_lo, seed_hi, pos, best_s, b, nb, keys)
            count = barrier(grid, count, prof)
        return count

    @cuda.jit(max_registers=MAX_REGISTERS)
    def persistent_v1(Ww, Wf, conv_ws, conv, rec, kc, vc, position, scr, q, pml, po, ctl, best, best_s, tokens,
                      counters, trace, prof):
        ws = cuda.shared.array(0, float32)
        parts = cuda.shared.array(PARTS_LEN, float32)
        scratch = cuda.shared.array(32, float32)
        flag = cuda.shared.array(1, int32)
        keys = cuda.shared.array(WARP, int64)
        grid = cuda.cg.this_grid()
        b = cuda.blockIdx.x
        nb = cuda.gridDim.x
        first = b == 0 and cuda.threadIdx.x == 0

        pos0 = position[0]
        n_steps = ctl[P.CTL_STEPS]
        token = ctl[P.CTL_TOKEN]
        if token < 0:  # continue from the previous launch's last token (one launch per token, no host copy)
            token = ctl[P.CTL_LAST]
        count = 0
        done = 0
        for step in range(n_steps):
            pos = pos0 + step
            embed_rows(Ww[W_EMB:W_EMB + V * D_ // 2], token, scr[H0:H0 + D_], D_ // 2, b, nb)
            count = barrier(grid, count, prof)
            for i in range(L):
                if KIND[i] == 0:
                    if HAS_LIN:  # compile-time: a config without DeltaNet layers never types this call
                        count = deltanet_layer(i, SLOT[i], Ww, Wf, conv_ws, conv, rec, scr, counters, b, nb, ws,
                                               parts, scratch, flag, grid, count, prof)
                else:
                    if HAS_ATT:
                        count = attention_layer(i, SLOT[i], Ww, Wf, kc, vc, pos, scr, q, pml, po, counters, b, nb,
                                                ws, parts, scratch, flag, grid, count, prof)
                count = mlp(i, Ww, Wf, scr, b, nb, ws, parts, scratch, grid, count, prof)
                if ctl[P.CTL_TRACE] != 0:  # h is final for layer i until the next residual add, 2 phases on
                    for d in range(b * T + cuda.threadIdx.x, D_, nb * T):
                        trace[i, d] = scr[H0 + d]
            sample = ctl[P.CTL_SAMPLE] != 0
            seed_lo, seed_hi = seed_bits(ctl)
            count = lm_head_and_token(Ww, Wf, scr, best, best_s, sample, D.bits_to_f32(ctl[P.CTL_INV_T]), seed_lo,
                                      seed_hi, pos, b, nb, ws, parts, scratch, keys, grid, count, prof)
            token = int32(best_s[3]) if sample else int32(best[3])
            if first:
                tokens[pos] = token  # the token chosen at position pos (the input of position pos + 1)
            done = step + 1
            if token == ctl[P.CTL_EOS]:
                break
        count = barrier(grid, count, prof)  # every block has read position and ctl before they change
        close_launch(first, position, pos0, done, ctl, token, count)

    return persistent_v1


