"""Execute every tutorial notebook top to bottom on the tiny config (as CI does), in a temporary copy.

Each ``notebooks/0*.ipynb`` runs with nbclient under the ``python3`` kernel of this interpreter, with
``QWEN35_NOTEBOOK_CONFIG=tiny`` (tiny synthetic checkpoint), ``MPLBACKEND=Agg`` and the rest of the environment
passed through (so ``NUMBA_ENABLE_CUDASIM=1`` makes the kernel notebooks run on the CUDA simulator). Outputs are
never written back into the repository. A failing cell fails the test with that cell's source and error.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))
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
    assert NOTEBOOKS, "no notebooks/0*.ipynb found"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, notebook_env, capsys):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from nbclient.exceptions import CellExecutionError

    work = tmp_path / "notebooks"
    work.mkdir()
    copy = work / path.name
    shutil.copy(path, copy)
    nb = nbformat.read(copy, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs, f"{path.name}: committed with outputs; clear them before committing"
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", allow_errors=False,
        resources={"metadata": {"path": str(work)}},
    )
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as e:
        pytest.fail(f"{path.name} failed:\n{e}", pytrace=False)
    finally:
        nbformat.write(nb, copy)  # the executed copy stays in tmp_path for inspection
    with capsys.disabled():
        print(f"\n[{path.name}] ran in {time.perf_counter() - start:.1f} s ({sys.executable})")
