"""Helpers every notebook shares: the fast-mode switch and self-checking exercises."""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable

import jax


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
