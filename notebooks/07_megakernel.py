# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · The megakernel: one persistent launch decodes a token (or many)
#
# **You will learn**
#
# - why one launch per op costs time twice over: the host's launch work, and the memory system idling at every
#   boundary between ops;
# - the phases and grid barriers of one decode step, as Python data that the tests check and this notebook draws
#   (`megakernel.persistent.schedule`);
# - how a persistent kernel runs the **same device functions** as the layered kernels, each block taking a share of
#   each phase, with `this_grid().sync()` between phases (version 1);
# - how version 2 streams the weights through shared memory with the copy engine, ahead of the barriers, and what
#   versions 3 (finer attention work items), 4 (the weight stream evict-first in L2, two rows per warp pass), 5 (a
#   grid barrier of one release-add and acquire-polls), 6 (a page consumer that issues fewer instructions) and 7
#   (one phase per MLP: the down projection split over the blocks, summed in fixed point) change;
# - stepping the megakernel on the CPU through the simulator and comparing every state with the layered decoder;
# - what the H100 measured, and what limits it.
#
# In the simulator (CI) the stages run a tiny synthetic model with a 264-token vocabulary, 3 blocks of 64 threads;
# on a GPU the same cells run the checkpoint chosen as in notebook 03 (real shapes).

# %%
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")   # no GPU: kernels run in Numba's CUDA simulator (CPU)

# %matplotlib inline
import inspect
import time

import matplotlib.pyplot as plt
import numpy as np

import megakernel                                   # makes the simulator honest (see megakernel/testing/simulator.py)
from megakernel import compare, launch
from megakernel.bench import results as R
from megakernel.persistent import schedule, pages, phases as mk_phases, v1, v2
from reference import Qwen35Config, ensure_synthetic_checkpoint
from reference.budget import H100_COPY_BANDWIDTH
from reference.notebook import PUBLISHED_CONFIG, notebook_model_dir, print_table

if launch.SIMULATOR:
    model_dir = ensure_synthetic_checkpoint("tiny-synthetic-v264", Qwen35Config.tiny(vocab_size=264))
else:
    model_dir = notebook_model_dir()
t0 = time.perf_counter()
reference = megakernel.load(model_dir, "reference")
max_context = 64 if launch.SIMULATOR else 4096
layered = megakernel.load(model_dir, "layered", max_context=max_context, prefill_mode="reference")
persistent = megakernel.load(model_dir, "persistent", max_context=max_context, prefill_mode="reference")
config = persistent.config
print(f"{model_dir.name}: {config.num_hidden_layers} layers, hidden {config.hidden_size}; loaded in "
      f"{time.perf_counter() - t0:.1f} s; persistent kernel version {persistent.version}")

# %% [markdown]
# ## One step as a list of phases
#
# A decode step is a chain: every matvec needs the whole vector the previous phase produced. Between two phases
# every block must have finished writing before any block reads, so a persistent kernel puts a **grid barrier**
# there; the layered decoder puts a kernel boundary. `schedule.step_phases` is that chain as data: what each phase
# reads and writes, how its work is spread over the blocks ("rows" of a matvec, independent "items", or one job
# for "all"), and the bytes it streams. For Qwen3.5-0.8B:

# %%
published = Qwen35Config.from_pretrained(PUBLISHED_CONFIG)
steps_08 = schedule.step_phases(published, context=512)
rows = [(p.label, p.work, p.units, ", ".join(p.reads), ", ".join(p.writes), f"{(p.weight_bytes + p.state_bytes) / 1e6:.2f}")
        for p in steps_08[:9]] + [("...", "", "", "", "", "")] + [
        (p.label, p.work, p.units, ", ".join(p.reads), ", ".join(p.writes), f"{(p.weight_bytes + p.state_bytes) / 1e6:.2f}")
        for p in steps_08[-3:]]
print_table(rows, headers=["phase", "work", "units", "reads", "writes", "MB"])
print(f"\n{len(steps_08)} phases, {schedule.barriers_per_token(published)} grid barriers per greedy token "
      f"({schedule.barriers_per_token(published, sample=True)} sampled); "
      f"{schedule.bytes_per_step(steps_08) / 1e9:.3f} GB streamed per step at context 512")
schedule.check_dependencies(steps_08)   # every read ordered after its write by a barrier (raises otherwise)
schedule.check_bytes(published, context=512)
print("dependencies: every cross-phase hand-off crosses a barrier; bytes: the budget of notebook 01")

# %% [markdown]
# The same list is the tests' check that a barrier is not missing: drop the one after the first DeltaNet
# recurrence and `check_dependencies` names the buffer and the two phases that would race.

# %%
broken = [p if (p.name, p.layer) != ("deltanet", 0) else type(p)(**{**p.__dict__, "barrier_after": False})
          for p in steps_08]
try:
    schedule.check_dependencies(broken)
except schedule.ScheduleError as e:
    print("ScheduleError:", e)

# %% [markdown]
# Drawn on a time axis where each phase is as long as its bytes take at the H100's copy bandwidth, the step is a
# long run of short phases (the matvecs of one layer stream 4-17 MB each, 1.4-5.6 us) broken by phases that stream
# no weights at all (the DeltaNet recurrence, attention), then the LM head, a third of all bytes. A barrier costs
# ~1-1.5 us on an H100 (`../shared` measurements), so 134 of them are worth a quarter of the whole budget unless
# the memory system keeps streaming through them.

# %%
fig, ax = plt.subplots(figsize=(12, 2.4))
kinds = sorted({p.name for p in steps_08})
colors = {k: plt.get_cmap("tab20")(i) for i, k in enumerate(kinds)}
t = 0.0
for p in steps_08:
    width = max((p.weight_bytes + p.state_bytes) / H100_COPY_BANDWIDTH * 1e6, 0.3)  # us (0.3: visible)
    ax.broken_barh([(t, width)], (0, 1), facecolors=colors[p.name])
    t += width
    if p.barrier_after:
        ax.axvline(t, color="k", linewidth=0.3)
ax.set_yticks([])
ax.set_xlabel("us at 3.02 TB/s (black lines: grid barriers)")
ax.legend([plt.Rectangle((0, 0), 1, 1, color=colors[k]) for k in kinds], kinds, ncol=7, fontsize=7,
          loc="upper center", bbox_to_anchor=(0.5, -0.45))
ax.set_title("one Qwen3.5-0.8B decode step: phases sized by their bytes, 134 barriers")
plt.show()

# %% [markdown]
# ## Version 1: the layered kernels' bodies as phases
#
# Every layered kernel became a thin wrapper around a device function that takes a work range (this block, of
# that many). Here is the DeltaNet kernel of stage 2, whole:

# %%
from megakernel.kernels import deltanet as dn_kernels  # noqa: E402

print(inspect.getsource(dn_kernels.deltanet_kernel))

# %% [markdown]
# and the phase of the megakernel that runs the same body: each block loops over the work items its index gives
# it, then every block meets at the barrier (`run_item`'s first form is version 13's, whose items read their
# inputs as flag-in-data words, below).

# %%
src = inspect.getsource(mk_phases.make_mixers)
print(src[src.index("    if LL:  # the items read"):src.index("    @cuda.jit(device=True)\n    def attention_phases")])

# %% [markdown]
# Version 1's header says what it costs:

# %%
print(v1.__doc__[v1.__doc__.index("For Qwen3.5-0.8B"):v1.__doc__.index("Arguments:")])

# %% [markdown]
# ## Stepping the megakernel, every state against the layered decoder
#
# `megakernel.compare` runs two stages on the same prompt with teacher forcing and compares the hidden state after
# every layer at every step (the persistent kernel writes them to a trace buffer after each layer's last
# barrier), the logits, then every conv state, DeltaNet state and KV cache. In the simulator the grid barrier is
# real (all blocks run concurrently) and the race detector watches every shared and global access.

# %%
prompt = [3, 141, 59, 26, 5]
t0 = time.perf_counter()
report = compare.compare_pair(compare.LayeredRunner(layered, "layered"),
                              compare.LayeredRunner(persistent, "persistent"), prompt, steps=2)
print(compare.format_report(report, config))
print(f"({time.perf_counter() - t0:.0f} s)")

# %% [markdown]
# And against the reference, N tokens in one launch: the kernel loops over the steps, the argmax of one step
# feeds the next step's embedding on the device, and the host reads the tokens once. The kernel counts the grid
# barriers it passed: the schedule's count per step, plus one at the end of the launch.

# %%
expected = reference.generate(prompt, 5, stop_at_eos=False).tolist()
t0 = time.perf_counter()
tokens = persistent.greedy_tokens(prompt, 5)
print(f"reference:  {expected}\npersistent: {tokens}  (4 steps in one launch, {time.perf_counter() - t0:.0f} s)")
print(f"barriers passed: {persistent.last_run['barriers']} = 4 x {persistent.barriers_per_step()} + 1")
assert tokens == expected and persistent.last_run["barriers"] == 4 * persistent.barriers_per_step() + 1

# %% [markdown]
# ## Version 2: the weights through shared memory, ahead of the barriers
#
# The weights never depend on the activations, so nothing forces a block to wait for the barrier before fetching
# its next rows. Version 2 gives every block a contiguous range of rows of every matrix and streams them, page by
# page, through a ring of shared-memory slots with the copy engine (`cp.async.bulk`, completing on an `mbarrier`
# per slot): while the block computes one page, waits at a barrier or runs the DeltaNet recurrence, the next pages
# are on their way. The page table is built on the host, once:

# %%
print(v2.__doc__[v2.__doc__.index("So in version 2"):v2.__doc__.index("The phases, their order")])
table, count = pages.page_table(published, 132, v2.PAGE_WORDS)
per_block = [int(c) for c in count]
print(f"0.8B on 132 blocks, 32 KB pages: {min(per_block)}-{max(per_block)} pages per block per step "
      f"({sum(per_block) * 32 / 1024:.0f} MB-slots in all); ring: {v2.RING_PAGES} pages = "
      f"{v2.RING_PAGES * 32} KB per block")
names = [ph.name for ph in pages.rows_phases(published)]
block0 = [names[int(table[0, i, 6])] for i in range(count[0])]
print("block 0's stream, first layer:", block0[:12])

# %% [markdown]
# ## On the H100
#
# The benchmark times every version against the layered decoder's CUDA graph (`python -m megakernel.bench`), and
# `tools/profile_persistent.py` runs a profiling build that records every block's arrival at and departure from
# every barrier on the GPU's global timer: per phase, the slowest block's work is the critical path and the rest
# is waiting.

# %%
results = R.find_latest()
if results is None:
    print(f"No benchmark results in {R.results_dir()} yet: run `python -m megakernel.bench` on a GPU.")
else:
    doc = R.load_results(results)
    rows = [(r["system"], r["workload"], f"{r['tok_s']:.0f}" if r.get("tok_s") else "-",
             f"{100 * r['fraction_of_floor']:.0f}%" if r.get("fraction_of_floor") else "-")
            for r in doc["rows"] if r["kind"] == "decode" and (r["system"].startswith("persistent")
                                                                 or r["system"] == "layered-graph")]
    print(results.name)
    print_table(rows, headers=["system", "workload", "tok/s", "of floor"])

# %%
from megakernel.persistent.profile import Timeline, format_table, phase_table, plot_timeline  # noqa: E402

profiles = sorted(R.results_dir().glob("timeline_*.npz"))
if not profiles:
    print("No profile in data/results: run `python tools/profile_persistent.py data/results 1,2,3` on a GPU.")
for path in profiles:
    z = np.load(path)
    labels = [str(x) for x in z["labels"]]
    steps = labels.count("lm_head")
    tl = Timeline(labels, [lab.split("[")[0] for lab in labels], z["arrive"], z["leave"], steps,
                  z["page_wait"] if "page_wait" in z else None)
    print(f"\n{path.stem}: {tl.total_ns / 1e3 / steps:.0f} us per step")
    print(format_table(tl))
    one = labels.index("lm_head") + 1  # the first step
    first = Timeline(labels[:one] + ["end"], tl.kinds[:one] + ["end"], tl.arrive[:, :one + 1], tl.leave[:, :one + 1], 1)
    fig, ax = plt.subplots(figsize=(12, 4))
    plot_timeline(first, ax=ax, title=f"{path.stem}: one step, blocks x time")
    plt.show()

# %% [markdown]
# **What the numbers say** (NOTES.md has the measurements and their commands). Version 1 is correct and slower than
# the layered CUDA graph, as a barrier-per-phase kernel is expected to be: the kernel's register count is the
# maximum over its phases (255: the attention arrays), so an SM holds 8 warps, too few loads in flight for full
# bandwidth, and each of the 134 barriers drains the memory pipeline. Version 2's weight stream takes the matvecs
# off the register budget; version 3 gives attention 4x the work items (its decode phase drops from ~127 to ~86 us
# per step at context 512). All three sit near 30% of the floor. Version 4 (~37%) found what made every small
# phase 2-3x slower inside the kernel than as a kernel of its own: L2. The kernel streams 1.5 GB of weights per
# token through a 50 MB L2, which flushed what is reused (its ~290 KB of machine code, more than an SM's
# instruction cache holds; the activations; conv state and KV), so those came back from HBM behind the stream.
# Marking the weight copies evict-first took the DeltaNet phase from ~258 to ~166 us per step.
#
# ## Version 5: a cheaper grid barrier, and what a step is made of
#
# Version 5 (~42% of the floor, 819 tok/s at context 512 on the H100) changes one thing: the grid
# barrier. The hand-written generation barrier costs ~5 dependent L2 round trips (and `grid.sync()` measured no
# faster, ~1.5 us from the last arrival to the first departure); version 5 keeps one arrival counter that never
# resets, adds to it with `red.release.gpu` and polls it with `ld.acquire.gpu` until it reaches the launch's base +
# blocks x (barriers passed + 1): two round trips. `make_barrier` has all three; this is the new one:

# %%
src = inspect.getsource(mk_phases.make_barrier)
start = src.index("    def monotonic_sync")
print(src[start:src.index("    @cuda.jit", start)])

# %% [markdown]
# To see what a step is made of, the profiling builds take pieces away (`nocopy`: no weight is copied, every page
# is consumed stale; `nomixer`: no DeltaNet or attention; `nobar`: no barrier; the last three compute wrong
# results on purpose) or try another structure (`wrel`: ring slots released warp by warp; `pp`: pages consumed in
# pairs; `l2=`: L2 prefetches ahead of the ring; `page=`/`ring=`: other ring shapes). One H100, context 512, each
# call with its own baseline:

# %%
ladder_path = R.results_dir() / "profile_ladder_nvidia-h100_2026-11-26.json"
if ladder_path.exists():
    import json

    ladder = json.loads(ladder_path.read_text())
    shown = ["4", "4+cbar", "4+mono", "4+nobar", "4+wrel", "5+pp", "4+cbar+l2=8",
             "5+page=16+ring=12", "5+page=64+ring=3", "4+mono+nocopy", "4+mono+nocopy+nomixer"]
    best = {}
    for r in ladder["rows"]:
        best.setdefault(r["variant"], r)
    rows = [best[v] for v in shown if v in best]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.barh([r["variant"] for r in rows][::-1], [r["us_per_step"] for r in rows][::-1], color="tab:blue")
    floor_us = 1e6 * schedule.bytes_per_step(schedule.step_phases(published, 513)) / H100_COPY_BANDWIDTH
    ax.axvline(floor_us, color="red", ls="--", lw=0.8, label=f"bandwidth floor ({floor_us:.0f} us)")
    ax.set_xlabel("us per decode step (profiling build, context 512)")
    ax.set_title("Where a step goes: versions, switches and pieces taken away (H100)")
    ax.legend(fontsize=8)
    plt.show()
    print_table([(r["variant"], f"{r['us_per_step']:,.0f}", r["note"]) for r in rows],
                headers=["variant", "us/step", "what it shows"])
else:
    print(f"{ladder_path.name} not found")

# %% [markdown]
# What limits version 5 (~1,260 us per profiled step, 514 us at the floor):
#
# - **The page consumers.** With no weight copied at all the kernel still needs ~955 us per step, ~670 us without
#   its mixers: with every page already in shared memory a 32 KB page costs ~0.9 us to consume, about half of it
#   fixed per page (16 KB pages: +180 us per step; 64 KB pages: -77 us without copies, but a 3-slot ring streams
#   worse). The copy engine is not what is slow: the ring streamed 2.75 TB/s with the arithmetic removed.
#   Releasing slots warp by warp, pairing pages for four rows per warp pass, dropping the proxy fence or the
#   page-table reads: none made the kernel faster. What is left is latency per warp with 8 warps per SM (255
#   registers: capping them at 168 spills 1.7 KB per thread, `tools/ptxas_report.py 5+regs=168`);
# - **134 grid barriers** at ~1.2 us each plus the spread of the arrivals (~160 us per step);
# - **the mixers**: ~290 us per step (DeltaNet ~8 us per layer, attention ~17 us per layer at context 512), the
#   other blocks idle meanwhile.
#
# So 60% of the floor needs all three: a consumer that streams several times faster than HBM (more warps, a
# register budget the mixers respect), fewer synchronisation points (attention's prepare and combine folded into
# the phases around them, per-head counters between the DeltaNet input projection and its recurrence), and the
# idle blocks streaming during the mixers.
#
# The barrier bound is simple enough to draw: if every phase streamed at full bandwidth and each barrier still cost
# its time on the critical path, a step would take floor + barriers x cost (`schedule.barrier_bound`).

# %%
n_barriers = np.arange(0, 161, 4)
fig, ax = plt.subplots(figsize=(8, 3.5))
for cost_us in (1.2, 2.8):
    bound = [schedule.barrier_bound(published, 512, cost_us * 1e-6, barriers=int(n)) for n in n_barriers]
    ax.plot(n_barriers, np.array(bound) * 100, label=f"{cost_us} us per barrier")
ours = schedule.barriers_per_token(published, version=5)
ax.axvline(ours, color="grey", ls=":", label=f"this schedule: {ours} barriers")
ax.axhline(60, color="red", ls="--", lw=0.8, label="issue 9's target (60%)")
ax.axhline(43, color="black", lw=0.8, label="version 6 measured (43%, H100)")
ax.axhline(37, color="black", lw=0.8, ls=":", label="version 4 measured (37%, H100)")
ax.set_xlabel("grid barriers per token")
ax.set_ylabel("best fraction of the floor (%)")
ax.set_ylim(30, 102)
ax.set_title("Qwen3.5-0.8B at context 512: what barriers alone allow")
ax.legend(fontsize=7)
plt.show()
print(f"{ours} barriers at 2.8 us (version 4's grid.sync with its spread): at most "
      f"{schedule.barrier_bound(published, 512, 2.8e-6, version=5):.0%} of the floor; at 1.2 us (version 5's "
      f"barrier alone): {schedule.barrier_bound(published, 512, 1.2e-6, version=5):.0%}")

# %% [markdown]
# ## Version 6: a cheaper page consumer, and what it did not buy
#
# With no weight copied at all, version 5 still needed ~960 us per step: about 1 us per 32 KB page. To see what a
# page costs, `python -m megakernel.bench.consumer` runs the consumer loop alone on the GPU. One block per SM
# loops over resident pages and calls the same device functions as the kernel. Its variants take parts away or
# change one. Two findings:
#
# - **The consumer is bound by the instructions it issues.** 16 warps per SM were no faster than 8.
# - **Each part costs its share.** The dot products alone take 0.55 us per page, the two warp sums of a pass
#   0.17, the LM head's epilogue 0.19, the slot's wait and block barrier 0.07.
#
# Version 6 issues fewer instructions per page and keeps version 3's sums in version 3's order, so the bits are
# the same:
#
# - **Split sums.** A pass's two rows are summed in one five-shuffle butterfly. The first row's sum ends on lanes
#   0-15 and the second's on lanes 16-31 (`device.warp_sum2`). Each has `warp_sum`'s tree.
# - **x in registers.** Each lane keeps its 32 values of x in registers for the whole phase
#   (`fused_matvec.xreg_dots`).
# - **The mixer bodies out of line.** The matvec skeleton is compiled without their register pressure.

# %%
import json  # noqa: E402

from megakernel.kernels import fused_matvec  # noqa: E402

print(inspect.getsource(fused_matvec.xreg_dots))

ladder6_path = R.results_dir() / "profile_ladder_nvidia-h100_2026-11-27.json"


def print_ladder(rows):
    """A profile ladder's rows: the call (each with its own baseline), the variant, us per step, what it shows."""
    print_table([(r["call"], r["variant"], f"{r['us_per_step']:,.0f}", r["note"]) for r in rows],
                headers=["call", "variant", "us/step", "what it shows"])


if ladder6_path.exists():
    ladder6 = json.loads(ladder6_path.read_text())
    cons = {**ladder6["consumer"]["us_per_page"], **ladder6["consumer"]["us_per_page_second_call"]}
    order = ["16-warps", "v3", "v5", "xregs", "no-sync", "split-sums", "no-reduce", "no-epilogue",
             "xregs-split-sums", "dots-only"]
    names = [n for n in order if n in cons]
    page_at_floor = 132 * 32768 / H100_COPY_BANDWIDTH * 1e6  # us per page per SM at the bandwidth floor
    fig, ax = plt.subplots(figsize=(8, 3.8))
    ax.barh(names[::-1], [cons[n] for n in names][::-1],
            color=["tab:green" if n == "xregs-split-sums" else "tab:blue" for n in names][::-1])
    ax.axvline(page_at_floor, color="red", ls="--", lw=0.8,
               label=f"one page per SM at the floor ({page_at_floor:.2f} us)")
    ax.set_xlabel("us per 32 KB page per SM (pages resident, H100)")
    ax.set_title("The page consumer alone (megakernel.bench.consumer); green: version 6's")
    ax.legend(fontsize=8)
    plt.show()
    h100 = [r for r in ladder6["rows"] if "H100" in r["device"] and r.get("context", 512) == 512]
    print_ladder(h100)
else:
    print(f"{ladder6_path.name} not found")

# %% [markdown]
# Alone, the consumer went from 0.92 to 0.68 us per page, 2.1x the rate the floor asks of an SM. In the kernel on
# the H100 that bought only 2.5% (1,245 -> 1,214 us per profiled step; 836 tok/s at context 512, 43% of the floor;
# on an H200 6%). The profiles say why:
#
# - **The weight stream stalls whenever the consumers stop.** The ring holds ~8 us of the stream, as much as the
#   copy latency under load needs and no more. At every barrier, with its prologue (~3 us), and in every mixer
#   (7-19 us), the pages in flight land and no new ones are issued. The stop's length is lost from the stream:
#   933 us per step without copies, 1,204 with them.
# - **The copy queue is one FIFO for everything.** Prefetching later pages into L2, before each barrier or when a
#   mixer starts, made the kernel 6-35% slower. The DeltaNet phase went from 143 to 193-386 us, because its own
#   reads now waited behind the prefetched weights.
# - **The mixers are latency chains.** They take as long with no weight copied at all. Folding attention's three
#   phases into one (one barrier per layer instead of three, the same bits) moved the query making and a hand-off
#   between blocks onto the critical path, and was slower.
#
# What would pay next (NOTES.md, open problems): keep the stream going while the consumers stop, by putting the
# mixers' inputs (DeltaNet state slabs, KV rows) into the stream in program order so that weight prefetches can no
# longer delay them; shorten the mixer chains; then fewer barriers.


# %% [markdown]
# ## Version 7: one phase per MLP, its down projection split over the blocks
#
# In version 6 an MLP is two phases. Gate/up makes `act` (each block its share of the 3,584 rows), then down
# (`h += W_down @ act`, each block its share of the 1,024 rows) needs all of `act`, so a grid barrier sits between
# them. That barrier, the down phase's prologue (`act` staged from L2) and its epilogue cost ~5.5 us per layer for
# 7.3 MB of weights the ring streams in ~2.5 us.
#
# Version 7 splits the down projection the other way (split-K). A block keeps the rows of `act` it made in its
# shared memory and multiplies them by the same rows of `W_down^T` (stored transposed, so they are one contiguous
# copy through the ring). Its [1024] partial is added into the residual stream's accumulator `h_acc`. No block
# waits for another's `act`: one phase and one barrier per MLP.
#
# The partials of 132 blocks meet in one vector, so the order of the additions depends on which block finishes
# first. Floating-point sums would then change from run to run, and the stress tests hold every version to the
# same bits on every run and grid size. So the partials are 64-bit fixed-point integers (x 2^32). Integer addition
# does not care about order:

# %%
from megakernel.persistent import split_down  # noqa: E402

rng = np.random.default_rng(1)
products = (rng.standard_normal(896) * 0.05).astype(np.float32)  # one output's 896 chunk sums at the 0.8B shapes
shuffled = rng.permutation(products)
as_float = [np.float32(0), np.float32(0)]
as_fixed = [0, 0]
for k, seq in enumerate((products, shuffled)):
    for p in seq:
        as_float[k] = np.float32(as_float[k] + p)
        as_fixed[k] += int(split_down.to_fixed(p))
print(f"fp32 sums in two orders:       {as_float[0]!r} vs {as_float[1]!r} (equal: {as_float[0] == as_float[1]})")
print(f"fixed-point sums in two orders: {as_fixed[0]} vs {as_fixed[1]} (equal: {as_fixed[0] == as_fixed[1]}) "
      f"-> {float(split_down.from_fixed(np.int64(as_fixed[0]))):.7f}")
print(f"barriers per token: version 6 {schedule.barriers_per_token(published, version=6)}, version 7 "
      f"{schedule.barriers_per_token(published, version=7, fused_down=True)}")

# %% [markdown]
# How the partials are added decided whether this paid. With each thread adding its four sums by `atom.add.u64`
# (135k atomics per layer on one 8 KB vector), version 7 was slower than version 6. The atomics cost ~100 us per
# step, half of it in the next phase, whose reads of the vector waited behind them. Spreading the vector over more
# L2 lines or into replicas moved the cost around. What worked is handing each block's staged vector to the copy
# engine as one bulk reduction (`cp.reduce.async.bulk ... add.u64`, `tma.bulk_reduce_add_u64`): within 2% of a
# build with no reduction at all.
#
# Two more fusions in the same spirit did not pay. `fused_out` does the same for each DeltaNet layer's output
# projection, after a hand-off of each head's sum of squares between its items. It saved 8 us per step in its own
# phase, and the phases that then read a second accumulator lost more. `lm_pool` lets the blocks whose stream runs
# faster claim more of the LM head's last pages at run time. It cut the LM head's spread from 29 to 13 us, and made
# every other phase slower. The likeliest reason is that the kernel's code, already larger than an SM's
# instruction cache, grew. One H100, context 512, each call with its own baseline:

# %%
if ladder6_path.exists():
    v7_rows = [r for r in ladder6["rows"] if 19 <= r["call"] <= 28]
    fig, ax = plt.subplots(figsize=(9, 5))
    labels = [f"{r['variant']} (call {r['call']})" for r in v7_rows]
    colors = ["tab:green" if r["variant"] == "7" else "tab:gray" if r["variant"] == "6" else "tab:blue"
              for r in v7_rows]
    ax.barh(labels[::-1], [r["us_per_step"] for r in v7_rows][::-1], color=colors[::-1])
    ax.set_xlim(1000, 1400)  # the floor, 514 us, is far to the left
    ax.set_xlabel("us per decode step (profiling build, context 512, H100)")
    ax.set_title("Version 7's ladder: grey version 6, green version 7 as kept (fd, fdc=4, fdb)")
    plt.show()
    print_ladder(v7_rows)

# %% [markdown]
# Version 7 ran 882 tok/s at context 512 on the H100 (45% of the floor; version 6 831 in the same call; the
# layered CUDA graph 934). What limits it is what limited version 6 (the stream stalls whenever the consumers stop;
# the mixers are latency chains; 110 barriers), plus a lesson about fusion: a cross-block reduction costs its round
# trips wherever it happens, so merging two phases pays only when the hand-off that replaces the barrier is cheaper
# than the barrier.
#
# ## Version 8: where the mixers' time goes, and the LM head 64 KB at a time
#
# Two timing probes say what the mixers are waiting for. Without any weight copied (`nocopy`), the DeltaNet and
# attention phases take as long as with the stream, so their HBM reads are not queueing behind the weights. Run
# twice in a row (`mixer_twice`: the second run finds its code and data on chip), a DeltaNet item costs ~4 us
# per layer instead of ~6, an attention decode ~5 instead of ~10: about a third to a half of each mixer is its
# cold start, the rest its chain of dependent steps. Loading a DeltaNet item's inputs before using any (one
# round trip instead of three) took ~10 us off a step, for every version and the layered kernel alike.
#
# The LM head is the one long phase that only the stream limits (~200 us for 508 MB, ~2.5 TB/s). The ring moves
# 2.7 TB/s in 32 KB copies but 3.0 in 64 KB ones, so version 8 fetches two adjacent 32 KB slots with one copy
# when both are free (`pair_copies`), and the consumers still take 32 KB pages. With the pairing code in every
# call site of the page loop, the LM head got 12 us faster and the MLP 10 us slower, although its pages had not
# changed. With the code only in the LM head's call site (a constant argument folds it away elsewhere), the MLP
# stayed as it was. Kernel code that does not run still costs, here measured directly.
#
# One H100, context 512, each call with its own baseline (version 8 is `7+pc=1` in call 34):

# %%
if ladder6_path.exists():
    v8_rows = [r for r in ladder6["rows"] if 29 <= r["call"] <= 34]
    fig, ax = plt.subplots(figsize=(9, 5))
    labels = [f"{r['variant']} (call {r['call']})" for r in v8_rows]
    colors = ["tab:green" if (r["variant"], r["call"]) == ("7+pc=1", 34) else "tab:gray" if r["variant"] == "7"
              else "tab:blue" for r in v8_rows]
    ax.barh(labels[::-1], [r["us_per_step"] for r in v8_rows][::-1], color=colors[::-1])
    ax.set_xlim(800, 1300)
    ax.set_xlabel("us per decode step (profiling build, context 512, H100)")
    ax.set_title("Version 8's ladder: grey version 7, green version 8 as kept (7 + pc=1)")
    plt.show()
    print_ladder(v8_rows)

# %% [markdown]
# Version 8 runs 902 tok/s at context 512 on the H100 (46% of the floor; version 7 with the faster DeltaNet item
# 900, the layered CUDA graph 942). NOTES.md keeps the measurements, the Nsight Compute stall samples per phase
# (`tools/ncu_persistent.py`, `tools/ncu_lines.py`) and the open problems.

# %% [markdown]
# ## Version 9: what Python's integers cost on every page
#
# Nsight Compute's samples per machine instruction (with the kernel's Python line for each, `tools/ncu_lines.py`)
# counted ~365 instructions issued per warp for each 32 KB page of the LM head, of which ~150 are the page's
# arithmetic. The rest came from the Python source being taken at its word. `cursor % R` and `(cursor // R) & 1`
# (which ring slot, which mbarrier parity) are Python's floor division and modulo on 64-bit integers, a multiply-high
# sequence with sign corrections before every page's wait. `range(start, stop, step)` with a run-time step
# divides out its trip count. A guard `if v < nv` around each of a lane's x pieces, always true at the 0.8B's
# sizes, became a branch around each 16-byte load, so the four loads of a row were never in flight together.
# Version 9 carries the slot and parity from page to page, takes remainders in 32-bit unsigned arithmetic, and
# loops with `while`.
#
# The second finding needed a new measurement. With those instructions gone, half of the LM head's warp samples
# still sat at the page's block barrier, yet the profiling build's new column (the copy thread's time waiting for
# pages, per phase) showed almost no waiting for the stream. Nsight Compute named the culprit: warp 0 alone stalled
# on its next copy descriptor, loaded from the page table in global memory a page ahead. Behind a saturated HBM
# the load came back late, and the other seven warps waited for warp 0 at the barrier. Each block now copies its
# descriptors into shared memory when a launch starts (`smem_descs`). After that, the LM head waits for the stream
# (its page waits went from 6 to 59 us per step) and runs at 93% of its bandwidth floor.
#
# The same bits as version 8. On the H100 at context 512: 1,107 -> 1,021 us per profiled step, and 993 tok/s in
# the benchmark against the CUDA graph's 973 in the same call (51% of the floor). The graph gained too (942 -> 973),
# because the norm and staging bodies it shares with the megakernel lost their 64-bit divisions.

# %%
if ladder6_path.exists():
    v9_rows = [r for r in ladder6["rows"] if 35 <= r["call"] <= 40 and "H100" in r["device"]]
    print_ladder(v9_rows)


def page_wait_chart(name: str, title: str):
    """A saved timeline's phases (``data/results/NAME``): each kind's critical path per step and, of it, the
    critical block's time waiting for weight pages."""
    path = R.results_dir() / name
    if not path.exists():
        return
    z = np.load(path)
    labels = [str(x) for x in z["labels"]]
    tl = Timeline(labels, [lab.split("[")[0] for lab in labels], z["arrive"], z["leave"], labels.count("lm_head"),
                  z["page_wait"])
    rows = [r for r in phase_table(tl) if r["phase"] not in ("embed", "end")]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    names = [r["phase"] for r in rows]
    ax.barh(names[::-1], [r["critical_us"] for r in rows][::-1], color="tab:blue", label="critical block's work")
    ax.barh(names[::-1], [r["critical_page_wait_us"] for r in rows][::-1], color="tab:orange",
            label="of which waiting for weight pages")
    ax.set_xlabel("us per step (profiling build, context 512, H100)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    plt.show()


page_wait_chart("timeline_v9_ctx512.npz", "Version 9: only the LM head waits for the weight stream")

# %% [markdown]
# The chart says what is left. The projections barely wait for a page: their time is their own instructions,
# their prologues (the residual stream's norm, read back from L2 after each barrier) and the slowest block, ~25%
# behind the mean in the input projections and the MLPs. The DeltaNet and attention phases are latency chains of
# ~200 us per step, and the 110 grid barriers cost ~90 us. Without the weight stream at all the kernel takes ~790
# us per step. The 60% target needs ~855 us in all, so the next version has to shorten that skeleton itself,
# not only hide the stream behind it.

# %% [markdown]
# ## Version 10: what a function call costs inside a megakernel
#
# Versions 6-9 call the mixer bodies out of line, so that the DeltaNet recurrence and the attention's per-lane
# arrays do not set the register count of the whole kernel. The machine code (`ptxas -v` and `nvdisasm` of a local
# sm_90 build, no GPU needed) shows what such a call costs. Numba passes each array as its whole descriptor
# (pointer, shape, strides and three fields the body never reads): ~60 parameters for a mixer body, most of them
# stored to the stack by the caller and loaded back by the callee. The decode body also needs more registers than
# the calling convention leaves it, so it stores 79 registers on entry and reloads them on return. All of this is
# local memory, behind an L1 that the ring's shared memory leaves at ~28 KB.
#
# Version 10 compiles the decode body into the kernel. The kernel then uses 255 registers instead of 224, with a
# few spills at the mixers' call sites and none in the page loops: 1,045 -> 1,019 us per profiled step, 977 -> 994
# tok/s in the benchmark. The decode phase itself hardly changed. The gain is elsewhere, and the profiling build
# cannot say exactly where: the phases summed 85 us less and the gaps between them grew by 58 us, so the new
# register allocation also moved work across the timer stamps. One kernel of ~14,000 instructions has one register
# allocation and one code layout, and moving 34 KB of code moves both for every phase. Every mixer body inline was
# slower, and passing arrays as an address and a shape (`lean_calls`) to the calls that stay out of line bought
# nothing measurable: each choice has to be measured, not derived. Same bits as version 9.

# %%
if ladder6_path.exists():
    v10_rows = [r for r in ladder6["rows"] if 41 <= r["call"] <= 46]
    print_ladder(v10_rows)
page_wait_chart("timeline_v10_ctx512.npz", "Version 10 (call 46): the same shape, 1,014 us per step")

# %% [markdown]
# Call 46 also ran version 10 without copying any weight (`nocopy`): 831 us per step, against version 9's ~790.
# So version 10 did not shorten the skeleton. The stream now costs 1,014 - 831 = 183 us on top of it, against
# ~230 for version 9: the gain is in how well the weight stream overlaps the work. The 60% target needs ~855 us
# per step in all, barely more than version 10's skeleton alone: the skeleton has to get shorter.

# %% [markdown]
# ## Version 11: the pages on the tensor cores
#
# Without copies, a block of version 10 takes ~0.96 us to multiply a 32 KB page (16 rows x 1,024) by x on the CUDA
# cores: a share of the loads, a bf16 -> fp32 conversion and an FMA per weight, a shuffle reduction per row. One
# `mma.sync.m16n8k16` multiplies a 16 x 16 bf16 tile by a 16 x 8 one into fp32. Version 11 (`megakernel/persistent/
# mma.py`) puts 8 weight rows in B (one `ldmatrix.x4` loads two groups) and x in A as two bf16 terms, hi in rows
# 0-7 and lo in rows 8-15 (x = hi + lo keeps 16 of fp32's 24 mantissa bits). The rows of a page lie 2 KB apart,
# one shared-memory bank group: weight row n reads its 16-byte chunks rotated by its index in the matrix mod 8, A's
# row m carries x rotated by m, and only the matching outputs D[rot(n)][n] + D[rot(n) + 8][n] are used. The chart
# shows which chunk each of 8 consecutive rows reads at each k-step of a warp's span: every column (one `ldmatrix`
# phase) touches 8 different banks, and every row still sees every chunk once.

# %%
from megakernel.persistent import mma as MM  # noqa: E402

span_chunks = 16  # a warp's k-span at the 0.8B's size: 128 k = 16 chunks of 8
rot = np.array([[(n + t) % span_chunks for t in range(span_chunks)] for n in range(8)])
fig, ax = plt.subplots(figsize=(7, 2.6))
ax.imshow(rot % 8, cmap="tab10", aspect="auto")
for n in range(8):
    for t in range(span_chunks):
        ax.text(t, n, str(rot[n, t]), ha="center", va="center", fontsize=7)
ax.set_xlabel("chunk slot in the warp's k-span (two per mma k-step)")
ax.set_ylabel("row index mod 8")
ax.set_title("Chunk each weight row reads (colour: its bank group)")
plt.show()

# %% [markdown]
# The consumer on its own (`mma.make_page_kernel`, the kernel `tests/test_mma.py` checks on the CPU and on the
# GPU): a page of this notebook's tiny model (hidden 48 over 2 warps, so the warps' k-spans differ) against float64.

# %%
rng = np.random.default_rng(0)
hidden, warps, nrows = 48, 2, 4
w = torch.from_numpy(rng.standard_normal((nrows, hidden)).astype(np.float32)).to(torch.bfloat16)
x = (rng.standard_normal(hidden) * np.exp(rng.uniform(-3, 3, hidden))).astype(np.float32)
out = np.full(nrows, np.nan, np.float32)
MM.make_page_kernel(hidden, warps, 16)[1, 32 * warps](w.view(torch.int32).numpy().reshape(-1).copy(), nrows, 0, 0,
                                                      MM.split_layout(x), out)
exact = w.double().numpy() @ x.astype(np.float64)
print("tensor-core rows:", out)
print("float64 rows:    ", exact.astype(np.float32))
print(f"worst error / sum |w x|: {np.max(np.abs(out - exact) / (np.abs(w.double().numpy()) @ np.abs(x))):.1e}")

# %% [markdown]
# Alone, on one 32 KB page with 8 warps, the consumer takes ~0.32 us (`tools/mma_probe.py`: a dependent `mma` ~29
# cycles, a dependent `ldmatrix` ~57), three times less than version 10's in the kernel. In the kernel version 11
# is level with version 10 (998 against 1,005 tok/s at 512 in one call). The ladder below is the lesson: the
# first build, which still compiled the CUDA-core consumer at the same call sites, took 1,492 us per step; the same
# arithmetic with less code around it 1,146, then 1,040; with the rows finished by the warps that do not refill the
# ring (the copy thread's warp no longer holds the others at the next page's barrier) 1,036, against version 10's
# 1,018. What surrounds the pages costs as much as the arithmetic saved: more accumulator chains change nothing,
# and one out-of-line copy of the page loop is slower.

# %%
if ladder6_path.exists():
    print_ladder([r for r in ladder6["rows"] if 47 <= r["call"] <= 53])

# %% [markdown]
# ## Version 12: a hand-off taken off the critical path
#
# Each DeltaNet layer keeps the last three inputs of every q/k channel (the causal conv's state). Every item of a
# key head reads them, so in versions 1-11 the item that shifts them in place must be the last reader: each item
# fences and adds 1 to its key head's counter, and the one that completes the count shifts. That fence and that
# atomic are two dependent memory round trips in the middle of every item. Version 12 leaves the shift to the next
# phase: past the DeltaNet phase's grid barrier every item has read the state, so the out_proj phase shifts it with
# plain loads and stores, no count (`deltanet.qk_conv_shift`, one channel per thread of the grid, its loads in
# flight with the gated norm's staging, which the phase waits for anyway). With the round trips gone, the item loads
# its state slab first, with its other inputs. The DeltaNet phase went from ~105 to 82 us per step and the step from
# 1,028 to 1,000 us; in the benchmark 1,025 tok/s at context 512 against version 10's 1,007 in the same call. The
# same bits as version 10 (the tests compare logits and every state exactly).

# %%
if ladder6_path.exists():
    print_ladder([r for r in ladder6["rows"] if 54 <= r["call"] <= 55])

# %% [markdown]
# ### What a page's bookkeeping costs
#
# Without copies and without products (`nocopy`, `nocompute`: timing only, wrong results) version 12's LM head still
# takes ~74 us for its 118 pages a block: 0.63 us a page for the loop alone. The `skeleton` probe leaves out one
# piece at a time. The mbarrier waits cost little and the block barrier nothing; the copy thread's refill after
# each page's barrier costs ~0.4 us a page, and most of that was loading the next copy descriptor: a serial chain
# of ~60 predicated 64-bit instructions on one thread (a shared and a global table behind one array, a division),
# which the seven other warps wait for at the next page's barrier. `packed_descs` (the descriptors packed next to
# the mbarriers, the index carried instead of divided) halves it. Without copies the step got 16 us shorter; with
# products and copies it moved by 5 us, within noise: in the real kernel the other warps' products and the weight
# stream cover most of this chain.

# %%
if ladder6_path.exists():
    lm_rows = {(r["call"], r["variant"]): r["lm_head_us"] for r in ladder6["rows"] if "lm_head_us" in r}
    base = "12+nocopy+nocompute"
    lm_head = {"all of it": lm_rows[57, base], "no waits (1)": lm_rows[57, base + "+skel=1"],
               "no block barrier (2)": lm_rows[57, base + "+skel=2"],
               "no waits, no descriptor\nload (9)": lm_rows[59, base + "+skel=9"],
               "no waits, packed\ndescriptors (pd)": lm_rows[60, base + "+skel=1+pd"],
               "no waits, no refill (5)": lm_rows[57, base + "+skel=5"]}
    fig, ax = plt.subplots(figsize=(8, 2.8))
    ax.barh(list(lm_head), [v / 118 for v in lm_head.values()], color="tab:gray")
    ax.invert_yaxis()
    ax.set_xlabel("us per page (LM head, 118 pages a block)")
    ax.set_title("Version 12 without copies or products: what each piece of a page's bookkeeping costs")
    plt.show()
    print_ladder([r for r in ladder6["rows"] if 56 <= r["call"] <= 60])

# %% [markdown]
# ### A producer warp: measured, level with version 12, not kept
#
# The copy thread's chain sits between every page's block barrier and the next page, and the consumers are slower
# than the stream, so the ring is full whenever a phase ends. Hopper's TMA pipelines split the roles: one warp
# only streams, waiting for a slot's "empty" mbarrier (every consumer warp has left the page it held) before the
# copy, and the consumer warps leave each slot on their own, with no block barrier per page. The `producer` build
# option does that with a ninth warp (`v2.produce`, `v2.leave_slot`). The kernel's device functions stay the
# layered kernels' ones; their `syncthreads` and `blockDim` are narrowed to the eight consumer warps in the LLVM IR
# Numba hands to the CUDA compiler (`warp_roles.narrow_ir`: `llvm.nvvm.barrier0` becomes `bar.sync 1, 256`, a
# read of `ntid.x` the constant 256), and `megakernel.testing.warp_roles_probe` checks that mechanism on its own.
# The same bits as version 12.
#
# It costs registers: an SM hands out its 64 K registers in groups of four warps, so nine warps get twelve warps'
# worth, 168 registers a thread against 255. `producer_regs` makes the producer a warpgroup of four warps that
# gives its registers to the consumers (`setmaxnreg`: 40 for the producers, 232 for the consumers).
#
# The first build of it made every mixer phase ~1.6x slower. The producer was not the cause; the compiler path
# was. The narrowing first rewrote the PTX, so the kernel had to be built through Numba's PTX and `ptxas` instead
# of numba-cuda's default, LTO-IR linked by nvJitLink. Version 12 built that way (`12+nolto`) is as slow. Linked
# PTX is compiled one function at a time: each out-of-line mixer body gets the full call ABI, every array passed
# as a whole descriptor through the stack. Link-time optimisation compiles the whole program and drops what the
# bodies never read (the kernel's stack frame 160 B against 720). With the narrowing in the IR, the producer build
# is built exactly as version 12 is.
#
# Then it is level with version 12: 990 against 1,002 us per profiled step, and in the benchmark 1,020 tok/s at
# context 512 for both (975 against 962 at 4096). Its phases are ~75 us shorter, its grid barriers ~60 us slower.
# A barrier's latency (the last block's arrival to the first block's departure) grows with the copies in flight:
# version 12 111 -> 145 us per step, the producer build 96 -> 204. Having warp 1 arrive instead of thread 0, a
# sleeping producer, or no copy issued during a barrier changed nothing. Stamping the arrival's release
# (`release_stamp`) found the wait: the last block's `MEMBAR.ALL.GPU` (the `red.release.gpu` that arrives) waits
# for the block's own stores, and their acknowledgements come back to the SM behind the pages in flight to it,
# 2.8 of the 3.4 us of a barrier after in_proj. Holding those pages back until the barrier is passed
# (`producer_throttle`) makes the barriers 47 us per step faster and the mixers 100 us slower, since the mixers'
# reads then queue behind the refills. The ladder (one H100, context 512, each call with its own baseline):

# %%
ladder7_path = R.results_dir() / "profile_ladder_nvidia-h100_2026-11-28.json"


def plot_step_parts(rows, title, device="H100"):
    """Profile-ladder rows (label -> row) as stacked bars: the phases' critical paths, the barriers' latency and
    what is left of the step (the departure spread, the rest)."""
    crit = [r["sum_of_critical_paths_us"] for r in rows.values()]
    lat = [r["barrier_latency_us"] for r in rows.values()]
    rest = [r["us_per_step"] - c - b for r, c, b in zip(rows.values(), crit, lat)]
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.barh(list(rows), crit, color="tab:blue", label="phases (critical paths)")
    ax.barh(list(rows), lat, left=crit, color="tab:red", label="barrier latency")
    ax.barh(list(rows), rest, left=np.add(crit, lat), color="tab:gray", label="departure spread, other")
    ax.invert_yaxis()
    ax.set_xlabel(f"us per decode step (profiling build, context 512, {device})")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=3)
    ax.set_title(title)
    plt.show()


if ladder7_path.exists():
    ladder7 = json.loads(ladder7_path.read_text())
    parts = {(r["call"], r["variant"]): r for r in ladder7["rows"]}
    shown = {"version 12": (69, "12"), "version 12,\nno copies": (69, "12+nocopy"),
             "producer": (69, "12+prod+noindec+preg=40"), "producer,\nno copies": (68, "12+prod+noindec+preg=40+nocopy")}
    plot_step_parts({label: parts[k] for label, k in shown.items()},
                    "Where a step goes: the producer's phases are shorter, its barriers longer")
    print_ladder([r for r in ladder7["rows"] if r["call"] <= 71])
else:
    print(f"{ladder7_path.name} not found")

# %% [markdown]
# ## Version 13: a hand-off without a fence
#
# The producer warp's lesson was that a grid barrier after an input projection waits mostly for the last block's
# release: `red.release.gpu` begins with `MEMBAR.ALL.GPU`, which waits until the block's stores are acknowledged,
# and the acknowledgements come back behind the weight pages in flight to the SM. NCCL's "LL" protocol hands data
# over with no fence at all: each 32-bit value travels with a 32-bit flag in one 64-bit word, written by a single
# store that a reader sees whole or not at all. A reader that sees the flag it expects has the value.
#
# Version 13 does that for each DeltaNet layer's input projection (`persistent/handoff.py`): in_proj writes every
# row as a float (for out_proj, two barriers later) and as a word `(tag << 32) | bits(value)`, and the DeltaNet
# items, with no grid barrier before them, spin on the words they read until they carry the tag. The tag counts
# the grid barriers of every launch so far (block 0 stores where the next launch starts), so a word left from an
# earlier layer, step or launch never carries it. The schedule model marks the words' buffer with a `~`: a read of it needs
# no barrier after the write, a rewrite still needs one after the last read.

# %%
hand_off = schedule.step_phases(published, context=512, version=13, fused_down=True, ll_inproj=True)
schedule.check_dependencies(hand_off)  # the items read in_proj's words with no barrier: allowed for "~" buffers
print("grid barriers per token (0.8B):", schedule.barriers_per_token(published, version=12, fused_down=True),
      "(v12) ->", schedule.barriers_per_token(published, version=13, fused_down=True, ll_inproj=True), "(v13)")
print([(p.label, p.reads, p.writes, p.barrier_after) for p in hand_off if p.layer == 0][:2])

# %% [markdown]
# On the H100 the 18 barriers after in_proj took ~37 us per step (latency and spread); without them the items wait
# ~1 us per layer for their words, a poll's round trip behind the same pages in flight: net 14 us per profiled step,
# and in the benchmark 1,049 tok/s at context 512 against version 12's 1,022 and the CUDA graph's 982 in the same
# call (54% of the floor). With the producer warp, whose barriers were the slow ones, the barriers' latency halves
# and the phases grow by as much: a fence removed moves the wait to the next read. The same bits as version 12.

# %%
if ladder7_path.exists():
    v13 = {r["variant"]: r for r in ladder7["rows"] if r["call"] == 72}
    shown = {"version 12": "12", "version 13\n(12 + ll_inproj)": "12+ll", "producer": "12+prod+noindec+preg=40",
             "producer\n+ ll_inproj": "12+prod+noindec+preg=40+ll"}
    plot_step_parts({label: v13[k] for label, k in shown.items()},
                    "Flag-in-data words instead of a barrier: the latency moves into the phases")
    print_ladder([v13[k] for k in shown.values()])

# %% [markdown]
# ## On the H200: a faster memory, the same skeleton
#
# The H200 streams 4.24 TB/s against the H100's 3.02, so its floor at context 512 is 0.366 ms per token (2,732
# tok/s). Version 13 runs 1,237 tok/s there, 18% faster than on the H100 but only 45% of that floor; the CUDA
# graph runs 1,113. Without any weight copied (`nocopy`, a timing-only build) the kernel takes 796 of its 868 us
# per profiled step: on the H200 the stream adds 72 us to the skeleton, on the H100 ~170. What bounds every
# version is the phases' latency chains and the grid barriers, which a faster memory does not shorten. Two
# attempts at those chains, both with the same bits: the gated norm's staging with two heads' loads in flight
# (kept; out_proj ~8 us per step shorter in the profile, the benchmark within its noise) and the attention
# combine over column items with all partials loaded at once (`combine_cols`: the combine phase 34 -> 27 us per
# step in the profile, yet 1.5% slower in the benchmark, so not kept).

# %%
ladder_h200_path = R.results_dir() / "profile_ladder_nvidia-h200_2026-11-28.json"
if ladder_h200_path.exists():
    ladder_h200 = json.loads(ladder_h200_path.read_text())
    h200 = {(r["call"], r["variant"]): r for r in ladder_h200["rows"]}
    shown = {"version 13": (3, "13"), "version 13,\nno copies": (3, "13+nocopy"),
             "+ combine_cols=16": (6, "13+cc=16")}
    plot_step_parts({label: h200[k] for label, k in shown.items()},
                    "On the H200 the skeleton is almost the whole step", device="H200")
    print_ladder(ladder_h200["rows"])
else:
    print(f"{ladder_h200_path.name} not found")

# %% [markdown]
# ## Version 14: measured side by side
#
# Two calls of the benchmark disagree by about 1% on the same build, which is as much as most single changes to
# the kernel are worth. So `python -m megakernel.bench.ab` loads every build at once, checks each one against the
# reference at each context, and times them in turn, round after round, in a rotated order: a difference is
# read from the per-round ratios of runs made side by side, where the drift between calls cancels out.
#
# Three build options of version 13 had each measured level with it in separate calls: the residual stream
# handed to the MLP's norm as flag-in-data words (`ll_residual`: no grid barrier after out_proj and o_proj, the
# MLP's accumulator alternating between two regions by layer parity), the MLP's norm waiting on its pending
# words together (`ll_together=2`), and the copy descriptors packed beside the mbarriers (`packed_descs`).
# Side by side with version 13 the three together are 2.0-2.2% faster at every context, and faster in every
# round: version 14 makes them its defaults. It computes version 13's bits. The profiling build shows the two
# level (849 us per step each), another case of the profiling build's stamps moving with the code. On top of
# version 14, five more options measured in the same way were all slower.

# %%
print("grid barriers per token (0.8B):",
      schedule.barriers_per_token(published, version=13, fused_down=True, ll_inproj=True), "(v13) ->",
      schedule.barriers_per_token(published, version=14, fused_down=True, ll_inproj=True, ll_residual=True), "(v14)")
from megakernel.bench.ab import format_ab, plot_ab  # noqa: E402

for name in ("ab-v14_nvidia-h200_2026-11-28.json", "ab-v14-options_nvidia-h200_2026-11-28.json",
             "ab-v14-copies_nvidia-h200_2026-11-28.json"):
    ab_path = R.results_dir() / name
    if ab_path.exists():
        ab_doc = json.loads(ab_path.read_text())
        print(format_ab(ab_doc))
        plot_ab(ab_doc)
        plt.show()
    else:
        print(f"{name} not found")
