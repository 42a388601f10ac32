"""Training loops: one jitted step, Optax AdamW with warm-up + cosine, Orbax checkpoints
that resume exactly, a tqdm bar and a JSON-lines loss log.

Chapter 02 trains the VAE here. The VAE sees a fresh, endless stream of shapes-world clips:
the batch of step `s` is made from clip seeds `s * B ... s * B + B - 1` of the training
range, and the noise key is `fold_in(key, s)`, so a run killed at step `s` and resumed from
its checkpoint replays exactly the batches and keys an uninterrupted run would have used.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from tqdm.auto import tqdm

from sora_mini import data as data_lib
from sora_mini import vae as vae_lib


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    batch_size: int = 8
    num_frames: int = 9  # training clip length (1 + k * f_t); the VAE is convolutional in time
    # Train on random crop_size x crop_size windows of each clip (None: whole frames). The
    # VAE is fully convolutional, so it still encodes whole frames; crops buy ~4x more
    # clips per CPU-second, and the quality on whole held-out frames is what we report.
    crop_size: int | None = None
    learning_rate: float = 5e-4
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    save_every: int = 250
    log_every: int = 10
    keep_checkpoints: int = 2
    seed: int = 0


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


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, tc.learning_rate, warmup_steps=tc.warmup_steps, decay_steps=max(tc.steps, tc.warmup_steps + 1),
        end_value=tc.learning_rate * 0.01)
    return optax.chain(optax.clip_by_global_norm(tc.grad_clip),
                       optax.adamw(schedule, weight_decay=tc.weight_decay))


def world_batch(world: data_lib.ShapesWorldConfig, step: int, batch_size: int,
                crop_size: int | None = None) -> np.ndarray:
    """`float32 [B, T, H, W, 3]` in [-1, 1]: the training clips of step `step`, each cut to a
    random `crop_size` square (the crop offsets, too, are a function of `step`)."""
    seeds = range(step * batch_size, (step + 1) * batch_size)  # inside the train seed range
    video = np.stack([data_lib.make_clip(world, s).video for s in seeds])
    if crop_size is not None:
        if not 0 < crop_size <= min(world.height, world.width):
            raise ValueError(f"crop_size must lie in 1..{min(world.height, world.width)}, got {crop_size}")
        rng = np.random.default_rng([step, 7])
        ys = rng.integers(0, world.height - crop_size + 1, batch_size)
        xs = rng.integers(0, world.width - crop_size + 1, batch_size)
        video = np.stack([v[:, y:y + crop_size, x:x + crop_size] for v, y, x in zip(video, ys, xs)])
    return video.astype(np.float32) / 127.5 - 1.0


@nnx.jit
def vae_train_step(model: vae_lib.VideoVAE, optimizer: nnx.Optimizer, video, key):
    (_, metrics), grads = nnx.value_and_grad(vae_lib.vae_loss, has_aux=True)(model, video, key)
    optimizer.update(model, grads)
    metrics["grad_norm"] = optax.tree_utils.tree_norm(grads)
    return metrics


def checkpoint_manager(directory: str, tc: TrainConfig | None = None, read_only: bool = False
                       ) -> ocp.CheckpointManager:
    """Orbax manager for a run's `checkpoints/`; `read_only` for loading (creates and deletes nothing)."""
    if read_only:
        options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    else:
        options = ocp.CheckpointManagerOptions(max_to_keep=tc.keep_checkpoints, create=True)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def train_vae(vae_config: vae_lib.VAEConfig, tc: TrainConfig, out_dir: str,
              world: data_lib.ShapesWorldConfig | None = None, *, progress: bool = True,
              stop_after: int | None = None, init_from: str | None = None) -> vae_lib.VideoVAE:
    """Train (or resume training) a VAE; checkpoints and `log.jsonl` go to `out_dir`.

    `init_from` starts from a pretrained VAE (`VideoVAE.from_pretrained` path, same config)
    instead of a random init: fine-tuning, with a fresh optimizer and schedule. Its manifest
    and log are copied into the run, so an export records every stage that made the weights.
    `stop_after` ends this call after that many steps (the run can be resumed later): it
    is how tests simulate a kill. Returns the trained model."""
    world = (world or data_lib.ShapesWorldConfig()).replace(
        num_frames=tc.num_frames, temporal_factor=vae_config.temporal_down, holdout="exclude")
    side = tc.crop_size or None
    vae_lib.check_video_shape(vae_config, world.num_frames, side or world.height, side or world.width)
    os.makedirs(out_dir, exist_ok=True)
    run = json.loads(json.dumps({"vae": dataclasses.asdict(vae_config), "train": dataclasses.asdict(tc),
                                 "world": dataclasses.asdict(world),
                                 "init": {"path": init_from and os.path.abspath(init_from)}}))
    config_path = _check_run_settings(out_dir, run, defaults={"init": {"path": None}})  # pre-fine-tuning runs

    model = vae_lib.VideoVAE(vae_config, rngs=nnx.Rngs(tc.seed))
    optimizer = nnx.Optimizer(model, make_optimizer(tc), wrt=nnx.Param)
    manager = checkpoint_manager(os.path.join(out_dir, "checkpoints"), tc)
    start = 0
    if manager.latest_step() is not None:
        start = manager.latest_step()
        restored = manager.restore(start, args=ocp.args.Composite(
            model=ocp.args.StandardRestore(nnx.state(model)),
            opt=ocp.args.StandardRestore(nnx.state(optimizer))))
        nnx.update(model, restored["model"])
        nnx.update(optimizer, restored["opt"])
        print(f"resumed from step {start} in {out_dir}")
    elif init_from is not None:
        _init_from_pretrained(model, init_from, out_dir)
    # A fine-tuning run continues the clip stream where the runs before it stopped, so it
    # never replays their batches: step s of this run draws the clips of step offset + s.
    offset = _steps_before(out_dir)
    _write_json(config_path, run)  # only now: a run that failed to start leaves no settings behind

    key = jax.random.key(tc.seed)

    def run_step(step):
        video = jnp.asarray(world_batch(world, offset + step, tc.batch_size, tc.crop_size))
        return vae_train_step(model, optimizer, video, jax.random.fold_in(key, offset + step))

    def with_psnr(m):
        return {**m, "psnr": _psnr_from_mse(m["mse"])}

    _train_loop(out_dir, manager, tc, start, stop_after, "train-vae", progress, run_step,
                save=lambda step: _save(manager, step, model=nnx.state(model), opt=nnx.state(optimizer)),
                describe=with_psnr)
    return model


def _init_from_pretrained(model: vae_lib.VideoVAE, path: str, out_dir: str) -> None:
    import shutil

    pretrained = vae_lib.VideoVAE.from_pretrained(path)
    if pretrained.config != model.config:
        raise ValueError(f"cannot fine-tune from {path}: its config {pretrained.config} differs from "
                         f"this run's {model.config}")
    nnx.update(model, nnx.state(pretrained, nnx.Param))
    # Copy now: the export at the end of this run may overwrite `path` itself.
    for name, copy in (("manifest.json", "init_manifest.json"), ("log.jsonl", "init_log.jsonl")):
        if os.path.exists(os.path.join(path, name)):
            shutil.copy(os.path.join(path, name), os.path.join(out_dir, copy))
    print(f"initialised from the pretrained VAE in {path}")


def _steps_before(out_dir: str) -> int:
    path = os.path.join(out_dir, "init_manifest.json")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        before = json.load(f)
    return int(before.get("total_steps", before.get("steps") or 0))


def _check_run_settings(out_dir: str, run: dict, defaults: dict | None = None) -> str:
    """Refuse to resume a run made with other settings (it would fail deep inside Orbax,
    or worse, not fail); returns the path of `train_config.json`, written by the caller
    once the run has started. `defaults`: the values of settings (or of fields of a
    settings dict) added since older runs were saved."""
    config_path = os.path.join(out_dir, "train_config.json")
    if os.path.exists(config_path):
        with open(config_path) as f:
            saved = json.load(f)
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


def _train_loop(out_dir, manager, tc, start, stop_after, desc, progress, run_step, save, describe=None):
    """The loop both trainings share: `run_step(step) -> metrics` for steps `start..end`,
    a JSON-lines log every `log_every` steps (wall time accumulating across resumes), a
    checkpoint (`save(step)`) every `save_every` steps and at the end, and a stop with
    `FloatingPointError` before a non-finite model is ever saved."""
    end = tc.steps if stop_after is None else min(tc.steps, start + stop_after)
    log_path = os.path.join(out_dir, "log.jsonl")
    _truncate_log(log_path, start)
    earlier = read_log(out_dir) if start and os.path.exists(log_path) else []
    t0 = time.perf_counter() - (earlier[-1]["time"] if earlier else 0.0)
    try:
        with open(log_path, "a") as log:
            bar = tqdm(range(start, end), initial=start, total=tc.steps, desc=desc, disable=not progress)
            for step in bar:
                metrics = run_step(step)
                log_now = (step + 1) % tc.log_every == 0 or step + 1 == end
                save_now = (step + 1) % tc.save_every == 0 or step + 1 == end
                if log_now or save_now:  # never save a model whose loss is not finite
                    m = {k: float(v) for k, v in metrics.items()}
                    if not np.isfinite(m["loss"]):
                        manager.wait_until_finished()
                        raise FloatingPointError(
                            f"loss became {m['loss']} at step {step + 1}; the last good checkpoint is step "
                            f"{manager.latest_step()} in {out_dir}")
                    m = describe(m) if describe else m
                    log.write(json.dumps({"step": step + 1, "time": round(time.perf_counter() - t0, 2), **m}) + "\n")
                    log.flush()
                    bar.set_postfix({k: f"{m[k]:.4f}" if k == "loss" else f"{m[k]:.1f}"
                                     for k in ("loss", "psnr") if k in m})
                if save_now:
                    save(step + 1)
    finally:  # also on errors and Ctrl-C: finish the pending save, release the manager
        manager.wait_until_finished()
        manager.close()


def _save(manager, step, **states):
    manager.save(step, args=ocp.args.Composite(**{k: ocp.args.StandardSave(v) for k, v in states.items()}))


def _psnr_from_mse(mse: float) -> float:
    # Videos live in [-1, 1]: a peak-to-peak range of 2, so PSNR = 10 log10(4 / mse).
    return float(10 * np.log10(4.0 / max(mse, 1e-12)))


def _truncate_log(path: str, step: int) -> None:
    """Drop log lines past `step`, so a resumed run's log has no duplicated steps."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(path, "w") as f:
        f.writelines(lines)


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def read_log(out_dir: str) -> list[dict]:
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


# ----------------------------------------------------------------------------------------
# Chapter 06: the DiT (with its text encoder) on cached VAE latents.


@dataclasses.dataclass(frozen=True)
class DiTTrainConfig:
    steps: int = 4000
    batch_size: int = 32
    learning_rate: float = 3e-4
    warmup_steps: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999  # the EMA weights are the ones to sample with
    # DiT's EMA warm-up: decay min(ema_decay, (1 + n) / (10 + n)) at update n, so the EMA
    # of a short run is not mostly its initial weights (0.999 from step 0 keeps 61% of
    # them after 500 steps).
    ema_warmup: bool = True
    caption_dropout: float = 0.1  # captions replaced by the empty prompt: classifier-free guidance
    # A DiT with frame conditioning is shown some of its clip's latent frames in this
    # share of examples (random_frame_masks); the loss then covers the other frames only.
    frame_condition_rate: float = 0.5
    # Weight of the text encoder's caption-attribute loss (binary cross-entropy of its
    # `attribute_head` on the pooled caption): keeps every word the caption's meaning
    # needs, "left" as well as "red", within the DiT's reach. 0: the denoiser alone.
    caption_loss: float = 0.0
    latent_scale: float = 1.0  # the VAE manifest's latent_scale: diffusion sees unit-variance latents
    save_every: int = 500
    log_every: int = 10
    keep_checkpoints: int = 2
    seed: int = 0


def latent_batch_indices(n: int, step: int, batch_size: int, seed: int) -> np.ndarray:
    """The cache rows of step `step`: epochs of a seeded permutation, so a resumed run
    draws exactly the batches an uninterrupted one would."""
    start = step * batch_size
    rows = []
    while len(rows) < batch_size:
        epoch, offset = divmod(start + len(rows), n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        rows.extend(perm[offset:offset + batch_size - len(rows)].tolist())
    return np.asarray(rows)


def data_mesh() -> jax.sharding.Mesh:
    """A 1D mesh over every device, axis "data": the batch is split over it, the weights
    are replicated. One CPU, a GPU, or a TPU v2-8 / v5e run the same step."""
    return jax.sharding.Mesh(np.asarray(jax.devices()), ("data",))


FRAME_TASKS = ("image", "first", "last", "ends", "random")


def random_frame_masks(key, batch: int, frames: int, rate: float):
    """`float32 [B, frames]`, 1 where a latent frame is given to the model. With
    probability `rate` an example gets one of the chapter 08 tasks, uniformly: "image"
    (frame 0: image-to-video), "first" k (extend forward), "last" k (extend backward),
    with k uniform in 1..frames-1 (a clip of any length can be extended); "ends" (k at
    each end, k <= frames/2: interpolation), "random" frames. Otherwise no frame is given
    (text-to-video)."""
    k_use, k_task, k_first, k_last, k_rand = jax.random.split(key, 5)
    f = jnp.arange(frames)[None]  # [1, F]
    n_first = jax.random.randint(k_first, (batch, 1), 1, frames)
    n_last = jax.random.randint(k_last, (batch, 1), 1, frames)
    first, last = f < n_first, f >= frames - n_last
    ends = (f < (n_first + 1) // 2) | (f >= frames - (n_last + 1) // 2)  # leaves at least one frame to make
    masks = jnp.stack([jnp.broadcast_to(f < 1, (batch, frames)), first, last, ends,
                       jax.random.bernoulli(k_rand, 0.5, (batch, frames))])  # [tasks, B, F]
    task = jax.random.randint(k_task, (batch,), 0, len(FRAME_TASKS))
    chosen = jnp.take_along_axis(masks, task[None, :, None], axis=0)[0]
    use = jax.random.bernoulli(k_use, rate, (batch, 1))
    return (chosen & use).astype(jnp.float32)


def make_dit_train_step(diffusion_config, tc: DiTTrainConfig):
    """A jitted step `(model, optimizer, ema, mean, logvar, ids, mask, empty_ids, key,
    labels=None) -> (ema, metrics)`: sample z from the cached posterior, drop captions, draw
    known frames (frame-conditioned DiTs), diffusion loss (+ the caption-attribute loss on
    `labels [B, K]` when `tc.caption_loss`), AdamW update, EMA update."""
    from sora_mini import diffusion
    from sora_mini.text import PAD_ID

    @nnx.jit
    def step(model, optimizer, ema, mean, logvar, ids, mask, empty_ids, key, labels=None):
        if tc.caption_loss and labels is None:
            raise ValueError("caption_loss needs labels [B, 21] (guidance.caption_label_matrix of the captions)")
        k_z, k_drop, k_loss, k_frames = jax.random.split(key, 4)
        z = (mean + jnp.exp(0.5 * logvar) * jax.random.normal(k_z, mean.shape)) * tc.latent_scale
        drop = jax.random.bernoulli(k_drop, tc.caption_dropout, (ids.shape[0],))[:, None]
        ids = jnp.where(drop, empty_ids[None], ids)
        mask = jnp.where(drop, empty_ids[None] != PAD_ID, mask)
        frames, weight = {}, None
        if model.dit.config.frame_conditioning:
            known = random_frame_masks(k_frames, z.shape[0], z.shape[1], tc.frame_condition_rate)  # [B, t]
            frames, weight = dict(known=z, known_mask=known), 1.0 - known  # the loss: frames to generate

        def loss_fn(model):
            encoded = model.text(ids, mask)  # once: the denoiser and the attribute head share it
            loss, _ = diffusion.diffusion_loss(lambda x, t: model.denoise(x, t, encoded, mask, **frames), z, k_loss,
                                               diffusion_config, weight)
            metrics = {"loss": loss}
            if tc.caption_loss:
                logits = model.text.attribute_head(encoded[1])  # pooled [B, D] -> [B, K]
                named = jnp.where(drop, 0.0, labels)  # the empty prompt names nothing
                metrics["caption_loss"] = optax.sigmoid_binary_cross_entropy(logits, named).mean()
                loss = loss + tc.caption_loss * metrics["caption_loss"]
            return loss, metrics

        (_, metrics), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        optimizer.update(model, grads)
        params = nnx.state(model, nnx.Param)
        decay = tc.ema_decay
        if tc.ema_warmup:
            n = optimizer.step[...].astype(jnp.float32)  # updates made, this one included
            decay = jnp.minimum(decay, n / (9.0 + n))
        ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, params)
        return ema, {**metrics, "grad_norm": optax.tree_utils.tree_norm(grads)}

    return step


def train_dit(model, latents: dict, tc: DiTTrainConfig, out_dir: str, diffusion_config=None, *,
              tokenizer=None, progress: bool = True, stop_after: int | None = None, settings: dict | None = None):
    """Train a `pipeline.TextToVideoModel` on a latent cache (`vae.encode_dataset` /
    `encode-latents`: `mean`, `logvar` `[N, t, h, w, c]` and `caption` `[N]`).

    Orbax checkpoints (model, optimizer, EMA) every `save_every` steps; a second call with
    the same settings resumes exactly. `settings` (configs as plain dicts) are written to
    `train_config.json` and must match on resume. Stops with `FloatingPointError`, keeping
    the last good checkpoint, if the loss stops being finite. Returns `(model, ema_state)`."""
    from sora_mini import diffusion
    from sora_mini.text import Tokenizer

    diffusion_config = diffusion_config or diffusion.DiffusionConfig()
    tokenizer = tokenizer or Tokenizer.shapes_world()
    for key in ("mean", "logvar", "caption"):
        if key not in latents:
            raise ValueError(f"the latent cache needs '{key}' (made by encode-latents), it has {sorted(latents)}")
    mean, logvar = np.asarray(latents["mean"], np.float32), np.asarray(latents["logvar"], np.float32)
    n = len(mean)
    if n < tc.batch_size:
        raise ValueError(f"the latent cache holds {n} clips, fewer than batch_size={tc.batch_size}")
    captions = [str(c) for c in latents["caption"]]
    ids, mask = (np.asarray(a) for a in tokenizer(captions))
    if tc.caption_loss:
        from sora_mini.guidance import caption_label_matrix

        labels = caption_label_matrix(captions)  # [N, K]
        head = model.text.attribute_head
        if head is None or head.out_features != labels.shape[1]:
            raise ValueError(f"caption_loss needs a text encoder with attribute_classes={labels.shape[1]} "
                             f"(one per colour, shape and motion a caption can name), got "
                             f"{model.text.config.attribute_classes}")
    else:
        labels = None
    empty_ids = jnp.asarray(tokenizer("")[0][0])

    os.makedirs(out_dir, exist_ok=True)
    run = json.loads(json.dumps({"train": dataclasses.asdict(tc), "diffusion": dataclasses.asdict(diffusion_config),
                                 "clips": n, **(settings or {})}))
    config_path = _check_run_settings(out_dir, run, defaults={
        "diffusion": dataclasses.asdict(diffusion.DiffusionConfig()), "train": dataclasses.asdict(DiTTrainConfig())})
    optimizer = nnx.Optimizer(model, make_optimizer(tc), wrt=nnx.Param)
    ema = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
    manager = checkpoint_manager(os.path.join(out_dir, "checkpoints"), tc)
    start = manager.latest_step() or 0
    if start:
        restored = manager.restore(start, args=ocp.args.Composite(
            model=ocp.args.StandardRestore(nnx.state(model)), opt=ocp.args.StandardRestore(nnx.state(optimizer)),
            ema=ocp.args.StandardRestore(ema)))
        nnx.update(model, restored["model"])
        nnx.update(optimizer, restored["opt"])
        ema = restored["ema"]
        print(f"resumed from step {start} in {out_dir}")
    _write_json(config_path, run)

    mesh = data_mesh()
    if tc.batch_size % mesh.size:
        raise ValueError(f"batch_size={tc.batch_size} must divide by the {mesh.size} devices of the mesh")
    batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    nnx.update(model, jax.device_put(nnx.state(model), replicated))
    nnx.update(optimizer, jax.device_put(nnx.state(optimizer), replicated))
    ema = jax.device_put(ema, replicated)
    step_fn = make_dit_train_step(diffusion_config, tc)
    key = jax.random.key(tc.seed)
    ema_box = [ema]  # the step replaces the EMA state; the save needs the latest one

    def run_step(step):
        rows = latent_batch_indices(n, step, tc.batch_size, tc.seed)
        batch = jax.device_put((mean[rows], logvar[rows], ids[rows], mask[rows]), batch_sharding)
        named = None if labels is None else jax.device_put(labels[rows], batch_sharding)
        ema_box[0], metrics = step_fn(model, optimizer, ema_box[0], *batch, empty_ids, jax.random.fold_in(key, step),
                                      named)
        return metrics

    _train_loop(out_dir, manager, tc, start, stop_after, "train-dit", progress, run_step,
                save=lambda step: _save(manager, step, model=nnx.state(model), opt=nnx.state(optimizer),
                                        ema=ema_box[0]))
    ema = ema_box[0]
    return model, ema
