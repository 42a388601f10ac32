"""Execute every chapter notebook top to bottom in fast mode, with the hidden exercise
solutions swapped in (so the exercise checks are tested too), and check the committed
notebooks are clean: no outputs, a title, a Colab badge, a setup and a parameters cell."""

import pathlib
import re
import time

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SOLUTION = re.compile(r"```python\n(.*?)```", re.S)


def _tags(cell):
    return set(cell.get("metadata", {}).get("tags", []))


def test_there_are_notebooks():
    names = [nb.name for nb in NOTEBOOKS]
    assert "00_jax_primer.ipynb" in names and "01_shapes_world.ipynb" in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs, f"{path.name} has committed outputs; clear them"
            assert cell.execution_count is None
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    assert "colab.research.google.com/github/" in first.source and path.name in first.source
    assert "setup" in _tags(nb.cells[1]) and "google.colab" in nb.cells[1].source
    assert "parameters" in _tags(nb.cells[2]) and "fast_mode()" in nb.cells[2].source
    exercises = [c for c in nb.cells if "exercise" in _tags(c)]
    solutions = [c for c in nb.cells if "solution" in _tags(c)]
    assert exercises and len(exercises) == len(solutions), "each exercise needs a hidden solution"
    assert all("<details>" in s.source for s in solutions)


def _with_solutions(nb):
    """Replace each exercise cell by the code of the next solution cell."""
    cells = nb.cells
    for i, cell in enumerate(cells):
        if "exercise" in _tags(cell):
            sol = next(c for c in cells[i + 1:] if "solution" in _tags(c))
            cell.source = SOLUTION.search(sol.source).group(1)
    return nb


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_fast_mode(path, tmp_path, monkeypatch, record_property):
    monkeypatch.setenv("SORA_MINI_FAST", "1")
    monkeypatch.setenv("SORA_MINI_STRICT_EXERCISES", "1")
    monkeypatch.setenv("SORA_MINI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = _with_solutions(nbformat.read(path, as_version=4))
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - t0
    record_property("notebook_seconds", round(seconds, 1))  # printed in the summary (conftest.py)
    assert seconds < 600, f"{path.name} took {seconds:.0f}s; fast mode must stay within minutes"
