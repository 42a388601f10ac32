"""Saving and loading: atomic exports, parameter files, configs, JSON and logs, checkpoints.

Every model the course ships (the VAE, the text-to-video model and its experts, the
classifiers) is a directory written by `exporting` and read by `read_config` and
`restore_params`:

    <model>/config.json    the config dataclass as JSON (`load_config` rebuilds it)
    <model>/params/        the parameters, Orbax, at the dtype the config.json records
    <model>/manifest.json  how it was made and what it measured
    <model>/log.jsonl      the training log, one JSON object a logged step

A training run is a directory of Orbax checkpoints (`checkpoint_manager`) and a log.

The models the course ships live inside the package, in `sora_mini/pretrained/<name>/`,
and install with it (the wheel carries them): `resolve_pretrained("tiny")` finds them
from any directory, so every loader takes a registered name or a path."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.resources
import json
import os
import re
import shutil
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

PRETRAINED_DTYPE = jnp.float16  # shipped weights: half the size, and sampling cannot tell the difference


def count_params(model: nnx.Module) -> int:
    """The number of trainable parameters (`nnx.Param` leaves) of `model`."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


# ----------------------------------------------------------------------------------------
# JSON, configs and logs.


def write_json(path: str, obj) -> None:
    """Write `obj` as indented JSON through a temporary file: a reader never sees half a file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def config_from_dict(cls, raw: dict):
    """A config dataclass from its JSON form (lists, which JSON makes of tuples, become tuples)."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


def read_config(directory: str, what: str, hint: str) -> dict:
    """`directory/config.json` as a dict; `FileNotFoundError` naming `what` is missing and `hint`."""
    path = os.path.join(os.path.abspath(os.fspath(directory)), "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no {what} at {os.path.dirname(path)} (expected config.json and params/): {hint}")
    return read_json(path)


def read_rows(path: str) -> list[dict]:
    """The rows of a JSON-lines file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_log(run_dir: str) -> list[dict]:
    """The rows of `run_dir/log.jsonl`."""
    return read_rows(os.path.join(run_dir, "log.jsonl"))


def truncate_log(path: str, step: int) -> None:
    """Drop log lines past `step`, so a resumed run's log has no duplicated steps."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(path, "w") as f:
        f.writelines(lines)


def write_log(path: str, rows: list[dict]) -> None:
    with open(path, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


# ----------------------------------------------------------------------------------------
# The shipped models, by name.

# The package's own `pretrained/` directory (in the wheel, or in the repository for an
# editable install). Each model in it is an export (`config.json`, `params/`, ...), or a
# text-to-video model's directory of them (`dit/`, `vae/`, `low_noise/`, `guidance/`).
PRETRAINED_ROOT = os.fspath(importlib.resources.files("sora_mini").joinpath("pretrained"))
_NAME = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")
BIGGER_MODELS = ("A bigger model would not ship inside the package: it would be published as a release asset "
                 "of the repository or a Hugging Face Hub repository and resolved by name into a local cache; "
                 "nothing downloads one yet, so train it (`python -m sora_mini train-all --preset small`) and "
                 "pass its export directory")


def _is_model(directory: str) -> bool:
    return (os.path.exists(os.path.join(directory, "config.json"))
            or os.path.exists(os.path.join(directory, "dit", "config.json")))


def pretrained_names() -> list[str]:
    """The registered names `resolve_pretrained` knows: each model shipped in the package
    (`"classifier"`, `"tiny"`) and each part of one (`"tiny/vae"`, `"tiny/dit"`, ...)."""
    names = []
    for root, dirs, _ in os.walk(PRETRAINED_ROOT):
        dirs[:] = sorted(d for d in dirs if d != "params")
        if root != PRETRAINED_ROOT and _is_model(root):
            names.append(os.path.relpath(root, PRETRAINED_ROOT).replace(os.sep, "/"))
    return sorted(names)


def is_pretrained_name(name_or_path) -> bool:
    """Whether `name_or_path` is a registered name (`pretrained_names()`) and no existing path."""
    raw = os.fspath(name_or_path)
    return not os.path.isabs(raw) and not os.path.exists(raw) and raw.strip("/") in pretrained_names()


def resolve_pretrained(name_or_path, part: str | None = None, *, what: str = "model", hint: str = "") -> str:
    """The directory a model is loaded from, as an absolute path.

    - An existing path is returned as it is (made absolute), whatever it holds: the loader
      decides whether it is an export, a training run or nothing it can read.
    - A registered name (`pretrained_names()`: `"tiny"`, `"classifier"`, `"tiny/vae"`)
      is the model shipped in the package, `PRETRAINED_ROOT/<name>`, found from any
      directory. `part` (`"vae"`, `"dit"`, `"guidance"`, ...) picks that part of a whole
      text-to-video model: `resolve_pretrained("tiny", "vae")` is `tiny/vae`, and so is
      `resolve_pretrained("tiny/vae", "vae")`.
    - Anything else raises `FileNotFoundError` saying "no pretrained `what` at ...",
      naming the argument, listing the registered names and adding `hint`.

    Only the `tiny` models ship (about 16 MB). A bigger model does not belong in the wheel:
    it would be published as a release asset of the repository or as a Hugging Face Hub
    repository, downloaded once by name into a local cache (e.g. `~/.cache/sora-mini/<name>`)
    and then resolved here like the shipped ones. No code downloads anything yet; a bigger
    model is trained (`python -m sora_mini train-all --preset small`) and passed as a path."""
    raw = os.fspath(name_or_path)
    if raw and os.path.exists(raw):
        return os.path.abspath(raw)
    name = raw.strip("/") if not os.path.isabs(raw) else ""
    if _NAME.fullmatch(name) and not {".", ".."} & set(name.split("/")):
        directory = os.path.join(PRETRAINED_ROOT, *name.split("/"))
        if os.path.isdir(directory) and _is_model(directory):
            if part and not os.path.exists(os.path.join(directory, "config.json")):
                directory = os.path.join(directory, part)
            return directory
    raise FileNotFoundError(
        f"no pretrained {what} at {os.path.abspath(raw)}: {raw!r} is neither a directory nor a registered name "
        f"(the package ships {', '.join(pretrained_names()) or 'none'}). "
        + (f"{hint[:1].upper()}{hint[1:]}. " if hint else "") + BIGGER_MODELS + ".")


# ----------------------------------------------------------------------------------------
# Exported models.


@contextlib.contextmanager
def exporting(path: str) -> Iterator[str]:
    """Yield an empty directory beside `path` to write an export into; when the block ends
    without an error, it replaces `path` whole. An old export is never half overwritten:
    a crash or a kill leaves it as it was (and the `.partial` directory is redone next time)."""
    path = os.path.abspath(os.fspath(path))
    tmp = path + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(tmp, path)


def save_params(directory: str, params, dtype=jnp.float32) -> None:
    """Write `params` (an `nnx.State` or pytree of arrays) to Orbax `directory/params`, cast to `dtype`."""
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(directory, "params"), jax.tree.map(lambda x: x.astype(dtype), params))


def write_export(directory: str, *, config, params, dtype=jnp.float32, manifest: dict | None = None,
                 log: list[dict] | None = None) -> None:
    """Fill an export directory: `config.json` (a config dataclass, or a dict), `params/`,
    and, when given, `manifest.json` and `log.jsonl`."""
    write_json(os.path.join(directory, "config.json"),
               dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config)
    save_params(directory, params, dtype)
    if manifest is not None:
        write_json(os.path.join(directory, "manifest.json"), manifest)
    if log is not None:
        write_log(os.path.join(directory, "log.jsonl"), log)


def abstract_model(build) -> nnx.Module:
    """`build()`'s model with shapes only: a random init would run hundreds of un-jitted ops
    just to be overwritten by the checkpoint."""
    return nnx.eval_shape(build)


def restore_params(model: nnx.Module, path: str, *, stored_dtype=jnp.float32, what: str = "weights") -> nnx.Module:
    """Fill an abstract model (`abstract_model`) with the parameters exported to Orbax
    `path/params` at `stored_dtype`, cast to float32. Every exported model loads through
    here; the error names `what` is missing, corrupt or short."""
    params_dir = os.path.join(os.path.abspath(os.fspath(path)), "params")
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, stored_dtype), nnx.state(model, nnx.Param))
    try:
        with ocp.StandardCheckpointer() as ckptr:
            params = ckptr.restore(params_dir, target)
    except Exception as e:
        raise ValueError(f"the {what} in {params_dir} are missing or corrupt "
                         f"({type(e).__name__}: {str(e)[:200]})") from e
    nnx.update(model, jax.tree.map(lambda x: x.astype(jnp.float32), params))
    leftover = [x for x in jax.tree.leaves(nnx.state(model)) if isinstance(x, jax.ShapeDtypeStruct)]
    if leftover:
        raise ValueError(f"{len(leftover)} arrays of the model were not in {params_dir}")
    return model


def load_model(directory: str, config_cls, build, *, what: str, hint: str, stored_dtype=jnp.float32) -> nnx.Module:
    """The model exported to `directory`: `build(config)` with its shapes, filled from `params/`
    at the dtype its config.json records (`weights_dtype`), else at `stored_dtype`."""
    raw = read_config(directory, what, hint)
    dtype = jnp.dtype(raw.pop("weights_dtype", stored_dtype))
    config = config_from_dict(config_cls, raw)
    return restore_params(abstract_model(lambda: build(config)), directory, stored_dtype=dtype, what=f"{what} weights")


# ----------------------------------------------------------------------------------------
# Training checkpoints.


def checkpoint_manager(directory: str, keep: int | None = None, read_only: bool = False) -> ocp.CheckpointManager:
    """Orbax manager for a run's `checkpoints/`, keeping the last `keep`; `read_only` for
    loading (creates and deletes nothing)."""
    if read_only:
        options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    else:
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save_checkpoint(manager: ocp.CheckpointManager, step: int, **states) -> None:
    """Save the named states (`model=`, `opt=`, `ema=`, ...) as checkpoint `step`."""
    manager.save(step, args=ocp.args.Composite(**{k: ocp.args.StandardSave(v) for k, v in states.items()}))


def restore_checkpoint(manager: ocp.CheckpointManager, step: int, **targets) -> dict:
    """The named states of checkpoint `step`, restored into the shapes of `targets`."""
    return manager.restore(step, args=ocp.args.Composite(
        **{k: ocp.args.StandardRestore(v) for k, v in targets.items()}))


def latest_checkpoint(run_dir: str, what: str, **targets) -> tuple[int, dict]:
    """`(step, states)` of the latest checkpoint in `run_dir/checkpoints`, read only;
    `FileNotFoundError` when there is none and `ValueError` when it is corrupt."""
    if not os.path.isdir(os.path.join(run_dir, "checkpoints")):
        raise FileNotFoundError(f"the {what} run {run_dir} has no checkpoint yet")
    manager = checkpoint_manager(os.path.join(run_dir, "checkpoints"), read_only=True)
    try:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"the {what} run {run_dir} has no checkpoint yet")
        try:
            return step, restore_checkpoint(manager, step, **targets)
        except Exception as e:
            raise ValueError(f"checkpoint {step} in {run_dir} is corrupt ({type(e).__name__}: {str(e)[:200]})") from e
    finally:
        manager.close()
