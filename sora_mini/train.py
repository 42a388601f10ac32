"""Training the course's models (chapters 02 and 06), on the shared loop of `sora_mini.loop`.

- `train_vae` (chapter 02): the VAE sees a fresh, endless stream of shapes-world clips: the
  batch of step `s` is made from clip seeds `s * B ... s * B + B - 1` of the training range
  (`dataset.world_batch`), and the noise key is `fold_in(key, s)`.
- `encode_dataset`: the latent cache the DiT trains on, as DiT and Open-Sora do.
- `train_dit` (chapter 06): the text encoder and the DiT, jointly, on that cache: the batch
  of step `s` is rows `dataset.batch_indices(N, s, B, seed)`, the key `fold_in(key, s)`.
Both resume exactly from their last checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from sora_mini import diffusion, loop, parallel, store
from sora_mini import vae as vae_lib
from sora_mini.captions import caption_label_matrix
from sora_mini.dataset import batch_indices, world_batch
from sora_mini.metrics import psnr_from_mse
from sora_mini.text import PAD_ID, Tokenizer
from sora_mini.video import to_float
from sora_mini.world import ShapesWorldConfig


@nnx.jit
def vae_train_step(model: vae_lib.VideoVAE, optimizer: nnx.Optimizer, video, key):
    (_, metrics), grads = nnx.value_and_grad(vae_lib.vae_loss, has_aux=True)(model, video, key)
    optimizer.update(model, grads)
    metrics["grad_norm"] = optax.tree_utils.tree_norm(grads)
    return metrics


@dataclasses.dataclass(frozen=True)
class VAETrainConfig(loop.TrainConfig):
    """How `train_vae` trains a VAE: a fresh stream of shapes-world clips, AdamW."""

    steps: int = 2000
    batch_size: int = 8
    learning_rate: float = 5e-4
    grad_clip: float = 1.0
    num_frames: int = 9  # training clip length (1 + k * f_t); the VAE is convolutional in time
    # Train on random crop_size x crop_size windows of each clip (None: whole frames). The
    # VAE is fully convolutional, so it still encodes whole frames; crops buy more clips per
    # CPU-second, and the quality on whole held-out frames is what is reported.
    crop_size: int | None = None
    save_every: int = 250
    keep_checkpoints: int = 2


def train_vae(vae_config: vae_lib.VAEConfig, tc: VAETrainConfig, out_dir: str,
              world: ShapesWorldConfig | None = None, *, progress: bool = True,
              stop_after: int | None = None, init_from: str | None = None) -> vae_lib.VideoVAE:
    """Train (or resume training) a VAE; checkpoints and `log.jsonl` go to `out_dir`.

    `init_from` starts from a pretrained VAE (`VideoVAE.from_pretrained` path, same config)
    instead of a random init: fine-tuning, with a fresh optimizer and schedule. Its manifest
    and log are copied into the run, so an export records every stage that made the weights.
    `stop_after` ends this call after that many steps (the run can be resumed later): it
    is how tests simulate a kill. Returns the trained model."""
    world = (world or ShapesWorldConfig()).replace(
        num_frames=tc.num_frames, temporal_factor=vae_config.temporal_down, holdout="exclude")
    side = tc.crop_size or None
    vae_lib.check_video_shape(vae_config, world.num_frames, side or world.height, side or world.width)
    os.makedirs(out_dir, exist_ok=True)
    run = loop.run_settings(vae=vae_config, train=tc, world=world,
                            init={"path": init_from and os.path.abspath(init_from)})
    config_path = loop.check_run_settings(out_dir, run, defaults={"init": {"path": None}})  # pre-fine-tuning runs

    model = vae_lib.VideoVAE(vae_config, rngs=nnx.Rngs(tc.seed))
    optimizer = nnx.Optimizer(model, loop.make_optimizer(tc), wrt=nnx.Param)
    manager = store.checkpoint_manager(os.path.join(out_dir, "checkpoints"), tc.keep_checkpoints)
    start, restored = loop.restore_latest(manager, out_dir, model=nnx.state(model), opt=nnx.state(optimizer))
    if restored is not None:
        nnx.update(model, restored["model"])
        nnx.update(optimizer, restored["opt"])
    elif init_from is not None:
        _init_from_pretrained(model, init_from, out_dir)
    # A fine-tuning run continues the clip stream where the runs before it stopped, so it
    # never replays their batches: step s of this run draws the clips of step offset + s.
    offset = _steps_before(out_dir)
    store.write_json(config_path, run)  # only now: a run that failed to start leaves no settings behind

    key = jax.random.key(tc.seed)

    def run_step(step):
        video = jnp.asarray(world_batch(world, offset + step, tc.batch_size, tc.crop_size))
        return vae_train_step(model, optimizer, video, jax.random.fold_in(key, offset + step))

    def save(step):
        store.save_checkpoint(manager, step, model=nnx.state(model), opt=nnx.state(optimizer))

    loop.run_loop(run_step, steps=tc.steps, desc="train-vae", start=start, stop_after=stop_after,
                  log_every=tc.log_every, out_dir=out_dir, checkpoints=loop.Checkpoints(manager, save, tc.save_every),
                  describe=lambda m: {**m, "psnr": psnr_from_mse(m["mse"])}, progress=progress)
    return model


def _init_from_pretrained(model: vae_lib.VideoVAE, path: str, out_dir: str) -> None:
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
    before = store.read_json(path)
    return int(before.get("total_steps", before.get("steps") or 0))


# ----------------------------------------------------------------------------------------
# Chapter 06: the DiT (with its text encoder) on cached VAE latents.


def encode_dataset(model: vae_lib.VideoVAE, dataset, batch_size: int = 32, progress: bool = True) -> dict:
    """Encode every clip of a shapes-world split (`load_shapes_world(..., split)`) in order.

    Returns `{"mean", "logvar": float32 [N, t, h, w, c], "caption": str [N], "seed": int64 [N]}`;
    a DiT samples `z = mean + exp(logvar / 2) * eps` from it each epoch."""
    encode = nnx.jit(lambda m, x: m.encode(x))
    out = {"mean": [], "logvar": [], "caption": [], "seed": []}
    columns = ("video", "caption", "seed")
    n = len(dataset)
    batches = ({c: np.asarray(v) for c, v in dataset[i:i + batch_size].items() if c in columns}
               for i in range(0, n, batch_size))
    for batch in tqdm(batches, total=-(-n // batch_size), desc="encode", disable=not progress):
        video = jnp.asarray(to_float(batch["video"]))
        mean, logvar = encode(model, video)
        out["mean"].append(np.asarray(mean))
        out["logvar"].append(np.asarray(logvar))
        out["caption"].append(np.asarray(batch["caption"]))
        out["seed"].append(np.asarray(batch["seed"], np.int64))
    return {k: np.concatenate(v) for k, v in out.items()}


@dataclasses.dataclass(frozen=True)
class DiTTrainConfig(loop.TrainConfig):
    """How `train_dit` trains the text encoder and DiT on a latent cache: AdamW, an EMA."""

    steps: int = 4000
    learning_rate: float = 3e-4
    warmup_steps: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999  # the EMA weights are the ones to sample with
    # DiT's EMA warm-up: decay min(ema_decay, (1 + n) / (10 + n)) at update n, so the EMA
    # of a short run is not mostly its initial weights (0.999 from step 0 keeps
    # 0.999^500 = 61% of them after 500 steps).
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
    # Compute dtype of every layer during training ("bfloat16": mixed precision, see
    # parallel.compute_dtype; None: the model config's own); the weights, AdamW's moments
    # and the EMA stay float32.
    precision: str | None = None
    save_every: int = 500
    keep_checkpoints: int = 2


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


def make_dit_train_step(diffusion_config, tc: DiTTrainConfig, mesh: jax.sharding.Mesh | None = None):
    """A jitted step `(model, optimizer, ema, mean, logvar, ids, mask, empty_ids, key,
    labels=None) -> (ema, metrics)`: sample z from the cached posterior, drop captions, draw
    known frames (frame-conditioned DiTs), diffusion loss (+ the caption-attribute loss on
    `labels [B, K]` when `tc.caption_loss`), AdamW update, EMA update. With a `mesh`, the
    updated model, optimizer and EMA keep the shardings their NNX metadata names
    (`parallel.fsdp`)."""
    @nnx.jit
    def step(model, optimizer, ema, mean, logvar, ids, mask, empty_ids, key, labels=None):
        if tc.caption_loss and labels is None:
            raise ValueError("caption_loss needs labels [B, 21] (captions.caption_label_matrix of the captions)")
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
        if mesh is not None:  # FSDP: the new state stays split as the old one was
            nnx.update(model, parallel.constrain(nnx.state(model), mesh))
            nnx.update(optimizer, parallel.constrain(nnx.state(optimizer), mesh))
            ema = parallel.constrain(ema, mesh)
        return ema, {**metrics, "grad_norm": optax.tree_utils.tree_norm(grads)}

    return step


def train_dit(model, latents: dict, tc: DiTTrainConfig, out_dir: str, diffusion_config=None, *,
              tokenizer=None, progress: bool = True, stop_after: int | None = None, settings: dict | None = None,
              mesh: parallel.MeshShape | None = None):
    """Train a `model.TextToVideoModel` on a latent cache (`encode_dataset` /
    `encode-latents`: `mean`, `logvar` `[N, t, h, w, c]` and `caption` `[N]`).

    The step runs on a `("data", "fsdp")` mesh of every device (`mesh`, default: data
    parallel over all of them; `parallel.make_mesh`): the batch is split over both axes,
    the weights, AdamW's moments and the EMA over `fsdp`. Under `jax.distributed`, every
    process runs this with the same arguments and reads only its devices' rows of each
    batch; process 0 writes the log. Orbax checkpoints (model, optimizer, EMA) every
    `save_every` steps, each process saving its shards; a second call with the same
    settings resumes exactly (on the same mesh; another mesh restores the same state
    but sums in another order). `settings` (configs as plain dicts) are written
    to `train_config.json` and must match on resume. Stops with `FloatingPointError`,
    keeping the last good checkpoint, if the loss stops being finite. The log records the
    model FLOPs of a step and the MFU against `parallel.peak_flops`. Returns
    `(model, ema_state)`."""
    diffusion_config = diffusion_config or diffusion.DiffusionConfig()
    tokenizer = tokenizer or Tokenizer.shapes_world()
    for key in ("mean", "logvar", "caption"):
        if key not in latents:
            raise ValueError(f"the latent cache needs '{key}' (made by encode-latents), it has {sorted(latents)}")
    if tc.precision is not None and tc.precision not in parallel.PRECISIONS:
        raise ValueError(f"precision must be one of {parallel.PRECISIONS}, got {tc.precision!r}")
    mesh = parallel.make_mesh(mesh)
    if tc.batch_size % mesh.size:
        raise ValueError(f"batch_size={tc.batch_size} must divide by the {mesh.size} devices of the mesh")
    mean, logvar = np.asarray(latents["mean"], np.float32), np.asarray(latents["logvar"], np.float32)
    n = len(mean)
    if n < tc.batch_size:
        raise ValueError(f"the latent cache holds {n} clips, fewer than batch_size={tc.batch_size}")
    captions = [str(c) for c in latents["caption"]]
    ids, mask = (np.asarray(a) for a in tokenizer(captions))
    if tc.caption_loss:
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
    run = loop.run_settings(train=tc, diffusion=diffusion_config, clips=n, **(settings or {}))
    config_path = loop.check_run_settings(out_dir, run, defaults={
        "diffusion": dataclasses.asdict(diffusion.DiffusionConfig()), "train": dataclasses.asdict(DiTTrainConfig())})
    with parallel.fsdp(model, mesh):  # the split of each weight, in its NNX metadata
        with jax.set_mesh(mesh):  # NNX shards the new moments as their metadata says
            optimizer = nnx.Optimizer(model, loop.make_optimizer(tc), wrt=nnx.Param)
        nnx.update(model, parallel.place(nnx.state(model), mesh))
        nnx.update(optimizer, parallel.place(nnx.state(optimizer), mesh))
        ema = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
        manager = store.checkpoint_manager(os.path.join(out_dir, "checkpoints"), tc.keep_checkpoints)
        start, restored = loop.restore_latest(manager, out_dir, model=nnx.state(model), opt=nnx.state(optimizer),
                                              ema=ema)
        if restored is not None:  # restored onto the shardings of the targets
            nnx.update(model, restored["model"])
            nnx.update(optimizer, restored["opt"])
            ema = restored["ema"]
        if parallel.is_main_process():
            store.write_json(config_path, run)

        step_fn = make_dit_train_step(diffusion_config, tc, mesh)
        key = jax.random.key(tc.seed)
        ema_box = [ema]  # the step replaces the EMA state; the save needs the latest one

        def take(rows):  # this process's rows of a batch
            return (mean[rows], logvar[rows], ids[rows], mask[rows]) + (() if labels is None else (labels[rows],))

        def run_step(step):
            batch = parallel.global_batch(batch_indices(n, step, tc.batch_size, tc.seed), take, mesh)
            named = batch[4] if labels is not None else None
            ema_box[0], metrics = step_fn(model, optimizer, ema_box[0], *batch[:4], empty_ids,
                                          jax.random.fold_in(key, step), named)
            return metrics

        def save(step):
            store.save_checkpoint(manager, step, model=nnx.state(model), opt=nnx.state(optimizer), ema=ema_box[0])

        flops = parallel.train_flops(model.dit.config, mean.shape[1:], tc.batch_size, ids.shape[1])
        with parallel.compute_dtype(model, tc.precision) if tc.precision else contextlib.nullcontext():
            loop.run_loop(run_step, steps=tc.steps, desc="train-dit", start=start, stop_after=stop_after,
                          log_every=tc.log_every, out_dir=out_dir if parallel.is_main_process() else None,
                          checkpoints=loop.Checkpoints(manager, save, tc.save_every), progress=progress,
                          utilisation=loop.Utilisation(flops, parallel.total_peak_flops(mesh)))
    return model, ema_box[0]
