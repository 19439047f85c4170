"""Nsight Compute's stall samples of the persistent kernel, per Python function and line.

Usage: python tools/ncu_lines.py SASS_CSV LINES_SASS [TOP]

SASS_CSV: ``ncu --import REP --page source --csv --print-source sass`` of a ``+li`` build (one row per machine
instruction, in address order, with its warp-stall samples by reason); LINES_SASS: ``nvdisasm -g -c`` of the same
cubin (``tools/ncu_persistent.py ... CUBIN``), which names the Python file and line of every instruction. Both
may be gzipped. The two listings are aligned instruction by instruction (their opcodes must agree), each line is
attributed to the innermost ``def`` around it in its source file, and the samples are summed per function and per
line: where the warps of the kernel wait, and why (``stall_barrier``: at a block barrier, ``long_sb``: for global
memory, ``no_inst``: for instructions, ``wait``: fixed-latency dependencies, ...)."""

from __future__ import annotations

import ast
import collections
import csv
import gzip
import re
import sys
from pathlib import Path


def _open(path):
    return gzip.open(path, "rt") if str(path).endswith(".gz") else open(path)


def _opcode(text: str) -> str:
    parts = text.replace("{", " ").split()
    if parts and parts[0].startswith("@"):
        parts = parts[1:]
    return parts[0].rstrip(";") if parts else ""


def read_lines(path) -> list[tuple[str, int, str]]:
    """``[(file, line, opcode)]`` per instruction of ``nvdisasm -g`` output, in address order."""
    out, loc = [], ("?", 0)
    pat_loc = re.compile(r'//## File "([^"]+)", line (\d+)')
    pat_ins = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(.*?);")
    for raw in _open(path):
        m = pat_loc.search(raw)
        if m:
            loc = (m.group(1), int(m.group(2)))
            continue
        m = pat_ins.search(raw)
        if m:
            out.append((loc[0], loc[1], _opcode(m.group(1))))
    return out


def read_samples(path) -> tuple[list[dict], list[str]]:
    lines = _open(path).read().splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith('"Address"'))
    rows = list(csv.DictReader(lines[head:]))
    reasons = [k for k in rows[0] if k.startswith("stall_") and "Not Issued" not in k]
    return rows, reasons


def _num(x: str) -> int:
    return int((x or "0").replace(",", "") or 0)


_DEFS: dict = {}


def enclosing_def(file: str, line: int) -> str:
    """The innermost function whose body holds ``file:line`` (``?`` when the file cannot be read)."""
    spans = _DEFS.get(file)
    if spans is None:
        spans = []
        try:
            tree = ast.parse(Path(file).read_text())
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    spans.append((node.lineno, node.end_lineno, node.name))
        except (OSError, SyntaxError):
            pass
        _DEFS[file] = spans
    best = None
    for a, b, name in spans:
        if a <= line <= b and (best is None or b - a < best[1] - best[0]):
            best = (a, b, name)
    return best[2] if best else "?"


def main(argv):
    sass_csv, lines_sass = argv[1], argv[2]
    top = int(argv[3]) if len(argv) > 3 else 40
    rows, reasons = read_samples(sass_csv)
    where = read_lines(lines_sass)
    if len(where) < len(rows):
        raise SystemExit(f"the disassembly has {len(where)} instructions, the samples {len(rows)}: not the same cubin")
    bad = sum(_opcode(r["Source"]) != w[2] for r, w in zip(rows, where))
    if bad > len(rows) // 100:
        raise SystemExit(f"{bad} of {len(rows)} opcodes differ between the two listings: not the same cubin")
    repo = str(Path(__file__).resolve().parents[1])
    per_fn: dict = collections.defaultdict(collections.Counter)
    per_line: dict = collections.defaultdict(collections.Counter)
    total = 0
    for r, (file, line, _) in zip(rows, where):
        s = _num(r["Warp Stall Sampling (All Samples)"])
        if not s:
            continue
        total += s
        # the path the kernel was compiled from may differ from this checkout's: keep what follows the package
        short = file.split("/megakernel/", 1)[-1] if "/megakernel/" in file else Path(file).name
        local = Path(repo) / "megakernel" / short if "/megakernel/" in file else Path(file)
        fn = f"{short}:{enclosing_def(str(local), line)}"
        key = f"{short}:{line}"
        for c in (per_fn[fn], per_line[key]):
            c["all"] += s
            for k in reasons:
                c[k[6:]] += _num(r[k])

    def show(title, table, n):
        print(f"\n{title} (share of all {total} samples; the three largest stall reasons)")
        for name, c in sorted(table.items(), key=lambda kv: -kv[1]["all"])[:n]:
            reasons_ = sorted(((v, k) for k, v in c.items() if k != "all"), reverse=True)[:3]
            why = ", ".join(f"{k} {100 * v / c['all']:.0f}%" for v, k in reasons_)
            print(f"{100 * c['all'] / total:6.2f}%  {name:<58} {why}")

    show("per function", per_fn, top)
    show("per line", per_line, top)


if __name__ == "__main__":
    main(sys.argv)
