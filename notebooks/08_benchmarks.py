# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 08 · Benchmarks: every stage against the bandwidth floor
#
# **You will learn**
#
# - why batch-1 decode sits at the far left of the **roofline**: about one FLOP per byte of weights, so the time per
#   token is set by memory bandwidth, and what the floor is for Qwen3.5-0.8B on an H100;
# - how to read the benchmark table: tok/s for `tg128` at three contexts and `pp512`, the **fraction of the floor**,
#   **launches per token**, and whether each row was **checked** against the reference before it was timed;
# - where the time above the floor goes (per-launch host cost), and why CUDA graphs and then a megakernel remove it.
#
# The numbers come from `python -m megakernel.bench`, run on a GPU machine; it writes
# `data/results/bench_<device>_<date>.json`. This notebook only reads that file (it runs anywhere, with no GPU).

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from megakernel.bench import results as R
from reference import Qwen35Config
from reference.budget import H100_COPY_BANDWIDTH, decode_budget
from reference.notebook import PUBLISHED_CONFIG, fmt_bytes, print_table

latest = R.find_latest()  # the newest data/results/bench_*.json ($QWEN35_RESULTS_DIR to look elsewhere)
results = R.load_results(latest) if latest else None
if results is None:
    print(f"No benchmark results in {R.results_dir()} yet. On a machine with a CUDA GPU, run\n"
          "    python -m megakernel.bench --llama-json OUT/llama_bench.json   # llama.cpp rows are optional\n"
          "which writes data/results/bench_<device>_<date>.json and a chart; then\n"
          "    python -m megakernel.bench.results\n"
          "puts the table into README.md. The floor below needs no measurement.")
else:
    print(f"{latest.name}: {results['device']}, {results['date']}, "
          f"{len({r['system'] for r in results['rows']})} systems, {len(results['rows'])} rows")

# %% [markdown]
# ## The roofline, and the floor
#
# A kernel that does `F` floating-point operations and moves `B` bytes through device memory cannot finish faster
# than `max(F / peak FLOP/s, B / bandwidth)`. Plot attainable FLOP/s against **arithmetic intensity** `F / B` and
# you get the roofline: a slanted line (bandwidth-bound) up to the *ridge point*, then a flat line (compute-bound).
# On an H100 SXM the ridge sits near 330 FLOP per byte (989 TFLOP/s of dense bf16 over the ~3 TB/s it
# really streams).
#
# Decoding one token at batch 1 multiplies one vector by every weight matrix: 2 FLOPs per weight, and every weight
# (2 bytes in bf16) is read once. That is **~1 FLOP per byte**, some 300 times left of the ridge: the tensor cores idle
# and the token takes as long as it takes to stream the weights (plus the DeltaNet states and the KV cache) out of
# HBM. Batching `B` sequences reuses each weight `B` times, which is how servers climb the roofline; a single
# interactive stream cannot.
#
# So the honest yardstick for batch-1 decode is the **bandwidth floor**: bytes per token (`reference/budget.py`
# counts them) over the bandwidth the GPU actually delivers (3.02 TB/s for a device-to-device copy on an H100,
# measured). Every row of the table reports *floor time / measured time*: 100% would mean the implementation moved
# exactly the bytes it must, at copy speed, with nothing else in the way.

# %%
config = Qwen35Config.from_pretrained(PUBLISHED_CONFIG)  # the published 0.8B shapes (no weights needed)
rows = []
for context in (16, 512, 4096):
    b = decode_budget(config, context)
    rows.append((context, fmt_bytes(b.weight_bytes), fmt_bytes(b.total_bytes - b.weight_bytes - b.kv_bytes),
                 fmt_bytes(b.kv_bytes), f"{b.floor_seconds() * 1e3:.3f} ms", f"{b.floor_tokens_per_second():,.0f}"))
print_table(rows, headers=("context", "weights", "DeltaNet+conv r/w", "KV cache", "floor / token", "floor tok/s"))

peak_flops = 989e12  # H100 SXM, dense bf16 tensor cores
ridge = peak_flops / H100_COPY_BANDWIDTH
intensity = sorted([2 ** (i / 4) for i in range(-8, 48)] + [ridge])
fig, ax = plt.subplots(figsize=(7.5, 3.8))
ax.plot(intensity, [min(peak_flops, x * H100_COPY_BANDWIDTH) / 1e12 for x in intensity], color="black")
for batch, color in ((1, "tab:red"), (64, "tab:orange"), (512, "tab:green")):
    x = batch * 2 / 2  # 2 FLOPs per weight per sequence, 2 bytes per bf16 weight
    ax.plot([x], [min(peak_flops, x * H100_COPY_BANDWIDTH) / 1e12], "o", color=color,
            label=f"matvec at batch {batch}: {x:g} FLOP/byte")
ax.axvline(ridge, color="gray", ls=":", lw=1)
ax.text(ridge * 1.15, 3, f"ridge ~{ridge:.0f} FLOP/byte", color="gray", fontsize=9)
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xlabel("arithmetic intensity (FLOP per byte of weights)")
ax.set_ylabel("attainable TFLOP/s")
ax.set_title("H100 roofline (bf16 at the measured 3.02 TB/s): batch-1 decode is bandwidth-bound")
ax.legend(fontsize=8, loc="upper left")
ax.grid(True, which="major", alpha=0.3)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## The measured table
#
# Each system decodes the synthetic Qwen3.5-0.8B checkpoint (random weights, real shapes: the same bytes and the
# same work as the real model). `tg128 @N` times 128 greedy decode steps after a prompt of N tokens (llama-bench's
# `tg128` at depth N); `pp512` times a prefill of 512 tokens. Before a system is timed, the benchmark compares its
# greedy tokens and its logits at every step with the reference (the torch and transformers rows through an fp32
# twin of the same code, since two faithful bf16 implementations already differ by a few percent); a system that fails is
# shown as *failed* and never gets a number, and llama.cpp (whose `llama-bench` prints no tokens) is marked *not
# checked*.

# %%
if results is None:
    print("(no results yet: see the first cell)")
else:
    display(Markdown(R.results_markdown(results)))

# %%
if results is not None:
    display(R.plot_results(results))

# %% [markdown]
# ## Where the time above the floor goes
#
# At batch 1 a decode step is hundreds of small kernels, each reading a few megabytes. Every launch costs a few
# microseconds of host time (Python, the framework's dispatcher, the driver), and the GPU waits whenever the host
# falls behind. Dividing the time above the floor by the number of launches gives a rough cost per launch: the
# number that CUDA graphs (one launch per token, replaying the recorded kernels) and the megakernel (one
# persistent kernel, no gaps between phases) attack.

# %%
if results is not None:
    gen, first = results["settings"]["gen"], results["settings"]["contexts"][0]
    table = []
    for r in results["rows"]:
        if r["workload"] != f"tg{gen}@{first}" or r["status"] != "ok" or not r.get("floor_ms_per_token"):
            continue
        above = r["ms_per_token"] - r["floor_ms_per_token"]
        n = r.get("kernels_per_token") or r.get("launches_per_token")
        table.append((r["system"], f"{r['ms_per_token']:.3f}", f"{above:.3f}", n or "?",
                      f"{1e3 * above / n:.1f}" if n else "?"))
    print(f"tg{gen} at context {first}; floor {results['floor']['decode'][str(first)]['ms_per_token']:.3f} ms/token")
    print_table(table, headers=("system", "ms/token", "ms above floor", "kernels/token", "us above floor per kernel"))

# %% [markdown]
# Read the last column with care: for a graph-captured or persistent system the kernels no longer wait on the host,
# so what remains above the floor is the kernels themselves not streaming at full bandwidth (small matrices, idle
# SMs between phases, grid barriers). For the eager systems it is mostly the host.
#
# That is the end of the tutorial's arc: the reference defines the numbers, the layered kernels make each op
# bandwidth-bound, and the megakernel removes what is left between them. `NOTES.md` records the measurements and
# the commands that produced them.
