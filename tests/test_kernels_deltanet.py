"""megakernel.kernels.deltanet (the Gated DeltaNet decode step) against the reference ops, in the simulator.

Oracle: ``reference.ops`` composed in fp32 (``causal_conv1d_step`` + SiLU, ``deltanet_decay``, sigmoid,
``recurrent_gated_delta_rule`` with its L2 norms and 1/sqrt(Dk)), each side carrying its own conv and recurrent
state over several consecutive steps.

Tolerances (relative, max|err| / max|ref|, ``reference.check``):

* ``o`` and the recurrent state: 1e-5. Both sides are fp32; the kernel sums ``S^T k``, ``S^T q``, the L2 norms
  and the conv taps in another order than torch (per-thread partials, then shared-memory / shuffle reductions),
  which moves results by a few ulp (~1e-7 relative; measured ~2e-7 after 5 steps). The element update
  ``S*exp(g) + k*delta`` is the same arithmetic in the same order. A real bug (missing decay, wrong head,
  unwritten element, race) is O(1e-2..1).
* the conv state: bit-identical (it holds copies of the inputs).

Outputs start NaN-poisoned, so an element the kernel forgets fails the check. Configurations are awkward on
purpose: grouped value heads (several value heads and several column splits read one key head's q/k conv
state: the last-reader hand-over is exercised), head dims that are not multiples of 32 or of the row groups,
conv widths 2-4.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numba import cuda
from numba.cuda import float32

import megakernel  # noqa: F401  (installs the honest simulator)
from megakernel import device as D
from megakernel import launch
from megakernel.testing import ptx_check
from megakernel.kernels import deltanet as K
from reference import ops
from reference.check import CheckFailed, check

TOL = 1e-5
A = launch.as_kernel_array

# name: (Hk, Hv, Dk, Dv, K, launch overrides)
CONFIGS = {
    # 2 value heads per key head x 2 column splits: 4 blocks read each key head's q/k conv state
    "grouped_2x4_d16_split2": (2, 4, 16, 16, 4, dict(columns_per_block=8, threads=32)),
    # default launch shape: 4 columns per block (5 splits), 8 row groups over Dk = 12 (guards live), K = 3
    "awkward_dk12_dv20_k3": (2, 4, 12, 20, 3, {}),
    # one head, 2 row groups of 16 rows per thread, 32-column block
    "single_head_d32": (1, 1, 32, 32, 4, dict(columns_per_block=32, threads=64)),
    # 3 key heads, no grouping, K = 2 (a 1-input conv state); 24-column blocks: 2 row groups of 24 threads, the
    # other 16 threads of the block sit out the state update
    "three_heads_dk24_dv24_k2": (3, 3, 24, 24, 2, dict(threads=64, columns_per_block=24)),
    # more q/k channels (2 Dk = 64) than threads (32): the conv loops over them instead of loading one up front
    "qk_channels_over_threads": (1, 2, 32, 16, 3, dict(columns_per_block=8, threads=32)),
}


def make_inputs(sizes, seed, zero_state=False):
    """Random decode inputs with realistic scales (in_proj outputs ~N(0,1), conv taps ~0.3, A_log in
    log[1, 16], dt_bias ~0.5, a state that has seen some tokens)."""
    Hk, Hv, Dk, Dv, Kw = sizes
    C = 2 * Hk * Dk + Hv * Dv
    g = torch.Generator().manual_seed(seed)
    bf = lambda t: t.to(torch.bfloat16).float()  # noqa: E731  (parameters are bf16 checkpoint values)
    params = dict(
        conv_w=bf(torch.randn(C, Kw, generator=g) * 0.3),
        A_log=torch.empty(Hv).uniform_(0.0, math.log(16.0), generator=g),
        dt_bias=bf(torch.randn(Hv, generator=g) * 0.5),
    )
    if zero_state:
        conv_state, state = torch.zeros(C, Kw - 1), torch.zeros(Hv, Dk, Dv)
    else:
        conv_state, state = torch.randn(C, Kw - 1, generator=g), torch.randn(Hv, Dk, Dv, generator=g) * 0.3
    return params, conv_state, state, g


def new_proj(sizes, g):
    Hk, Hv, Dk, Dv, _ = sizes
    C = 2 * Hk * Dk + Hv * Dv
    return torch.randn(C + Hv * Dv + 2 * Hv, generator=g) * 1.5


def reference_step(sizes, proj, params, conv_state, state):
    """(o [Hv Dv], new conv state, new recurrent state) from reference.ops, fp32."""
    Hk, Hv, Dk, Dv, _ = sizes
    return ops.deltanet_decode_step(proj, params["conv_w"], params["A_log"], params["dt_bias"], conv_state, state,
                                    (Hk, Hv, Dk, Dv))


def kernel_step(sizes, proj, params, conv_state, state, o, **launch_opts):
    K.deltanet_step(A(proj), A(params["conv_w"]), A(conv_state), A(params["A_log"]), A(params["dt_bias"]),
                    A(state), A(launch.poison_(o)), *sizes, **launch_opts)


def counters_are_zero():
    return all(int(np.asarray(arr).sum()) == 0 for arr, _ in K._COUNTERS.values())


# ----------------------------------------------------------------------------------------------------------------
# Correctness
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_five_steps_match_reference(name):
    """Five consecutive steps, the kernel feeding its own conv and recurrent state: o and both states checked
    after every step."""
    *sizes, opts = CONFIGS[name]
    sizes = tuple(sizes)
    Hk, Hv, Dk, Dv, Kw = sizes
    seed, fresh = list(CONFIGS).index(name), name == "single_head_d32"  # one chain starts from zero states
    params, conv_state, state, g = make_inputs(sizes, seed=seed, zero_state=fresh)
    ref_conv, ref_state = conv_state.clone(), state.clone()
    o = torch.empty(Hv * Dv)
    for step in range(5):
        proj = new_proj(sizes, g)
        proj_before = proj.clone()
        ref_o, ref_conv, ref_state = reference_step(sizes, proj, params, ref_conv, ref_state)
        kernel_step(sizes, proj, params, conv_state, state, o, **opts)
        check(f"{name} step {step} o", ref_o, o, TOL)
        check(f"{name} step {step} conv state", ref_conv, conv_state, exact=True)
        check(f"{name} step {step} recurrent state", ref_state, state, TOL)
        assert torch.equal(proj, proj_before)  # inputs untouched
    assert counters_are_zero()


def test_default_launch_shapes():
    # the 0.8B shapes: 16 columns per block, 128 blocks of 256 threads, 8 state rows per thread
    assert K.deltanet_launch_config(16, 16, 128, 128, 4) == (16, 256)
    assert K.deltanet_launch_config(2, 4, 12, 20, 3) == (4, 32)
    assert K.deltanet_launch_config(2, 4, 16, 16, 4) == (16, 32)


def test_repeat_runs_are_bit_identical():
    """Same inputs twice -> the same bits (the blocks of a launch run concurrently in this simulator, so a race
    on the shared q/k conv state would move the result)."""
    *sizes, opts = CONFIGS["awkward_dk12_dv20_k3"]
    sizes = tuple(sizes)
    params, conv_state, state, g = make_inputs(sizes, seed=7)
    proj = new_proj(sizes, g)
    runs = []
    for _ in range(2):
        cs, st, o = conv_state.clone(), state.clone(), torch.empty(sizes[1] * sizes[3])
        kernel_step(sizes, proj, params, cs, st, o, **opts)
        runs.append((cs, st, o))
    for a, b in zip(runs[0], runs[1]):
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))


# ----------------------------------------------------------------------------------------------------------------
# The published bug: decay applied after computing delta
# ----------------------------------------------------------------------------------------------------------------


def decay_after_delta_kernel(Hk, Hv, Dk, Dv, Kw):
    """A deliberately WRONG DeltaNet step (only here, as a demonstration): ``delta`` is computed from the
    undecayed state and the decay applied afterwards, as a published megakernel did for weeks. One block per
    value head, one thread per state column; otherwise the same math as the real kernel. It does not touch the
    conv state."""
    G = Hv // Hk
    C = 2 * Hk * Dk + Hv * Dv
    B_OFF = C + Hv * Dv
    EPS = np.float32(1e-6)
    SQRT_DK = np.float32(math.sqrt(Dk))

    @cuda.jit
    def wrong(proj, conv_w, conv_state, A_log, dt_bias, state, o):
        h = cuda.blockIdx.x
        j = cuda.threadIdx.x
        hk = h // G
        qk = cuda.shared.array(2 * Dk, float32)
        if j == 0:  # one thread: conv + SiLU + L2 norms of the key head's q and k
            for part in range(2):
                ss = float32(0)
                for i in range(Dk):
                    ch = part * Hk * Dk + hk * Dk + i
                    acc = float32(0)
                    for t in range(Kw - 1):
                        acc += conv_w[ch, t] * conv_state[ch, t]
                    y = D.silu(acc + conv_w[ch, Kw - 1] * proj[ch])
                    qk[part * Dk + i] = y
                    ss += y * y
                r = D.rsqrt(ss + EPS)
                for i in range(Dk):
                    qk[part * Dk + i] = qk[part * Dk + i] * r / SQRT_DK if part == 0 else qk[part * Dk + i] * r
        cuda.syncthreads()
        if j < Dv:
            ch = 2 * Hk * Dk + h * Dv + j
            acc = float32(0)
            for t in range(Kw - 1):
                acc += conv_w[ch, t] * conv_state[ch, t]
            v = D.silu(acc + conv_w[ch, Kw - 1] * proj[ch])
            beta = D.sigmoid(proj[B_OFF + h])
            g = -float32(math.exp(A_log[h])) * D.softplus(proj[B_OFF + Hv + h] + dt_bias[h])
            decay = float32(math.exp(g))
            pred = float32(0)
            for i in range(Dk):
                pred += state[h, i, j] * qk[Dk + i]  # BUG: S^T k with the undecayed state
            delta = (v - pred) * beta
            out = float32(0)
            for i in range(Dk):
                s = state[h, i, j] * decay + qk[Dk + i] * delta  # ... and the decay only afterwards
                state[h, i, j] = s
                out += s * qk[i]
            o[h * Dv + j] = out

    return wrong


def test_decay_after_delta_fails_the_state_check_on_step_one():
    sizes = (2, 4, 16, 16, 4)
    Hk, Hv, Dk, Dv, Kw = sizes
    params, conv_state, state, g = make_inputs(sizes, seed=11)
    proj = new_proj(sizes, g)
    ref_o, _, ref_state = reference_step(sizes, proj, params, conv_state, state)

    wrong_state, wrong_o = state.clone(), launch.poison_(torch.empty(Hv * Dv))
    decay_after_delta_kernel(*sizes)[Hv, 32](A(proj), A(params["conv_w"]), A(conv_state), A(params["A_log"]),
                                             A(params["dt_bias"]), A(wrong_state), A(wrong_o))
    with pytest.raises(CheckFailed, match="exceeds tolerance"):
        check("step 1 recurrent state, decay after delta", ref_state, wrong_state, TOL)
    err = check("(the size of the damage)", ref_state, wrong_state, tol=1.0).rel
    assert err > 1e-2, err  # three orders of magnitude over the tolerance, not a rounding effect

    # The failure is the decay order and nothing else: the same wrong order in torch agrees with the wrong kernel.
    C = 2 * Hk * Dk + Hv * Dv
    mixed, _ = ops.causal_conv1d_step(proj[:C], conv_state, params["conv_w"], "silu")
    k = ops.l2_normalize(mixed[Hk * Dk : 2 * Hk * Dk].view(Hk, Dk)).repeat_interleave(Hv // Hk, 0)
    v = mixed[2 * Hk * Dk :].view(Hv, Dv)
    b, a = proj[C + Hv * Dv : C + Hv * Dv + Hv], proj[C + Hv * Dv + Hv :]
    decay = ops.deltanet_decay(a[None], params["A_log"], params["dt_bias"])[0].exp()
    delta = (v - (state * k[:, :, None]).sum(1)) * b.sigmoid()[:, None]
    buggy = state * decay[:, None, None] + k[:, :, None] * delta[:, None, :]
    check("wrong kernel == wrong torch", buggy, wrong_state, TOL)

    # and the real kernel passes the same check on the same inputs
    o = torch.empty(Hv * Dv)
    kernel_step(sizes, proj, params, conv_state.clone(), state, o)
    check("step 1 recurrent state, real kernel", ref_state, state, TOL)
    check("step 1 o, real kernel", ref_o, o, TOL)


# ----------------------------------------------------------------------------------------------------------------
# Refusals
# ----------------------------------------------------------------------------------------------------------------


def test_refuses_unsupported_sizes():
    with pytest.raises(ValueError, match="linear_num_value_heads .* multiple of linear_num_key_heads"):
        K.deltanet_launch_config(2, 3, 16, 16, 4)
    with pytest.raises(ValueError, match="linear_conv_kernel_dim"):
        K.deltanet_launch_config(1, 1, 16, 16, 1)
    with pytest.raises(ValueError, match="linear_key_head_dim"):
        K.deltanet_launch_config(1, 1, 0, 16, 4)
    with pytest.raises(ValueError, match="columns_per_block .* linear_value_head_dim"):
        K.deltanet_launch_config(1, 1, 16, 20, 4, columns_per_block=8)
    with pytest.raises(ValueError, match="linear_key_head_dim .* rows per thread"):
        K.deltanet_launch_config(1, 1, 1024, 32, 4, columns_per_block=32, threads=32)
    with pytest.raises(ValueError, match="threads"):
        K.deltanet_launch_config(1, 1, 16, 16, 4, threads=48)


def test_refuses_wrong_shapes():
    sizes = (2, 4, 16, 16, 4)
    params, conv_state, state, g = make_inputs(sizes, seed=3)
    with pytest.raises(ValueError, match=r"state has shape \(4, 16, 8\), expected \(4, 16, 16\)"):
        kernel_step(sizes, new_proj(sizes, g), params, conv_state, state[:, :, :8].contiguous(), torch.empty(64))
    with pytest.raises(ValueError, match="conv_state has shape"):
        kernel_step(sizes, new_proj(sizes, g), params, conv_state[:, :2].contiguous(), state, torch.empty(64))


# ----------------------------------------------------------------------------------------------------------------
# sm_90
# ----------------------------------------------------------------------------------------------------------------


def test_ptx_sm90_clean():
    """The 0.8B-shape and an awkward-shape kernel compile for sm_90 without float64, local memory (the state
    rows stay in registers) or spills; the counter hand-over is one fenced atomic."""
    reports = ptx_check.check_in_subprocess("megakernel.kernels.deltanet")
    assert {r.name for r in reports} == set(K.PTX_SIGNATURES)
    for r in reports:
        assert r.ok, r.problems
        assert "atom.global.add" in r.ptx and "membar.gl" in r.ptx
        print(f"{r.name}: {r.registers} registers, spills {r.spill_store_bytes}/{r.spill_load_bytes} B")
