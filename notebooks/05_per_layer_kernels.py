# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Per-layer kernels, each checked against its reference op
#
# **You will learn**
#
# - the kernels of one decode step: matvecs with their neighbouring small ops folded in (RMSNorm, SwiGLU, the
#   residual add, the DeltaNet output's gated norm), the Gated DeltaNet step, attention in three launches, and the
#   LM head with the argmax on the device;
# - how each is tested: the same inputs through the kernel and through the reference op (`reference.ops`), the
#   kernel's outputs NaN-poisoned first, `check()` with a tolerance whose reason is stated;
# - why the DeltaNet kernel is checked on its **state**, and how that catches a published kernel's bug on the first
#   step;
# - that the KV cache a kernel writes is compared **bit for bit**.
#
# Everything runs at the head shapes of the tiny CI config (in the simulator; on a GPU, at the model's real shapes).
# The tests in `tests/test_kernels_*.py` run the same checks on more, and more awkward, configurations.

# %%
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")   # no GPU: kernels run in Numba's CUDA simulator (CPU)

import math

import numpy as np
from numba import cuda
from numba.cuda import float32

import megakernel                                   # makes the simulator honest (see megakernel/testing/simulator.py)
from megakernel import launch
from megakernel.kernels import attention, deltanet, fused_matvec, lm_head
from reference import Qwen35Config, ops
from reference.check import BF16_ULP, CheckFailed, bf16_storage_tol, check
from reference.notebook import notebook_config, print_table

config = Qwen35Config.tiny() if launch.SIMULATOR else notebook_config()
DEV = launch.kernel_device()
kd = launch.as_kernel_array
EPS = config.rms_norm_eps
TOL = 1e-5
gen = torch.Generator().manual_seed(0)
summary = []                                         # (kernel, output, CheckResult, why this tolerance)

def randn(*shape, scale=1.0, shift=0.0):
    return (torch.randn(*shape, generator=gen) * scale + shift).to(DEV)

def bf16_matrix(n, k):                               # a projection's scale: std 1 / sqrt(K)
    return (torch.randn(n, k, generator=gen) / k**0.5).to(torch.bfloat16).to(DEV)

def words(W):                                        # bf16 [N, K] -> flat int32 words for the kernels
    return kd(launch.words(W).view(-1))

def poisoned(*shape):                                # an output buffer full of NaN
    return launch.poison_(torch.empty(*shape, device=DEV))

def record(kernel, output, result, why):
    summary.append((kernel, output, result, why))

print(f"{'tiny CI config' if launch.SIMULATOR else 'model config'}: hidden {config.hidden_size}, MLP "
      f"{config.intermediate_size}, DeltaNet {config.linear_num_key_heads}/{config.linear_num_value_heads} heads "
      f"of {config.linear_key_head_dim}/{config.linear_value_head_dim}, attention {config.num_attention_heads}/"
      f"{config.num_key_value_heads} heads of {config.head_dim}, vocab {config.vocab_size}")

# %% [markdown]
# ## Tolerances
#
# Almost every comparison here is fp32 against fp32 on the same bf16 weights: the kernel multiplies the same
# numbers and adds them in a **different order** (per-lane partial sums, shuffle trees, shared-memory reductions).
# Each fp32 addition rounds by at most 2^-24 of the running sum, so over K terms of random sign the difference is
# about `sqrt(K) * 6e-8` of the result's scale: 1e-7 to 1e-6. We allow **1e-5 relative** (`max|out - ref| /
# max|ref|`), and a real bug (a missed element, a wrong head, a skipped decay) is 1e-2 or more: there is a wide
# gap between the two. Outputs that are copies (the attention gate, the V cache, the conv state) must be
# **bit-identical**.
#
# ## Matvecs with their neighbours folded in
#
# A decode step is a chain of matvecs with small ops in between. A separate kernel for an RMSNorm over 1024 floats
# would cost a launch and a round trip through memory for a few KB of data, so `fused_matvec` folds each small op
# into the matvec next to it:

# %%
doc = fused_matvec.__doc__
print(doc[doc.index("=" * 10):doc.index("\n\n", doc.index("=" * 10))])

# %% [markdown]
# **Fused RMSNorm + matvec** (the DeltaNet `in_proj`, the attention `q|k|v`): `y = W @ rms_norm(h)`, with Qwen3.5's
# zero-centred norm weight applied as `(1 + w)`. The input is a residual-stream vector (a few units in size, nonzero
# mean).

# %%
D_, F_ = config.hidden_size, config.intermediate_size
Hk, Hv, Dk, Dv = (config.linear_num_key_heads, config.linear_num_value_heads, config.linear_key_head_dim,
                  config.linear_value_head_dim)
h = randn(D_, scale=3.0, shift=0.5)                  # residual stream
norm_w = randn(D_, scale=0.2)                        # zero-centred: applied as (1 + w)
n_in = config.conv_dim + config.value_dim + 2 * Hv   # the DeltaNet in_proj [qkv; z; b; a]
W_in = bf16_matrix(n_in, D_)
y = poisoned(n_in)
fused_matvec.norm_matvec(kd(h), kd(norm_w), words(W_in), kd(y), n_in, D_, EPS)
launch.synchronize()
record("norm_matvec", "y", check(f"norm_matvec [{n_in}, {D_}]", W_in.float() @ ops.rms_norm(h, norm_w, EPS), y, TOL),
       "fp32 sums in another order")

# %% [markdown]
# **SwiGLU**: `act = silu(W_gate @ x) * (W_up @ x)` with `x = rms_norm(h)`, in one launch. The gate and up rows of
# each output element are read by the same block, so the [F] gate and up vectors never exist in memory.

# %%
W_gate, W_up = bf16_matrix(F_, D_), bf16_matrix(F_, D_)
act = poisoned(F_)
fused_matvec.norm_swiglu_matvec(kd(h), kd(norm_w), words(W_gate), words(W_up), kd(act), F_, D_, EPS)
launch.synchronize()
xn = ops.rms_norm(h, norm_w, EPS)
record("norm_swiglu_matvec", "act", check(f"norm_swiglu_matvec [{F_}, {D_}]",
                                          ops.silu(W_gate.float() @ xn) * (W_up.float() @ xn), act, TOL),
       "fp32 sums in another order")

# %% [markdown]
# **Residual add in the epilogue** (`o_proj`, `down`): `h += W @ x` in place; each element of `h` is written by
# exactly one warp.

# %%
W_down = bf16_matrix(D_, F_)
act_in = randn(F_)
h0 = randn(D_, scale=4.0)
h_res = h0.clone()
fused_matvec.matvec_residual(words(W_down), kd(act_in), kd(h_res), D_, F_)
launch.synchronize()
record("matvec_residual", "h", check(f"matvec_residual [{D_}, {F_}]", h0 + W_down.float() @ act_in, h_res, TOL),
       "fp32 sums in another order")

# %% [markdown]
# **Gated RMSNorm + out projection + residual** (the DeltaNet output): `h += W_out @ gated_rms_norm(o, z)`, where the
# norm is per value head and gated by `silu(z)`. Each block first computes the normalised vector into shared memory
# (`Hv * Dv` floats), then streams its rows of `W_out` against it.

# %%
o = randn(Hv * Dv, scale=0.3)
z = randn(Hv * Dv, scale=2.0)
gated_w = randn(Dv, scale=0.2, shift=1.0)             # a plain weight (initialised to 1)
W_out = bf16_matrix(D_, Hv * Dv)
h_out = h0.clone()
fused_matvec.gated_norm_matvec_residual(kd(o), kd(z), kd(gated_w), words(W_out), kd(h_out), D_, Hv, Dv, EPS)
launch.synchronize()
x_gated = ops.gated_rms_norm(o.view(Hv, Dv), z.view(Hv, Dv), gated_w, EPS).reshape(-1)
record("gated_norm_matvec_residual", "h", check(f"gated_norm_matvec_residual [{D_}, {Hv}x{Dv}]",
                                                h0 + W_out.float() @ x_gated, h_out, TOL),
       "fp32 sums in another order")

# %% [markdown]
# ## The Gated DeltaNet step
#
# After the in_proj matvec, one launch does the rest of a DeltaNet layer's token (the gated norm is fused into
# out_proj above):

# %%
print(deltanet.__doc__[:deltanet.__doc__.index("Why it is split")])

# %% [markdown]
# The oracle is `reference.ops.deltanet_decode_step`, the reference layer's own middle part in fp32: the conv step
# with SiLU, the decay `g` from `A_log`, `dt_bias` and `a`, `beta = sigmoid(b)`, and `recurrent_gated_delta_rule`
# (which applies the L2 norms and `1/sqrt(Dk)` itself).
# Each side carries its own conv state and recurrent state from step to step, starting from a state that has
# "seen" some tokens, and after every step three things are compared: the output `o` (1e-5), the **conv state**
# (bit-identical: it holds copies of inputs) and the **recurrent state** (1e-5).

# %%
sizes = deltanet.deltanet_sizes(config)              # (Hk, Hv, Dk, Dv, conv width)
Kw, C = config.linear_conv_kernel_dim, config.conv_dim
bf = lambda t: t.to(torch.bfloat16).float()          # parameters are bf16 checkpoint values
params = dict(conv_w=bf(randn(C, Kw, scale=0.3)), A_log=torch.linspace(0.0, math.log(16.0), Hv).to(DEV),
              dt_bias=bf(randn(Hv, scale=0.5)))

def reference_step(proj, conv_state, state):
    # (o [Hv*Dv], new conv state, new recurrent state): the reference op the kernel implements, fp32
    return ops.deltanet_decode_step(proj, params["conv_w"], params["A_log"], params["dt_bias"], conv_state, state,
                                    (Hk, Hv, Dk, Dv))

conv_state, state = randn(C, Kw - 1), randn(Hv, Dk, Dv, scale=0.3)   # a state that has seen some tokens
ref_conv, ref_state = conv_state.clone(), state.clone()
o_k = torch.empty(Hv * Dv, device=DEV)
worst = {}
for step in range(3):
    proj = randn(C + Hv * Dv + 2 * Hv, scale=1.5)    # an in_proj output [qkv | z | b | a]
    ref_o, ref_conv, ref_state = reference_step(proj, ref_conv, ref_state)
    deltanet.deltanet_step(kd(proj), kd(params["conv_w"]), kd(conv_state), kd(params["A_log"]),
                           kd(params["dt_bias"]), kd(state), kd(launch.poison_(o_k)), *sizes)
    launch.synchronize()
    for what, r in (("o", check(f"step {step} o", ref_o, o_k, TOL)),
                    ("conv state", check(f"step {step} conv state", ref_conv, conv_state, exact=True)),
                    ("recurrent state", check(f"step {step} recurrent state", ref_state, state, TOL))):
        worst[what] = r if what not in worst or r.rel > worst[what].rel else worst[what]
record("deltanet_step", "o (3 steps)", worst["o"], "fp32 sums in another order")
record("deltanet_step", "conv state", worst["conv state"], "a copy of the inputs")
record("deltanet_step", "recurrent state", worst["recurrent state"], "fp32 sums in another order")


# %% [markdown]
# ### The published bug, caught by the state on step one
#
# Notebook 02 showed a bug from a published DeltaNet decode kernel: the prediction `S^T k` taken from the state
# **before** the decay, the decay applied afterwards. Here it is as a kernel: a plain state update (one block per
# value head, one thread per state column) that takes `q`, `k`, `v`, the decay and `beta` already computed, with a
# switch for the order of the two lines.

# %%
@cuda.jit
def state_update(q, k, v, decay, beta, state, o, decay_first):
    h, j = cuda.blockIdx.x, cuda.threadIdx.x        # value head, state column
    if j >= state.shape[2]:
        return
    if decay_first:                                  # the reference order: S = exp(g) * S first
        for i in range(state.shape[1]):
            state[h, i, j] *= decay[h]
    pred = float32(0)
    for i in range(state.shape[1]):                  # S^T k for this column
        pred += state[h, i, j] * k[h, i]
    delta = (v[h, j] - pred) * beta[h]
    out = float32(0)
    for i in range(state.shape[1]):
        s = state[h, i, j]
        if not decay_first:                          # the published order: the decay after the prediction
            s *= decay[h]
        s += k[h, i] * delta
        state[h, i, j] = s
        out += s * q[h, i]
    o[h * state.shape[2] + j] = out

def update_inputs(proj, conv_state):
    # q, k per value head (L2-normalised, q / sqrt(Dk)), v, exp(g), beta: the inputs of the state update
    qkv, b, a = proj[:C], proj[C + Hv * Dv:C + Hv * Dv + Hv], proj[C + Hv * Dv + Hv:]
    mixed, _ = ops.causal_conv1d_step(qkv, conv_state, params["conv_w"], "silu")
    q = ops.l2_normalize(mixed[:Hk * Dk].view(Hk, Dk)).repeat_interleave(Hv // Hk, 0) / Dk**0.5
    k = ops.l2_normalize(mixed[Hk * Dk:2 * Hk * Dk].view(Hk, Dk)).repeat_interleave(Hv // Hk, 0)
    v = mixed[2 * Hk * Dk:].view(Hv, Dv)
    decay = ops.deltanet_decay(a[None], params["A_log"], params["dt_bias"])[0].exp()
    return [t.contiguous() for t in (q, k, v, decay, b.sigmoid())]

def run_update(proj, conv_state, start_state, decay_first):
    S, out = start_state.clone(), poisoned(Hv * Dv)
    state_update[Hv, 32 * -(-Dv // 32)](*[kd(t) for t in update_inputs(proj, conv_state)], kd(S), kd(out),
                                        decay_first)
    launch.synchronize()
    return S


# %% [markdown]
# From a **zero** state the decay has nothing to act on, so both orders give the same state: a kernel test that only
# starts fresh sequences passes the bug. From a state that has seen tokens, the state check fails on the first step,
# by orders of magnitude more than the tolerance, while the real kernel and the correct order pass:

# %%
proj = randn(C + Hv * Dv + 2 * Hv, scale=1.5)
start_conv, start_state = randn(C, Kw - 1), randn(Hv, Dk, Dv, scale=0.3)
zero = torch.zeros_like(start_state)
_, _, ref_zero = reference_step(proj, start_conv, zero)
check("zero state, published order", ref_zero, run_update(proj, start_conv, zero, False), TOL)

_, _, ref_next = reference_step(proj, start_conv, start_state)
check("real state, reference order", ref_next, run_update(proj, start_conv, start_state, True), TOL)
try:
    check("real state, published order", ref_next, run_update(proj, start_conv, start_state, False), TOL)
except CheckFailed as e:
    print("CheckFailed:", e)
else:
    raise AssertionError("the bug went unnoticed")
bug = check("  (the size of the damage)", ref_next, run_update(proj, start_conv, start_state, False), tol=1.0)
real_state = start_state.clone()
deltanet.deltanet_step(kd(proj), kd(params["conv_w"]), kd(start_conv.clone()), kd(params["A_log"]),
                       kd(params["dt_bias"]), kd(real_state), kd(poisoned(Hv * Dv)), *sizes)
launch.synchronize()
check("real state, deltanet_step", ref_next, real_state, TOL);

# %% [markdown]
# ## Attention: prepare, split decode, combine
#
# An attention layer's token takes three launches after its `q|gate, k, v` matvec:

# %%
print(attention.__doc__[:attention.__doc__.index("attn_prepare\n---")])

# %% [markdown]
# **attn_prepare** at position 5 of a cache with room for 12: the cache holds random bf16 values at positions 0-4
# (earlier tokens) and bf16 NaN from position 5 on. Checked: `q` after norm and RoPE (1e-5: the sum of squares and
# cos/sin differ by a few ulp), the gate (a copy: bit-identical) and the **whole cache, bit for bit**: the new
# position must hold the reference's `k` and `v` rounded to bf16, every other position must be untouched (its
# bits compared, NaN included). `v` is a copy rounded to nearest even, so the whole V cache must match exactly; `k`
# is computed (norm and RoPE) in a slightly different order, and where the reference's fp32 value lies within a hair
# of a bf16 rounding midpoint the kernel may round to the other neighbour. So at the new position we count the
# values whose bits differ from the reference's rounding, and compare the values at the fp32 tolerance plus one bf16
# step (`bf16_storage_tol`: 1e-5 + 2^-8 relative), what the project allows for any bf16-stored result.

# %%
Hq, Hkv, Dh, R = attention.attention_sizes(config)
capacity, position = 12, 5
q_norm_w, k_norm_w = bf(randn(Dh, scale=0.2)), bf(randn(Dh, scale=0.2))
inv_freq = ops.rope_inv_freq(R, config.rope_theta).to(DEV)
k_cache = (randn(Hkv, capacity, Dh, scale=1.5)).to(torch.bfloat16)
v_cache = (randn(Hkv, capacity, Dh, scale=1.5)).to(torch.bfloat16)
for cache in (k_cache, v_cache):
    cache.view(torch.int16)[:, position:] = 0x7FC0  # bf16 NaN: positions not written yet
proj_attn = randn(Hq * 2 * Dh + 2 * Hkv * Dh, scale=2.0)
q_out, gate_out = poisoned(Hq, Dh), poisoned(Hq * Dh)
k_before, v_before = k_cache.clone(), v_cache.clone()
attention.attn_prepare(kd(proj_attn), kd(q_norm_w), kd(k_norm_w), kd(inv_freq), position,
                       kd(launch.halves(k_cache)), kd(launch.halves(v_cache)), kd(q_out), kd(gate_out),
                       Hq, Hkv, Dh, R, eps=EPS)
launch.synchronize()

# the reference: split q|gate per head, RMSNorm (1 + w), partial RoPE at this position
query, gate = ops.split_query_gate(proj_attn[:Hq * 2 * Dh][None], Hq, Dh)
cos, sin = ops.rope_cos_sin(torch.tensor([position]), R, config.rope_theta)
cos, sin = cos.to(DEV), sin.to(DEV)
q_ref = ops.apply_partial_rope(ops.rms_norm(query, q_norm_w, EPS), cos, sin)[0]
k0 = Hq * 2 * Dh                                     # proj = [q|gate (per head) | k | v]
k_new = ops.apply_partial_rope(ops.rms_norm(proj_attn[k0:k0 + Hkv * Dh].view(1, Hkv, Dh), k_norm_w, EPS),
                               cos, sin)[0]
v_new = proj_attn[k0 + Hkv * Dh:].view(Hkv, Dh)
k_expected, v_expected = k_before.clone(), v_before.clone()
k_expected[:, position], v_expected[:, position] = k_new.to(torch.bfloat16), v_new.to(torch.bfloat16)

record("attn_prepare", "q", check("attn_prepare q", q_ref, q_out, TOL), "norm sums, cos/sin: a few ulp")
record("attn_prepare", "gate", check("attn_prepare gate", gate[0], gate_out, exact=True), "a copy")
record("attn_prepare", "V cache bits", check("V cache, all positions (bits)", v_expected.view(torch.int16),
                                             v_cache.view(torch.int16), exact=True), "a copy, rounded to bf16")
others = torch.arange(capacity, device=DEV) != position
record("attn_prepare", "K cache bits, other positions",
       check("K cache, other positions (bits)", k_before[:, others].view(torch.int16),
             k_cache[:, others].view(torch.int16), exact=True), "untouched")
k_bits, k_got = k_new.to(torch.bfloat16).view(torch.int16), k_cache[:, position].view(torch.int16)
flips = int((k_bits != k_got).sum())
print(f"K cache, position {position}: {flips} of {k_bits.numel()} values differ from the reference's rounding")
record("attn_prepare", f"K cache, new position ({flips} flips)",
       check(f"K cache, position {position}", k_new.to(torch.bfloat16).float(), k_cache[:, position].float(),
             bf16_storage_tol(TOL)),
       "fp32 at 1e-5, then rounded to bf16")

# %% [markdown]
# **attn_decode + attn_combine** over the 6 cached positions, split into 3 groups of 2 positions (flash-decoding:
# each block scores one split for the query heads that share a KV head, then the combine merges the splits and
# applies the output gate). The oracle is `gqa_attention` on the same bf16 cache contents, times `sigmoid(gate)`:
# 1e-5, since the online softmax and the merge reorder fp32 sums.

# %%
length = position + 1
n_splits = attention.attention_splits(length, positions_per_split=2)
partial_ml, partial_o = poisoned(Hq, n_splits, 2), poisoned(Hq, n_splits, Dh)
attn_out = poisoned(Hq * Dh)
attention.attn_decode(kd(q_out), kd(launch.halves(k_cache)), kd(launch.halves(v_cache)), length, kd(partial_ml),
                      kd(partial_o), n_splits, Hq, Hkv, Dh, R)
attention.attn_combine(kd(partial_ml), kd(partial_o), kd(gate_out), kd(attn_out), n_splits, Hq, Hkv, Dh, R)
launch.synchronize()
keys, values = (c[:, :length].transpose(0, 1).float() for c in (k_cache, v_cache))
attn_ref = ops.gqa_attention(q_out[None], keys, values, Dh**-0.5, length - 1).reshape(-1) * torch.sigmoid(gate_out)
record("attn_decode + attn_combine", f"out ({n_splits} splits)",
       check(f"attention over {length} positions, {n_splits} splits", attn_ref, attn_out, TOL),
       "online softmax: fp32 sums in another order")

# %% [markdown]
# ## The LM head, with the argmax on the device
#
# `lm_head_argmax` is the largest matvec of the model with the final RMSNorm folded in and the argmax done in the
# same launch: each block publishes its best (value, index) with one 64-bit `atomicMax` on a packed key, and the
# last block to finish writes the token id to device memory, where the next step's embedding lookup reads it. The
# logits are checked at 1e-5, and the token must be **exactly** `torch.argmax` of the logits the kernel wrote.

# %%
V = config.vocab_size
W_lm = (torch.randn(V, D_, generator=gen) * (2.0 / D_**0.5)).to(torch.bfloat16).to(DEV)   # logit std ~2
final_norm = randn(D_, scale=0.2)
logits, best = poisoned(V), lm_head.new_best(DEV)
lm_head.lm_head_argmax(kd(h), kd(final_norm), words(W_lm), kd(logits), V, D_, EPS, kd(best))
launch.synchronize()
logits_ref = W_lm.float() @ ops.rms_norm(h, final_norm, EPS)
record("lm_head_argmax", "logits", check(f"lm_head_argmax logits [{V}, {D_}]", logits_ref, logits, TOL),
       "fp32 sums in another order")
token = lm_head.read_token(best)
record("lm_head_argmax", "token", check("argmax token", torch.tensor(int(torch.argmax(logits))),
                                        torch.tensor(token), exact=True), "an index: exact")
print(f"device argmax: token {token}; torch.argmax of the kernel's logits {int(torch.argmax(logits))}, "
      f"of the reference logits {int(torch.argmax(logits_ref))}")

# %% [markdown]
# **Sampling on the device** (briefly): `sample_gumbel` draws from `softmax(logits / T)` with the Gumbel-max trick,
# `argmax(logits / T + g)` with `g = -log(-log(u))`, where `u` comes from a counter-based hash of (seed, step, index):
# no generator state to carry, and any draw can be replayed. `gumbel_noise_host` recomputes the same noise on the
# host, so every draw can be checked exactly:

# %%
T, seed = 1.0, 1234
drawn, expected = [], []
for step in range(8):
    lm_head.sample_gumbel(kd(logits), V, T, seed, step, kd(best))
    drawn.append(lm_head.read_token(best))
    expected.append(int(np.argmax(logits.cpu().numpy() / np.float32(T) + lm_head.gumbel_noise_host(seed, step, V))))
p_top = float(torch.softmax(logits.cpu() / T, 0).max())
print(f"seed {seed}, steps 0-7: device draws {drawn}\n{'':22s}host replay  {expected}  "
      f"(the most likely token, {int(torch.argmax(logits))}, has p = {p_top:.2f})")
assert drawn == expected or not launch.SIMULATOR     # (on a GPU, logf may differ in the last bit: rare near-ties)

# %% [markdown]
# ## Summary
#
# Every kernel of a decode step, its worst error against the reference op, and the tolerance it was held to:

# %%
tolerance = lambda r: "exact" if r.tol == 0 else f"{r.tol - BF16_ULP:.0e} + 2^-8" if r.tol > BF16_ULP else f"{r.tol:.0e}"
print_table([(kernel, output, tolerance(r), f"{r.rel:.1e}",
              "-" if r.tol == 0 else f"{r.used:.1%}", why) for kernel, output, r, why in summary],
            headers=("kernel", "output", "tolerance", "relative error", "of tolerance", "why that tolerance"))

# %% [markdown]
# Every fp32 error sits two orders of magnitude below its tolerance, and every copy is bit-identical: the kernels do
# the reference's arithmetic and differ only in the order of their sums. (The new K-cache position may differ by one
# bf16 step where the fp32 value sits at a rounding midpoint; the row says how many values did.)
#
# ## What's next
#
# [06 · The layered decoder](06_layered_decoder.ipynb) strings these kernels together into a full decoder, one
# launch per op, checks it against the reference layer by layer and state by state, counts its launches, and looks
# at where its time goes on an H100.
