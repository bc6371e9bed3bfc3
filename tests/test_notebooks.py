"""Execute every tutorial notebook (notebooks/NN_*.py, jupytext percent format) top to bottom.

Each notebook is converted with jupytext and run with nbclient in a python3 kernel; any cell error
fails the test. New notebooks are picked up by the glob. Marked `notebooks` (and `embedded`: they
load SmolLM2); run only these with `pytest -m notebooks`. The kernel gets STEERLENS_THREADS from
OMP_NUM_THREADS so CI's one-thread setting reaches torch inside the notebook. Set
STEERLENS_NOTEBOOK_OUT=dir to keep the executed notebooks (with outputs) for inspection.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))
TIMEOUT_S = int(os.environ.get("STEERLENS_NOTEBOOK_TIMEOUT", "900"))  # per cell

pytestmark = [pytest.mark.notebooks, pytest.mark.embedded]


def test_notebooks_found():
    assert len(NOTEBOOKS) >= 4, f"expected the tutorial notebooks in notebooks/, found {NOTEBOOKS}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path, monkeypatch):
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    nb = jupytext.read(path)
    assert any(c.cell_type == "markdown" for c in nb.cells), f"{path.name} has no prose cells"
    assert any(c.cell_type == "code" for c in nb.cells), f"{path.name} has no code cells"
    threads = os.environ.get("STEERLENS_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    monkeypatch.setenv("STEERLENS_THREADS", threads)
    monkeypatch.setenv("OMP_NUM_THREADS", threads)  # torch in the kernel reads this at start-up
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    client = nbclient.NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError (with the traceback) on the first failing cell
    print(f"{path.name}: executed in {time.perf_counter() - start:.1f} s")
    keep = os.environ.get("STEERLENS_NOTEBOOK_OUT")  # optional: keep the executed .ipynb
    if keep:
        import nbformat

        Path(keep).mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, str(Path(keep) / f"{path.stem}.ipynb"))
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
