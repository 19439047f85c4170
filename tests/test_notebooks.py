"""The tutorial notebooks: each has one source, ``notebooks/NN_name.py`` (jupytext percent format), and a paired
``NN_name.ipynb`` generated from it (``make notebooks``), committed without outputs.

* every pair is in sync (same cells, same sources) and the ``.ipynb`` has no outputs;
* every notebook runs top to bottom on the tiny config (as CI does): the source is executed with nbclient under
  the ``python3`` kernel of this interpreter, in a temporary directory, with ``QWEN35_NOTEBOOK_CONFIG=tiny``
  (tiny synthetic checkpoint), ``MPLBACKEND=Agg`` and the rest of the environment passed through (so
  ``NUMBA_ENABLE_CUDASIM=1`` makes the kernel notebooks run on the CUDA simulator). A failing cell fails the test
  with that cell's source and error.

Any ``notebooks/[0-9][0-9]_*.py`` is picked up: a new notebook is covered once its file exists.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
CELL_TIMEOUT_S = 600


@pytest.fixture
def notebook_env(monkeypatch):
    """The kernel inherits os.environ: the tiny config, a headless matplotlib, the repo on the path."""
    monkeypatch.setenv("QWEN35_NOTEBOOK_CONFIG", "tiny")
    monkeypatch.delenv("QWEN35_MODEL_DIR", raising=False)  # real weights would make CI run for hours
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")  # quiet ipykernel's debugger warning


def test_notebooks_found():
    assert SOURCES, "no notebooks/NN_*.py found"
    strays = sorted({p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")} - {p.stem for p in SOURCES})
    assert not strays, f"notebooks without a .py source: {strays} (jupytext --to py:percent notebooks/NAME.ipynb)"


def _cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source) for c in nb.cells]


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_pair_in_sync_without_outputs(source):
    jupytext = pytest.importorskip("jupytext")
    nbformat = pytest.importorskip("nbformat")
    ipynb = source.with_suffix(".ipynb")
    fix = f"run `make notebooks` (jupytext --to ipynb --update {source.relative_to(ROOT)})"
    assert ipynb.is_file(), f"{ipynb.name} is missing: {fix}"
    paired = nbformat.read(ipynb, as_version=4)
    assert _cells(paired) == _cells(jupytext.read(source)), f"{ipynb.name} differs from {source.name}: {fix}"
    for cell in paired.cells:
        if cell.cell_type == "code":
            assert not cell.outputs, f"{ipynb.name}: committed with outputs; {fix} clears them"


@pytest.mark.parametrize("source", SOURCES, ids=[p.stem for p in SOURCES])
def test_notebook_runs(source, tmp_path, notebook_env, capsys):
    jupytext = pytest.importorskip("jupytext")
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from nbclient.exceptions import CellExecutionError

    work = tmp_path / "notebooks"  # notebooks find data/ and each other relative to their directory
    work.mkdir()
    nb = jupytext.read(source)
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", allow_errors=False,
        resources={"metadata": {"path": str(work)}},
    )
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as e:
        pytest.fail(f"{source.name} failed:\n{e}", pytrace=False)
    finally:
        nbformat.write(nb, work / source.with_suffix(".ipynb").name)  # the executed copy, for inspection
    with capsys.disabled():
        print(f"\n[{source.name}] ran in {time.perf_counter() - start:.1f} s ({sys.executable})")
