# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · The layered decoder: one kernel launch per op
#
# **You will learn**
#
# - how the kernels of notebook 05 make a whole decoder: 5 launches per DeltaNet layer, 7 per attention layer and 3
#   per token, **135 launches per token** for Qwen3.5-0.8B;
# - how it is checked against the reference: the hidden state after every layer at every decode step, every conv
#   state, DeltaNet state and KV cache, the logits, and the greedy tokens (`megakernel.compare`);
# - where the time of a token goes on an H100: the bytes-time floor, the kernels' own time, and the host's cost of
#   launching 135 kernels, eagerly and from a CUDA graph;
# - why that makes a megakernel (one launch per token) the next step.
#
# In the simulator (CI) the decoder runs a tiny synthetic model with a 264-token vocabulary: a decode step is 25
# launches of a few simulated blocks each, a few seconds. On a GPU the same cells run the checkpoint chosen as in
# notebook 03 (real shapes).

# %%
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")   # no GPU: kernels run in Numba's CUDA simulator (CPU)

# %matplotlib inline
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

# %% [markdown]
# ## One decode step, op by op
#
# `LayeredDecoder` keeps the weights on the device as the kernels want them (bf16 matrices as int32 words, the
# matrices read together concatenated: `[qkv; z; b; a]` per DeltaNet layer, `[q|gate; k; v]` per attention layer),
# and the decode state in stacked device buffers. Its step is a Python loop that launches one kernel per op:

# %%
doc = layered.__doc__
print(doc[doc.index("One decode step"):doc.index("The oracle")])

# %% [markdown]
# Here the decoder prefills with the reference model (`prefill_mode="reference"`: the chunked DeltaNet form of
# notebook 02, its states copied into the kernels' layout), so that what follows measures the decode kernels alone;
# its own prefill (bf16 matrix products on tensor cores, the default) is notebook 09's subject. Every decode step
# runs on the kernels. Their oracle is the reference computing in fp32 from the same bf16 weights with a bf16 KV
# cache, which is exactly the kernels' arithmetic, so the two should agree to summation-order effects (~1e-6).
#
# ## Layer by layer against the reference
#
# `megakernel.compare` runs two stages side by side: both prefill the same prompt, then decode with **teacher
# forcing** (the first stage's greedy token is fed to both, so an error cannot hide behind a different token
# sequence). Per decode step it compares the hidden state after every layer and the logits, and at the end every
# state. The report shows, per layer, the worst max-abs / relative error over the steps:

# %%
prompt = [3, 141, 59, 26, 5]
t0 = time.perf_counter()
report = compare.compare_pair(compare.ReferenceRunner(reference), compare.LayeredRunner(decoder), prompt, steps=2)
print(compare.format_report(report, config))
TOL = 1e-4   # relative; errors of ~1e-7 per op accumulate over the layers (as tests/test_layered.py)
print(f"\nworst relative error {report.worst_rel():.1e} (tolerance {TOL:.0e}); {time.perf_counter() - t0:.0f} s")
assert report.worst_rel() <= TOL and report.tokens_agree == report.steps

# %% [markdown]
# Every hidden state, every state and the logits agree to a few 1e-7 relative: the same arithmetic as the
# reference, summed in another order. (The KV cache is bf16, so its rows are equal unless a value rounds the other
# way at a bf16 midpoint; the conv state holds inputs that come out of the in_proj matvec, hence its ~1e-7.)
#
# ## Greedy tokens, and the launches per token
#
# Now free-running greedy decode: `greedy_tokens` keeps the argmax on the device (the LM-head kernel writes the
# token id where the next step's embedding lookup reads it; the host only reads it back to return it). In the
# simulator we also count the kernel launches, by wrapping the simulator's launch function:

# %%
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
    print(f"\n{sum(launches.values())} launches for {steps} decode steps:")
    print_table([(name, n // steps) for name, n in launches.most_common()], headers=("kernel", "per step"))


# %% [markdown]
# The count per token follows from the layer pattern: the embedding lookup, the LM head with its argmax and the
# step's bookkeeping (`advance`: record the token, position += 1) are 3 launches; a DeltaNet layer is 5 (in_proj,
# the DeltaNet step, out_proj, the MLP's gate/up and down), an attention layer 7 (q|k|v, prepare, decode, combine,
# o_proj, and the MLP's two). The same formula as `LayeredDecoder.launches_per_token()`, applied to the published
# config (no weights needed):

# %%
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


# %% [markdown]
# ## Where the time goes on an H100
#
# Three numbers frame a decoded token:
#
# - the **floor**: the bytes one token must move (1.54 GB: weights, DeltaNet state read and written, KV cache) at the
#   measured copy bandwidth, ~0.51 ms (`reference.budget`, notebook 01);
# - the **kernel time**: what the 135 kernels take on the GPU when nothing waits for the host. Measured by replaying
#   the whole step from one **CUDA graph** (the token and position live in device memory, so one recorded step
#   serves every token);
# - the **eager** time: the same kernels launched one by one from Python, as `decode_step` does: each Numba launch
#   costs tens of microseconds of host time, far more than most of the kernels run.
#
# The per-kernel times come from `python -m megakernel.bench.kernels` (each kernel alone, replayed from a CUDA graph,
# on the real shapes) and the decoder's tok/s from `python -m megakernel.bench` (systems `layered`, `layered-graph`)
# or, where that JSON does not have them, from the measurements recorded in `NOTES.md`. Each number below says where
# it comes from.

# %%
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
    print(f"\n(no kernels_*.json in {R.results_dir()}: on a GPU run `python -m megakernel.bench.kernels --out "
          "data/results` for the per-kernel split below)")

# %% [markdown]
# The matvec-family kernels carry all the weights. For each, its measured time (graph replay, median) times the
# launches per token, next to its bytes at the copy bandwidth. What is left of the graph time is the other 38
# launches (the DeltaNet steps, the attention kernels, the embedding lookup, `advance`) and the gaps between kernels.
# Where the decoder was timed with older kernels than the newest benchmark has, both are shown: the timed ones are
# what the decoder's number is made of.

# %%
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
        print(f"\nThe kernels have been tuned since the decoder was timed: today's versions take {saved:.0f} us less "
              f"per token, an estimated {graph_ms - saved / 1e3:.2f} ms per token from a CUDA graph (not measured).")
else:
    split = []

# %%
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
    ax1.text(0.5, 0.5, "no kernels_*.json:\nrun python -m megakernel.bench.kernels", ha="center", va="center")
    ax1.set_axis_off()

# waterfall: floor -> + kernels above their bytes -> + the rest -> graph -> + host launches -> eager
if split:
    bars = [("bandwidth floor", floor_ms, "tab:red"),
            ("+ matvec kernels above\ntheir bytes", sum(s[3] - s[2] for s in split[:-1]) / 1e3, "tab:blue"),
            ("+ DeltaNet, attention,\nsmall kernels, gaps", (split[-1][3] - split[-1][2]) / 1e3, "tab:cyan")]
else:
    bars = [("bandwidth floor", floor_ms, "tab:red"), ("+ kernels and gaps", graph_ms - floor_ms, "tab:blue")]
bars.append((f"+ host launch cost\n({LAUNCHES} launches)", host_ms, "tab:gray"))
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

# %% [markdown]
# Reading the chart from the top:
#
# - the **floor** is the same for any correct implementation: 0.51 ms of bytes;
# - the big matvecs get close to it (the LM head streams near the copy bandwidth), but each of the ~100 smaller ones
#   pays a few microseconds of fixed cost (notebook 04's latency-bound regime), and the other 38 kernels add their
#   own plus the gap between consecutive kernels: the CUDA-graph step takes some **2-2.5x the floor**;
# - launched eagerly from Python, the same kernels spend most of the token waiting for the host: ~90 us of host time
#   per Numba launch, 135 times, is an order of magnitude more than all the GPU work.
#
# ## Why a megakernel
#
# A CUDA graph removes the host from the loop, but not the kernel boundaries: 135 times per token the GPU drains one
# kernel, starts the next, ramps its blocks up and waits for the first bytes of the next matrix. A **megakernel**
# runs the whole token as one persistent launch: its blocks stay resident from the embedding to the argmax, move
# from phase to phase through grid barriers instead of kernel boundaries, and can start loading the next matrix's
# weights while the current phase finishes, so the memory system streams without pauses. One launch per token also
# removes the host cost without needing a graph.
#
# ## What's next
#
# 07 · The megakernel (*coming*) builds that kernel from the same device functions and checks it against this
# layered decoder with the same `compare` helpers. [08 · Benchmarks](08_benchmarks.ipynb) puts every stage against
# the bandwidth floor.
