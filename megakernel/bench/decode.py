"""Decode and prefill benchmarks of every system side by side, each checked against the reference first.

    python -m megakernel.bench                                   # every system, synthetic 0.8B checkpoint
    python -m megakernel.bench --systems reference-graph,layered --reps 3
    python -m megakernel.bench --llama-json OUT/llama_bench.json # add llama.cpp's rows (tools/llama_cpp_peer.sh)
    python -m megakernel.bench --quick                           # a smoke run: 2 reps, tg32, contexts 16 and 512
    python -m megakernel.bench --list                            # the systems, and exit

Workloads (batch 1): ``tg128@N``: prefill a prompt of N random token ids (untimed), then time 128 greedy decode
steps (each step one forward of one token, argmax fed back), as llama-bench's ``tg128`` at depth N; ``ppN``: time
a prefill of N tokens (pp512 for every system with a prefill of its own; pp4096 and pp32768 for the kernel stages,
each length checked against the reference before it is timed, see ``systems.check_prefill``). Timing: a warm-up
run first, then ``torch.cuda.synchronize`` + ``perf_counter`` around each whole run, ``--reps`` runs; rows give
the median and the p10-p90 spread of tok/s. Every decode row reports
its fraction of the bandwidth floor: the bytes a decode step must move (``reference.budget.decode_budget`` at the
mean context of the run) over the H100's measured copy bandwidth (``--bandwidth`` to change it).

Systems (``megakernel/bench/systems.py``): llama.cpp (from a llama-bench JSON), megakernel, layered,
layered-graph, reference-graph, reference-compile, reference-eager, hf-loop-sdpa, hf-loop-eager,
hf-generate-sdpa, hf-generate-eager. Each is checked against the reference before it is timed (greedy tokens
and teacher-forced logits over ``--check-steps``; the torch and transformers rows through an fp32 twin, see
``bench_systems``); a system whose check fails is recorded as FAILED with the reason and never timed; one that
cannot run here is recorded with the reason.

Output, under ``--out`` (default ``data/results/``): ``bench_<device>_<date>.json`` (device, versions, settings,
the floor, every row including failures), written after every system (a run cut short keeps what finished) and
merged with an existing file of the same name (per system; ``--no-merge`` to overwrite); the chart
``bench_<device>.png`` and a copy ``bench_latest.png``. ``python -m megakernel.bench.results`` turns the JSON into
the README table (``--readme README.md`` here does the same at the end of the run).

Needs a CUDA GPU: on a machine without one it exits with a message (status 2) before loading anything.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from reference import cli

from . import run_info

from . import results as results_mod
from .systems import (
    DESCRIPTIONS, SYSTEM_NAMES, BenchContext, Unavailable, check_system, free_memory, llama_cpp_rows,
    parse_system_names,
    make_system, read_llama_bench_json, short_error,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TOKEN_ID_LIMIT = 248044  # random prompt ids stay below Qwen3.5's first special token (<|endoftext|>)
QUICK = dict(contexts=[16, 512], gen=32, prefill=[128], reps=2, check_steps=8)
DEFAULTS = dict(contexts=[16, 512, 4096], gen=128, prefill=[512, 4096, 32768], reps=5, check_steps=16)
EXIT_INTERRUPTED = 3


class BenchInterrupted(BaseException):
    """SIGTERM / Ctrl-C: stop, record what finished, write the results."""


@dataclass
class Settings:
    model: Path | None = None
    out: Path = PROJECT_ROOT / "data" / "results"
    systems: list[str] = field(default_factory=lambda: list(SYSTEM_NAMES))
    contexts: list[int] = field(default_factory=lambda: list(DEFAULTS["contexts"]))
    gen: int = DEFAULTS["gen"]
    prefill: list[int] = field(default_factory=lambda: list(DEFAULTS["prefill"]))  # an int is taken as [int]
    reps: int = DEFAULTS["reps"]
    check_steps: int = DEFAULTS["check_steps"]
    seed: int = 0
    bandwidth: float | None = None
    llama_json: Path | None = None
    quick: bool = False
    merge: bool = True
    readme: Path | None = None

    def __post_init__(self):
        if isinstance(self.prefill, int):
            self.prefill = [self.prefill] if self.prefill > 0 else []
        self.prefill = sorted(set(self.prefill))


# ------------------------------------------------------------------------------------------------ arithmetic
def prompt_ids(n: int, vocab_size: int, seed: int = 0) -> list[int]:
    """n random token ids below min(vocab, 248044), fixed by (seed, n): every system sees the same prompt."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + n)
    return torch.randint(0, min(vocab_size, TOKEN_ID_LIMIT), (n,), generator=gen).tolist()


def floor_seconds(config, context: int, tokens: int, bandwidth: float | None = None) -> float:
    """The bandwidth floor per decoded token over a run of ``tokens`` steps after ``context`` tokens: the mean of
    the floor at the first and the last step's context (the KV bytes grow linearly, so that is the exact mean)."""
    from reference.budget import H100_COPY_BANDWIDTH, decode_budget

    bw = bandwidth or H100_COPY_BANDWIDTH
    last = context + max(tokens, 1) - 1
    return 0.5 * (decode_budget(config, context).floor_seconds(bw) + decode_budget(config, last).floor_seconds(bw))


def fraction_of_floor(floor_s: float, seconds_per_token: float) -> float:
    """floor time / measured time per token (1.0 = at the floor)."""
    if not seconds_per_token > 0:
        raise ValueError(f"seconds per token must be positive, got {seconds_per_token}")
    return floor_s / seconds_per_token


def summarize(samples: list[tuple[float, int]], floor_s: float | None) -> dict:
    """Per-run (seconds, tokens) -> median / p10 / p90 tok/s, median ms/token, fraction of the floor."""
    tps = [n / s for s, n in samples]
    ms = [1e3 * s / n for s, n in samples]
    median, p10, p90 = results_mod.quantiles(tps)
    ms_med = statistics.median(ms)
    return dict(tok_s=median, tok_s_p10=p10, tok_s_p90=p90, ms_per_token=ms_med,
                samples_s=[round(s, 6) for s, _ in samples], samples_tokens=[n for _, n in samples],
                floor_ms_per_token=1e3 * floor_s if floor_s else None,
                fraction_of_floor=fraction_of_floor(floor_s, ms_med / 1e3) if floor_s else None)


# ------------------------------------------------------------------------------------------------ environment


def _shown_path(path) -> str:
    """A checkpoint path as recorded in results: relative to the project when inside it (no machine paths)."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)


def versions() -> dict:
    v = run_info.versions()
    try:
        v["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                                  text=True, timeout=10).stdout.strip() or "unknown"
    except Exception:  # noqa: BLE001
        v["git"] = "unknown"
    return v


def device_info(device: torch.device) -> dict:
    if device.type != "cuda":
        return {"name": "cpu", "detail": platform.processor() or platform.machine()}
    p = torch.cuda.get_device_properties(device)
    return {"name": torch.cuda.get_device_name(device), "sms": p.multi_processor_count,
            "memory_gib": round(p.total_memory / 2**30, 1), "capability": f"{p.major}.{p.minor}"}


def measure_copy_bandwidth(device: torch.device, nbytes: int = 1 << 30, reps: int = 10) -> float | None:
    """Device-to-device copy bandwidth (bytes read + written per second), as reference/budget.py defines it."""
    if device.type != "cuda":
        return None
    try:
        src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).normal_()
        dst = torch.empty_like(src)
        for _ in range(2):
            dst.copy_(src)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            dst.copy_(src)
        end.record()
        torch.cuda.synchronize()
        seconds = start.elapsed_time(end) / 1e3
        del src, dst
        free_memory()
        return 2 * nbytes * reps / seconds
    except Exception:  # noqa: BLE001 (informational only)
        return None


# ------------------------------------------------------------------------------------------------ the run
def _units(name: str, s: Settings) -> int:
    if name == "llama.cpp":
        return 1
    timed = len(s.contexts) * (s.reps + 1)
    has_prefill = name not in ("reference-graph", "reference-compile") and not name.startswith("hf-generate")
    kernel_stage = name in ("layered", "layered-graph") or name.startswith("persistent")
    lengths = len(s.prefill) if kernel_stage else min(len(s.prefill), 1)
    return 1 + timed + (lengths * (s.reps + 1) if has_prefill else 0)


def _row(system: str, workload: str, kind: str, context: int | None, tokens: int, **kw) -> dict:
    row = dict(system=system, workload=workload, kind=kind, context=context, tokens=tokens, status="ok",
               tok_s=None, tok_s_p10=None, tok_s_p90=None, ms_per_token=None, floor_ms_per_token=None,
               fraction_of_floor=None, launches_per_token=None, kernels_per_token=None, launches_note="unknown",
               checked="no", check="", error=None, note="")
    row.update(kw)
    return row


def _workloads(s: Settings) -> list[tuple[str, str, int | None, int]]:
    out = [(f"tg{s.gen}@{c}", "decode", c, s.gen) for c in s.contexts]
    out += [(f"pp{n}", "prefill", 0, n) for n in s.prefill]
    return out


class Bench:
    """Runs the systems one after another; ``results`` is the JSON document (updated as rows come in)."""

    def __init__(self, settings: Settings, device: torch.device, progress: bool = True):
        from reference import Qwen35Config

        self.s, self.device = settings, device
        self.config = Qwen35Config.from_pretrained(settings.model)
        self.bandwidth = settings.bandwidth
        from reference.budget import H100_COPY_BANDWIDTH

        bw = settings.bandwidth or H100_COPY_BANDWIDTH
        info = device_info(device)
        now = datetime.now(timezone.utc)
        synthetic = (Path(settings.model) / "config.json").is_file() and "synthetic" in Path(settings.model).name
        floors = {str(c): floor_seconds(self.config, c, settings.gen, bw) for c in settings.contexts}
        from reference.budget import decode_budget

        per_position = decode_budget(self.config, 1).total_bytes - decode_budget(self.config, 0).total_bytes
        self.results = dict(
            schema=results_mod.SCHEMA, device=info["name"], device_slug=run_info.device_slug(info["name"]),
            device_info=info, date=now.strftime("%Y-%m-%d"), created=now.isoformat(timespec="seconds"),
            host=platform.node(), versions=versions(),
            model=dict(path=_shown_path(settings.model), synthetic=synthetic,
                       description=("synthetic Qwen3.5-0.8B checkpoint (random weights, real shapes)" if synthetic
                                    else Path(settings.model).name)),
            settings=dict(contexts=settings.contexts, gen=settings.gen, prefill=settings.prefill, reps=settings.reps,
                          check_steps=settings.check_steps, seed=settings.seed, quick=settings.quick,
                          systems=settings.systems),
            floor=dict(bandwidth_bytes_per_s=bw,
                       source="H100 measured device copy" if settings.bandwidth is None else "--bandwidth",
                       # bytes of one decode step = base_bytes + kv_bytes_per_position * (context + 1)
                       base_bytes=decode_budget(self.config, 0).total_bytes - per_position,
                       kv_bytes_per_position=per_position,
                       decode={c: dict(ms_per_token=1e3 * f, tok_s=1.0 / f,
                                       bytes_per_token=int(round(f * bw))) for c, f in floors.items()}),
            measured_copy_bandwidth=None, systems={}, rows=[],
        )
        self.ctx = BenchContext(path=Path(settings.model), device=device,
                                max_context=max(settings.contexts + settings.prefill[:1]) + settings.gen,
                                check_prompt=prompt_ids(16, self.config.vocab_size, settings.seed + 1),
                                check_steps=settings.check_steps, llama_json=settings.llama_json)
        self.progress = progress
        self.pbar = None

    # ---------------------------------------------------------------- helpers
    def log(self, msg: str) -> None:
        if self.pbar is not None:
            self.pbar.write(msg)
        else:
            print(msg, flush=True)

    def tick(self, n: int = 1, what: str | None = None) -> None:
        if self.pbar is not None:
            if what:
                self.pbar.set_postfix_str(what, refresh=False)
            self.pbar.update(n)

    def floor_fn(self, context: int, tokens: int) -> float:
        return floor_seconds(self.config, context, tokens, self.bandwidth)

    def _record_system(self, name: str, **info) -> None:
        entry = self.results["systems"].setdefault(name, {"description": DESCRIPTIONS.get(name, "")})
        entry.update(info)

    def _add_rows(self, name: str, rows: list[dict]) -> None:
        self.results["rows"] = [r for r in self.results["rows"] if r["system"] != name] + rows

    def _status_rows(self, name: str, status: str, error: str, checked="no", check="") -> list[dict]:
        return [_row(name, w, kind, ctx, n, status=status, error=error, checked=checked, check=check)
                for w, kind, ctx, n in _workloads(self.s)]

    # ---------------------------------------------------------------- one system
    def run_system(self, name: str) -> None:
        s, start = self.s, time.perf_counter()
        self._record_system(name, status="running")
        system = make_system(name, self.ctx)
        units_left = _units(name, s)
        try:
            self.tick(0, f"{name}: load")
            try:
                system.load()
            except Unavailable as e:
                self.log(f"[{name}] not run: {e}")
                self._record_system(name, status="unavailable", reason=str(e), checked="no", check="")
                self._add_rows(name, self._status_rows(name, "unavailable", str(e)))
                return
            if name == "llama.cpp":
                rows = llama_cpp_rows(read_llama_bench_json(self.ctx.llama_json), self.floor_fn)
                if not rows:
                    raise ValueError(f"{self.ctx.llama_json} holds no tg or pp tests")
                self._record_system(name, status="ok", checked="no", check="not checked (llama-bench prints no tokens)",
                                    source=str(self.ctx.llama_json), launches_note="unknown")
                self._add_rows(name, rows)
                for r in rows:
                    self._log_row(r)
                return
            # the check, before any timing
            self.tick(0, f"{name}: check")
            if system.oracle_name is None:
                checked, check, short = "oracle", "the oracle for the reference-* rows", "oracle"
            else:
                oracle = system.oracle()
                target = system.check_target()  # the system itself, or its fp32 twin (same code path)
                try:
                    outcome = check_system(target, oracle, self.ctx.check_prompt)
                finally:
                    if target is not system:
                        target.close()
                if target is not system:
                    outcome.detail = f"checked in fp32 (same code, the timed run is bf16): {outcome.detail}"
                if not outcome.passed:
                    self.log(f"[{name}] check FAILED: {outcome.detail}")
                    self._record_system(name, status="failed", reason=outcome.detail, checked="FAILED",
                                        check=outcome.detail, notes=system.notes)
                    self._add_rows(name, self._status_rows(name, "failed", outcome.detail, "FAILED", outcome.detail))
                    return
                checked, check = "yes", outcome.detail
                n = len(oracle.tokens)
                short = (f"tokens {outcome.tokens_agree}/{n}"
                         + (f", logits {outcome.worst_rel:.0e} (tol {oracle.tol:.0e})"
                            if outcome.worst_rel is not None else ""))
                self.log(f"[{name}] check passed: {outcome.detail}")
            self.tick(1)
            units_left -= 1
            try:
                system.count_launches()
            except Exception as e:  # noqa: BLE001 (informational)
                system.launches_note = f"unknown (profiler: {short_error(e, 160)})"
            common = dict(checked=checked, check=check, launches_per_token=system.launches,
                          kernels_per_token=system.kernels, launches_note=system.launches_note)
            self._record_system(name, status="running", checked=checked, check=check, check_short=short,
                                launches_per_token=system.launches, kernels_per_token=system.kernels,
                                launches_note=system.launches_note, notes=system.notes)
            rows = []
            lengths = system.prefill_lengths(s.prefill) if system.has_prefill else []
            for workload, kind, ctx, tokens in _workloads(s):
                if kind == "prefill" and tokens not in lengths:
                    continue
                rows.append(self._time_workload(system, workload, kind, ctx, tokens, common))
                units_left -= s.reps + 1
                self._add_rows(name, rows)
            prefill_checks = [r["prefill_check"] for r in rows if r.get("prefill_check")]
            if prefill_checks:  # the table's one "checked" cell: the decode check, then each prefill's
                self._record_system(name, check_short="; ".join([short] + prefill_checks))
            ok = any(r["status"] == "ok" for r in rows)
            self._record_system(name, status="ok" if ok else "failed",
                                reason=None if ok else next((r["error"] for r in rows if r["error"]), None))
        except (BenchInterrupted, KeyboardInterrupt):
            self._record_system(name, status="interrupted", reason="the run was stopped (time limit or signal)")
            done = {r["workload"] for r in self.results["rows"] if r["system"] == name and r["status"] == "ok"}
            self._add_rows(name, [r for r in self.results["rows"] if r["system"] == name and r["workload"] in done]
                           + [r for r in self._status_rows(name, "interrupted", "stopped before it finished")
                              if r["workload"] not in done])
            raise
        except Exception as e:  # noqa: BLE001 (one system's failure must not stop the others)
            traceback.print_exc(file=sys.stderr)
            err = short_error(e)
            self.log(f"[{name}] FAILED: {err}")
            self._record_system(name, status="failed", reason=err, notes=system.notes)
            done = [r for r in self.results["rows"] if r["system"] == name and r["status"] == "ok"]
            keep = {r["workload"] for r in done}
            self._add_rows(name, done + [r for r in self._status_rows(name, "failed", err)
                                         if r["workload"] not in keep])
        finally:
            self._record_system(name, seconds=round(time.perf_counter() - start, 1), notes=system.notes)
            try:
                system.close()
            except Exception:  # noqa: BLE001
                pass
            free_memory()
            if units_left > 0:
                self.tick(units_left)

    def _time_workload(self, system, workload, kind, ctx, tokens, common) -> dict:
        s, name = self.s, system.name
        try:
            self.tick(0, f"{name}: {workload}")
            if kind == "decode":
                ids = prompt_ids(ctx, self.config.vocab_size, s.seed)
                system.decode(ids, min(tokens, 8))  # warm-up
                self.tick(1)
                samples = []
                for _ in range(s.reps):
                    samples.append(system.decode(ids, tokens))
                    self.tick(1)
                floor_s = self.floor_fn(ctx, tokens)
            else:
                ids = prompt_ids(tokens, self.config.vocab_size, s.seed)
                checked = system.check_prefill(ids)  # before any timing, as the decode check
                if checked is not None:
                    self.log(f"[{name}] {workload} check {'passed' if checked.passed else 'FAILED'}: "
                             f"{checked.detail}")
                    common = dict(common, checked="yes" if checked.passed else "FAILED", check=checked.detail)
                    if not checked.passed:
                        return _row(name, workload, kind, ctx, tokens, status="failed", error=checked.detail,
                                    prefill_check=checked.short, **common)
                if system.prefill(ids) is None:  # warm-up (None: no prefill of its own)
                    return _row(name, workload, kind, ctx, tokens, status="unavailable",
                                error="no prefill of its own", **common)
                self.tick(1)
                samples = []
                for _ in range(s.reps):
                    samples.append((system.prefill(ids), tokens))
                    self.tick(1)
                floor_s = None
                note = system.prefill_note()
                row = _row(name, workload, kind, ctx, tokens, **common, **summarize(samples, floor_s),
                           note="; ".join(system.notes + ([note] if note else [])),
                           prefill_check=checked.short if checked is not None else None)
                self._log_row(row)
                return row
            row = _row(name, workload, kind, ctx, tokens, **common, **summarize(samples, floor_s),
                       note="; ".join(system.notes))
            self._log_row(row)
            return row
        except BenchInterrupted:
            raise
        except Exception as e:  # noqa: BLE001
            traceback.print_exc(file=sys.stderr)
            err = short_error(e)
            self.log(f"[{name}] {workload} FAILED: {err}")
            return _row(name, workload, kind, ctx, tokens, status="failed", error=err, **common)

    def _log_row(self, r: dict) -> None:
        if r["status"] != "ok":
            self.log(f"  {r['system']:<18} {r['workload']:<10} {r['status']}: {r.get('error')}")
            return
        frac = f"  {100 * r['fraction_of_floor']:5.1f}% of floor" if r.get("fraction_of_floor") else ""
        spread = (f" (p10 {r['tok_s_p10']:,.1f}, p90 {r['tok_s_p90']:,.1f})"
                  if r.get("tok_s_p10") is not None else "")
        self.log(f"  {r['system']:<18} {r['workload']:<10} {r['tok_s']:>10,.1f} tok/s{spread}  "
                 f"{r['ms_per_token']:.3f} ms/token{frac}")

    def _floor_from_this_gpu(self) -> None:
        """On a GPU other than the H100 (and without --bandwidth), the floor is this GPU's measured copy."""
        bw = self.results["measured_copy_bandwidth"]
        if self.s.bandwidth is None and bw and "H100" not in str(self.results.get("device", "")):
            results_mod.rescale_floor(self.results, bw, "this GPU's measured device copy")
            self.bandwidth = bw

    # ---------------------------------------------------------------- everything
    def run(self, on_system_done=None) -> dict:
        self.results["measured_copy_bandwidth"] = measure_copy_bandwidth(self.device)
        self._floor_from_this_gpu()
        total = sum(_units(n, self.s) for n in self.s.systems)
        try:
            from tqdm.auto import tqdm

            self.pbar = tqdm(total=total, desc="bench", unit="run", file=sys.stderr, dynamic_ncols=True,
                             mininterval=1.0, disable=not self.progress)
        except ImportError:
            self.pbar = None
        try:
            for name in self.s.systems:
                self.run_system(name)
                if on_system_done is not None:
                    on_system_done(self.results)
        finally:
            if self.pbar is not None:
                self.pbar.close()
                self.pbar = None
        return self.results


# ------------------------------------------------------------------------------------------------ output
def write_outputs(results: dict, out: Path, merge: bool = True) -> tuple[Path, Path | None]:
    """Write (or merge into) out/bench_<device>_<date>.json and draw out/bench_<device>.png + bench_latest.png."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / results_mod.results_filename(results)
    doc = results
    if merge and path.exists():
        try:
            doc = results_mod.merge_results([results_mod.load_results(path), results])
        except (ValueError, OSError) as e:
            print(f"bench: not merging with {path} ({e}); overwriting it", file=sys.stderr)
    results_mod.save_results(doc, path)
    png = out / f"bench_{results['device_slug']}.png"
    try:
        results_mod.plot_results(doc, png)
        shutil.copyfile(png, out / "bench_latest.png")
    except Exception as e:  # noqa: BLE001 (the JSON is what matters)
        print(f"bench: chart not drawn: {short_error(e)}", file=sys.stderr)
        png = None
    return path, png


parser = cli.parser("megakernel.bench", __doc__)
parser.add_argument("--model", metavar="DIR",
                    help="checkpoint directory (default: the synthetic 0.8B checkpoint, generated on first use)")
parser.add_argument("--out", default=str(PROJECT_ROOT / "data" / "results"), help="results directory (%(default)s)")
parser.add_argument("--systems", type=parse_system_names,
                    default=list(SYSTEM_NAMES),
                    help="comma-separated systems to run, in that order, or all (default): " + ", ".join(SYSTEM_NAMES)
                    + "; or a persistent build variant as the profiling tools spell it, e.g. "
                    "persistent-v12+prod+noindec+preg=40")
parser.add_argument("--contexts", type=cli.positive_int_list,
                    help="decode contexts, comma-separated (default: 16,512,4096)")
parser.add_argument("--gen", type=cli.positive_int, help="decode steps per run, >= 1 (default: 128)")
parser.add_argument("--prefill", type=cli.non_negative_int_list,
                    help="prefill lengths, comma-separated, 0 = none (default: 512,4096,32768; systems other than "
                         "the kernel stages time the shortest only)")
parser.add_argument("--reps", type=cli.positive_int, help="timed runs per workload, >= 1 (default: 5)")
parser.add_argument("--check-steps", type=cli.positive_int,
                    help="greedy steps compared with the oracle, >= 1 (default: 16)")
parser.add_argument("--seed", type=cli.seed, default=0, help="prompt ids seed (default: 0)")
parser.add_argument("--bandwidth", type=cli.positive_float,
                    help="bytes/s for the floor (default: the H100's measured 3.02e12)")
parser.add_argument("--llama-json", metavar="PATH",
                    help="llama-bench JSON to turn into llama.cpp rows (tools/llama_cpp_peer.sh)")
parser.add_argument("--quick", action="store_true", help="smoke run: contexts 16,512, tg32, pp128, 2 reps, 8 check "
                                                         "steps (explicit options still win)")
parser.add_argument("--no-merge", action="store_true", help="overwrite an existing results file of the same name")
parser.add_argument("--readme", metavar="PATH", help="also regenerate this README's results section at the end")
parser.add_argument("--no-progress", action="store_true", help="no progress bar")
parser.add_argument("--list", action="store_true", help="list the systems and exit (needs no GPU)")


def settings_from(a) -> Settings:
    """Settings from parsed arguments (the --quick or default values where an option is not given)."""
    base = QUICK if a.quick else DEFAULTS
    pick = lambda value, key: value if value is not None else base[key]  # noqa: E731
    return Settings(
        model=Path(a.model) if a.model else None, out=Path(a.out), systems=list(dict.fromkeys(a.systems)),
        contexts=pick(a.contexts, "contexts"), gen=pick(a.gen, "gen"),
        prefill=[n for n in pick(a.prefill, "prefill") if n != 0],
        reps=pick(a.reps, "reps"), check_steps=pick(a.check_steps, "check_steps"), seed=a.seed,
        bandwidth=a.bandwidth, llama_json=Path(a.llama_json) if a.llama_json else None, quick=a.quick,
        merge=not a.no_merge, readme=Path(a.readme) if a.readme else None,
    )


def check_args(a) -> None:
    """Everything refusable before a model loads: files, then the GPU (--list needs none)."""
    a.settings = settings_from(a)
    if a.list:
        return
    if a.model is not None:
        cli.checkpoint_argument("--model", a.model)
    for flag, path in (("--llama-json", a.llama_json), ("--readme", a.readme)):
        if path is not None and not Path(path).is_file():
            raise cli.UsageError(f"{flag} {path}: no such file")
    cli.output_directory("--out", a.out)
    problem = gpu_problem()
    if problem:
        raise cli.UsageError(problem)


def gpu_problem() -> str | None:
    """Why this machine cannot run the benchmark, or None."""
    if not torch.cuda.is_available():
        return (f"the decode benchmark needs a CUDA GPU: torch.cuda.is_available() is False here (torch "
                f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}). It times decode on the GPU; "
                "run it on a GPU machine. Without a GPU: `python -m megakernel.bench.results` renders existing "
                "results, `make test` checks every stage on the CPU.")
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        return ("NUMBA_ENABLE_CUDASIM is set, so the Numba kernels would run in the CPU "
                "simulator; unset it to benchmark the GPU")
    return None


@cli.command(parser, validate=check_args)
def main(args) -> int:
    settings = args.settings
    if args.list:
        for name in SYSTEM_NAMES:
            print(f"{name:<20} {DESCRIPTIONS.get(name, '')}")
        return 0
    if settings.model is None:
        from reference import ensure_synthetic_checkpoint

        print("model: the synthetic Qwen3.5-0.8B checkpoint (random weights, real shapes; generated on first use)",
              flush=True)
        settings.model = Path(ensure_synthetic_checkpoint())

    def stop(signum, frame):  # noqa: ARG001
        raise BenchInterrupted(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    device = torch.device("cuda")
    bench = Bench(settings, device, progress=not args.no_progress)
    print(f"device: {bench.results['device']}; systems: {', '.join(settings.systems)}; contexts {settings.contexts}, "
          f"tg{settings.gen}, pp{','.join(map(str, settings.prefill)) or 'none'}, {settings.reps} reps", flush=True)
    written = {}

    def save(results):
        written["json"], written["png"] = write_outputs(results, settings.out, settings.merge)

    code = 0
    try:
        bench.run(on_system_done=save)
    except (BenchInterrupted, KeyboardInterrupt):
        print("bench: stopped; writing what finished", file=sys.stderr)
        code = EXIT_INTERRUPTED
    save(bench.results)
    doc = results_mod.load_results(written["json"])
    print()
    print(results_mod.markdown_table(doc))
    print(f"\nresults: {written['json']}" + (f"\nchart: {written['png']}" if written.get("png") else ""))
    if settings.readme is not None:
        latest = Path(settings.out) / "bench_latest.png"
        link = (os.path.relpath(latest.resolve(), settings.readme.resolve().parent).replace(os.sep, "/")
                if latest.exists() else None)
        try:
            results_mod.update_readme(settings.readme, results_mod.results_markdown(doc, link))
            print(f"README: {settings.readme} updated")
        except (ValueError, OSError) as e:
            print(f"bench: README not updated: {e}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
