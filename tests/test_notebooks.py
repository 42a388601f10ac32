"""Execute every chapter notebook top to bottom in fast mode, with the hidden exercise
solutions swapped in (so the exercise checks are tested too), as a student would: copied
alone into an empty directory, on a kernel whose `sora_mini` is the installed wheel (the
`wheel_venv` fixture), so nothing may lean on the repository's files. And check the
committed notebooks are clean: no outputs, a title, the Colab badge and setup cell of
`sora_mini.course`, and a parameters cell.

`python tests/test_notebooks.py` rewrites every notebook's badge and setup cell from
`sora_mini.course` (after changing the repository's address or the cell's template)."""

import json
import pathlib
import re
import shutil
import sys
import time

import nbformat
import pytest
from nbclient import NotebookClient

from sora_mini import course

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
    assert course.colab_badge(path.name) in first.source, "run `python tests/test_notebooks.py` to update the badge"
    assert "Runtime > Change runtime type" in first.source and "not been measured" in first.source
    assert "setup" in _tags(nb.cells[1]) and "google.colab" in nb.cells[1].source
    assert nb.cells[1].source == course.colab_setup_cell(), "run `python tests/test_notebooks.py` to update it"
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "../" not in code and "data/pretrained" not in code, "a notebook runs from any directory"
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


@pytest.fixture(scope="session")
def wheel_kernels(wheel_venv, tmp_path_factory) -> pathlib.Path:
    """A Jupyter path whose kernel "sora-wheel" runs the wheel's virtual environment."""
    jupyter_path = tmp_path_factory.mktemp("jupyter")
    spec = jupyter_path / "kernels" / "sora-wheel"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(wheel_venv.python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "sora-mini (installed wheel)", "language": "python"}))
    return jupyter_path


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_fast_mode(path, tmp_path, monkeypatch, record_property, wheel_kernels, wheel_venv):
    monkeypatch.setenv("SORA_MINI_FAST", "1")
    monkeypatch.setenv("SORA_MINI_STRICT_EXERCISES", "1")
    monkeypatch.setenv("SORA_MINI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("JUPYTER_PATH", str(wheel_kernels))
    monkeypatch.delenv("PYTHONPATH", raising=False)
    work = tmp_path / "work"  # the notebook alone, as a student's download
    work.mkdir()
    shutil.copy(path, work / path.name)
    nb = _with_solutions(nbformat.read(work / path.name, as_version=4))
    # The kernel must be the wheel's, not this checkout's editable install.
    nb.cells.insert(1, nbformat.v4.new_code_cell(
        "import sora_mini, sys\n"
        f"assert sora_mini.__file__.startswith({str(wheel_venv.root)!r}), sora_mini.__file__\n"
        f"assert sys.executable == {str(wheel_venv.python)!r}, sys.executable"))
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=900, kernel_name="sora-wheel", resources={"metadata": {"path": str(work)}}).execute()
    seconds = time.perf_counter() - t0
    record_property("notebook_seconds", round(seconds, 1))  # printed in the summary (conftest.py)
    assert seconds < 600, f"{path.name} took {seconds:.0f}s; fast mode must stay within minutes"
    assert "fast mode on" in "".join(o.get("text", "") for o in nb.cells[2].outputs)  # the setup cell's report


def sync_setup_cells(paths=NOTEBOOKS) -> None:
    """Rewrite each notebook's Colab badge and setup cell from `sora_mini.course`."""
    for path in paths:
        nb = json.loads(path.read_text())
        first = "".join(nb["cells"][0]["source"])
        badge = re.search(r"\[!\[Open In Colab\]\([^)]*\)\]\([^)]*\)", first)
        if badge:
            first = first.replace(badge.group(0), course.colab_badge(path.name))
        nb["cells"][0]["source"] = first.splitlines(keepends=True)
        nb["cells"][1]["source"] = course.colab_setup_cell().splitlines(keepends=True)
        nb["cells"][1]["metadata"].setdefault("tags", [])
        if "setup" not in nb["cells"][1]["metadata"]["tags"]:
            nb["cells"][1]["metadata"]["tags"].append("setup")
        with open(path, "w") as f:
            json.dump(nb, f, indent=1, ensure_ascii=False)
            f.write("\n")


if __name__ == "__main__":
    sync_setup_cells([pathlib.Path(p) for p in sys.argv[1:]] or NOTEBOOKS)
