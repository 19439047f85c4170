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

Memory ordering. ``this_grid().sync()`` orders every global-memory access before it against every access after it
(it includes the fence). The two hand-offs inside a phase are the layered kernels' own and unchanged: the DeltaNet
q/k conv-state "last reader" counter and the argmax's "last block" ticket, each a ``threadfence`` before an atomic.
"""

from __future__ import annotations

import numpy as np
from numba import cuda
from numba.cuda import float32, int32, int64

from megakernel import device as D

from ..kernels import attention as attn
from ..kernels import deltanet as dn
from ..kernels import fused_matvec as fm
from ..kernels import lm_head as lmh
from ..kernels import matvec as mv
from ..kernels.embedding import embed_rows
from ..kernels.matvec import PARTS_LEN, WARP
from ..layout import arena_layout
from . import plan as P

VERSION = 1
DESCRIPTION = "grid barrier after every phase (134 per 0.8B token); the layered kernels' bodies as phases"


def kernel_key(plan) -> tuple:
    """What a compiled kernel depends on (not the grid size: one kernel serves every grid)."""
    c = plan.config
    return (c, plan.capacity, plan.threads)


_BUILT: dict = {}


def build(plan_key, plan, barriers: bool = True):
    """The version-1 kernel for a plan (compiled on first launch; one per ``kernel_key`` and ``barriers``)."""
    kernel = _BUILT.get((plan_key, barriers))
    if kernel is None:
        kernel = _BUILT[(plan_key, barriers)] = _build(plan, barriers)
    return kernel


def _build(plan, barriers: bool):
    """The version-1 kernel for a plan. ``barriers=False`` removes every grid barrier: a test-only switch that
    shows the barriers are what makes the result right (the kernel is then wrong, never hangs)."""
    c = plan.config
    lay = arena_layout(c)
    T = plan.threads
    NW = T // WARP
    D_ = c.hidden_size
    F = c.intermediate_size
    V = c.vocab_size
    EPS = np.float32(c.rms_norm_eps)
    L = c.num_hidden_layers
    KIND, SLOT = plan.layer_table()
    # DeltaNet sizes
    Hk, Hv, Dk, Dv, KC = dn.deltanet_sizes(c)
    C = c.conv_dim
    P_LIN = C + c.value_dim + 2 * Hv
    HVDV = c.value_dim
    N_DN = plan.deltanet_items
    # attention sizes
    Hq, Hkv, Dh, R = attn.attention_sizes(c)
    P_ATT = 2 * Hq * Dh + 2 * Hkv * Dh
    HQDH = Hq * Dh
    S_MAX = plan.max_splits
    # scratch offsets
    SC = plan.scratch
    H0 = SC["h"][0]
    PL0 = SC["proj_lin"][0]
    OL0 = SC["o_lin"][0]
    PA0 = SC["proj_att"][0]
    Q0 = SC["q"][0]
    GT0 = SC["gate"][0]
    AO0 = SC["attn_out"][0]
    ML0 = SC["partial_ml"][0]
    PO0 = SC["partial_o"][0]
    ACT0 = SC["act"][0]
    LG0 = SC["logits"][0]
    # weight arena offsets (words / floats)
    W_IN, W_OUT, LIN_S = lay.lin_in, lay.lin_out, lay.lin_stride
    W_QKV, W_O, ATT_S = lay.att_qkv, lay.att_o, lay.att_stride
    W_GATE, W_UP, W_DOWN, MLP_S = lay.mlp_gate, lay.mlp_up, lay.mlp_down, lay.mlp_stride
    W_EMB, W_LM = lay.embed, lay.lm_head
    F_IN, F_POST, NS_ = lay.input_norm, lay.post_norm, lay.norm_stride
    F_FINAL, F_FREQ = lay.final_norm, lay.inv_freq
    F_CONV, CONV_S = lay.conv_w, lay.conv_stride
    F_ALOG, F_DT, F_GN, LSS = lay.A_log, lay.dt_bias, lay.gated_norm, lay.lin_small_stride
    F_QN, F_KN, ASS = lay.q_norm, lay.k_norm, lay.att_small_stride
    # the shared bodies
    in_body = fm.norm_matvec_rows(plan.G_in)
    sw_body = fm.norm_swiglu_rows(plan.G_sw)
    out_body = fm.gated_norm_matvec_residual_rows(plan.G_out)
    o_body = mv.matvec_rows(plan.G_o, residual=True, x_shared=plan.G_o == 1)
    down_body = mv.matvec_rows(plan.G_down, residual=True, x_shared=plan.G_down == 1)
    lm_body = lmh.lm_head_argmax_rows(plan.G_lm)
    has_lin = bool((KIND == 0).any())
    has_att = bool((KIND == 1).any())
    dn_body = dn.deltanet_item(Hk, Hv, Dk, Dv, KC, plan.cw, T) if has_lin else None
    prep_body = attn.prepare_item(Hq, Hkv, Dh, R, float(EPS), T) if has_att else None
    dec_body = attn.decode_item(Hq, Hkv, Dh, NW) if has_att else None
    comb_body = attn.combine_item(Hq, Dh, T) if has_att else None
    BARRIERS = barriers

    @cuda.jit(device=True)
    def barrier(grid, count):
        if BARRIERS:
            grid.sync()
        return count + 1

    @cuda.jit
    def persistent_v1(Ww, Wf, conv, rec, kc, vc, position, scr, ctl, best, best_s, tokens, counters, trace):
        ws = cuda.shared.array(0, float32)
        parts = cuda.shared.array(PARTS_LEN, float32)
        scratch = cuda.shared.array(32, float32)
        flag = cuda.shared.array(1, int32)
        grid = cuda.cg.this_grid()
        b = cuda.blockIdx.x
        nb = cuda.gridDim.x
        first = b == 0 and cuda.threadIdx.x == 0

        h = scr[H0:H0 + D_]
        proj_lin = scr[PL0:PL0 + P_LIN]
        z = scr[PL0 + C:PL0 + C + HVDV]
        o_lin = scr[OL0:OL0 + HVDV]
        proj_att = scr[PA0:PA0 + P_ATT]
        q = scr[Q0:Q0 + HQDH].reshape((Hq, Dh))
        gate = scr[GT0:GT0 + HQDH]
        attn_out = scr[AO0:AO0 + HQDH]
        pml = scr[ML0:ML0 + Hq * S_MAX * 2].reshape((Hq, S_MAX, 2))
        po = scr[PO0:PO0 + Hq * S_MAX * Dh].reshape((Hq, S_MAX, Dh))
        act = scr[ACT0:ACT0 + F]
        logits = scr[LG0:LG0 + V]
        embed = Ww[W_EMB:W_EMB + V * D_ // 2]
        lm_w = Ww[W_LM:W_LM + V * D_ // 2]
        final_norm = Wf[F_FINAL:F_FINAL + D_]
        inv_freq = Wf[F_FREQ:F_FREQ + R // 2]

        pos0 = position[0]
        n_steps = ctl[P.CTL_STEPS]
        eos = ctl[P.CTL_EOS]
        sample = ctl[P.CTL_SAMPLE] != 0
        tracing = ctl[P.CTL_TRACE] != 0
        inv_t = D.bits_to_f32(ctl[P.CTL_INV_T])
        seed_lo = int64(ctl[P.CTL_SEED_LO]) & int64(0xFFFFFFFF)  # the seed's bits, not a signed value
        seed_hi = int64(ctl[P.CTL_SEED_HI]) & int64(0xFFFFFFFF)
        token = ctl[P.CTL_TOKEN]
        count = 0
        done = 0
        for step in range(n_steps):
            pos = pos0 + step
            length = pos + 1
            embed_rows(embed, token, h, D_ // 2, b, nb)
            count = barrier(grid, count)
            for i in range(L):
                j = SLOT[i]
                in_norm = Wf[F_IN + i * NS_:F_IN + i * NS_ + D_]
                if KIND[i] == 0:
                    # ---- Gated DeltaNet
                    w_in = Ww[W_IN + j * LIN_S:W_IN + j * LIN_S + P_LIN * D_ // 2]
                    in_body(h, in_norm, w_in, proj_lin, P_LIN, D_, EPS, b, nb, ws, parts, scratch)
                    count = barrier(grid, count)
                    conv_w = Wf[F_CONV + j * CONV_S:F_CONV + j * CONV_S + C * KC].reshape((C, KC))
                    a_log = Wf[F_ALOG + j * LSS:F_ALOG + j * LSS + Hv]
                    dt_bias = Wf[F_DT + j * LSS:F_DT + j * LSS + Hv]
                    for item in range(b, N_DN, nb):
                        dn_body(item, proj_lin, conv_w, conv[j], a_log, dt_bias, rec[j], o_lin, counters, ws, flag)
                    count = barrier(grid, count)
                    gn = Wf[F_GN + j * LSS:F_GN + j * LSS + Dv]
                    w_out = Ww[W_OUT + j * LIN_S:W_OUT + j * LIN_S + D_ * HVDV // 2]
                    out_body(o_lin, z, gn, w_out, h, D_, Hv, Dv, EPS, b, nb, ws, parts)
                    count = barrier(grid, count)
                else:
                    # ---- gated attention
                    w_qkv = Ww[W_QKV + j * ATT_S:W_QKV + j * ATT_S + P_ATT * D_ // 2]
                    in_body(h, in_norm, w_qkv, proj_att, P_ATT, D_, EPS, b, nb, ws, parts, scratch)
                    count = barrier(grid, count)
                    qn = Wf[F_QN + j * ASS:F_QN + j * ASS + Dh]
                    kn = Wf[F_KN + j * ASS:F_KN + j * ASS + Dh]
                    for item in range(b, Hq + Hkv, nb):
                        prep_body(item, proj_att, qn, kn, inv_freq, pos, kc[j], vc[j], q, gate, scratch)
                    count = barrier(grid, count)
                    ns = attn.splits_for_length(S_MAX, length)
                    for item in range(b, Hkv * ns, nb):
                        dec_body(item // ns, item % ns, ns, length, q, kc[j], vc[j], pml, po, ws)
                    count = barrier(grid, count)
                    for item in range(b, Hq, nb):
                        comb_body(item, ns, pml, po, gate, attn_out, ws)
                    count = barrier(grid, count)
                    w_o = Ww[W_O + j * ATT_S:W_O + j * ATT_S + D_ * HQDH // 2]
                    o_body(w_o, attn_out, h, D_, HQDH, b, nb, ws, parts)
                    count = barrier(grid, count)
                # ---- MLP
                post_norm = Wf[F_POST + i * NS_:F_POST + i * NS_ + D_]
                m = i * MLP_S
                w_gate = Ww[W_GATE + m:W_GATE + m + F * D_ // 2]
                w_up = Ww[W_UP + m:W_UP + m + F * D_ // 2]
                sw_body(h, post_norm, w_gate, w_up, act, F, D_, EPS, b, nb, ws, parts, scratch)
                count = barrier(grid, count)
                w_down = Ww[W_DOWN + m:W_DOWN + m + D_ * F // 2]
                down_body(w_down, act, h, D_, F, b, nb, ws, parts)
                count = barrier(grid, count)
                if tracing:  # h is final for layer i until the next layer's first residual add, 2 phases on
                    for d in range(b * T + cuda.threadIdx.x, D_, nb * T):
                        trace[i, d] = h[d]
            # ---- LM head + argmax, and the next token
            lm_body(h, final_norm, lm_w, logits, V, D_, EPS, best, b, nb, ws, parts, scratch)
            count = barrier(grid, count)
            if sample:
                lmh.sample_gumbel_rows(logits, V, inv_t, seed_lo, seed_hi, pos, best_s, b, nb)
                count = barrier(grid, count)
                token = int32(best_s[3])
            else:
                token = int32(best[3])
            if first:
                tokens[step] = token
            done = step + 1
            if token == eos:
                break
        if first:
            position[0] = pos0 + done
            ctl[P.CTL_DONE] = done
            ctl[P.CTL_LAST] = token
            ctl[P.CTL_BARRIERS] = count

    return persistent_v1


SIGNATURE = ("void(int32[::1], float32[::1], float32[:, :, ::1], float32[:, :, :, ::1], int16[:, :, :, ::1], "
             "int16[:, :, :, ::1], int32[::1], float32[::1], int32[::1], int64[::1], int64[::1], int32[::1], "
             "int32[::1], float32[:, ::1])")
