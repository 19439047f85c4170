# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · The gated delta rule
#
# **You will learn**
#
# - the DeltaNet state as an **associative memory**: keys write values, queries read them back, and the *delta*
#   correction overwrites instead of piling up;
# - what the **decay** `g` and the **write strength** `beta` do, and why the state stays bounded;
# - that the **chunked** form (prefill) and the **recurrent** form (decode) are the same function, checked with
#   `check()`, including with an initial state and lengths that are not a multiple of the chunk;
# - a bug from a published kernel (the decay applied one line too late), why greedy tokens barely notice it, and
#   why a state check catches it on the first step.
#
# Everything here runs on random tensors with the model's head shapes (a tiny config in CI), except the last
# section, which plugs the bug into the reference model.

# %%
# %matplotlib inline
import math
import time
from unittest import mock

import matplotlib.pyplot as plt
import torch

import reference.ops.deltanet
import reference.ops.gated_delta_rule
from reference import load_model
from reference.check import CheckFailed, check
from reference.notebook import is_tiny, notebook_config, notebook_model_dir, print_table
from reference.ops import (chunked_gated_delta_rule, deltanet_decay, gated_delta_rule_step, l2_normalize,
                           recurrent_gated_delta_rule)

config = notebook_config()
Hk, Hv = config.linear_num_key_heads, config.linear_num_value_heads
Dk, Dv = config.linear_key_head_dim, config.linear_value_head_dim
print(f"{'tiny CI config' if is_tiny() else 'Qwen3.5-0.8B'}: {Hk} key heads, {Hv} value heads, "
      f"key dim Dk={Dk}, value dim Dv={Dv}; state per head {Dk} x {Dv} fp32")

# %% [markdown]
# ## The state is an associative memory
#
# Per head, the DeltaNet state is a matrix `S` of shape [Dk, Dv]. Writing the pair (key `k`, value `v`) and
# reading with a query `q` are
#
#     write:  S = S + k (outer) delta,   delta = beta * (v - S^T k)
#     read:   o = S^T q
#
# `S^T k` is what the memory *currently* returns for key `k`; `delta` is the **correction** that makes it return
# `v` instead (with `beta = 1`, fully). Plain linear attention writes `S += k v^T` and so *adds* a second value
# onto a key it has seen before; the delta rule *replaces* it. Let us check that with a few orthonormal keys, using
# the reference's one-token step `gated_delta_rule_step` (one head, no decay: `g = 0`).

# %%
gen = torch.Generator().manual_seed(0)
n_pairs = 4
keys = torch.linalg.qr(torch.randn(Dk, n_pairs, generator=gen))[0].T   # [4, Dk], orthonormal
values = torch.randn(n_pairs, Dv, generator=gen)

def write(S, key, value, beta=1.0, g=0.0):
    """One step of the gated delta rule for a single head (the read-out it returns is not needed here)."""
    _, S = gated_delta_rule_step(key[None], key[None], value[None], torch.tensor([g]), torch.tensor([beta]), S)
    return S

def read(S, key):
    return S[0].T @ key                                     # S^T k

S = torch.zeros(1, Dk, Dv)
for key, value in zip(keys, values):
    S = write(S, key, value)
for i in range(n_pairs):
    check(f"read back value {i}", values[i], read(S, keys[i]), tol=1e-5)

new_value = torch.randn(Dv, generator=gen)
S = write(S, keys[0], new_value)                            # overwrite key 0
check("key 0 after the overwrite", new_value, read(S, keys[0]), tol=1e-5)
check("key 1 untouched", values[1], read(S, keys[1]), tol=1e-5)

S_linear = sum(torch.outer(k, v) for k, v in zip(keys, values)) + torch.outer(keys[0], new_value)
print(f"plain linear attention returns old + new for key 0: "
      f"{torch.allclose(S_linear.T @ keys[0], values[0] + new_value, atol=1e-5)}")


# %% [markdown]
# ## Decay and write strength
#
# Real keys are not orthogonal: a head has only Dk dimensions to store thousands of tokens, so writes interfere.
# Two per-token, per-head scalars control the memory:
#
# - **decay** `g = -exp(A_log) * softplus(a + dt_bias) <= 0`: before each write the whole state is multiplied by
#   `exp(g)`, in (0, 1]: old memories fade. `A_log` and `dt_bias` are learned per head (some heads forget within
#   a few tokens, others remember thousands); `a` comes from the token (`in_proj_a`), so the model can choose to
#   forget, e.g. at a topic change.
# - **write strength** `beta = sigmoid(b)` in (0, 1): how much of the correction to apply (`b` from `in_proj_b`).
#
# The full per-token step, in the order the model uses it:
#
#     S     = exp(g) * S             # decay first
#     delta = beta * (v - S^T k)     # what the decayed memory mispredicts for k
#     S     = S + k (outer) delta
#     o     = S^T q
#
# Below, random inputs with the model's shapes and decay rates like a trained model's, and the state's size over
# time for three memories: plain linear attention (`S += beta k v^T`), the delta rule without decay (`g = 0`), and
# the gated delta rule.

# %%
def random_inputs(T, seed=0):
    """q, k [T, Hk, Dk]; v [T, Hv, Dv]; g, beta [T, Hv] -- the raw inputs of the rule (before l2norm)."""
    gen = torch.Generator().manual_seed(seed)
    q, k = torch.randn(T, Hk, Dk, generator=gen), torch.randn(T, Hk, Dk, generator=gen)
    v = torch.randn(T, Hv, Dv, generator=gen)
    A_log = torch.linspace(1.0, 16.0, Hv).log()                       # decay rates 1..16 across the heads
    dt = torch.logspace(-3, -1, Hv)                                    # time steps 1e-3..1e-1
    dt_bias = dt + torch.log(-torch.expm1(-dt))                        # softplus(dt_bias) = dt
    g = deltanet_decay(0.5 * torch.randn(T, Hv, generator=gen), A_log, dt_bias)
    beta = torch.randn(T, Hv, generator=gen).sigmoid()
    return q, k, v, g, beta

T = 512 if is_tiny() else 1024
q, k, v, g, beta = random_inputs(T)
k_heads = l2_normalize(k).repeat_interleave(Hv // Hk, dim=1)          # value head h reads key head h // (Hv/Hk)
states = {name: torch.zeros(Hv, Dk, Dv) for name in ("linear attention", "delta rule, no decay", "gated delta rule")}
norms = {name: torch.empty(T, Hv) for name in states}
for t in range(T):
    states["linear attention"] += beta[t, :, None, None] * k_heads[t, :, :, None] * v[t, :, None, :]
    _, states["delta rule, no decay"] = gated_delta_rule_step(k_heads[t], k_heads[t], v[t], torch.zeros(Hv),
                                                              beta[t], states["delta rule, no decay"])
    _, states["gated delta rule"] = gated_delta_rule_step(k_heads[t], k_heads[t], v[t], g[t], beta[t],
                                                          states["gated delta rule"])
    for name, S in states.items():
        norms[name][t] = S.norm(dim=(1, 2))

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
for name, n in norms.items():
    ax1.plot(n.mean(dim=1), label=name)
ax1.set_xlabel("token")
ax1.set_ylabel("||S|| (Frobenius, mean over heads)")
ax1.set_title("State size over time")
ax1.legend()
ax2.semilogx(g.exp().mean(dim=0), norms["gated delta rule"][-T // 4:].mean(dim=0), "o")
ax2.set_xlabel("mean per-token decay exp(g) of the head")
ax2.set_ylabel("||S|| over the last quarter")
ax2.set_title("Gated delta rule: slow-decay heads hold more")
plt.tight_layout()
plt.show()

# %% [markdown]
# Linear attention's state grows without bound (like the square root of the number of writes, for random keys).
# The delta rule's correction keeps it bounded even without decay (each write replaces rather than adds), and the
# decay bounds it further, head by head: the fast-decaying heads are short-term memories, the slow ones long-term.
# Bounded, fixed-size state is what lets decode carry 18.9 MB from token to token whatever the context length.
#
# ## Two forms of the same function
#
# Decode feeds one token at a time: the **recurrent** form above, one step per token. Prefill has the whole prompt
# at once, and a loop of T dependent steps is a poor use of a GPU. The **chunked** form splits the prompt into
# chunks of 64 tokens. Inside a chunk, unrolling the recurrence shows that the 64 corrections `delta` satisfy a
# unit-lower-triangular linear system, `(I + A) delta = beta v - (beta e^G k) S0`, where `A_ij = beta_i
# e^(G_i - G_j) k_i . k_j` for `j < i` and `G` is the running sum of `g`. Solving it once (the "UT transform")
# turns a chunk into a few matrix products; only the state is carried from chunk to chunk. The derivation is in
# the docstring of `reference/ops/gated_delta_rule.py`:

# %%
doc = reference.ops.gated_delta_rule.__doc__
print(doc[doc.index("Derivation"):doc.index("Shapes")])

# %% [markdown]
# Same function, so the outputs and final states must agree to fp32 rounding. We check with the project's one
# comparison helper, `check(name, ref, out, tol)`: relative error `max|out - ref| / max|ref|` against a
# tolerance, failing loudly otherwise. Note the test cases: lengths that are **not a multiple of 64** (the last
# chunk is padded) and a **non-zero initial state** (prefill continuing a conversation, and the only way to test
# how the state enters each chunk).

# %%
warmup = random_inputs(48, seed=1)
_, initial_state = recurrent_gated_delta_rule(*warmup)                 # a realistic, non-zero state
for T in (1, 37, 64, 100, 150):
    q, k, v, g, beta = random_inputs(T, seed=T)
    o_rec, s_rec = recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=initial_state)
    o_chunk, s_chunk = chunked_gated_delta_rule(q, k, v, g, beta, initial_state=initial_state)
    check(f"T={T:3d} outputs", o_rec, o_chunk, tol=1e-5)
    check(f"T={T:3d} final state", s_rec, s_chunk, tol=1e-5)

# %% [markdown]
# Why bother with the chunked form? A prompt of T tokens is T dependent steps for the recurrent form, but only
# T/64 dependent chunk updates for the chunked one, each a handful of matrix products. Even on a CPU, with the real
# head sizes, that is several times faster at a few hundred tokens (with the tiny CI heads the loop is so cheap
# that the chunked form's fixed costs win); on a GPU the gap is much larger. Decode has one token per step, so it
# uses the recurrent form.

# %%
q, k, v, g, beta = random_inputs(512, seed=2)
for rule in (recurrent_gated_delta_rule, chunked_gated_delta_rule):
    t0 = time.perf_counter()
    rule(q, k, v, g, beta, initial_state=initial_state)
    print(f"{rule.__name__:28s} T=512: {(time.perf_counter() - t0) * 1e3:7.1f} ms")


# %% [markdown]
# ## A published-kernel bug: the decay one line too late
#
# An open-source Gated DeltaNet decode kernel computed the prediction `S^T k` from the state **before** the decay
# and applied the decay afterwards. The decay still happens, so nothing blows up; only `delta` is slightly wrong.
# Here is that step, written from the reference step with the first two lines swapped, and a whole rule that uses
# it (by swapping it into the reference loop):

# %%
def buggy_step(q, k, v, g, beta, state):
    predicted = (state * k[:, :, None]).sum(dim=1)        # S^T k from the state BEFORE the decay  <- the bug
    state = state * g.exp()[:, None, None]                 # the decay, one line too late
    delta = (v - predicted) * beta[:, None]
    state = state + k[:, :, None] * delta[:, None, :]
    return (state * q[:, :, None]).sum(dim=1), state

def buggy_rule(*args, **kwargs):
    with mock.patch.object(reference.ops.gated_delta_rule, "gated_delta_rule_step", buggy_step):
        return recurrent_gated_delta_rule(*args, **kwargs)


# %% [markdown]
# First, the test that misses it: one step from a **zero** state. With `S = 0` the decay has nothing to act on, so
# the buggy step is exact. A kernel test that only starts fresh sequences passes.

# %%
q, k, v, g, beta = random_inputs(1, seed=7)
o_ref, s_ref = recurrent_gated_delta_rule(q, k, v, g, beta)
o_bug, s_bug = buggy_rule(q, k, v, g, beta)
check("step 1 from a zero state: outputs", o_ref, o_bug, tol=1e-5)
check("step 1 from a zero state: state", s_ref, s_bug, tol=1e-5);

# %% [markdown]
# From a realistic state, `check()` catches it on the very first step:

# %%
o_ref, s_ref = recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=initial_state)
o_bug, s_bug = buggy_rule(q, k, v, g, beta, initial_state=initial_state)
for name, ref, out in (("outputs", o_ref, o_bug), ("state", s_ref, s_bug)):
    try:
        check(f"step 1 from a real state: {name}", ref, out, tol=1e-5, verbose=False)
    except CheckFailed as e:
        print("CheckFailed:", e)
    else:
        raise AssertionError("the bug went unnoticed")

# %% [markdown]
# ### In the model: plausible tokens, wrong numbers
#
# Now plug the buggy rule into the reference model's decode path (the DeltaNet layer calls
# `recurrent_gated_delta_rule` for every decoded token) and compare with the correct model: first the logits of
# one decode step after a prompt, then greedy generation.

# %%
model = load_model(notebook_model_dir())
prompt = torch.randint(0, config.vocab_size, (12,), generator=torch.Generator().manual_seed(0)).tolist()
with_bug = lambda: mock.patch.object(reference.ops.deltanet, "recurrent_gated_delta_rule", buggy_rule)

logits, state = model.prefill(prompt)
state_bug = state.clone()
token = int(logits[-1].argmax())
ref = model.decode_step(token, state)
with with_bug():
    out = model.decode_step(token, state_bug)
layer = config.linear_layers[0]
for name, a, b in (("decode step 1 logits", ref, out),
                   (f"decode step 1, layer {layer} DeltaNet state", state.recurrent[layer], state_bug.recurrent[layer])):
    try:
        check(name, a, b, tol=1e-5, verbose=False)
    except CheckFailed as e:
        print("CheckFailed:", e)
    else:
        raise AssertionError("the bug went unnoticed")
print(f"greedy next token: correct {int(ref.argmax())}, buggy {int(out.argmax())}")

# %%
n_new = 24 if is_tiny() else 16
correct = model.generate(prompt, max_new_tokens=n_new, stop_at_eos=False).tolist()
with with_bug():
    buggy = model.generate(prompt, max_new_tokens=n_new, stop_at_eos=False).tolist()
same = next((i for i, (a, b) in enumerate(zip(correct, buggy)) if a != b), n_new)
print("correct:", correct)
print("buggy:  ", buggy)
print(f"the first {same} of {n_new} greedy tokens are identical")

# %% [markdown]
# The logits are off by percents from the first decoded token, yet the greedy tokens agree for a while (with real
# weights the text would read fine): the arg-max is a very forgiving function. This is why every stage of this
# project is checked on **logits and every piece of state, at every step, against a tolerance**, starting from a
# non-trivial state, and never only on generated tokens.
#
# ## What's next
#
# [03 · Reference decode](03_reference_decode.ipynb) runs the whole reference model: prefill, the decode state it
# builds, step-by-step decode, greedy and sampled generation, and the comparison with transformers that makes this
# reference the oracle for every kernel that follows.
