"""Per-kernel GPU benchmark: every matvec version and fused variant at the Qwen3.5-0.8B shapes, against torch.

    python -m megakernel.bench.kernels --out data/results [--quick] [--cases lm_head,down] [--versions 4,5,7]
    python -m megakernel.bench.kernels --sweep [--quick] [--cases ...]   # launch configurations of v6/v7

What it does (a GPU is required; on a CPU-only machine, or with NUMBA_ENABLE_CUDASIM=1, it exits with a message):

1. **Copy bandwidth**: ``dst.copy_(src)`` on 1 GiB buffers, each copy between CUDA events, bytes read + written,
   median of the reps.  This is the ceiling a memory-bound kernel is judged against.
2. **Cases**: every matvec shape of one decode step, as the layered decoder launches them (matrices read
   together are concatenated: DeltaNet in_proj is [qkv; z; b; a] = 8224 x 1024, attention is [q|gate; k; v] =
   5120 x 1024, the MLP gate and up are one 7168 x 1024 matrix whose halves ``norm_swiglu_matvec`` reads), plus the
   248320 x 1024 LM head.  On each: matvec v1..v7, the fused kernel(s) the decoder uses for that shape (version 7,
   the decoder's, and the version-5 originals, marked [v5]), and torch
   ``F.linear`` with bf16 weights, once with the vector in bf16 (torch's natural path, one cuBLAS gemv) and once
   with fp32 in and out (two extra cast kernels).
3. **Check first**: every kernel's output is compared with a float64 torch oracle on the same bf16 weights
   (``reference.check``, tolerance 1e-5 relative for fp32 kernels, 1e-2 for torch's bf16 output) before it is
   timed; a kernel that fails is reported FAILED and never gets a speed.
4. **Timing, two ways, same for every kernel and for torch** (all on torch's stream, via ``launch_stream()``):
   (a) *launch*: bursts of 10 back-to-back launches from Python between two CUDA events, per-launch time =
   burst time / 10.  This includes the host cost of a launch (Numba: tens of microseconds) whenever the kernel is
   shorter than that: it is what a Python decode loop pays.  (b) *graph*: a burst of launches captured once in a
   CUDA graph (after a warm-up outside the capture, so compilation and cuBLAS setup happen first) and replayed
   between CUDA events; per-launch time = replay time / launches.  This is GPU time plus the graph's
   kernel-to-kernel gap, what a graph-captured decoder pays.  **The comparison with torch and the GB/s use (b).**
   Each sample is one burst; reported: median, and the p10-p90 spread over the samples.
5. **L2**: the H100 has 50 MB of L2, which would hold a small matrix between reps and report cache bandwidth.
   Cases whose weights are smaller than twice the L2 rotate over enough copies of the weights (different
   addresses, same values) that 2 x L2 of other weights pass between two uses of one copy.  The LM head (509 MB)
   needs no rotation.  The few-KB vectors stay in L2, as they do in real decode.

Reported per kernel: median us (graph and launch), p10-p90, GB/s = (bytes of W + vectors read + written) / median
graph time, the fraction of the measured copy bandwidth, and the speed-up over torch's bf16 ``F.linear`` on the
same weights (> 1: faster than torch).  Targets (from the project brief): LM-head matvec >= 90 % of copy bandwidth
(>= 2.7 TB/s on an H100), and every shape at least as fast as torch timed the same way: a PASS/MISS summary
closes the table.  JSON goes to ``--out/kernels_<device>_<date>.json`` (device, versions, settings, all rows).
A full run is expected to take 1-2 minutes on an H100 (``--quick``: under 1), most of it compilation.

``--sweep`` times the v6/v7-family kernels over launch configurations (warps per block, G warps per row, x staged
or read through L1) next to torch, v4/v5 and the version-5 fused kernels, after an empty-kernel calibration (the
floor a launch inside a CUDA graph pays: ~1.2 us on an H100), and writes ``sweep_<device>.json``.  It is how v7's
plan was chosen; it prints every configuration, then the best eight per shape.
"""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from reference import cli

from . import run_info

from megakernel import launch

DEVICE = "cuda"
EPS = 1e-6
TOL_KERNEL = 1e-5
TOL_TORCH_BF16 = 1e-2
BURST = 10
COPY_BYTES = 1 << 30
L2_FALLBACK = 50 * 2**20
MAX_ROTATION = 64
LM_HEAD_TARGET_FRACTION = 0.90
LM_HEAD_TARGET_BPS = 2.7e12


@dataclass
class Case:
    name: str
    n: int  # rows of the matrix the versions and torch multiply by
    k: int
    fused: tuple  # fused kernels timed on this shape
    decoder: str  # the kernel the layered decoder launches for this shape
    note: str = ""


CASES = [
    Case("in_proj", 6144 + 2048 + 16 + 16, 1024, ("norm_matvec",), "norm_matvec",
         "DeltaNet in_proj [qkv; z; b; a] (one matrix in the decoder)"),
    Case("out_proj", 1024, 2048, ("gated_fused", "gated_split"), "gated_fused",
         "DeltaNet out_proj, gated RMSNorm over 16 heads x 128"),
    Case("attn_qkv", 4096 + 512 + 512, 1024, ("norm_matvec",), "norm_matvec",
         "attention [q|gate; k; v] (one matrix in the decoder)"),
    Case("o_proj", 1024, 2048, ("matvec_residual",), "matvec_residual", "attention o_proj + residual"),
    Case("mlp_gate_up", 2 * 3584, 1024, ("norm_swiglu",), "norm_swiglu",
         "MLP gate and up (3584 x 1024 each) as one 7168 x 1024 matrix"),
    Case("mlp_down", 1024, 3584, ("matvec_residual",), "matvec_residual", "MLP down + residual"),
    Case("lm_head", 248320, 1024, ("lm_head_argmax", "sample_gumbel"), "lm_head_argmax",
         "tied LM head: final norm + matvec + argmax; Gumbel sampling over its logits"),
]
DELTANET_HEADS, DELTANET_HEAD_DIM = 16, 128


# ------------------------------------------------------------------------------------------------ environment
def gpu_problem() -> str | None:
    """Why this machine cannot run the benchmark, or None (one line)."""
    return launch.timing_problem("the kernel benchmark", "NUMBA_ENABLE_CUDASIM=1 python -m pytest "
                                 "tests/test_kernels_matvec.py tests/test_kernels_lm_head.py")






def sync() -> None:
    torch.cuda.synchronize()


def new_event():
    return torch.cuda.Event(enable_timing=True)


def l2_bytes() -> int:
    try:
        return int(torch.cuda.get_device_properties(0).L2_cache_size) or L2_FALLBACK
    except (AttributeError, RuntimeError):
        return L2_FALLBACK


# ------------------------------------------------------------------------------------------------ timing
def spread(samples_us: list[float]) -> dict:
    a = np.asarray(samples_us, dtype=np.float64)
    return {"median": float(np.median(a)), "p10": float(np.percentile(a, 10)), "p90": float(np.percentile(a, 90)),
            "samples": int(a.size)}


def time_launches(fn, nrot: int, budget_s: float, max_samples: int = 200) -> dict:
    """(a) bursts of BURST back-to-back launches between events; us per launch."""
    t0 = time.perf_counter()  # calibrate: one burst
    for i in range(BURST):
        fn(i % nrot)
    sync()
    per_burst = max(time.perf_counter() - t0, 1e-6)
    samples = int(min(max_samples, max(5, budget_s / per_burst)))
    events = [(new_event(), new_event()) for _ in range(samples)]
    i = 0
    for start, end in events:
        start.record()
        for _ in range(BURST):
            fn(i % nrot)
            i += 1
        end.record()
    sync()
    return spread([s.elapsed_time(e) * 1e3 / BURST for s, e in events])


_CAPTURE_STREAM = None


def capture_stream():
    """One stream for all warm-ups and captures: Numba's handle on it and every kernel's launch configuration
    for it are created during the warm-up, so inside the capture a launch makes no other CUDA call."""
    global _CAPTURE_STREAM
    if _CAPTURE_STREAM is None:
        _CAPTURE_STREAM = torch.cuda.Stream()
    return _CAPTURE_STREAM


def capture_graph(fn, launches: int, nrot: int):
    """A CUDA graph of ``launches`` calls fn(0), fn(1), ... (rotating).  Warm-up on the capture stream first
    (torch's recipe: lazy cuBLAS / Numba setup must not happen inside the capture)."""
    cs = capture_stream()
    cs.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(cs):
        for i in range(min(nrot, 3)):
            fn(i)
    torch.cuda.current_stream().wait_stream(cs)
    sync()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=cs, capture_error_mode="relaxed"):
        for i in range(launches):
            fn(i % nrot)
    return graph


def time_graph(fn, nrot: int, est_us: float, budget_s: float, max_samples: int = 200) -> dict:
    """(b) replays of a captured burst between events; us per launch."""
    launches = max(BURST, nrot) if est_us < 2000 else max(1, min(nrot, BURST))
    launches = max(1, min(launches, MAX_ROTATION, int(50_000 / max(est_us, 1.0)) or 1))
    graph = capture_graph(fn, launches, nrot)
    graph.replay()
    sync()
    t0 = time.perf_counter()
    graph.replay()
    sync()
    per_replay = max(time.perf_counter() - t0, 1e-6)
    samples = int(min(max_samples, max(10, budget_s / per_replay)))
    events = [(new_event(), new_event()) for _ in range(samples)]
    for start, end in events:
        start.record()
        graph.replay()
        end.record()
    sync()
    out = spread([s.elapsed_time(e) * 1e3 / launches for s, e in events])
    out["launches_per_graph"] = launches
    del graph
    return out


def measure_copy_bandwidth(reps: int) -> dict:
    src = torch.empty(COPY_BYTES // 4, dtype=torch.float32, device=DEVICE).normal_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    events = [(new_event(), new_event()) for _ in range(reps)]
    for start, end in events:
        start.record()
        dst.copy_(src)
        end.record()
    sync()
    us = spread([s.elapsed_time(e) * 1e3 for s, e in events])
    del src, dst
    torch.cuda.empty_cache()
    return {"bytes": 2 * COPY_BYTES, "us": us, "bytes_per_s": 2 * COPY_BYTES / (us["median"] * 1e-6)}


# ------------------------------------------------------------------------------------------------ cases
@dataclass
class Item:
    """One timed kernel: ``run(i)`` launches it on rotation copy i."""

    kernel: str
    run: object
    check: object  # () -> (ok, rel, message); called once before timing
    nbytes: int
    is_torch: bool = False
    detail: str = ""
    plan: object = None  # () -> the launch plan once the kernel has run (for the report), or None
    result: dict = field(default_factory=dict)


FUSED_VERSIONS = (7, 5)  # the fused kernels on matvec v7 (the decoder's) and the originals, for comparison


def fused_label(name: str, version: int) -> str:
    return name if version == 7 else f"{name} [v5]"


def _matvec_plan(MV, version, n, k):
    lau = MV._LAUNCHERS.get((version, n, k, None))
    return getattr(lau, "plan", None) or (getattr(lau, "grid", None), getattr(lau, "block", None))


def _kd(t):
    return launch.as_kernel_array(t)


def build_items(case: Case, nrot: int, versions_: list[int], gen: torch.Generator) -> tuple[list[Item], dict]:
    """Buffers for one case and the list of kernels to check and time on it."""
    from megakernel.kernels import fused_matvec as FM
    from megakernel.kernels import lm_head as LH
    from megakernel.kernels import matvec as MV
    from reference import ops
    from reference.check import CheckFailed, check

    n, k = case.n, case.k
    W0 = (torch.randn(n, k, device=DEVICE, generator=gen) / math.sqrt(k)).to(torch.bfloat16)
    Ws = [W0] + [W0.clone() for _ in range(nrot - 1)]
    Wk = [_kd(launch.words(W).view(-1)) for W in Ws]
    wbytes = n * k * 2
    x = torch.randn(k, device=DEVICE, generator=gen)
    xb = x.to(torch.bfloat16)
    kx = _kd(x)
    y = torch.empty(n, device=DEVICE)
    ky = _kd(y)
    W64 = W0.double()
    keep = {"Ws": Ws, "Wk": Wk}  # keep buffers alive while the case runs

    def checker(name, ref_fn, out_fn, tol=TOL_KERNEL, before=None, extra=None):
        def run_check():
            if before is not None:
                before()
            ref = ref_fn()
            out = out_fn()
            sync()
            try:
                res = check(name, ref.cpu(), out.double().cpu(), tol, verbose=False)
            except CheckFailed as e:
                return False, None, str(e)
            if extra is not None:
                msg = extra()
                if msg:
                    return False, res.rel, msg
            return True, res.rel, ""
        return run_check

    items: list[Item] = []
    vec_bytes = 4 * (k + n)
    ref_plain = lambda: W64 @ x.double()  # noqa: E731

    for v in versions_:
        def run(i, v=v):
            MV.matvec(Wk[i], kx, ky, n, k, version=v)

        def out(v=v):
            launch.poison_(y)
            MV.matvec(Wk[0], kx, ky, n, k, version=v)
            return y

        items.append(Item(f"matvec v{v}", run, checker(f"v{v}", ref_plain, out), wbytes + vec_bytes,
                          detail=MV.DESCRIPTIONS[v], plan=lambda v=v: _matvec_plan(MV, v, n, k)))

    # torch baselines on the same weights
    items.append(Item("torch F.linear bf16", lambda i: F.linear(xb, Ws[i]),
                      checker("torch bf16", lambda: W64 @ xb.double(), lambda: F.linear(xb, Ws[0]),
                              TOL_TORCH_BF16),
                      wbytes + 2 * (k + n), is_torch=True, detail="x, y bf16: cuBLAS gemv"))
    items.append(Item("torch F.linear bf16, fp32 in/out", lambda i: F.linear(x.to(torch.bfloat16), Ws[i]).float(),
                      checker("torch bf16 fp32-io", lambda: W64 @ xb.double(),
                              lambda: F.linear(x.to(torch.bfloat16), Ws[0]).float(), TOL_TORCH_BF16),
                      wbytes + vec_bytes, is_torch=True, detail="cast x to bf16, gemv, cast y to fp32"))

    # fused variants
    h = torch.randn(k, device=DEVICE, generator=gen) * 2 + 0.3
    nw = torch.randn(k, device=DEVICE, generator=gen) * 0.2
    kh, knw = _kd(h), _kd(nw)
    eps32 = EPS

    for fv in FUSED_VERSIONS:
        if "norm_matvec" not in case.fused:
            break

        def run(i, fv=fv):
            FM.norm_matvec(kh, knw, Wk[i], ky, n, k, eps32, version=fv)

        def out(fv=fv):
            launch.poison_(y)
            FM.norm_matvec(kh, knw, Wk[0], ky, n, k, eps32, version=fv)
            return y

        items.append(Item(fused_label("norm_matvec", fv), run,
                          checker("norm_matvec", lambda: W64 @ ops.rms_norm(h, nw, EPS).double(), out),
                          wbytes + 4 * (2 * k + n), detail="y = W @ rms_norm(h)",
                          plan=lambda fv=fv: fv == 7 and FM.launcher_plan("norm_matvec", n, k)))

    if "norm_swiglu" in case.fused:
        half = n // 2
        gate_words = half * k // 2
        Wg = [_kd(launch.words(W).view(-1)[:gate_words]) for W in Ws]
        Wu = [_kd(launch.words(W).view(-1)[gate_words:]) for W in Ws]
        keep["swiglu"] = (Wg, Wu)
        act = torch.empty(half, device=DEVICE)
        kact = _kd(act)

        def ref():
            xn = ops.rms_norm(h, nw, EPS).double()
            return F.silu(W64[:half] @ xn) * (W64[half:] @ xn)

        for fv in FUSED_VERSIONS:
            def run(i, fv=fv):
                FM.norm_swiglu_matvec(kh, knw, Wg[i], Wu[i], kact, half, k, eps32, version=fv)

            def out(fv=fv):
                launch.poison_(act)
                FM.norm_swiglu_matvec(kh, knw, Wg[0], Wu[0], kact, half, k, eps32, version=fv)
                return act

            items.append(Item(fused_label("norm_swiglu_matvec", fv), run, checker("norm_swiglu", ref, out),
                              wbytes + 4 * (2 * k + half), detail="act = silu(Wg @ x) * (Wu @ x), x = rms_norm(h)",
                              plan=lambda fv=fv: fv == 7 and FM.launcher_plan("norm_swiglu_matvec", half, k)))

    if "matvec_residual" in case.fused:
        hres = torch.zeros(n, device=DEVICE)
        khres = _kd(hres)
        h0 = torch.randn(n, device=DEVICE, generator=gen)

        for fv in FUSED_VERSIONS:
            def run(i, fv=fv):
                FM.matvec_residual(Wk[i], kx, khres, n, k, version=fv)

            def out(fv=fv):
                hres.copy_(h0)
                FM.matvec_residual(Wk[0], kx, khres, n, k, version=fv)
                return hres

            items.append(Item(fused_label("matvec_residual", fv), run,
                              checker("matvec_residual", lambda: h0.double() + W64 @ x.double(), out),
                              wbytes + 4 * (k + 2 * n), detail="h += W @ x",
                              plan=lambda fv=fv: fv == 7 and FM.launcher_plan("matvec_residual", n, k)))

    if "gated_fused" in case.fused or "gated_split" in case.fused:
        heads, hd = DELTANET_HEADS, DELTANET_HEAD_DIM
        assert heads * hd == k, (heads, hd, k)
        o = torch.randn(k, device=DEVICE, generator=gen) * 0.3
        z = torch.randn(k, device=DEVICE, generator=gen) * 2
        gw = torch.randn(hd, device=DEVICE, generator=gen) * 0.2 + 1
        scratch = torch.empty(k, device=DEVICE)
        hres = torch.zeros(n, device=DEVICE)
        h0 = torch.randn(n, device=DEVICE, generator=gen)
        ko, kz, kgw, kscr, khres = _kd(o), _kd(z), _kd(gw), _kd(scratch), _kd(hres)

        def ref():
            xg = ops.gated_rms_norm(o.view(heads, hd), z.view(heads, hd), gw, EPS).reshape(-1).double()
            return h0.double() + W64 @ xg

        for fused, fv in ((True, 7), (True, 5), (False, 7)):
            label = "gated_norm_matvec_residual" + (" (fused)" if fused else " (split: 2 launches)")
            label = fused_label(label, fv)
            if ("gated_fused" if fused else "gated_split") not in case.fused:
                continue

            def run(i, fused=fused, fv=fv):
                FM.gated_norm_matvec_residual(ko, kz, kgw, Wk[i], khres, n, heads, hd, eps32, fused=fused,
                                              scratch=kscr, version=fv)

            def out(fused=fused, fv=fv):
                hres.copy_(h0)
                FM.gated_norm_matvec_residual(ko, kz, kgw, Wk[0], khres, n, heads, hd, eps32, fused=fused,
                                              scratch=kscr, version=fv)
                return hres

            extra = 0 if fused else 8 * k
            items.append(Item(label, run, checker(label, ref, out), wbytes + 4 * (2 * k + hd + 2 * n) + extra,
                              detail="h += W @ gated_rms_norm(o, z)",
                              plan=lambda fused=fused, fv=fv: fused and fv == 7 and FM.launcher_plan(
                                  "gated_norm_matvec_residual", n, k)))

    if "lm_head_argmax" in case.fused:
        best = LH.new_best(DEVICE)
        kbest = _kd(best)
        logits = torch.empty(n, device=DEVICE)
        klog = _kd(logits)

        def token_ok():
            got, want = LH.read_token(best), int(torch.argmax(logits))
            return "" if got == want else f"argmax {got} != torch.argmax {want}"

        for fv in FUSED_VERSIONS:
            def run(i, fv=fv):
                LH.lm_head_argmax(kh, knw, Wk[i], klog, n, k, eps32, kbest, version=fv)

            def out(fv=fv):
                launch.poison_(logits)
                LH.lm_head_argmax(kh, knw, Wk[0], klog, n, k, eps32, kbest, version=fv)
                return logits

            items.append(Item(fused_label("lm_head_argmax", fv), run,
                              checker("lm_head", lambda: W64 @ ops.rms_norm(h, nw, EPS).double(), out,
                                      extra=token_ok),
                              wbytes + 4 * (2 * k + n) + 32, detail="logits = W @ rms_norm(h) + argmax, one launch",
                              plan=lambda fv=fv: fv == 7 and getattr(LH._LAUNCHERS.get(("lm_head", n, k, 7, None)),
                                                                      "plan", None)))
        keep["lm"] = (best, logits)

    if "sample_gumbel" in case.fused:
        sbest = LH.new_best(DEVICE)
        ksb = _kd(sbest)
        slog = torch.randn(n, device=DEVICE, generator=gen) * 2
        kslog = _kd(slog)

        def run(i):
            LH.sample_gumbel(kslog, n, 0.8, 1234, i, ksb)

        def sample_check():
            tokens = []
            for _ in range(2):
                LH.sample_gumbel(kslog, n, 0.8, 1234, 7, ksb)
                tokens.append(LH.read_token(sbest))
            lg = slog.cpu().numpy() * np.float32(1 / 0.8)
            want = int(np.argmax(lg + LH.gumbel_noise_host(1234, 7, n)))
            if tokens[0] != tokens[1]:
                return False, None, f"same (seed, step) gave {tokens}"
            if tokens[0] != want:
                return False, None, f"draw {tokens[0]} != host Gumbel-max {want}"
            return True, 0.0, ""

        items.append(Item("sample_gumbel (T=0.8)", run, sample_check, 4 * n + 32, detail="Gumbel-max over V logits"))
        keep["sample"] = (sbest, slog)

    return items, keep


# ------------------------------------------------------------------------------------------------ run + report
def fmt_us(d: dict | None) -> str:
    if not d:
        return "-"
    return f"{d['median']:9.2f} [{d['p10']:.2f}-{d['p90']:.2f}]"


def run_case(case: Case, args, copy_bps: float, gen: torch.Generator, log) -> list[dict]:
    wbytes = case.n * case.k * 2
    nrot = 1 if wbytes >= 2 * l2_bytes() else min(MAX_ROTATION, math.ceil(2 * l2_bytes() / wbytes))
    items, keep = build_items(case, nrot, args.versions, gen)
    budget = 0.04 if args.quick else 0.15
    rows = []
    for it in items:
        row = {"case": case.name, "shape": [case.n, case.k], "kernel": it.kernel, "detail": it.detail,
               "torch": it.is_torch, "bytes": it.nbytes, "rotation": nrot, "check": None, "rel_err": None,
               "launch_us": None, "graph_us": None, "gbps": None, "fraction_of_copy": None, "speedup_vs_torch": None}
        try:
            ok, rel, msg = it.check()
            row["rel_err"] = rel
            row["check"] = "ok" if ok else f"FAILED: {msg}"
            if ok:
                row["launch_us"] = time_launches(it.run, nrot, budget)
                try:
                    row["graph_us"] = time_graph(it.run, nrot, row["launch_us"]["median"], budget)
                except Exception as e:  # noqa: BLE001 - report, keep the launch timing
                    row["graph_error"] = f"{type(e).__name__}: {e}"
                plan = it.plan() if it.plan else None
                if plan:
                    row["plan"] = list(plan)
                    row["detail"] += f"; grid {plan[0]} x {plan[1]}" + (f", G {plan[2]}" if len(plan) > 2 else "")
                t = (row["graph_us"] or row["launch_us"])["median"] * 1e-6
                row["gbps"] = it.nbytes / t / 1e9
                row["fraction_of_copy"] = it.nbytes / t / copy_bps
        except Exception as e:  # noqa: BLE001 - one broken kernel must not stop the table
            row["check"] = f"ERROR: {type(e).__name__}: {e}"
        rows.append(row)
    # speed-up over torch bf16 F.linear, same timing mode
    base = next((r for r in rows if r["kernel"] == "torch F.linear bf16" and r["gbps"]), None)
    for r in rows:
        if base and r["gbps"] and not r["kernel"].startswith("sample_gumbel"):
            mode = "graph_us" if (r["graph_us"] and base["graph_us"]) else "launch_us"
            r["speedup_vs_torch"] = base[mode]["median"] / r[mode]["median"]
            r["speedup_mode"] = mode.split("_")[0]
    del items, keep
    torch.cuda.empty_cache()
    return rows


def print_table(rows: list[dict], log) -> None:
    head = (f"{'case':<12} {'kernel':<48} {'check':<8} {'graph us  [p10-p90]':>26} {'launch us  [p10-p90]':>26} "
            f"{'GB/s':>7} {'%copy':>6} {'vs torch':>8}")
    log(head)
    log("-" * len(head))
    for r in rows:
        check = "ok" if r["check"] == "ok" else ("FAILED" if str(r["check"]).startswith("FAILED") else "ERROR")
        gb = f"{r['gbps']:7.0f}" if r["gbps"] else "      -"
        frac = f"{100 * r['fraction_of_copy']:5.1f}%" if r["fraction_of_copy"] else "     -"
        sp = f"{r['speedup_vs_torch']:7.2f}x" if r["speedup_vs_torch"] else "       -"
        plan = " plan " + ",".join(str(v) for v in r["plan"]) if r.get("plan") else ""
        log(f"{r['case']:<12} {r['kernel']:<48} {check:<8} {fmt_us(r['graph_us']):>26} {fmt_us(r['launch_us']):>26} "
            f"{gb} {frac} {sp}{plan}")
        if check != "ok":
            log(f"{'':<12}   {r['check']}")
        if r.get("graph_error"):
            log(f"{'':<12}   graph capture failed ({r['graph_error']}); launch timing used")


def targets(rows: list[dict], copy_bps: float) -> list[dict]:
    out = []

    def find(case, kernel):
        return next((r for r in rows if r["case"] == case and r["kernel"] == kernel), None)

    from megakernel.kernels.matvec import DEFAULT_VERSION

    default = f"matvec v{DEFAULT_VERSION}"
    for kernel in ("lm_head_argmax", default):
        r = find("lm_head", kernel)
        if r is None:
            continue
        bps = r["gbps"] * 1e9 if r["gbps"] else None
        out.append({"target": f"LM head {kernel} >= {100 * LM_HEAD_TARGET_FRACTION:.0f}% of copy bandwidth and "
                              f">= {LM_HEAD_TARGET_BPS / 1e12:.1f} TB/s",
                    "value": f"{bps / 1e12:.2f} TB/s = {100 * bps / copy_bps:.1f}% of copy" if bps else r["check"],
                    "pass": bool(bps and bps >= LM_HEAD_TARGET_FRACTION * copy_bps and bps >= LM_HEAD_TARGET_BPS)})
    names = {"gated_fused": "gated_norm_matvec_residual (fused)", "norm_swiglu": "norm_swiglu_matvec"}
    for case in CASES:
        for kernel in (names.get(case.decoder, case.decoder), default):
            r = find(case.name, kernel)
            if r is None:
                continue
            sp = r["speedup_vs_torch"]
            out.append({"target": f"{case.name}: {kernel} at least as fast as torch F.linear bf16",
                        "value": f"{sp:.2f}x torch ({r.get('speedup_mode', '?')})" if sp else r["check"],
                        "pass": bool(sp and sp >= 1.0)})
    return out


# ------------------------------------------------------------------------------------------------ sweep
SWEEP_WARPS = (4, 8, 16)


def _sweep_g(k: int, warps: int) -> list[int]:
    """G values worth timing for a row length: from the minimum (<= 4 pieces per lane) to one chunk per warp."""
    from megakernel.kernels import matvec as MV

    chunks = MV.cdiv(k // 8, 32)
    out, g = [], MV.min_parts(k)
    while g <= min(chunks, warps):
        if warps % g == 0:
            out.append(g)
        g *= 2
    return out


def calibrate(log) -> list[dict]:
    """Graph time of an empty Numba kernel (1 x 32 and 264 x 512 threads) and of a tiny torch op: the floor
    every kernel in a CUDA graph pays."""
    from numba import cuda

    from megakernel.kernels import matvec as MV

    @cuda.jit
    def empty(a):
        if cuda.threadIdx.x == 1 << 20:
            a[0] = 1

    buf = torch.zeros(4, device=DEVICE)
    kb = _kd(buf)
    rows = []
    for grid, block in ((1, 32), (2 * MV.sm_count(), 512)):
        lau = MV.Launcher(empty, grid, block)
        t = time_graph(lambda i: lau(kb), 1, 5.0, 0.05)
        rows.append({"kernel": f"empty numba kernel {grid} x {block}", "graph_us": t})
    t = time_graph(lambda i: buf.add_(1.0), 1, 5.0, 0.05)
    rows.append({"kernel": "torch buf.add_(1) (4 floats)", "graph_us": t})
    for r in rows:
        log(f"calibration: {r['kernel']:<40} {fmt_us(r['graph_us'])} us")
    return rows


def sweep_case(case: Case, gen: torch.Generator, log, budget: float) -> list[dict]:
    """Time the v6-family kernels of one shape over launch configurations (warps per block, G, variant), next to
    torch, v4/v5 and the version-5 fused kernels.  Every configuration is checked before it is timed."""
    from megakernel.kernels import fused_matvec as FM
    from megakernel.kernels import lm_head as LH
    from megakernel.kernels import matvec as MV
    from reference import ops
    from reference.check import CheckFailed, check

    n, k = case.n, case.k
    wbytes = n * k * 2
    nrot = 1 if wbytes >= 2 * l2_bytes() else min(MAX_ROTATION, math.ceil(2 * l2_bytes() / wbytes))
    W0 = (torch.randn(n, k, device=DEVICE, generator=gen) / math.sqrt(k)).to(torch.bfloat16)
    Ws = [W0] + [W0.clone() for _ in range(nrot - 1)]
    Wk = [_kd(launch.words(W).view(-1)) for W in Ws]
    W64 = W0.double()
    x = torch.randn(k, device=DEVICE, generator=gen)
    xb = x.to(torch.bfloat16)
    y = torch.empty(n, device=DEVICE)
    kx, ky = _kd(x), _kd(y)
    h = torch.randn(k, device=DEVICE, generator=gen) * 2 + 0.3
    nw = torch.randn(k, device=DEVICE, generator=gen) * 0.2
    kh, knw = _kd(h), _kd(nw)
    rows = []

    def run(label, fn, ref_fn, out_fn, plan_fn=lambda: None, nbytes=wbytes):
        row = {"case": case.name, "kernel": label, "graph_us": None, "check": "ok", "plan": None}
        try:
            ref = ref_fn()
            out = out_fn()
            sync()
            check(label, ref.cpu(), out.double().cpu(), TOL_TORCH_BF16 if label.startswith("torch") else TOL_KERNEL,
                  verbose=False)
            row["graph_us"] = time_graph(fn, nrot, 10.0, budget)
            row["plan"] = plan_fn()
            row["gbps"] = nbytes / (row["graph_us"]["median"] * 1e-6) / 1e9
        except CheckFailed as e:
            row["check"] = f"FAILED: {e}"
        except Exception as e:  # noqa: BLE001
            row["check"] = f"ERROR: {type(e).__name__}: {e}"
        rows.append(row)
        t = row["graph_us"]["median"] if row["graph_us"] else float("nan")
        note = "" if row["check"] == "ok" else row["check"]
        log(f"  {case.name:<12} {label:<58} {t:8.2f} us  {row['plan'] or ''} {note}")

    plain = lambda: W64 @ x.double()  # noqa: E731
    normed = lambda: W64 @ ops.rms_norm(h, nw, EPS).double()  # noqa: E731

    def poisoned_y():
        launch.poison_(y)

    run("torch F.linear bf16", lambda i: F.linear(xb, Ws[i]), lambda: W64 @ xb.double(), lambda: F.linear(xb, Ws[0]))
    for v in (4, 5):
        run(f"matvec v{v}", lambda i, v=v: MV.matvec(Wk[i], kx, ky, n, k, version=v), plain,
            lambda v=v: (poisoned_y(), MV.matvec(Wk[0], kx, ky, n, k, version=v), y)[2])
    big = case.name == "lm_head"
    warps = (8, 16) if big else SWEEP_WARPS
    for variant in (6, 7) + tuple(MV.SWEEP_KERNELS):
        configs = [None] + [(wb, g) for wb in warps for g in _sweep_g(k, wb) if not (big and g > 1)]
        if variant == 6:
            configs = [None]
        for cfg in configs:
            def fn(i, variant=variant, cfg=cfg):
                MV.matvec(Wk[i], kx, ky, n, k, version=variant, config=cfg)

            def out(variant=variant, cfg=cfg):
                poisoned_y()
                MV.matvec(Wk[0], kx, ky, n, k, version=variant, config=cfg)
                return y

            run(f"matvec {variant} cfg {cfg}", fn, plain, out,
                lambda variant=variant, cfg=cfg: MV._LAUNCHERS[(variant, n, k, cfg)].plan)

    fused_cfgs = [None] + [(wb, g) for wb in warps for g in _sweep_g(k, wb) if not (big and g > 1)]
    if "norm_matvec" in case.fused:
        for ver, cfgs in ((5, [None]), (7, fused_cfgs)):
            for cfg in cfgs:
                run(f"norm_matvec v{ver} cfg {cfg}",
                    lambda i, ver=ver, cfg=cfg: FM.norm_matvec(kh, knw, Wk[i], ky, n, k, EPS, version=ver, config=cfg),
                    normed, lambda ver=ver, cfg=cfg: (poisoned_y(), FM.norm_matvec(kh, knw, Wk[0], ky, n, k, EPS,
                                                                                   version=ver, config=cfg), y)[2],
                    lambda cfg=cfg: FM.launcher_plan("norm_matvec", n, k, cfg))
    if "norm_swiglu" in case.fused:
        half = n // 2
        gw = half * k // 2
        Wg = [_kd(launch.words(W).view(-1)[:gw]) for W in Ws]
        Wu = [_kd(launch.words(W).view(-1)[gw:]) for W in Ws]
        act = torch.empty(half, device=DEVICE)
        kact = _kd(act)

        def sref():
            xn = ops.rms_norm(h, nw, EPS).double()
            return F.silu(W64[:half] @ xn) * (W64[half:] @ xn)

        pair_cfgs = [None] + [(wb, 2 * g) for wb in SWEEP_WARPS for g in _sweep_g(k, wb) if 2 * g <= wb]
        for ver, cfgs in ((5, [None]), (7, pair_cfgs)):
            for cfg in cfgs:
                run(f"norm_swiglu_matvec v{ver} cfg {cfg}",
                    lambda i, ver=ver, cfg=cfg: FM.norm_swiglu_matvec(kh, knw, Wg[i], Wu[i], kact, half, k, EPS,
                                                                      version=ver, config=cfg),
                    sref, lambda ver=ver, cfg=cfg: (launch.poison_(act), FM.norm_swiglu_matvec(
                        kh, knw, Wg[0], Wu[0], kact, half, k, EPS, version=ver, config=cfg), act)[2],
                    lambda cfg=cfg: FM.launcher_plan("norm_swiglu_matvec", half, k, cfg))
    if "matvec_residual" in case.fused or "gated_fused" in case.fused:
        hres = torch.zeros(n, device=DEVICE)
        khres = _kd(hres)
        h0 = torch.randn(n, device=DEVICE, generator=gen)

        def reset():
            hres.copy_(h0)
    if "matvec_residual" in case.fused:
        for ver, cfgs in ((5, [None]), (7, fused_cfgs)):
            for cfg in cfgs:
                run(f"matvec_residual v{ver} cfg {cfg}",
                    lambda i, ver=ver, cfg=cfg: FM.matvec_residual(Wk[i], kx, khres, n, k, version=ver, config=cfg),
                    lambda: h0.double() + W64 @ x.double(),
                    lambda ver=ver, cfg=cfg: (reset(), FM.matvec_residual(Wk[0], kx, khres, n, k, version=ver,
                                                                          config=cfg), hres)[2],
                    lambda cfg=cfg: FM.launcher_plan("matvec_residual", n, k, cfg))
    if "gated_fused" in case.fused:
        heads, hd = DELTANET_HEADS, DELTANET_HEAD_DIM
        o = torch.randn(k, device=DEVICE, generator=gen) * 0.3
        z = torch.randn(k, device=DEVICE, generator=gen) * 2
        gwt = torch.randn(hd, device=DEVICE, generator=gen) * 0.2 + 1
        ko, kz, kgw = _kd(o), _kd(z), _kd(gwt)

        def gref():
            xg = ops.gated_rms_norm(o.view(heads, hd), z.view(heads, hd), gwt, EPS).reshape(-1).double()
            return h0.double() + W64 @ xg

        cfgs = [None] + [(wb, g) for wb in (8, 16) for g in _sweep_g(k, wb)]
        for ver, cs in ((5, [None]), (7, cfgs)):
            for cfg in cs:
                run(f"gated_norm_matvec_residual v{ver} cfg {cfg}",
                    lambda i, ver=ver, cfg=cfg: FM.gated_norm_matvec_residual(ko, kz, kgw, Wk[i], khres, n, heads, hd,
                                                                              EPS, version=ver, config=cfg),
                    gref, lambda ver=ver, cfg=cfg: (reset(), FM.gated_norm_matvec_residual(
                        ko, kz, kgw, Wk[0], khres, n, heads, hd, EPS, version=ver, config=cfg), hres)[2],
                    lambda cfg=cfg: FM.launcher_plan("gated_norm_matvec_residual", n, k, cfg))
    if "lm_head_argmax" in case.fused:
        best = LH.new_best(DEVICE)
        kbest = _kd(best)
        for ver, cfgs in ((5, [None]), (7, [None, (16, 1), (4, 1)])):
            for cfg in cfgs:
                def lh_out(ver=ver, cfg=cfg):
                    poisoned_y()
                    LH.lm_head_argmax(kh, knw, Wk[0], ky, n, k, EPS, kbest, version=ver, config=cfg)
                    sync()
                    if LH.read_token(best) != int(torch.argmax(y)):
                        raise RuntimeError("argmax mismatch")
                    return y

                run(f"lm_head_argmax v{ver} cfg {cfg}",
                    lambda i, ver=ver, cfg=cfg: LH.lm_head_argmax(kh, knw, Wk[i], ky, n, k, EPS, kbest, version=ver,
                                                                  config=cfg),
                    normed, lh_out,
                    lambda ver=ver, cfg=cfg: getattr(LH._LAUNCHERS.get(("lm_head", n, k, ver, cfg)), "plan", None))
    del Ws, Wk
    torch.cuda.empty_cache()
    return rows


def run_sweep(args) -> int:
    import numba

    numba.config.CUDA_LOW_OCCUPANCY_WARNINGS = 0
    warnings.filterwarnings("ignore", message="Grid size")
    started = time.perf_counter()
    log = lambda s="": print(s, flush=True)  # noqa: E731
    name = torch.cuda.get_device_name(0)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        log(f"sweep on {name}")
        doc = {"device": name, "calibration": calibrate(log), "rows": []}
        gen = torch.Generator(device=DEVICE).manual_seed(0)
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"sweep_{run_info.device_slug(name)}.json"
        for case in args.case_list:
            rows = sweep_case(case, gen, log, 0.03 if args.quick else 0.08)
            doc["rows"] += rows
            base = next((r for r in rows if r["kernel"].startswith("torch") and r["graph_us"]), None)
            ok = sorted((r for r in rows if r["graph_us"]), key=lambda r: r["graph_us"]["median"])
            log(f"== {case.name}: best 8 (torch {base['graph_us']['median']:.2f} us)" if base else case.name)
            for r in ok[:8]:
                log(f"   {r['graph_us']['median']:8.2f} us  {r['kernel']:<58} {r['plan']}")
            path.write_text(json.dumps(doc, indent=1, default=str))
        log(f"sweep: {time.perf_counter() - started:.0f} s; {path}")
    return 0


parser = cli.parser("megakernel.bench.kernels", __doc__)
parser.add_argument("--out", type=Path, default=Path("data/results"),
                    help="directory for the JSON, created if missing (default: %(default)s)")
parser.add_argument("--quick", action="store_true", help="fewer samples (about a third of the time)")
parser.add_argument("--cases", type=cli.name_list([c.name for c in CASES], "case"), default=None,
                    help=f"comma-separated subset of: {', '.join(c.name for c in CASES)} (default: all)")
parser.add_argument("--versions", default="1,2,3,4,5,6,7",
                    help="comma-separated matvec versions to time (default: all, %(default)s)")
parser.add_argument("--no-progress", action="store_true", help="no progress bar")
parser.add_argument("--sweep", action="store_true", help="time the v6-family kernels over launch configurations")


def check_args(a) -> None:
    from megakernel.kernels.matvec import VERSIONS

    a.case_list = [c for c in CASES if a.cases is None or c.name in a.cases]
    try:
        a.versions = sorted({int(v) for v in a.versions.split(",") if v.strip()})
    except ValueError:
        raise cli.UsageError(f"--versions: comma-separated integers from {sorted(VERSIONS)}, got {a.versions!r}") \
            from None
    if not a.versions or not set(a.versions) <= set(VERSIONS):
        raise cli.UsageError(f"--versions: choose from {sorted(VERSIONS)}, got {a.versions}")
    cli.output_directory("--out", a.out)
    problem = gpu_problem()
    if problem:
        raise cli.UsageError(problem)


@cli.command(parser, validate=check_args)
def main(args) -> int:
    if args.sweep:
        return run_sweep(args)
    import numba

    from megakernel.kernels import matvec as MV

    numba.config.CUDA_LOW_OCCUPANCY_WARNINGS = 0  # small grids are deliberate here (N = 1024 rows)
    warnings.filterwarnings("ignore", message="Grid size")
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None

    started = time.perf_counter()
    lines: list[str] = []

    def log(s=""):
        lines.append(s)
        print(s, flush=True)

    props = torch.cuda.get_device_properties(0)
    name = torch.cuda.get_device_name(0)
    stream = torch.cuda.Stream()  # a non-default stream: graph capture needs one, and launches order on it
    with torch.cuda.stream(stream):
        copy = measure_copy_bandwidth(reps=10 if args.quick else 30)
        copy_bps = copy["bytes_per_s"]
        log(f"device: {name} ({props.multi_processor_count} SMs, L2 {l2_bytes() / 2**20:.0f} MiB); "
            f"numba SMs {MV.sm_count()}")
        log(f"device copy bandwidth: {copy_bps / 1e12:.3f} TB/s (1 GiB copies, read + write, median of "
            f"{copy['us']['samples']}: {copy['us']['median']:.0f} us)")
        gen = torch.Generator(device=DEVICE).manual_seed(0)
        rows: list[dict] = []
        cases = args.case_list
        bar = tqdm(cases, desc="kernel bench", unit="case", disable=args.no_progress) if tqdm else cases
        for case in bar:
            if tqdm:
                bar.set_postfix_str(case.name)
            rows += run_case(case, args, copy_bps, gen, log)
    log()
    log("Times in microseconds per launch: graph = replayed CUDA graph (used for GB/s and the torch comparison), "
        "launch = back-to-back Python launches (includes host launch cost). vs torch = torch F.linear bf16 time / "
        "kernel time (> 1: faster).")
    print_table(rows, log)
    goals = targets(rows, copy_bps)
    log()
    log("Targets:")
    for g in goals:
        log(f"  {'PASS' if g['pass'] else 'MISS'}  {g['target']}: {g['value']}")
    failed = [r for r in rows if r["check"] != "ok"]
    if failed:
        log(f"{len(failed)} kernel(s) FAILED their check or errored: " + ", ".join(
            f"{r['case']}/{r['kernel']}" for r in failed))
    elapsed = time.perf_counter() - started
    log(f"total {elapsed:.0f} s")

    now = datetime.now(timezone.utc)
    doc = {
        "schema": 1, "kind": "kernels", "created": now.isoformat(timespec="seconds"),
        "device": {"name": name, "sms": props.multi_processor_count, "l2_bytes": l2_bytes(),
                   "memory_gib": round(props.total_memory / 2**30, 1), "capability": f"{props.major}.{props.minor}"},
        "versions": run_info.versions(("numba", "numba-cuda", "numpy")),
        "settings": {"quick": args.quick, "burst": BURST, "eps": EPS, "tol_kernel": TOL_KERNEL,
                     "tol_torch_bf16": TOL_TORCH_BF16, "cases": [c.name for c in args.case_list],
                     "versions": args.versions, "comparison_mode": "graph",
                     "plans": {"sm_count": MV.sm_count()}},
        "copy_bandwidth": copy,
        "cases": [{"name": c.name, "n": c.n, "k": c.k, "decoder_kernel": c.decoder, "note": c.note}
                  for c in args.case_list],
        "rows": rows,
        "targets": goals,
        "seconds": elapsed,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"kernels_{run_info.device_slug(name)}_{now.strftime('%Y-%m-%d')}.json"
    path.write_text(json.dumps(doc, indent=1))
    log(f"results: {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
