"""The training loop every model of the course shares (chapters 02, 06, 07, 09).

One optimizer builder (AdamW with linear warm-up and cosine decay, optional gradient
clipping) and one loop: `run_loop` calls a jitted step for steps `start..end`, shows a tqdm
bar, logs every `log_every` steps (to `log.jsonl` when the run has a directory, the wall
time accumulating across resumes), saves an Orbax checkpoint every `Checkpoints.every`
steps and at the end, and stops with `FloatingPointError` before a non-finite model is
ever saved. A run killed at step `s` and resumed from its checkpoint replays exactly the
batches and keys an uninterrupted run would have used, because every step's batch and key
are functions of the step number alone."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from sora_mini import store


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What every training run of the course sets: its length and batch, AdamW and its
    schedule (`make_optimizer`), how often it logs, its seed. Each model's training config
    extends it and sets its own defaults."""

    steps: int = 1000
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    grad_clip: float = 0.0  # clip the gradient to this global norm (0: no clipping)
    log_every: int = 10
    seed: int = 0


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
    """AdamW for a training config: linear warm-up (at most half the run), then cosine
    decay to 1% of the peak, after clipping the gradient when `grad_clip` is set."""
    warmup = min(tc.warmup_steps, tc.steps // 2)
    schedule = optax.warmup_cosine_decay_schedule(0.0, tc.learning_rate, warmup_steps=warmup,
                                                  decay_steps=max(tc.steps, warmup + 1),
                                                  end_value=tc.learning_rate * 0.01)
    adamw = optax.adamw(schedule, weight_decay=tc.weight_decay)
    return optax.chain(optax.clip_by_global_norm(tc.grad_clip), adamw) if tc.grad_clip else adamw


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    """This machine's float32 matmul throughput in FLOP/s (an `n x n` product, compiled,
    best of `repeats`): the yardstick for a training step's achieved FLOP/s and for
    scaling `train-all`'s time estimate to a faster or slower machine."""
    a = jax.random.normal(jax.random.key(0), (n, n))
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


# ----------------------------------------------------------------------------------------
# Runs that resume: settings that must match, and the latest checkpoint.


def check_run_settings(out_dir: str, run: dict, defaults: dict | None = None) -> str:
    """Refuse to resume a run made with other settings (it would fail deep inside Orbax,
    or worse, not fail); returns the path of `train_config.json`, written by the caller
    once the run has started. `defaults`: the values of settings (or of fields of a
    settings dict) added since older runs were saved."""
    config_path = os.path.join(out_dir, "train_config.json")
    if os.path.exists(config_path):
        saved = store.read_json(config_path)
        previous = {**(defaults or {}), **saved}
        for part, fields in (defaults or {}).items():
            if isinstance(fields, dict) and isinstance(saved.get(part), dict):
                previous[part] = {**fields, **saved[part]}
        if previous != run:
            changed = []
            for part in [*run, *(k for k in previous if k not in run)]:
                old, new = previous.get(part), run.get(part)
                if old == new:
                    continue
                if isinstance(old, dict) and isinstance(new, dict):
                    changed += [f"{part}.{k}: {old.get(k)!r} -> {v!r}" for k, v in new.items() if old.get(k) != v]
                else:
                    changed.append(f"{part}: {old!r} -> {new!r}")
            raise ValueError(f"{out_dir} holds a run with different settings ({'; '.join(changed)}); "
                             "resume it with the same settings or choose another --out")
    return config_path


def run_settings(**parts) -> dict:
    """A run's settings as plain JSON values (tuples become lists), as `train_config.json` holds them."""
    return json.loads(json.dumps({k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
                                  for k, v in parts.items()}))


def restore_latest(manager: ocp.CheckpointManager, out_dir: str, **targets) -> tuple[int, dict | None]:
    """`(step, states)` of the run's latest checkpoint, restored into `targets`' shapes, or
    `(0, None)` for a fresh run."""
    step = manager.latest_step()
    if step is None:
        return 0, None
    restored = store.restore_checkpoint(manager, step, **targets)
    print(f"resumed from step {step} in {out_dir}")
    return step, restored


# ----------------------------------------------------------------------------------------
# The loop.


@dataclasses.dataclass(frozen=True)
class Utilisation:
    """What `run_loop` needs to log a step's model FLOPs and the MFU (model FLOPs
    utilisation: achieved model FLOP/s over `peak` FLOP/s) of each logged stretch."""

    flops_per_step: float
    peak: float


@dataclasses.dataclass(frozen=True)
class Checkpoints:
    """Where and how often `run_loop` saves: `save(step)` every `every` steps and at the end."""

    manager: ocp.CheckpointManager
    save: Callable[[int], None]
    every: int


def run_loop(run_step: Callable[[int], dict], *, steps: int, desc: str, start: int = 0, stop_after: int | None = None,
             log_every: int = 10, out_dir: str | None = None, checkpoints: Checkpoints | None = None,
             describe: Callable[[dict], dict] | None = None, log_first: bool = False,
             progress: bool = True, utilisation: Utilisation | None = None) -> list[dict]:
    """Run `run_step(step) -> metrics` (a dict with a "loss") for steps `start..end`, where
    `end` is `steps`, or `start + stop_after` (how tests simulate a kill). Returns the rows
    logged by this call: `{"step": 1-based, "time": seconds, **metrics, **describe(metrics)}`,
    every `log_every` steps, at the end, and with `log_first` after the first step too.
    With `utilisation`, rows also hold `model_flops` (a step's) and `mfu` over the steps
    since the row before (the first stretch includes compiling)."""
    end = steps if stop_after is None else min(steps, start + stop_after)
    log_path = None if out_dir is None else os.path.join(out_dir, "log.jsonl")
    t0 = time.perf_counter()
    if log_path is not None:
        store.truncate_log(log_path, start)
        earlier = store.read_log(out_dir) if start and os.path.exists(log_path) else []
        t0 -= earlier[-1]["time"] if earlier else 0.0
    rows = []
    last_step, last_time = start, time.perf_counter()
    try:
        with open(log_path, "a") if log_path else contextlib.nullcontext() as log:
            bar = tqdm(range(start, end), initial=start, total=steps, desc=desc, disable=not progress)
            for step in bar:
                metrics = run_step(step)
                save_now = checkpoints is not None and ((step + 1) % checkpoints.every == 0 or step + 1 == end)
                first = log_first and step == start
                if (step + 1) % log_every == 0 or step + 1 == end or save_now or first:  # never save a non-finite model
                    m = {k: float(v) for k, v in metrics.items()}
                    if not np.isfinite(m["loss"]):
                        raise FloatingPointError(_non_finite(m["loss"], step + 1, checkpoints, out_dir))
                    m = describe(m) if describe else m
                    if utilisation is not None:
                        now = time.perf_counter()
                        achieved = utilisation.flops_per_step * (step + 1 - last_step) / max(now - last_time, 1e-9)
                        m = {**m, "model_flops": utilisation.flops_per_step, "mfu": achieved / utilisation.peak}
                        last_step, last_time = step + 1, now
                    rows.append({"step": step + 1, "time": round(time.perf_counter() - t0, 2), **m})
                    if log is not None:
                        log.write(json.dumps(rows[-1]) + "\n")
                        log.flush()
                    bar.set_postfix({k: f"{m[k]:.4f}" if k == "loss" else f"{m[k]:.3f}"
                                     for k in ("loss", "psnr", "motion_acc") if k in m})
                if save_now:
                    checkpoints.save(step + 1)
    finally:  # also on errors and Ctrl-C: finish the pending save, release the manager
        if checkpoints is not None:
            checkpoints.manager.wait_until_finished()
            checkpoints.manager.close()
    return rows


def _non_finite(loss: float, step: int, checkpoints: Checkpoints | None, out_dir: str | None) -> str:
    message = f"loss became {loss} at step {step}"
    if checkpoints is None:
        return message
    checkpoints.manager.wait_until_finished()
    return f"{message}; the last good checkpoint is step {checkpoints.manager.latest_step()} in {out_dir}"
