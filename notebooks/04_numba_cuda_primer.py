# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · A Numba CUDA primer: the matvec, from naive to the bandwidth limit
#
# **You will learn**
#
# - why decoding at batch 1 is a memory-bandwidth problem: a matrix-vector product does 2 FLOPs per 2-byte weight;
# - how to write, launch and test a CUDA kernel from Python with Numba, on a GPU or, without one, on the CPU in
#   Numba's CUDA simulator;
# - how a bf16 weight reaches a Numba kernel (as int32 words, decoded with two bit tricks);
# - the matvec in several versions, from one thread per row to one that streams at the copy bandwidth, each run on
#   an awkward matrix and checked against torch with a NaN-poisoned output;
# - what the compiler makes of two of them (PTX for the H100, compiled here without a GPU);
# - the bandwidth each version reaches on an H100, and why the LM head runs at the copy bandwidth while the small
#   1024-row matrices cannot.
#
# Without a GPU the first cell switches on the simulator (CI runs every kernel notebook that way). The simulator
# runs one Python thread per CUDA thread, so everything here uses tiny sizes; the GPU numbers at the end come from a
# benchmark run stored in `data/results/`.

# %%
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")   # no GPU: kernels run in Numba's CUDA simulator (CPU)

# %matplotlib inline
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

# %% [markdown]
# ## Why batch-1 decode is a bandwidth problem
#
# Every projection of a decode step is `y = W x` with one vector `x`. Each bf16 weight (2 bytes) is read once and
# used in one multiply-add (2 FLOPs): one FLOP per byte. An H100 streams ~3 TB/s from its HBM, and even without
# tensor cores its CUDA cores do ~67 TFLOP/s of fp32 FMAs, so the arithmetic of a matvec takes a small fraction of
# the time its bytes take to arrive. Here are the matrices one token multiplies, at the real 0.8B shapes (the
# matrices read together are concatenated, as the decoder stores them):

# %%
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

# %% [markdown]
# The arithmetic is over 20x cheaper than the bytes even on the slower CUDA cores, so a matvec kernel is judged by one
# number: **bytes of W per second**, against the ~3 TB/s that a plain device-to-device copy reaches. Everything in
# the versions below is about *which threads read which bytes, and how many bytes are in flight*.
#
# ## A first kernel, and how bf16 weights get in
#
# A Numba CUDA kernel is a Python function under `@cuda.jit`. It runs once per thread; threads come in blocks, and a
# launch `kernel[blocks, threads_per_block](args)` starts a grid of them. `cuda.grid(1)` is the thread's global index
# (`blockIdx.x * blockDim.x + threadIdx.x`). Arguments are arrays: `launch.as_kernel_array` turns a torch tensor into
# one without copying (a CUDA tensor on the GPU, a NumPy view of a CPU tensor in the simulator).
#
# One catch: Numba cannot take a torch **bf16** tensor (its array interface says "2 untyped bytes"). So weights are
# passed as **int32 words**, two bf16 per word, element `2i` in the low half (little endian). Decoding is cheap
# because a bf16 *is* the top half of a float32: shift the low half up, or mask off the low half, and reinterpret
# the 32 bits as a float.

# %%
w = torch.tensor([1.0, -2.5, 3.140625, 0.001, 65280.0, -0.0], dtype=torch.bfloat16)
words = launch.words(w)                              # int32 [3]: two bf16 per word
u = words.numpy().view(np.uint32)
print_table([(i, f"0x{int(u[i]):08X}", f"0x{int(u[i]) & 0xFFFF:04X} -> {float(w[2 * i])}",
              f"0x{int(u[i]) >> 16:04X} -> {float(w[2 * i + 1])}") for i in range(len(u))],
            headers=("word", "bits", "low half = element 2i", "high half = element 2i+1"))
lo = (u << 16).view(np.float32)                      # bf16_lo: the low half moved to the top
hi = (u & 0xFFFF0000).view(np.float32)               # bf16_hi: the high half already is the top
print("bf16_lo:", lo, "\nbf16_hi:", hi)


# %% [markdown]
# `megakernel.device` has these as `bf16_lo(w)` / `bf16_hi(w)`: on the GPU each compiles to one shift or one `and`
# plus a register move. Our first kernel decodes a few words, one word per thread. Its output buffer starts as NaN
# (`launch.poison_`), so any element the kernel forgets to write shows up in the check: the habit every kernel test in
# this project follows.

# %%
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

# %% [markdown]
# ## The matvec in versions
#
# `megakernel/kernels/matvec.py` holds the matvec in several versions, from naive to fast, in the style of llm.c's
# `dev/cuda` kernels: each one changes one thing, and its header says what and why. The conventions: `W` [N, K] is
# passed as one flat array of int32 words (row `n` starts at word `n*K/2`), `x` and `y` are fp32, products and sums
# are fp32. `matvec.matvec(W, x, y, N, K, version=v)` launches version `v`. The module's own summary of who reads
# what:

# %%
doc = ast.get_docstring(ast.parse(open(M.__file__).read()))      # the module docstring, as written
BULLETS = {int(v): textwrap.dedent("      " + text).strip()
           for v, text in re.findall(r"^\* v(\d+)\s+(.*?)(?=^\* v\d|^\S|\Z)", doc, flags=re.M | re.S)}
for v in sorted(M.VERSIONS):
    print(f"v{v}  ({M.DESCRIPTIONS[v]})")
    print(textwrap.indent(BULLETS.get(v, ""), "      "), "\n")

# %% [markdown]
# We run every version on a deliberately awkward matrix: **37 rows** (not a multiple of the warps in a block, so the
# last warps have no row or wrap around) and **K = 200** (25 sixteen-byte pieces per row: fewer than the 32 lanes of a
# warp, so some lanes read nothing). Weights are random bf16 with the scale of a trained projection (std
# `1/sqrt(K)`); the oracle is torch multiplying the *same* bf16 values upcast to fp32.
#
# The tolerance is 1e-5 relative (`max|y - ref| / max|ref|`): both sides add the same exact fp32 products, only in a
# different order (per-lane partial sums and a shuffle tree here, torch's blocked sum there), which moves the result
# by a few fp32 ulps (~1e-7). A real bug (a skipped piece, a wrong row) is 1e-2 or worse.

# %%
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

# %% [markdown]
# What the NaN poisoning buys: launch a version for one row fewer than the output has, as a kernel with an
# off-by-one row bound would behave. The row it never writes keeps its NaN, and `check` refuses it (without the
# poison it would hold whatever the buffer held before, possibly the right answer from an earlier run).

# %%
y = launch.poison_(torch.empty(N, device=DEV))
M.matvec(Wk, xk, kd(y), N - 1, K, version=M.DEFAULT_VERSION)     # the last row is never computed
launch.synchronize()
try:
    check("matvec, one row short", ref, y.cpu(), tol=1e-5)
except CheckFailed as e:
    print("CheckFailed:", e)

# %% [markdown]
# ## What the compiler makes of it: PTX for the H100, without a GPU
#
# The simulator checks *what* a kernel computes, not how fast it will be. Some slow code is visible at compile time,
# and `megakernel.testing.ptx_check` compiles a kernel module for `sm_90` (the H100) with no GPU present: Numba's NVVM
# produces PTX (the GPU's portable assembly), and nvJitLink assembles it to report registers and spills. Compilation
# needs the simulator *off*, so `check_in_subprocess` runs it in a fresh process.
#
# Compare the weight loads of v2 (4-byte words, `ld.global.u32`, one bf16 pair per instruction) and v4 (16 bytes,
# `ld.global.v4.u32`, eight bf16 per instruction, plus two 16-byte loads of `x`):

# %%
reports = {r.name: r for r in ptx_check.check_in_subprocess("megakernel.kernels.matvec", raise_on_failure=False)}
for name in ("matvec_v2", "matvec_v4"):
    loads = [line.split("//")[0].strip() for line in reports[name].ptx.splitlines() if "ld.global" in line]
    print(f"{name}: {reports[name].registers} registers, {len(loads)} global loads in the PTX; the first three:")
    print("\n".join(f"    {line}" for line in loads[:3]))


# %% [markdown]
# The same bytes with a quarter of the load instructions, and each instruction keeps 16 bytes in flight instead of
# 4. The same report flags float64 arithmetic (a Python float literal in kernel code), local memory and register
# spills; the test suite runs it on every kernel module.
#
# ## On the H100: bandwidth per version
#
# `python -m megakernel.bench.kernels` times every version (and torch's `F.linear` with bf16 weights, i.e. cuBLAS)
# on the real shapes, after checking each output, with the launches replayed from a CUDA graph so that host launch
# costs are not counted. It writes `data/results/kernels_<device>_<date>.json`; we read the newest one.

# %%
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
    print(f"No kernels_*.json in {R.results_dir()}. On a machine with a CUDA GPU run\n"
          "    python -m megakernel.bench.kernels --out data/results\n"
          "(about two minutes on an H100) and rerun this notebook.")
else:
    copy_bps = bench["copy_bandwidth"]["bytes_per_s"]
    print(f"{path.name}: {bench['device']['name']}, {bench['created'][:10]}; measured copy bandwidth "
          f"{copy_bps / 1e12:.2f} TB/s; versions timed: {bench['settings'].get('versions', 'all')}")

# %%
if bench is not None:
    rows_by = {(r["case"], r["kernel"]): r for r in bench["rows"] if r.get("gbps")}
    cases = [c["name"] for c in bench["cases"]]
    versions = sorted({int(k[len("matvec v"):]) for _, k in rows_by if re.fullmatch(r"matvec v\d+", k)})
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
    shapes = {c["name"]: f"{c['name']}\n{c['n']} x {c['k']}" for c in bench["cases"]}
    ax.set_xticks(range(len(cases)), [shapes[c] for c in cases], fontsize=9)
    ax.set_ylabel("TB/s (bytes moved / time)")
    ax.set_title(f"matvec versions on the {bench['device']['name']} (CUDA-graph replay, median)")
    ax.legend(fontsize=8, ncol=3, loc="upper left")
    ax.set_ylim(0, copy_bps / 1e12 * 1.3)
    plt.tight_layout()
    plt.show()

# %% [markdown]
# Two regimes are visible.
#
# - **The LM head** (248,320 x 1024, 509 MB) is **bandwidth-bound**: there are enough bytes to keep every SM's
#   memory pipeline full for 170 us, and a few microseconds of start-up and tail are noise. From v4 on the kernels
#   stream it at over 90% of the copy bandwidth, and the later versions reach it (the last few percent came from
#   issuing every load of a row before waiting on any, and running exactly one resident wave of blocks).
# - **The 1024-row matrices** (out_proj, o_proj, down: 4-7 MB) are **latency-bound**: 4.2 MB is 1.4 us of bytes at
#   3 TB/s, but a kernel pays a few microseconds whatever it reads: the launch and the ramp-up of its blocks (~1-2 us
#   even inside a CUDA graph), the first DRAM round trip (~1 us), the tail of the slowest warp, and with only 1024
#   rows there are too few independent loads to cover the latency. No version gets these near the copy line; the
#   later versions gain by splitting each row over several warps ("split-K") so more bytes are in flight.
#
# The table puts numbers on it: the bytes-time at copy speed, the fastest measured kernel, and the difference,
# a fixed cost of a few microseconds per launch. (A matvec can edge past 100% of the copy: a copy reads and writes
# every byte, a matvec almost only reads.)

# %%
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

# %% [markdown]
# Batch-1 decode is 135 launches of such kernels per token in the next notebooks' layered decoder, most of them
# small: their fixed costs add up, and on top of them comes the host's cost of launching each one. Removing both is
# what the megakernel is for.
#
# ## What's next
#
# [05 · Per-layer kernels](05_per_layer_kernels.ipynb) builds the other kernels of a decode step on these matvecs:
# the fused norm + matvec variants, the Gated DeltaNet step, attention and the LM head with its argmax, each checked
# against its reference op with a stated tolerance.
