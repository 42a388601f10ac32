"""Helpers every notebook shares: the Colab setup cell and the device report, the
fast-mode switch and self-checking exercises."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import traceback
from collections.abc import Callable

import jax

# ----------------------------------------------------------------------------------------
# Colab. Every notebook's second cell is `colab_setup_cell()`, word for word, and its
# badge is `colab_badge(name)` (tests/test_notebooks.py checks both), so the repository's
# address lives here only.

REPOSITORY = "sora-mini/sora-mini"  # github.com/<REPOSITORY>: the badges and the Colab install
JAX_MINIMUM = "0.7.1"  # pyproject.toml's `jax>=` (a test checks): older JAX is replaced on Colab

# The setup cell runs before sora_mini is installed, so it cannot import anything from it
# until the last lines. On Colab it installs the package without extras (Colab has
# matplotlib and ipykernel) and keeps Colab's JAX, built for the runtime's GPU or TPU,
# when it is new enough: a constraints file pins jax, jaxlib and any CUDA plugin or libtpu
# at the installed versions so pip cannot replace them. An older JAX is upgraded together
# with the package, with its CUDA 12 or TPU build when the runtime has a GPU or a TPU.
COLAB_SETUP = """\
# Setup. Locally (`make lab`) sora-mini is installed already and this cell only says which
# devices JAX sees. On Colab it installs sora-mini from GitHub (about a minute) and keeps
# Colab's own JAX, which matches the runtime's GPU or TPU, when it is new enough.
import sys

if "google.colab" in sys.modules:
    import glob, importlib.metadata, os, re, subprocess
    REPOSITORY, JAX_MINIMUM = "@REPOSITORY@", "@JAX_MINIMUM@"
    version = lambda v: tuple(int(x) for x in re.findall(r"\\d+", v)[:3])
    installed = {d.metadata["Name"].lower().replace("_", "-"): d.version
                 for d in importlib.metadata.distributions() if d.metadata["Name"]}
    args = [f"sora-mini @ git+https://github.com/{REPOSITORY}"]
    if version(installed.get("jax", "0")) >= version(JAX_MINIMUM):  # keep it: pin JAX and its plugins
        pins = [f"{n}=={v}" for n, v in installed.items()
                if re.fullmatch(r"jax|jaxlib|jax-cuda\\d+-(plugin|pjrt)|libtpu(-nightly)?", n)]
        with open("/tmp/sora-mini-keep-jax.txt", "w") as f:
            f.write("\\n".join(pins) + "\\n")
        args += ["-c", "/tmp/sora-mini-keep-jax.txt"]
    elif glob.glob("/dev/accel*") or os.environ.get("COLAB_TPU_ADDR") or os.environ.get("TPU_ACCELERATOR_TYPE"):
        args.append("jax[tpu]")
    elif subprocess.run("nvidia-smi -L", shell=True, capture_output=True, text=True).stdout.startswith("GPU"):
        args.append("jax[cuda12]")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args], check=True)

from sora_mini import course

print(course.report_devices())"""


def colab_setup_cell() -> str:
    """The source of every notebook's setup cell (the second cell, tagged `setup`)."""
    return COLAB_SETUP.replace("@REPOSITORY@", REPOSITORY).replace("@JAX_MINIMUM@", JAX_MINIMUM)


def colab_badge(notebook: str) -> str:
    """The "Open in Colab" badge of `notebook` (a file name in `notebooks/`), in Markdown."""
    return ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{REPOSITORY}/blob/main/notebooks/{notebook})")


def requested_accelerator() -> str | None:
    """`"tpu"` or `"gpu"` when this machine has one (what a Colab user picks in Runtime >
    Change runtime type), else None: a TPU shows as `/dev/accel*` or Colab's
    `COLAB_TPU_ADDR` / `TPU_ACCELERATOR_TYPE`, an NVIDIA GPU as `COLAB_GPU` or in `nvidia-smi -L`."""
    if glob.glob("/dev/accel*") or os.environ.get("COLAB_TPU_ADDR") or os.environ.get("TPU_ACCELERATOR_TYPE"):
        return "tpu"
    if os.environ.get("COLAB_GPU", "").strip() not in ("", "0"):
        return "gpu"
    if shutil.which("nvidia-smi"):
        try:
            listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            listed = ""
        if listed.startswith("GPU"):
            return "gpu"
    return None


def report_devices() -> str:
    """Which backend and devices JAX got, whether fast mode is on, and a warning when the
    machine has a GPU or TPU that JAX is not using (then every chapter runs its small CPU
    sizes, and a full-size run would take hours)."""
    backend, devices = jax.default_backend(), jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    lines = [f"JAX {jax.__version__}: {backend}, {len(devices)} device{'s' * (len(devices) != 1)} "
             f"({', '.join(kinds)}); fast mode {'on' if fast_mode() else 'off'}"]
    wanted = requested_accelerator()
    if wanted and backend == "cpu":
        fix = ('pip install -U "jax[tpu]"' if wanted == "tpu" else 'pip install -U "jax[cuda12]"')
        lines.append(f"WARNING: this machine has a {wanted.upper()}, but JAX is running on the CPU, so the chapters "
                     f"stay in fast mode. Install JAX's {wanted.upper()} build ({fix}), restart the session "
                     "(Runtime > Restart session) and run this cell again.")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# Fast mode and exercises.


def fast_mode() -> bool:
    """Whether notebooks should use their small CPU/CI sizes.

    `SORA_MINI_FAST=1` or `0` decides; otherwise fast mode is on when JAX sees only a CPU,
    so a laptop gets minutes-long chapters and an accelerator gets the real sizes."""
    env = os.environ.get("SORA_MINI_FAST")
    if env is not None:
        return env.strip().lower() not in ("0", "false", "no", "")
    return jax.default_backend() == "cpu"


def check_exercise(name: str, test: Callable[[], None]) -> None:
    """Run an exercise's checks and say how it went, without stopping the notebook.

    `test` calls the student's code and asserts on it. An exercise still raising
    `NotImplementedError` counts as not attempted. With `SORA_MINI_STRICT_EXERCISES=1`
    (the test suite, which swaps in the hidden solutions) a failure raises."""
    strict = os.environ.get("SORA_MINI_STRICT_EXERCISES") == "1"
    try:
        test()
    except NotImplementedError:
        if strict:
            raise
        print(f"[ ] {name}: not attempted yet (the solution is hidden in the cell below)")
        return
    except AssertionError as e:
        if strict:
            raise
        print(f"[x] {name}: not quite. {e}")
        return
    except Exception:
        if strict:
            raise
        print(f"[x] {name}: your code raised an error:")
        traceback.print_exc(limit=2)
        return
    print(f"[ok] {name}: correct!")
