"""Each reference op: the two forms of the delta rule agree, prefill forms equal step-by-step forms, and the small
ops equal transformers' own modules."""

import pytest
import torch

from reference.check import check
from reference.ops import (
    apply_partial_rope, causal_conv1d, causal_conv1d_step, chunked_gated_delta_rule, gated_rms_norm,
    gqa_attention, recurrent_gated_delta_rule, rms_norm, rope_cos_sin, split_query_gate,
)


def delta_inputs(T, Hk, Hv, Dk, Dv, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(T, Hk, Dk, generator=g), torch.randn(T, Hk, Dk, generator=g)
    v = torch.randn(T, Hv, Dv, generator=g)
    decay = -torch.rand(T, Hv, generator=g) * 3  # log decay in (-3, 0]
    beta = torch.rand(T, Hv, generator=g)
    state = torch.randn(Hv, Dk, Dv, generator=g)
    return q, k, v, decay, beta, state


@pytest.mark.parametrize("T", [1, 5, 63, 64, 65, 130])
@pytest.mark.parametrize("Hk, Hv, Dk, Dv", [(2, 2, 16, 16), (2, 4, 12, 20), (3, 6, 8, 24)])
def test_chunked_equals_recurrent(T, Hk, Hv, Dk, Dv):
    q, k, v, g, beta, S0 = delta_inputs(T, Hk, Hv, Dk, Dv)
    for init in (None, S0):
        o_r, s_r = recurrent_gated_delta_rule(q, k, v, g, beta, init)
        o_c, s_c = chunked_gated_delta_rule(q, k, v, g, beta, init)
        check(f"T={T} output", o_r, o_c, 2e-5, verbose=False)
        check(f"T={T} state", s_r, s_c, 2e-5, verbose=False)


@pytest.mark.parametrize("chunk_size", [4, 16, 64])
def test_chunk_size_does_not_matter(chunk_size):
    q, k, v, g, beta, S0 = delta_inputs(37, 2, 4, 16, 16, seed=3)
    o_ref, s_ref = recurrent_gated_delta_rule(q, k, v, g, beta, S0)
    o, s = chunked_gated_delta_rule(q, k, v, g, beta, S0, chunk_size=chunk_size)
    check("output", o_ref, o, 2e-5, verbose=False)
    check("state", s_ref, s, 2e-5, verbose=False)


def test_decay_is_applied_before_the_delta():
    """One step by hand: S' = e^g S; delta = beta (v - S'^T k); S'' = S' + k delta^T; o = S''^T q."""
    q, k, v, g, beta, S0 = delta_inputs(1, 1, 1, 4, 3, seed=7)
    o, S = recurrent_gated_delta_rule(q, k, v, g, beta, S0)
    qn = q[0, 0] / q[0, 0].norm() / 2.0  # l2-normalised, scaled by 1/sqrt(Dk=4)
    kn = k[0, 0] / k[0, 0].norm()
    Sd = S0[0] * g[0, 0].exp()
    delta = beta[0, 0] * (v[0, 0] - Sd.T @ kn)
    S_hand = Sd + torch.outer(kn, delta)
    check("state by hand", S_hand, S[0], 1e-5, verbose=False)
    check("output by hand", S_hand.T @ qn, o[0, 0], 1e-5, verbose=False)


def test_value_head_groups_read_their_key_head():
    """Hv = 2 Hk: value heads 2j and 2j+1 read key head j (not j and j + Hk)."""
    q, k, v, g, beta, _ = delta_inputs(6, 2, 4, 8, 8, seed=1)
    o, _ = recurrent_gated_delta_rule(q, k, v, g, beta)
    o1, _ = recurrent_gated_delta_rule(q[:, 1:2], k[:, 1:2], v[:, 2:3], g[:, 2:3], beta[:, 2:3])
    check("head 2 uses key head 1", o1[:, 0], o[:, 2], 1e-6, verbose=False)


@pytest.mark.parametrize("K", [2, 4])
def test_conv_prefill_equals_steps(K):
    g = torch.Generator().manual_seed(0)
    C, T = 10, 9
    x, w, state = torch.randn(C, T, generator=g), torch.randn(C, K, generator=g), torch.randn(C, K - 1, generator=g)
    out, new_state = causal_conv1d(x, w, state)
    s = state
    for t in range(T):
        o, s = causal_conv1d_step(x[:, t], s, w)
        check(f"step {t}", out[:, t], o, 1e-6, verbose=False)
    check("final state", new_state, s, 0, verbose=False, exact=True)
    manual = torch.nn.functional.silu(sum(w[:, j] * torch.cat([state, x], 1)[:, T - 1 + j] for j in range(K)))
    check("last output by hand", manual, out[:, -1], 1e-6, verbose=False)


def test_norms_equal_transformers_modules():
    from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5RMSNorm, Qwen3_5RMSNormGated

    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(5, 24, generator=g).to(dtype)
        gate = torch.randn(5, 24, generator=g).to(dtype)
        hf = Qwen3_5RMSNorm(24, eps=1e-6)
        hf.weight.data = torch.randn(24, generator=g).to(dtype)
        check(f"rms_norm {dtype}", hf(x), rms_norm(x, hf.weight, 1e-6), 0, verbose=False, exact=True)
        hfg = Qwen3_5RMSNormGated(24, eps=1e-6)
        hfg.weight.data = (1 + 0.1 * torch.randn(24, generator=g))  # fp32 weight, as in the published checkpoint
        check(f"gated_rms_norm {dtype}", hfg(x, gate), gated_rms_norm(x, gate, hfg.weight, 1e-6), 0,
              verbose=False, exact=True)


def test_partial_rope_equals_transformers():
    from transformers.models.qwen3_5.modeling_qwen3_5 import apply_rotary_pos_emb

    g = torch.Generator().manual_seed(0)
    T, H, Dh, R = 7, 3, 32, 8
    q, k = torch.randn(T, H, Dh, generator=g), torch.randn(T, H, Dh, generator=g)
    cos, sin = rope_cos_sin(torch.arange(100, 100 + T), R, 1e7)
    hq, hk = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos[None], sin[None])
    check("rope q", hq[0].transpose(0, 1), apply_partial_rope(q, cos, sin), 0, verbose=False, exact=True)
    check("rope k", hk[0].transpose(0, 1), apply_partial_rope(k, cos, sin), 0, verbose=False, exact=True)
    assert torch.equal(apply_partial_rope(q, cos, sin)[..., R:], q[..., R:])  # only R dims rotate


def test_query_gate_layout_is_interleaved_per_head():
    qg = torch.arange(2 * 2 * 3, dtype=torch.float32)[None]  # 2 heads, Dh = 3: [q0 | g0 | q1 | g1]
    q, gate = split_query_gate(qg, 2, 3)
    assert q[0].tolist() == [[0, 1, 2], [6, 7, 8]]
    assert gate[0].tolist() == [3, 4, 5, 9, 10, 11]


def test_attention_decode_equals_prefill_rows():
    g = torch.Generator().manual_seed(0)
    T, Hq, Hkv, Dh = 6, 4, 2, 8
    q, k, v = torch.randn(T, Hq, Dh, generator=g), torch.randn(T, Hkv, Dh, generator=g), torch.randn(T, Hkv, Dh, generator=g)
    full = gqa_attention(q, k, v, Dh**-0.5, start=0)
    for t in range(T):
        one = gqa_attention(q[t : t + 1], k[: t + 1], v[: t + 1], Dh**-0.5, start=t)
        check(f"row {t}", full[t : t + 1], one, 1e-6, verbose=False)
    # query head h reads KV head h // 2
    ref = torch.softmax((q[-1, 3] @ k[:, 1].T) * Dh**-0.5, -1) @ v[:, 1]
    check("GQA mapping", ref, full[-1, 3], 1e-6, verbose=False)

