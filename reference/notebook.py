"""Small helpers shared by the notebooks: which checkpoint to use, and plain-text tables.

Which model a notebook runs is chosen by the environment, so one notebook serves a reader with real weights, a
reader without them, and CI:

* ``QWEN35_MODEL_DIR=/path/to/Qwen3.5-0.8B``: that checkpoint (e.g. the real published weights);
* ``QWEN35_NOTEBOOK_CONFIG=tiny``: a tiny synthetic checkpoint (:meth:`Qwen35Config.tiny`, a few hundred KB),
  written once; the test suite and CI use this so the notebooks run in seconds;
* otherwise: the synthetic checkpoint with the real 0.8B shapes (~1.5 GB, generated on first use).
"""

from __future__ import annotations

import os
from pathlib import Path

from .config import Qwen35Config
from .synthetic import PROJECT_ROOT, checkpoints_dir, ensure_synthetic_checkpoint

PUBLISHED_CONFIG = PROJECT_ROOT / "data" / "qwen3.5-0.8b" / "config.json"
TINY_CHECKPOINT_NAME = "tiny-synthetic"


def notebook_mode() -> str:
    """"model_dir" (QWEN35_MODEL_DIR), "tiny" (QWEN35_NOTEBOOK_CONFIG=tiny) or "synthetic" (real shapes)."""
    if os.environ.get("QWEN35_MODEL_DIR"):
        return "model_dir"
    mode = os.environ.get("QWEN35_NOTEBOOK_CONFIG", "").strip().lower()
    if mode == "tiny":
        return "tiny"
    if mode not in ("", "default", "synthetic"):
        raise ValueError(f"QWEN35_NOTEBOOK_CONFIG={mode!r}: expected 'tiny' or unset")
    return "synthetic"


def is_tiny() -> bool:
    """True when the notebooks run on the tiny config (CI)."""
    return notebook_mode() == "tiny"


def notebook_config() -> Qwen35Config:
    """The config of the model a notebook uses, without writing or loading any weights."""
    mode = notebook_mode()
    if mode == "model_dir":
        return Qwen35Config.from_pretrained(os.environ["QWEN35_MODEL_DIR"])
    if mode == "tiny":
        return Qwen35Config.tiny()
    return Qwen35Config.from_pretrained(PUBLISHED_CONFIG)


def notebook_model_dir() -> Path:
    """The checkpoint directory a notebook should load (see the module docstring for the choice)."""
    mode = notebook_mode()
    if mode == "model_dir":
        path = Path(os.environ["QWEN35_MODEL_DIR"]).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"QWEN35_MODEL_DIR={path} has no config.json")
        return path
    if mode == "tiny":
        return ensure_synthetic_checkpoint(TINY_CHECKPOINT_NAME, Qwen35Config.tiny())
    return ensure_synthetic_checkpoint()


def readable_tokens(tokenizer, ids) -> str:
    """Decode token ids for display. Ids the tokenizer does not know (the padding rows of the 248,320-row
    vocabulary, which random weights happily produce) are shown as ``<id>`` instead of raising."""
    ids = [int(i) for i in ids]
    out, run = [], []
    for i in ids + [None]:
        if i is not None and i < tokenizer.vocab_size:
            run.append(i)
            continue
        if run:
            out.append(tokenizer.decode(run))
            run = []
        if i is not None:
            out.append(f"<{i}>")
    return "".join(out)


def fmt_bytes(n: float) -> str:
    """1234567 -> '1.23 MB' (decimal units, as bandwidths are quoted)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def format_table(rows, headers=None, floatfmt: str = ".3g") -> str:
    """A plain-text table: numbers right-aligned, floats formatted with ``floatfmt``, ints with separators."""

    def cell(v) -> str:
        if isinstance(v, bool) or v is None:
            return str(v)
        if isinstance(v, int):
            return f"{v:,}"
        if isinstance(v, float):
            return format(v, floatfmt)
        return str(v)

    table = ([[str(h) for h in headers]] if headers else []) + [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in table if i < len(r)) for i in range(max(len(r) for r in table))]
    lines = []
    for n, r in enumerate(table):
        header = bool(headers) and n == 0
        lines.append("  ".join(v.ljust(w) if header or not _looks_numeric(v) else v.rjust(w)
                               for v, w in zip(r, widths)).rstrip())
        if header:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _looks_numeric(s: str) -> bool:
    try:
        float(s.replace(",", "").split()[0])
        return True
    except (ValueError, IndexError):
        return False


def print_table(rows, headers=None, floatfmt: str = ".3g") -> None:
    print(format_table(rows, headers, floatfmt))


__all__ = ["PUBLISHED_CONFIG", "checkpoints_dir", "fmt_bytes", "format_table", "is_tiny", "notebook_config",
           "notebook_mode", "notebook_model_dir", "print_table", "readable_tokens"]
