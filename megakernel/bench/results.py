"""Benchmark results: JSON -> the README results table and the chart.

    python -m megakernel.bench.results                      # newest data/results/bench_*.json -> README.md + chart
    python -m megakernel.bench.results --json A.json B.json # merge runs of the same device (later files win per system and workload)
    python -m megakernel.bench.results --print              # print the section instead of editing README.md

The README section between ``<!-- results:start -->`` and ``<!-- results:end -->`` is replaced; nothing else in
the file changes. The chart (``data/results/bench_latest.png`` by default) is redrawn from the same JSON.
When several JSON files are given, the merged result is also written to ``data/results/`` so the README's
source stays on disk.

The JSON is what ``python -m megakernel.bench`` writes (see that module). Rules for the table: a system whose
check FAILED shows "failed" and no number; a system that was timed but not checked against the reference says
so in the checked column; a system that could not run is listed under the table with the reason.

Needs only the standard library and matplotlib (no torch): it runs anywhere the README is edited.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from pathlib import Path

from reference import cli

PROJECT_ROOT = Path(__file__).resolve().parents[2]
START, END = "<!-- results:start -->", "<!-- results:end -->"
SCHEMA = 1
# Table order: the peers, then transformers, then the reference, then this project's kernels.
SYSTEM_ORDER = (
    "llama.cpp", "hf-generate-eager", "hf-generate-sdpa", "hf-loop-eager", "hf-loop-sdpa", "reference-eager",
    "reference-graph", "reference-compile", "layered", "layered-graph",
    *(f"persistent-v{v}{m}" for v in range(1, 15) for m in ("-step", "")),
)


def results_dir() -> Path:
    """Where results live: ``data/results`` (or $QWEN35_RESULTS_DIR)."""
    return Path(os.environ.get("QWEN35_RESULTS_DIR", PROJECT_ROOT / "data" / "results"))


# ------------------------------------------------------------------------------------------------ load / merge
def load_results(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list) or "device" not in data:
        raise ValueError(f"{path} is not a megakernel.bench results file (expected an object with 'device' and "
                         "'rows')")
    data.setdefault("systems", {})
    data.setdefault("settings", {})
    data["_path"] = str(path)
    return data


def find_latest(directory: str | Path | None = None) -> Path | None:
    """The newest readable ``bench_*.json`` in ``directory`` (by its 'created' time, then file time)."""
    directory = Path(directory) if directory is not None else results_dir()
    best, best_key = None, None
    for p in directory.glob("bench_*.json"):
        try:
            data = load_results(p)
        except (ValueError, OSError):
            continue
        key = (str(data.get("created", "")), p.stat().st_mtime)
        if best_key is None or key > best_key:
            best, best_key = p, key
    return best


def merge_results(runs: list[dict]) -> dict:
    """Merge results of one device: a row is a (system, workload) pair, and the last run that measured it wins
    (a later run of a system at another context adds its rows beside the earlier ones; the same workload measured
    again replaces the earlier row). Settings, versions and dates come from the last run; 'merged_from' lists the
    sources (file names)."""
    if not runs:
        raise ValueError("nothing to merge")
    devices = {r.get("device") for r in runs}
    if len(devices) > 1:
        raise ValueError(f"cannot merge results of different devices: {sorted(map(str, devices))}")
    merged = json.loads(json.dumps({k: v for k, v in runs[-1].items() if k != "_path"}))
    systems, rows = {}, {}
    for run in runs:
        systems.update(run.get("systems", {}))
        for r in run["rows"]:
            rows.pop((r.get("system"), r.get("workload")), None)  # re-inserted last: the table keeps run order
            rows[(r.get("system"), r.get("workload"))] = dict(r, date=r.get("date") or run.get("date"))
    merged["systems"] = systems
    order = list(dict.fromkeys(name for name, _ in rows))
    merged["rows"] = [r for name in order for key, r in rows.items() if key[0] == name]
    lengths = sorted({n for run in runs for n in prefill_lengths(run.get("settings", {}))})
    merged.setdefault("settings", {})["prefill"] = lengths  # every run's prefill columns
    contexts = sorted({int(c) for run in runs for c in run.get("settings", {}).get("contexts", [])})
    if contexts:
        merged["settings"]["contexts"] = contexts  # every run's decode columns
    decode_floors = [run["floor"]["decode"] for run in runs if isinstance(run.get("floor"), dict)
                     and isinstance(run["floor"].get("decode"), dict)]
    if decode_floors and isinstance(merged.get("floor"), dict):
        merged["floor"]["decode"] = {k: v for f in decode_floors for k, v in f.items()}  # later runs win
    sources = []
    for run in runs:
        sources += run.get("merged_from", []) or ([Path(run["_path"]).name] if run.get("_path") else [])
    merged["merged_from"] = sorted(set(sources))
    return merged


def rescale_floor(results: dict, bandwidth: float, source: str) -> dict:
    """The same results with the floor (and every row's fraction of it) at ``bandwidth`` bytes/s: a run on another
    GPU than the H100 is measured against that GPU's own copy bandwidth, not the H100's."""
    floor = results["floor"]
    factor = floor["bandwidth_bytes_per_s"] / bandwidth
    floor["bandwidth_bytes_per_s"] = bandwidth
    floor["source"] = source
    for entry in floor.get("decode", {}).values():
        entry["ms_per_token"] *= factor
        entry["tok_s"] /= factor
    for r in results["rows"]:
        if r.get("floor_ms_per_token") is not None:
            r["floor_ms_per_token"] *= factor
        if r.get("fraction_of_floor") is not None:
            r["fraction_of_floor"] *= factor
    return results


def results_filename(results: dict) -> str:
    return f"bench_{results.get('device_slug', 'device')}_{results.get('date', 'undated')}.json"


def save_results(results: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({k: v for k, v in results.items() if k != "_path"}, indent=1, default=str) + "\n")
    tmp.replace(path)
    return path


# ------------------------------------------------------------------------------------------------ llama.cpp
def quantiles(values: list[float]) -> tuple[float, float, float]:
    """(median, p10, p90) with linear interpolation (numpy's default)."""
    v = sorted(values)
    if len(v) == 1:
        return v[0], v[0], v[0]

    def q(p):
        x = p * (len(v) - 1)
        lo = int(x)
        hi = min(lo + 1, len(v) - 1)
        return v[lo] + (v[hi] - v[lo]) * (x - lo)

    return statistics.median(v), q(0.1), q(0.9)


def read_llama_bench_json(path: str | Path) -> list[dict]:
    """The list of test objects that ``llama-bench -o json`` prints (JSONL and {"results": [...]} accepted)."""
    text = Path(path).read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is neither llama-bench JSON nor JSONL: {e}") from e
    if isinstance(data, dict):
        data = data.get("results", data.get("tests", [data]))
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ValueError(f"{path}: expected a JSON array of llama-bench test objects")
    for r in data:
        missing = [k for k in ("n_prompt", "n_gen", "avg_ts") if k not in r]
        if missing:
            raise ValueError(f"{path}: a test object lacks {', '.join(missing)} (is this llama-bench -o json output?)")
    return data


def llama_cpp_rows(tests: list[dict], floor_fn) -> list[dict]:
    """llama-bench test objects -> benchmark rows.

    tg tests (n_prompt 0, n_gen N, n_depth D) become workload ``tgN@D`` (N tokens generated after D tokens of
    context); pp tests (n_prompt P, n_gen 0) become ``ppP`` (``ppP@D`` at a depth). Combined pg tests are skipped.
    The median and p10/p90 come from ``samples_ts`` (per repetition); without samples, the mean (no spread).
    ``floor_fn(context, tokens)`` gives the floor seconds per token of a decode workload.
    """
    rows, seen = [], set()
    for t in tests:
        n_prompt, n_gen, depth = int(t.get("n_prompt", 0)), int(t.get("n_gen", 0)), int(t.get("n_depth", 0) or 0)
        if n_gen > 0 and n_prompt == 0:
            kind, workload, tokens, context = "decode", f"tg{n_gen}@{depth}", n_gen, depth
        elif n_prompt > 0 and n_gen == 0:
            kind, tokens, context = "prefill", n_prompt, depth
            workload = f"pp{n_prompt}" if depth == 0 else f"pp{n_prompt}@{depth}"
        else:
            continue
        if workload in seen:
            continue
        seen.add(workload)
        samples = [float(x) for x in (t.get("samples_ts") or []) if float(x) > 0]
        if samples:
            median, p10, p90 = quantiles(samples)
            spread = f"median of {len(samples)} llama-bench repetitions"
        else:
            median, p10, p90 = float(t["avg_ts"]), None, None
            spread = f"llama-bench mean {float(t['avg_ts']):.1f} +- {float(t.get('stddev_ts', 0)):.1f} tok/s"
        samples_ns = [float(x) for x in (t.get("samples_ns") or []) if float(x) > 0]
        ms = (statistics.median(samples_ns) / 1e6 / tokens) if samples_ns else 1000.0 / median
        floor_s = floor_fn(context, tokens) if kind == "decode" else None
        note = ", ".join(str(x) for x in (
            f"llama.cpp {t.get('build_commit', '?')}" + (f" ({t['backends']})" if t.get("backends") else ""),
            t.get("model_type"), f"KV {t.get('type_k', '?')}/{t.get('type_v', '?')}",
            f"flash_attn {t.get('flash_attn', '?')}", f"ngl {t.get('n_gpu_layers', '?')}",
            f"gpu {t.get('gpu_info', '?')}", spread) if x)
        rows.append(dict(
            system="llama.cpp", workload=workload, kind=kind, context=context, tokens=tokens, status="ok",
            tok_s=median, tok_s_p10=p10, tok_s_p90=p90, ms_per_token=ms,
            samples_s=[tokens / x for x in samples],
            floor_ms_per_token=1e3 * floor_s if floor_s else None,
            fraction_of_floor=(floor_s / (ms / 1e3)) if floor_s else None,
            launches_per_token=None, kernels_per_token=None, launches_note="unknown (llama.cpp, not profiled)",
            checked="no", check="not checked (llama-bench prints no tokens)", error=None, note=note,
        ))
    return rows


def floor_fn_from_results(results: dict):
    """floor_fn(context, tokens) -> seconds per token, from the floor model stored in a results file (the bytes
    of a decode step are linear in the context: base + kv_per_position * (context + 1))."""
    f = results.get("floor", {})
    base, per_pos, bw = f.get("base_bytes"), f.get("kv_bytes_per_position"), f.get("bandwidth_bytes_per_s")
    if base is None or per_pos is None or not bw:
        return lambda context, tokens: None
    return lambda context, tokens: (base + per_pos * (context + 1 + (max(tokens, 1) - 1) / 2)) / bw


def add_llama_rows(results: dict, llama_json: str | Path) -> dict:
    """Replace the llama.cpp rows of ``results`` by those of a llama-bench JSON (in place; returns it)."""
    rows = llama_cpp_rows(read_llama_bench_json(llama_json), floor_fn_from_results(results))
    if not rows:
        raise ValueError(f"{llama_json} holds no tg or pp tests")
    results["rows"] = [r for r in results["rows"] if r.get("system") != "llama.cpp"] + rows
    results.setdefault("systems", {})["llama.cpp"] = dict(
        description="llama.cpp llama-bench, bf16 GGUF (tools/llama_cpp_peer.sh)", status="ok", checked="no",
        check="not checked (llama-bench prints no tokens)", launches_note="unknown", source=str(llama_json))
    return results


# ------------------------------------------------------------------------------------------------ table
def _ordered_systems(results: dict) -> list[str]:
    names = list(dict.fromkeys([r.get("system") for r in results["rows"]] + list(results.get("systems", {}))))
    rank = {n: i for i, n in enumerate(SYSTEM_ORDER)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), str(n)))


def _num(x: float) -> str:
    if x is None:
        return "?"
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}" if x >= 10 else f"{x:,.2f}"


def workload_columns(results: dict) -> list[tuple[str, str]]:
    """[(workload key, column title)] from the run's settings (tg at each context, then pp)."""
    s = results.get("settings", {})
    gen, contexts = s.get("gen", 128), s.get("contexts", [16, 512, 4096])
    cols = [(f"tg{gen}@{c}", f"tg{gen} @{c}") for c in contexts]
    cols += [(f"pp{n}", f"pp{n}") for n in prefill_lengths(s)]
    return cols


def prefill_lengths(settings: dict) -> list[int]:
    """The run's prefill lengths (settings hold a list; older results an int, 0 for none)."""
    prefill = settings.get("prefill", 512)
    return sorted(prefill) if isinstance(prefill, list) else ([prefill] if prefill else [])


def cell(row: dict | None) -> str:
    """One tok/s cell: 'median (p10–p90)', 'failed', or '—'."""
    if row is None:
        return "—"
    status = row.get("status")
    if status == "failed":
        return "failed"
    if status == "interrupted":
        return "interrupted"
    if status != "ok" or row.get("tok_s") is None:
        return "—"
    text = _num(row["tok_s"])
    lo, hi = row.get("tok_s_p10"), row.get("tok_s_p90")
    if lo is not None and hi is not None and _num(lo) != _num(hi):
        text += f" ({_num(lo)}–{_num(hi)})"
    return text


def _system_status(results: dict, name: str) -> dict:
    info = dict(results.get("systems", {}).get(name, {}))
    rows = [r for r in results["rows"] if r.get("system") == name]
    if "status" not in info:
        statuses = {r.get("status") for r in rows}
        info["status"] = "ok" if "ok" in statuses else "failed" if "failed" in statuses else \
            next(iter(statuses), "unavailable")
    if "checked" not in info and rows:
        info["checked"] = rows[0].get("checked")
        info["check"] = rows[0].get("check", "")
    for key in ("launches_per_token", "kernels_per_token", "launches_note"):
        if key not in info and rows:
            info[key] = rows[0].get(key)
    return info


def checked_cell(info: dict) -> str:
    checked, detail = info.get("checked"), (info.get("check_short") or info.get("check") or "").strip()
    if info.get("status") == "failed":
        return f"**FAILED**: {detail or info.get('reason', '')}".rstrip(": ")
    if checked in (True, "yes"):
        return f"yes: {detail}" if detail else "yes"
    if checked == "oracle":
        return "oracle (the reference)"
    detail = detail.removeprefix("not checked").strip(" ()")
    return "**not checked**" + (f" ({detail})" if detail else "")


def launches_cell(info: dict) -> str:
    n, k = info.get("launches_per_token"), info.get("kernels_per_token")
    note = info.get("launches_note") or ""
    if note.startswith("persistent:"):
        return note[len("persistent:"):].strip()
    if n == 1 and k:
        return f"1 graph ({k:,} kernels)"
    if n:
        return f"{n:,}"
    return "graphs" if note.startswith("CUDA graph") else "unknown"


def markdown_table(results: dict) -> str:
    cols = workload_columns(results)
    first_tg = cols[0][0] if cols and cols[0][0].startswith("tg") else None
    header = (["system"] + [title for _, title in cols]
              + ([f"fraction of floor @{first_tg.split('@')[1]}"] if first_tg else []) + ["launches/token", "checked"])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 3) + ["---:", "---"])
             + "|"]
    for name in _ordered_systems(results):
        info = _system_status(results, name)
        if info.get("status") in ("unavailable", None) and not any(
                r.get("status") in ("ok", "failed") for r in results["rows"] if r.get("system") == name):
            continue  # listed under the table instead
        rows = {r.get("workload"): r for r in results["rows"] if r.get("system") == name}
        failed = info.get("status") == "failed"
        cells = ["failed" if failed else cell(rows.get(key)) for key, _ in cols]
        if first_tg:
            r = rows.get(first_tg)
            frac = r.get("fraction_of_floor") if r and r.get("status") == "ok" else None
            cells.append("failed" if failed else f"{100 * frac:.0f}%" if frac else "—")
        cells += [launches_cell(info), checked_cell(info)]
        lines.append("| " + " | ".join([f"`{name}`"] + cells) + " |")
    return "\n".join(lines)


def _floor_line(results: dict) -> str:
    floor = results.get("floor", {})
    bw = floor.get("bandwidth_bytes_per_s")
    parts = []
    for ctx, f in (floor.get("decode") or {}).items():
        parts.append(f"{f['ms_per_token']:.3f} ms/token ({f['tok_s']:,.0f} tok/s) @{ctx}")
    if not parts:
        return ""
    src = floor.get("source", "")
    return (f"**Bandwidth floor** ({bw / 1e12:.2f} TB/s{', ' + src if src else ''}; bytes per token from "
            f"`reference/budget.py`): " + " · ".join(parts))


def _dates(results: dict) -> str:
    """The run's date; for a merge of runs of several days (each row keeps its run's date), the newer days with the
    systems they measured, then the oldest day for the other rows."""
    days: dict[str, list[str]] = {}
    for r in results.get("rows", []):
        systems = days.setdefault(str(r.get("date") or results.get("date", "?")), [])
        if r.get("system") not in systems:
            systems.append(r.get("system"))
    if len(days) <= 1:
        return str(results.get("date", "?"))
    order = sorted(days, reverse=True)
    return "; ".join([f"{d} ({', '.join(f'`{s}`' for s in days[d])})" for d in order[:-1]]
                     + [f"{order[-1]} (the other rows)"])


def results_markdown(results: dict, chart_link: str | None = None) -> str:
    """The README section: run facts, the floor, the table, what did not run, the chart."""
    s = results.get("settings", {})
    v = results.get("versions", {})
    model = results.get("model", {})
    facts = [f"**Device:** {results.get('device', '?')}", f"**date:** {_dates(results)}"]
    sw = ", ".join(f"{k} {v[k]}" for k in ("torch", "cuda", "transformers", "numba-cuda") if v.get(k))
    if sw:
        facts.append(sw)
    if model.get("description"):
        facts.append(f"model: {model['description']}")
    lines = [" · ".join(facts), ""]
    floor = _floor_line(results)
    if floor:
        lines += [floor, ""]
    gen, reps = s.get("gen", 128), s.get("reps", "?")
    pp = prefill_lengths(s)
    pp_text = (f"`ppN`: a prefill of N tokens ({', '.join(f'pp{n}' for n in pp)}; the longer ones for the kernel "
               "stages only). " if len(pp) > 1 else f"`pp{pp[0]}`: a prefill of that many tokens. " if pp else "")
    lines += [f"tok/s: median over {reps} runs, p10–p90 in brackets. `tg{gen} @N`: {gen} greedy decode steps after "
              f"a prompt of N tokens (batch 1, bf16 weights); {pp_text}"
              "Fraction of floor = floor time / measured time per token. Checked: before timing it, this "
              f"run compared the system's greedy tokens over {s.get('check_steps', 16)} steps and its logits at "
              "each step with the reference: the transformers and torch rows through an fp32 twin (the same code "
              "in fp32; two faithful bf16 implementations differ by a few percent after a few steps, which would "
              "hide a small bug) against the fp32 reference, the kernel stages (fp32 compute over the bf16 "
              "weights) against the reference computing the same way; 'logits' is the worst relative error "
              "max|err| / max|ref|. The kernel stages' decode check starts from the reference's prefill; each of "
              "their prefill rows is checked on its own: the same prefill code in fp32 against the reference "
              "(logits and every state: conv, DeltaNet, KV cache) and the timed bf16 run against it, then greedy "
              "decoding from the bf16 state ('prefill fp32 / bf16': the worst relative error of each).", ""]
    lines.append(markdown_table(results))
    not_run = []
    for name in _ordered_systems(results):
        info = _system_status(results, name)
        rows = [r for r in results["rows"] if r.get("system") == name]
        if info.get("status") in ("unavailable", None) and not any(r.get("status") in ("ok", "failed") for r in rows):
            reason = info.get("reason") or next((r.get("error") for r in rows if r.get("error")), "") or "not run"
            not_run.append(f"`{name}` ({reason})")
    if not_run:
        lines += ["", "Not run: " + "; ".join(not_run) + "."]
    notes: dict[str, list[str]] = {}
    for name in _ordered_systems(results):
        info = results.get("systems", {}).get(name, {})
        if info.get("status") not in ("ok", "failed", "interrupted"):
            continue
        for note in info.get("notes") or []:
            notes.setdefault(note, []).append(name)
    if notes:
        lines += ["", "Notes:"] + [f"- {', '.join('`' + n + '`' for n in names)}: {note}"
                                   for note, names in notes.items()]
    if chart_link:
        lines += ["", f"![tg{gen} tokens/s per system and context, with the bandwidth floor]({chart_link})"]
    if results.get("_path"):  # the file this section was rendered from (merged runs are saved to one first)
        path = Path(results["_path"])
        try:
            name = path.resolve().relative_to(PROJECT_ROOT).as_posix()
        except ValueError:
            name = path.name
        lines += ["", f"Source: `{name}` (`python -m megakernel.bench.results` regenerates this section and the "
                      "chart)."]
    return "\n".join(lines)


def replace_section(text: str, section: str) -> str:
    """Replace what lies between the results markers (the markers stay); raise if they are missing."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < 0 or end < start:
        raise ValueError(f"the README has no '{START}' ... '{END}' markers (in that order); add them where the "
                         "results table should go")
    return text[: start + len(START)] + "\n" + section.strip("\n") + "\n" + text[end:]


def update_readme(readme: str | Path, section: str) -> bool:
    """Write the section into the README; returns True if the file changed."""
    readme = Path(readme)
    old = readme.read_text()
    new = replace_section(old, section)
    if new != old:
        readme.write_text(new)
    return new != old


# ------------------------------------------------------------------------------------------------ chart
def plot_results(results: dict, path: str | Path | None = None):
    """Grouped bars: decode tok/s per system at each context (p10–p90 whiskers), the floor as dashed lines.
    Returns the matplotlib Figure (saved to ``path`` if given). Uses no pyplot state (safe in scripts)."""
    from matplotlib.figure import Figure

    s = results.get("settings", {})
    gen, contexts = s.get("gen", 128), s.get("contexts", [16, 512, 4096])
    keys = [f"tg{gen}@{c}" for c in contexts]
    names = [n for n in _ordered_systems(results)
             if any(r.get("system") == n and r.get("workload") in keys and r.get("status") in ("ok", "failed")
                    for r in results["rows"])]
    fig = Figure(figsize=(max(7.0, 1.1 * len(names) + 3), 4.8), dpi=110)
    ax = fig.add_subplot()
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown"]
    width = 0.8 / max(1, len(keys))
    values = []
    for j, (key, ctx) in enumerate(zip(keys, contexts)):
        for i, name in enumerate(names):
            row = next((r for r in results["rows"] if r.get("system") == name and r.get("workload") == key), None)
            x = i - 0.4 + width * (j + 0.5)
            if row is None or row.get("status") != "ok" or not row.get("tok_s"):
                if row is not None and row.get("status") == "failed":
                    ax.text(x, 0.02, "failed", rotation=90, ha="center", va="bottom", fontsize=7, color="tab:red",
                            transform=ax.get_xaxis_transform())
                continue
            y = row["tok_s"]
            values.append(y)
            lo, hi = row.get("tok_s_p10"), row.get("tok_s_p90")
            err = [[max(0.0, y - lo)], [max(0.0, hi - y)]] if lo is not None and hi is not None else None
            unchecked = row.get("checked") not in (True, "yes", "oracle")
            ax.bar(x, y, width, color=colors[j % len(colors)], yerr=err, capsize=2,
                   hatch="//" if unchecked else None, edgecolor="white" if unchecked else None)
    floor = results.get("floor", {}).get("decode", {})
    for j, ctx in enumerate(contexts):
        f = floor.get(str(ctx))
        if f:
            values.append(f["tok_s"])
            ax.axhline(f["tok_s"], color=colors[j % len(colors)], ls="--", lw=1)
    first = floor.get(str(contexts[0])) if contexts else None
    if first:
        ax.text(len(names) - 0.55 if names else 0.5, first["tok_s"] * 1.06,
                f"bandwidth floor ~{first['tok_s']:,.0f} tok/s (dashed, per context)", fontsize=8, ha="right")
    ax.set_yscale("log")
    if values:
        ax.set_ylim(max(min(values) / 2, 0.1), max(values) * 2)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([n + ("\n(not checked)" if all(
        r.get("checked") not in (True, "yes", "oracle") for r in results["rows"]
        if r.get("system") == n and r.get("status") == "ok") and any(
        r.get("system") == n and r.get("status") == "ok" for r in results["rows"]) else "") for n in names],
        rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("tokens / second (batch 1, log scale)")
    days = sorted({str(r.get("date") or results.get("date", "")) for r in results.get("rows", [])}, reverse=True)
    ax.set_title(f"tg{gen} decode on {results.get('device', '?')} ({', '.join(days) or results.get('date', '')})",
                 fontsize=10)
    ax.grid(True, axis="y", which="major", alpha=0.3)
    if names:
        from matplotlib.patches import Patch

        handles = [Patch(color=colors[j % len(colors)], label=f"context {ctx}") for j, ctx in enumerate(contexts)]
        handles.append(Patch(facecolor="lightgray", hatch="//", edgecolor="white", label="not checked"))
        ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    return fig


# ------------------------------------------------------------------------------------------------ CLI
parser = cli.parser("megakernel.bench.results", __doc__)
parser.add_argument("--json", nargs="+", action="extend", metavar="PATH",
                    help="results JSON file(s) (default: the newest bench_*.json in data/results/)")
parser.add_argument("--readme", default=str(PROJECT_ROOT / "README.md"), help="README to update (default: %(default)s)")
parser.add_argument("--chart", default=None, help="chart PNG to (re)draw (default: data/results/bench_latest.png)")
parser.add_argument("--no-chart", action="store_true", help="leave the chart alone")
parser.add_argument("--llama-json", metavar="PATH",
                    help="add (replace) the llama.cpp rows from a llama-bench JSON (tools/llama_cpp_peer.sh)")
parser.add_argument("--print", action="store_true", help="print the section; do not edit the README")


def check_args(args) -> None:
    for flag, path in [("--json", j) for j in args.json or []] + [("--llama-json", args.llama_json)]:
        if path is not None and not Path(path).is_file():
            raise cli.UsageError(f"{flag} {path}: no such file")
    if not args.print and not Path(args.readme).is_file():
        raise cli.UsageError(f"--readme {args.readme}: no such file (or pass --print to print the section)")


@cli.command(parser, validate=check_args)
def main(args) -> int:
    if args.json:
        runs = [load_results(j) for j in args.json]
        results = runs[0] if len(runs) == 1 else merge_results(runs)
        if len(runs) > 1:
            out = save_results(results, results_dir() / results_filename(results))
            results["_path"] = str(out)
            print(f"merged {len(runs)} runs into {out}")
    else:
        latest = find_latest()
        if latest is None:
            raise FileNotFoundError(f"no bench_*.json in {results_dir()}: run `python -m megakernel.bench` on a GPU "
                                    "machine first (it writes one there), or pass --json PATH")
        results = load_results(latest)
    if args.llama_json:
        try:
            add_llama_rows(results, args.llama_json)
        except ValueError as e:
            raise ValueError(f"--llama-json: {e}") from e
        out = save_results(results, results_dir() / results_filename(results))
        results["_path"] = str(out)
        print(f"llama.cpp rows from {args.llama_json} added; saved {out}")
    readme = Path(args.readme)
    chart = Path(args.chart) if args.chart else results_dir() / "bench_latest.png"
    link = None
    if not args.no_chart:
        plot_results(results, chart)
        print(f"chart: {chart}")
    if chart.exists():
        try:
            link = os.path.relpath(chart.resolve(), readme.resolve().parent).replace(os.sep, "/")
        except ValueError:  # different drives
            link = str(chart)
    section = results_markdown(results, link)
    if args.print:
        print(section)
        return 0
    changed = update_readme(readme, section)
    print(f"{readme}: results section {'updated' if changed else 'already up to date'} "
          f"(from {Path(results.get('_path', '?')).name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
