# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Qwen3.5-0.8B: the architecture, and what one decoded token costs
#
# **You will learn**
#
# - how Qwen3.5-0.8B is built: 24 layers, three **Gated DeltaNet** (linear attention) layers for every **gated
#   full-attention** layer;
# - the shape of every head and projection, read from the published `config.json`;
# - why decoding one token at batch 1 is a memory-bandwidth problem, and how many bytes each op group costs;
# - the bandwidth floor on an H100 (~1,950 tok/s) and how far common runtimes are from it;
# - why the DeltaNet state stays at 18.9 MB however long the context gets, while a KV cache grows.
#
# This notebook needs only the config file: no weights are loaded.

# %%
# %matplotlib inline
import math

import matplotlib.pyplot as plt
import torch

from reference import FULL, LINEAR, DecodeState, Qwen35Config, expected_shapes
from reference.budget import H100_COPY_BANDWIDTH, decode_budget, weight_bytes_by_group
from reference.notebook import PUBLISHED_CONFIG, fmt_bytes, print_table

config = Qwen35Config.from_pretrained(PUBLISHED_CONFIG)
config

# %% [markdown]
# ## A config tour
#
# The published checkpoint is a vision-language model: its `config.json` wraps the text model's settings in a
# `text_config` (plus a vision tower we never use for text decode). `Qwen35Config.from_pretrained` reads either
# form and fills the keys a config leaves out with the same defaults transformers uses. The sizes that matter for
# decode:

# %%
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

# %% [markdown]
# ### The layer pattern
#
# Every fourth layer is full attention; the other three are Gated DeltaNet. Both kinds are followed by the same
# SwiGLU MLP, with pre-norm residuals around each. Why mix them? DeltaNet layers carry a **fixed-size** memory
# (cheap at any context length, but lossy); the few attention layers keep **exact** recall of every earlier token
# through their KV cache.

# %%
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

# %% [markdown]
# ### Head shapes
#
# One layer of each kind, with every tensor the checkpoint stores for it. Things to notice:
#
# - **DeltaNet** `in_proj_qkv` produces q, k and v side by side (16 heads x 128 each, so 3 x 2048 = 6144 rows);
#   these 6144 channels go through a depthwise causal conv of width 4 before the heads are split. `in_proj_a`
#   and `in_proj_b` give one number per head and token: the decay and the write strength (notebook 02).
#   `A_log` and `dt_bias` are per-head constants of the decay.
# - **Attention** `q_proj` has 2 x 8 x 256 = 4096 rows: per head, 256 query dims and 256 **gate** dims
#   (interleaved per head, not two halves); the output is multiplied by `sigmoid(gate)`. Only 2 KV heads serve the
#   8 query heads (GQA 4:1), which keeps the KV cache small.

# %%
shapes = expected_shapes(config)
first_linear, first_full = config.linear_layers[0], config.full_layers[0]
rows = [(name, " x ".join(map(str, shape)), math.prod(shape))
        for name, shape in shapes.items()
        if name.startswith((f"layers.{first_linear}.", f"layers.{first_full}."))]
print_table(rows, headers=("tensor", "shape", "parameters"))

# %% [markdown]
# ## Parameters, and the bytes one token reads
#
# Decoding at batch 1 multiplies one vector by every weight matrix: about 2 FLOPs per weight read. An H100 does
# ~1,000 TFLOP/s of bf16 math but reads only ~3 TB/s of memory, so the arithmetic is free and **the time per
# token is set by how many bytes have to come out of memory**. Counting those bytes is the first thing to do
# before writing any kernel.

# %%
n_params = sum(math.prod(s) for s in shapes.values())
n_embed = math.prod(shapes["embed_tokens.weight"])
print(f"text model parameters: {n_params:,} ({n_params / 1e6:.0f} M)")
print(f"  tied embedding / LM head: {n_embed:,} ({n_embed / n_params:.0%})")
print(f"  everything else:          {n_params - n_embed:,}")
print("(the published checkpoint also holds a vision tower and a multi-token-prediction layer; text decode reads neither)")

# %%
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

# %% [markdown]
# The **LM head is a third of all the bytes**: a 248,320 x 1024 matrix, read in full for every token just to
# produce the logits. (It is tied to the embedding, but the embedding lookup reads one row; the LM head reads all
# of them.) Any decoder that wants to approach the floor has to stream it at full bandwidth, and so does every
# projection in the 24 layers: no op is small enough to ignore.
#
# ## The bandwidth floor
#
# Add the recurrent state (the DeltaNet states are fp32, read and written every token) and the KV cache (read in
# full by each attention layer, growing with the context), divide by the bandwidth, and you have the fastest any
# implementation can possibly decode. We use 3.02 TB/s, the device-to-device copy bandwidth measured on an H100.

# %%
rows = []
for context in (0, 1024, 8192, 32768):
    b = decode_budget(config, context)
    rows.append((context, fmt_bytes(b.weight_bytes), fmt_bytes(b.deltanet_state_traffic_bytes + b.conv_state_traffic_bytes),
                 fmt_bytes(b.kv_bytes), fmt_bytes(b.total_bytes),
                 f"{b.floor_seconds() * 1e3:.3f} ms", f"{b.floor_tokens_per_second():,.0f}"))
print_table(rows, headers=("context", "weights", "DeltaNet+conv state (r+w)", "KV cache", "total",
                           "floor / token", "floor tok/s"))

# %%
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

# %% [markdown]
# The floor hardly moves with context: even at 32k tokens the KV cache (12 KB per position, only 6 attention
# layers with 2 KV heads) adds ~400 MB to the 1.5 GB of weights. The gap between the floor and the measured
# systems is what this tutorial is about: at batch 1 a conventional decoder launches hundreds of small kernels per
# token and waits on each; a **megakernel** runs the whole token in one persistent launch and keeps the memory
# system busy the whole time.
#
# ## State sizes: why the DeltaNet state does not grow
#
# A full-attention layer remembers the past by keeping every key and value: its cache grows by one row per token.
# A DeltaNet layer keeps a fixed **[Dk x Dv] matrix per head** and *rewrites* it every token (notebook 02 shows
# how). Its memory is lossy, but its size is constant. Let us measure both from an empty `DecodeState` (the
# structure the reference model carries between tokens).

# %%
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

# %%
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

# %% [markdown]
# For a decode kernel the constant state has a second consequence: every token reads **and writes** all 18.9 MB
# of DeltaNet state (the recurrence updates it in place), about 38 MB of traffic per token, 2.5% of the weight
# bytes. It is kept in fp32 because it accumulates over thousands of tokens.
#
# ## What's next
#
# [02 · Gated DeltaNet](02_gated_deltanet.ipynb) opens up the DeltaNet layer's recurrence, the *gated delta
# rule*: what the state stores, what the decay and `beta` do, why the prefill (chunked) and decode (recurrent)
# forms are the same function, and a real bug that token-level tests miss.
