"""The project's promises about itself: pip and conda agree, the README's commands are what
CI runs, and the command line answers."""

import ast
import json
import importlib.metadata
import pathlib
import re
import subprocess
import sys
import tomllib

import pytest
import yaml

from sora_mini import course

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _normalise(req: str) -> str:
    return re.sub(r"\s+", "", req).lower()


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_reqs = {_normalise(r) for r in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        pip_reqs |= {_normalise(r) for r in extra}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_reqs = {_normalise(r) for r in pip_section if not r.startswith("-e")}
    assert conda_reqs == pip_reqs, (f"only in environment.yml: {sorted(conda_reqs - pip_reqs)}; "
                                    f"only in pyproject.toml: {sorted(pip_reqs - conda_reqs)}")
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert python.replace(" ", "") == "python" + project["requires-python"]
    assert all(re.search(r">=\d", r) for r in project["dependencies"]), "every dependency needs a lower bound"


def _imported_top_level_packages() -> set[str]:
    """The third-party top-level packages `sora_mini` imports anywhere (function-local too)."""
    names = set()
    for path in (ROOT / "sora_mini").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "sora_mini"}


def test_runtime_dependencies_are_exactly_what_the_package_imports():
    declared = {re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0].lower().replace("_", "-")
                for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    providers = importlib.metadata.packages_distributions()  # import name -> distributions
    imported = {}
    for name in _imported_top_level_packages():
        assert name in providers, f"sora_mini imports {name}, which no installed distribution provides"
        imported[name] = {d.lower().replace("_", "-") for d in providers[name]}
    undeclared = sorted(n for n, dists in imported.items() if not dists & declared)
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    unused = sorted(d for d in declared if not any(d in dists for dists in imported.values()))
    assert not unused, f"declared but never imported by sora_mini: {unused}"


def test_readme_quickstart_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme and "make lab" in readme
    assert "colab" in readme.lower()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^test:.*\n\t.*pytest", makefile, re.M)
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        assert nb.name in readme, f"README's chapter list misses {nb.name}"


def test_cli_help_and_errors(tmp_path):
    out = subprocess.run([sys.executable, "-m", "sora_mini", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "build-data" in out.stdout and "demo" in out.stdout
    out = subprocess.run([sys.executable, "-m", "sora_mini", "build-data", "--frames", "16",
                          "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert out.returncode == 2 and "1 + k * temporal_factor" in out.stderr
    assert not (tmp_path / "x").exists()


def test_cli_world_grid_writes_grid_and_captions(tmp_path):
    out = subprocess.run([sys.executable, "-m", "sora_mini", "world-grid", "--data", str(tmp_path / "data"),
                          "--out", str(tmp_path / "out"), "--splits", "train=20,validation=4",
                          "--rows", "2", "--cols", "3"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    from sora_mini import video

    grid = video.read_video(tmp_path / "out" / "shapes_world_grid.mp4")
    assert grid.shape == (17, 2 * (3 * 32 + 2) + 2, 3 * (3 * 32 + 2) + 2, 3)
    captions = (tmp_path / "out" / "captions.txt").read_text().splitlines()
    assert len(captions) == 6 and captions[0].startswith("row 1, col 1: ")
    assert (tmp_path / "out" / "shapes_world_grid.gif").stat().st_size > 1000
    other = subprocess.run([sys.executable, "-m", "sora_mini", "world-grid", "--data", str(tmp_path / "data"),
                            "--out", str(tmp_path / "out2"), "--size", "64"], capture_output=True, text=True)
    assert other.returncode == 2 and "differs in height, width" in other.stderr


def test_fast_mode_switch(monkeypatch):
    monkeypatch.setenv("SORA_MINI_FAST", "0")
    assert course.fast_mode() is False
    monkeypatch.setenv("SORA_MINI_FAST", "1")
    assert course.fast_mode() is True
    monkeypatch.delenv("SORA_MINI_FAST")
    assert course.fast_mode() is True  # tests run on the CPU


def test_check_exercise_reports_and_strict_mode_raises(monkeypatch, capsys):
    def wrong():
        assert 1 + 1 == 3, "arithmetic"

    def todo():
        raise NotImplementedError

    monkeypatch.delenv("SORA_MINI_STRICT_EXERCISES", raising=False)
    course.check_exercise("ok", lambda: None)
    course.check_exercise("wrong", wrong)
    course.check_exercise("todo", todo)
    printed = capsys.readouterr().out
    assert "[ok] ok" in printed and "[x] wrong: not quite. arithmetic" in printed
    assert "[ ] todo: not attempted" in printed
    monkeypatch.setenv("SORA_MINI_STRICT_EXERCISES", "1")
    with pytest.raises(AssertionError):
        course.check_exercise("wrong", wrong)


def test_code_is_lint_clean():
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "sora_mini", "tests", "benchmarks"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:]


def test_colab_keeps_a_jax_as_new_as_the_package_needs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    jax_req = next(r for r in project["dependencies"] if re.match(r"jax\s*>=", r))
    assert jax_req.split(">=")[1].strip() == course.JAX_MINIMUM
    cell = course.colab_setup_cell()
    assert f'"{course.REPOSITORY}", "{course.JAX_MINIMUM}"' in cell and "@" + "REPOSITORY@" not in cell
    assert "[notebooks]" not in cell and '"-c"' in cell  # no extras; Colab's JAX is pinned by a constraints file
    compile(cell, "setup", "exec")


@pytest.fixture
def machine(monkeypatch):
    """A machine with no accelerator in sight, whose JAX backend a test sets."""
    for name in ("COLAB_GPU", "COLAB_TPU_ADDR", "TPU_ACCELERATOR_TYPE", "SORA_MINI_FAST"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(course.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(course.shutil, "which", lambda name: None)

    def set_backend(backend: str):
        monkeypatch.setattr(course.jax, "default_backend", lambda: backend)

    return set_backend


def test_report_devices_says_what_jax_got(machine, monkeypatch):
    machine("cpu")
    report = course.report_devices()
    assert ": cpu, 1 device (cpu); fast mode on" in report and "WARNING" not in report
    monkeypatch.setenv("COLAB_GPU", "0")  # Colab's CPU runtime
    assert "WARNING" not in course.report_devices()


@pytest.mark.parametrize("asked", ["COLAB_GPU", "nvidia-smi", "COLAB_TPU_ADDR", "TPU_ACCELERATOR_TYPE", "/dev/accel0"])
def test_report_devices_warns_when_an_accelerator_was_asked_for_but_jax_got_the_cpu(machine, monkeypatch, asked):
    if asked == "nvidia-smi":
        monkeypatch.setattr(course.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
        monkeypatch.setattr(course.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
            a, 0, stdout="GPU 0: Tesla T4 (UUID: GPU-1)\n"))
    elif asked.startswith("/dev/"):
        monkeypatch.setattr(course.glob, "glob", lambda pattern: [asked])
    else:
        monkeypatch.setenv(asked, "1")
    kind = "GPU" if asked in ("COLAB_GPU", "nvidia-smi") else "TPU"
    assert course.requested_accelerator() == kind.lower()
    machine("cpu")
    report = course.report_devices()
    assert f"WARNING: this machine has a {kind}, but JAX is running on the CPU" in report
    assert f"jax[{'cuda12' if kind == 'GPU' else 'tpu'}]" in report and "Restart session" in report
    machine(kind.lower())  # JAX got it: no warning, and the chapters run their full sizes
    report = course.report_devices()
    assert f": {kind.lower()}, " in report and "fast mode off" in report and "WARNING" not in report


def test_nvidia_smi_without_a_gpu_is_no_gpu(machine, monkeypatch):
    monkeypatch.setattr(course.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(course.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 9, stdout="NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n"))
    assert course.requested_accelerator() is None


def test_nothing_tells_users_to_fetch_weights_with_git_lfs():
    texts = [p for p in (ROOT / "sora_mini").glob("*.py")] + sorted((ROOT / "notebooks").glob("*.ipynb"))
    texts += [ROOT / "README.md"]
    assert not [str(p) for p in texts if "git lfs" in p.read_text().lower()]
    assert not (ROOT / "data" / "pretrained").exists()  # the shipped models live in sora_mini/pretrained/


def test_results_page_is_generated_from_the_benchmark_results():
    """docs/RESULTS.md is exactly what benchmarks/write_results.py makes of benchmarks/results/."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import write_results
    finally:
        sys.path.pop(0)
    results = {p.stem: json.loads(p.read_text()) for p in sorted((ROOT / "benchmarks" / "results").glob("*.json"))}
    assert results, "benchmarks/results/ holds no measurements"
    assert (ROOT / "docs" / "RESULTS.md").read_text() == write_results.render(results), \
        "docs/RESULTS.md is stale: run python benchmarks/write_results.py"
