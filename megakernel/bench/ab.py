"""Interleaved A/B timing of persistent megakernel builds: every build loaded at once and timed in turn, round
after round, so the drift between benchmark calls (clocks, temperature, the machine) falls on all of them alike.

    python -m megakernel.bench.ab --variants 13,14 --contexts 16,512,4096 --rounds 5

Why: ``python -m megakernel.bench`` times one system after another, and two calls of it disagree by ~1% on the same
build (NOTES.md), as much as most single changes to the kernel are worth. Here each round times every variant once
(in an order rotated from round to round), so a difference between two builds is read from rounds that ran
side by side: the spread of the per-round ratios says whether it is real.

A variant is a version and build options as the profiling tools spell them (``13``, ``13+llr+llt=2+pd``:
``megakernel.persistent.profile.parse_variant``); the first one is the baseline. Before any timing, every variant
is checked at every context it is timed at, after the same prompt: greedy tokens and teacher-forced logits against
the reference over ``--check-steps`` steps (the benchmark's own ``check_system``). A variant that fails a check is
reported FAILED and never timed. Timing is the benchmark's own path for the persistent stage (prefill untimed, one
launch of ``--gen`` steps between ``torch.cuda.synchronize`` and ``perf_counter``), after one warm-up run per variant
and context.

Output: a table per context (median tok/s, p10-p90, the median of the per-round ratios to the baseline with its
range, the fraction of the bandwidth floor: this GPU's measured copy bandwidth, or the H100's on an H100) and
``ab_<device>_<date>.json`` under ``--out`` (default ``data/results``). GPU only.
"""

from __future__ import annotations

import json
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

from reference import cli

DEFAULT_CONTEXTS = [16, 512]


def parse_variants(text: str) -> list[str]:
    """``--variants``: two or more distinct build variants (``13``, ``13+pd``), each parsed here so a misspelled
    option is refused before anything loads."""
    import argparse

    from ..persistent.decoder import VERSIONS
    from ..persistent.profile import parse_variant

    names = [x.strip() for x in text.split(",") if x.strip()]
    for name in names:
        try:
            version, options = parse_variant(name)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
        if version not in VERSIONS:
            raise argparse.ArgumentTypeError(f"variant {name!r}: no persistent version {version} (there are "
                                             f"{min(VERSIONS)}-{max(VERSIONS)})")
        if "_nobar" in options:
            raise argparse.ArgumentTypeError(f"variant {name!r}: a timed build runs with its grid barriers")
    if len(names) < 2 or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"give two or more distinct variants, the baseline first (got {text!r})")
    return names


def ratio_summary(baseline: list[float], other: list[float]) -> dict:
    """Per-round ratios of ``other`` to ``baseline`` (tok/s of the same round): median, min, max."""
    ratios = [o / b for b, o in zip(baseline, other)]
    return dict(ratio=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios),
                ratios=[round(r, 5) for r in ratios])


def rotated(items: list, k: int) -> list:
    """``items`` started at position ``k`` (each round times the variants in another order)."""
    k %= len(items)
    return items[k:] + items[:k]


def format_ab(doc: dict) -> str:
    """The table of an ``ab_*.json`` document: per context and variant, median tok/s, the fraction of the floor and
    the median per-round ratio to the baseline with its range."""
    lines = [f"{doc['device']}, tg{doc['gen']}, {doc['rounds']} rounds, baseline {doc['variants'][0]}"]
    for c, rows in doc["contexts"].items():
        lines.append(f"context {c}:")
        for v, row in rows.items():
            if row["status"] != "ok":
                lines.append(f"  {v:<24} FAILED its check: not timed")
                continue
            vs = (f"  x{row['ratio']:.4f} (rounds {row['ratio_min']:.4f}-{row['ratio_max']:.4f})"
                  if "ratio" in row else "  (baseline)")
            lines.append(f"  {v:<24} {row['tok_s']:>8,.1f} tok/s (p10 {row['tok_s_p10']:,.1f}, p90 "
                         f"{row['tok_s_p90']:,.1f})  {100 * row['fraction_of_floor']:.1f}% of floor{vs}")
    return "\n".join(lines)


def plot_ab(doc: dict, ax=None):
    """Each variant's per-round ratios to the baseline (dots) and their median (bar), per context: a difference
    is real where a variant's dots all lie on one side of 1."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.2))
    others = doc["variants"][1:]
    contexts = list(doc["contexts"])
    width = 0.8 / max(1, len(others))
    for j, v in enumerate(others):
        for i, c in enumerate(contexts):
            row = doc["contexts"][c].get(v, {})
            if "ratios" not in row:
                continue
            x = i + (j - (len(others) - 1) / 2) * width
            ax.bar(x, row["ratio"] - 1, width * 0.9, bottom=1, color=f"C{j}", alpha=0.5,
                   label=v if i == 0 else None)
            ax.plot([x] * len(row["ratios"]), row["ratios"], "k.", markersize=3)
    ax.axhline(1, color="k", linewidth=0.8)
    ax.set_xticks(range(len(contexts)), [f"context {c}" for c in contexts])
    ax.set_ylabel(f"tok/s / {doc['variants'][0]}'s, same round")
    ax.set_title(f"Interleaved A/B on the {doc['device']} (tg{doc['gen']}, {doc['rounds']} rounds)")
    ax.legend(fontsize=8)
    return ax


def gpu_problem() -> str | None:
    """Why this machine cannot run the A/B timing, or None (one line)."""
    from .. import launch

    return launch.timing_problem("the A/B timing of persistent builds",
                                 "NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_persistent.py")


parser = cli.parser("megakernel.bench.ab", __doc__)
parser.add_argument("--variants", type=parse_variants, required=True,
                    help="comma-separated persistent builds, the baseline first (e.g. 13,14 or 13,13+pd)")
parser.add_argument("--contexts", type=cli.positive_int_list, default=DEFAULT_CONTEXTS,
                    help="comma-separated prompt lengths before the timed decode (default 16,512)")
parser.add_argument("--gen", type=cli.positive_int, default=128, help="decode steps per timed run (default 128)")
parser.add_argument("--rounds", type=cli.positive_int, default=5,
                    help="rounds; each times every variant once (default 5)")
parser.add_argument("--check-steps", type=cli.positive_int, default=16,
                    help="steps of the check against the reference at each context (default 16)")
parser.add_argument("--model", default=None, help="checkpoint directory (default: the synthetic 0.8B checkpoint)")
parser.add_argument("--out", default=None, help="directory for ab_<device>_<date>.json (default data/results)")
parser.add_argument("--seed", type=cli.seed, default=0, help="seed of the random prompts (default 0)")


def check_args(a) -> None:
    if a.model is not None:
        cli.checkpoint_argument("--model", a.model)
    cli.output_directory("--out", a.out)
    problem = gpu_problem()
    if problem:
        raise cli.UsageError(problem)


@cli.command(parser, validate=check_args)
def main(args) -> int:
    import torch

    from reference import Qwen35Config

    from . import run_info
    from .decode import _shown_path, floor_seconds, fraction_of_floor, measure_copy_bandwidth, prompt_ids
    from .results import quantiles, results_dir
    from .systems import TOL_FP32, BenchContext, check_system, make_oracle, make_system

    if args.model is None:
        from reference import ensure_synthetic_checkpoint

        args.model = ensure_synthetic_checkpoint()
    device = torch.device("cuda")
    config = Qwen35Config.from_pretrained(args.model)
    name = torch.cuda.get_device_name()
    bandwidth = None if "H100" in name else measure_copy_bandwidth(device)
    ctx = BenchContext(path=Path(args.model), device=device, max_context=max(args.contexts) + args.gen,
                       check_steps=args.check_steps)
    systems = {}
    for v in args.variants:
        s = make_system(f"persistent-v{v}", ctx)
        s.load()
        systems[v] = s
        print(f"{v}: {s.model.blocks} blocks, {getattr(s.model, 'registers', '?')} registers, "
              f"{s.model.barriers_per_step()} grid barriers per token", flush=True)
    oracle_model = systems[args.variants[0]].oracle_model()
    doc = dict(device=name, device_slug=run_info.device_slug(name),
               date=datetime.now(timezone.utc).strftime("%Y-%m-%d"), model=_shown_path(args.model),
               variants=args.variants, gen=args.gen, rounds=args.rounds, check_steps=args.check_steps,
               bandwidth_bytes_per_s=bandwidth, contexts={})
    failed = False
    for c in args.contexts:
        ids = prompt_ids(c, config.vocab_size, args.seed)
        oracle = make_oracle("reference", oracle_model, ids, args.check_steps, TOL_FP32)
        checks, ok = {}, []
        for v, s in systems.items():
            outcome = check_system(s, oracle, ids)
            checks[v] = dict(passed=outcome.passed, detail=outcome.detail)
            print(f"[{v}] context {c}: check {'passed' if outcome.passed else 'FAILED'}: {outcome.detail}",
                  flush=True)
            if outcome.passed:
                ok.append(v)
        failed |= len(ok) < len(systems)
        samples = {v: [] for v in ok}
        for v in ok:
            systems[v].decode(ids, min(args.gen, 8))  # warm-up
        for r in range(args.rounds):
            for v in rotated(ok, r):
                seconds, n = systems[v].decode(ids, args.gen)
                samples[v].append(n / seconds)
        floor_s = floor_seconds(config, c, args.gen, bandwidth)
        rows = {}
        base = args.variants[0]
        for v in args.variants:
            if v not in samples:
                rows[v] = dict(status="failed", check=checks[v])
                continue
            med, p10, p90 = quantiles(samples[v])
            rows[v] = dict(status="ok", tok_s=med, tok_s_p10=p10, tok_s_p90=p90, samples_tok_s=samples[v],
                           fraction_of_floor=fraction_of_floor(floor_s, 1 / med), check=checks[v])
            if base in samples and v != base:
                rows[v].update(ratio_summary(samples[base], samples[v]))
        doc["contexts"][str(c)] = rows
        print(f"\ncontext {c}: floor {1 / floor_s:,.0f} tok/s", flush=True)
    print("\n" + format_ab(doc))
    out = Path(args.out) if args.out else results_dir()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"ab_{doc['device_slug']}_{doc['date']}.json"
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"\nwrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
