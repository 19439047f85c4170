"""reference.check's per-element comparison and KL metric, and compare_states built on them (CPU, no kernels)."""

import math

import pytest
import torch

from reference.check import CheckFailed, bf16_spacing, check, check_elements, group_relative_error, next_token_kl
from reference.hf_compare import compare_states
from reference.state import DecodeState


G = torch.Generator().manual_seed(0)


def test_a_small_head_is_held_to_its_own_scale():
    """An error of 1e-3 in a head whose values are ~1e-2 passes a whole-tensor check at 1e-4 (the other head
    is ~100) but fails per head, naming the head and the element."""
    ref = torch.cat([torch.full((1, 4, 3), 100.0), torch.full((1, 4, 3), 1e-2)])
    out = ref.clone()
    out[1, 2, 0] += 1e-3
    check("whole tensor", ref, out, 1e-4, verbose=False)
    with pytest.raises(CheckFailed, match=r"1 of 24 elements .* head 1, element \[1, 2, 0\]"):
        check_elements("layer 0 DeltaNet state", ref, out, 1e-4, group_dims=1, group_names=("head",),
                       verbose=False)
    r = check_elements("tolerated", ref, out, 0.2, group_dims=1, verbose=False)
    assert r.worst == (1, 2, 0) and math.isclose(r.rel, 0.1, rel_tol=1e-6) and math.isclose(r.used, 0.5, rel_tol=1e-6)
    assert group_relative_error(ref, out, 1) == pytest.approx((1e-3, 0.1), rel=1e-6)
    assert group_relative_error(ref, out, 0) == pytest.approx((1e-3, 1e-5), rel=1e-6)


def test_tol_zero_is_bit_identity_and_non_finite_outputs_fail():
    ref = torch.randn(3, 5, generator=G)
    check_elements("same", ref, ref.clone(), 0, verbose=False)
    out = ref.clone()
    out[2, 4] = torch.nextafter(out[2, 4], torch.tensor(math.inf))  # one ulp
    with pytest.raises(CheckFailed, match=r"element \[2, 4\]"):
        check_elements("one ulp", ref, out, 0, verbose=False)
    out = ref.clone()
    out[0, 1] = math.nan
    with pytest.raises(CheckFailed, match=r"element \[0, 1\]: out nan"):
        check_elements("nan", ref, out, 1.0, verbose=False)
    both = ref.clone()
    both[1, 1] = ref[1, 1] = math.inf
    check_elements("equal infinities", ref, both, 0, verbose=False)
    with pytest.raises(CheckFailed, match="shape"):
        check_elements("shape", ref, ref[:2], 1.0, verbose=False)


def test_bf16_step_allows_one_neighbour_of_the_element_itself():
    ref = torch.tensor([[1.0, 3.0, 1e-3], [0.0, -2.0, 5e-3]]).to(torch.bfloat16)
    out = ref.clone()
    out.view(torch.int16)[0, 2] += 1  # 1e-3 -> its upper bf16 neighbour
    check_elements("one step", ref, out, 0.0, group_dims=1, bf16_step=True, verbose=False)
    out.view(torch.int16)[0, 2] += 1
    with pytest.raises(CheckFailed, match=r"element \[0, 2\]"):
        check_elements("two steps", ref, out, 0.0, group_dims=1, bf16_step=True, verbose=False)
    # a tolerance relative to the head's largest value (3.0) would have hidden it; one step of the element not
    check_elements("diluted", ref, out, 1e-4, group_dims=1, verbose=False)
    x = torch.tensor([1.0, 1.5, 2.0, 0.75, 0.0, -3e-39])
    assert bf16_spacing(x).tolist() == [2**-7, 2**-7, 2**-6, 2**-8, 2**-133, 2**-133]


def test_next_token_kl():
    p = torch.randn(4, 50, generator=G)
    assert torch.equal(next_token_kl(p, p.clone()), torch.zeros(4, dtype=torch.float64))
    assert next_token_kl(p, p + 3.0).abs().max() < 1e-12  # a shift of every logit: the same distribution
    q = torch.randn(4, 50, generator=G)
    expected = torch.nn.functional.kl_div(q.double().log_softmax(-1), p.double().log_softmax(-1), log_target=True,
                                          reduction="none").sum(-1)
    assert torch.allclose(next_token_kl(p, q), expected, rtol=1e-12, atol=0)
    assert not torch.allclose(next_token_kl(p, q), next_token_kl(q, p))  # KL(ref || out), not symmetric
    assert next_token_kl(p[0], q[0]).shape == ()


def test_compare_states_names_layer_state_head_and_element():
    Hk, Hv, Dk, Dv, K = 1, 2, 4, 3, 4
    ref = DecodeState(length=2)
    ref.conv[0] = torch.randn(2 * Hk * Dk + Hv * Dv, K - 1, generator=G)
    ref.recurrent[0] = torch.randn(Hv, Dk, Dv, generator=G)
    ref.k_cache[1] = torch.randn(1, 5, 8, generator=G).to(torch.bfloat16)
    ref.v_cache[1] = torch.randn(1, 5, 8, generator=G).to(torch.bfloat16)
    assert len(compare_states(ref, ref.clone(), 0)) == 5  # conv (q, k) + conv (v) + DeltaNet + K + V
    out = ref.clone()
    out.conv[0][2 * Hk * Dk + Dv + 1, 2] += 1.0  # value head 1, its channel 1, tap 2
    with pytest.raises(CheckFailed, match=r"step 3 layer 0 conv state \(v channels\).* head 1, element \[1, 1, 2\]"):
        compare_states(ref, out, 1e-4, prefix="step 3 ")
    out = ref.clone()
    out.k_cache[1][0, 3, 5] = 1000.0  # beyond the valid length: not compared
    out.v_cache[1][0, 1, 6] = -out.v_cache[1][0, 1, 6]
    with pytest.raises(CheckFailed, match=r"layer 1 V cache.* KV head 0, position 1, element \[0, 1, 6\]"):
        compare_states(ref, out, 1e-4)
