import dataclasses
import glob
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import pytest

# Tests run on the CPU in fast mode; never reach for a hub.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("SORA_MINI_FAST", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def pytest_terminal_summary(terminalreporter):
    """Print how long each notebook took in fast mode (recorded by test_notebooks.py)."""
    rows = [(r.nodeid.split("[")[-1].rstrip("]"), dict(r.user_properties)["notebook_seconds"])
            for outcome in ("passed", "failed") for r in terminalreporter.stats.get(outcome, [])
            if r.when == "call" and "notebook_seconds" in dict(r.user_properties)]
    if rows:
        terminalreporter.section("notebook times (fast mode)")
        for name, seconds in sorted(rows):
            terminalreporter.write_line(f"{name:32} {seconds:7.1f} s")
        terminalreporter.write_line(f"{'total':32} {sum(s for _, s in rows):7.1f} s")


# ----------------------------------------------------------------------------------------
# The package as a user gets it: a wheel, installed into a fresh virtual environment.


@dataclasses.dataclass(frozen=True)
class WheelVenv:
    wheel: pathlib.Path  # the built wheel
    root: pathlib.Path  # the new virtual environment
    python: pathlib.Path  # its interpreter: sora_mini from the wheel, the rest from this environment

    def run(self, *args: str, cwd, timeout: float = 600) -> subprocess.CompletedProcess:
        """`python *args` in the new environment, from `cwd`."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        return subprocess.run([str(self.python), *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)


def _source_files() -> list[str]:
    """What a wheel is built from: pyproject.toml, README.md, LICENSE and the package's files,
    as git has them (tracked, or new and not ignored); without git, the package directory
    without caches."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.split("\0")
    except (OSError, subprocess.CalledProcessError):
        listed = [str(p.relative_to(ROOT)) for p in (ROOT / "sora_mini").rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts]
    top = {"pyproject.toml", "README.md"} | {os.path.basename(p) for p in glob.glob(str(ROOT / "LICENSE*"))}
    return sorted(f for f in listed if f and (f in top or f.startswith("sora_mini/")) and (ROOT / f).is_file())


@pytest.fixture(scope="session")
def wheel_venv(tmp_path_factory) -> WheelVenv:
    """Build the wheel from a clean copy of the repository, create a new virtual environment
    without pip, install the wheel into it (no dependencies, no index: nothing is
    downloaded) and let it see this environment's packages through a plain `.pth` path
    line (which does not run this environment's editable-install hook), so `import
    sora_mini` there is the wheel's copy."""
    base = tmp_path_factory.mktemp("wheel")
    source = base / "source"
    for f in _source_files():
        (source / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, source / f)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    build = subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(base / "dist"),
                                  str(source)], capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-3000:]
    wheel, = (base / "dist").glob("sora_mini-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # Install before the .pth exists, so pip sees an empty environment (not this one's sora-mini).
    install = subprocess.run(pip + ["--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
                             capture_output=True, text=True)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-3000:]
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (pathlib.Path(site) / "sora_mini_test_deps.pth").write_text("".join(f"{p}\n" for p in ours))
    return WheelVenv(wheel=wheel, root=venv, python=python)
