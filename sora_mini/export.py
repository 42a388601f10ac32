"""Shipping trained models: a training run becomes a model directory with a manifest.

- `export_vae` (chapter 02): config, float16 weights, a manifest with the held-out
  metrics of the *exported* weights (`reconstruction_metrics`), and the log of every
  training stage that made them.
- `export_text_to_video` (chapter 06): `dit/` (the EMA weights of a `train-dit` run) beside
  a copy of its VAE, or `low_noise/`, a low-noise expert for the model already there.
- `export_classifier` (chapters 07 and 09): any classifier with a config dataclass.

Each directory is written whole by `store.exporting`: an old export is replaced only once
the new one is complete.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sora_mini import store
from sora_mini.dataset import SPLIT_SEED_OFFSETS, make_clip, split_config
from sora_mini.metrics import psnr, ssim
from sora_mini.model import abstract_text_to_video_model, check_experts, read_settings
from sora_mini.vae import VideoVAE, reconstruct
from sora_mini.video import to_float
from sora_mini.world import ShapesWorldConfig

# ----------------------------------------------------------------------------------------
# The VAE.


def reconstruction_metrics(model: VideoVAE, world: ShapesWorldConfig | None = None, n: int = 128,
                           split: str = "test", batch_size: int = 16) -> dict:
    """Reconstruction quality on `n` held-out shapes-world clips (their seed range never
    meets training) and the statistics of the latent means.

    Reconstructions use the posterior mean and are rounded to `uint8` first, as a viewer
    would see them. `latent_scale` (1 / std of all latent values) is the factor the DiT
    multiplies latents by, so that diffusion sees unit variance, as in Stable Diffusion."""
    world = split_config(world or ShapesWorldConfig(), split)
    offset = SPLIT_SEED_OFFSETS[split]
    psnrs, ssims, latents = [], [], []
    for start in range(0, n, batch_size):
        seeds = range(offset + start, offset + min(n, start + batch_size))
        video = np.stack([make_clip(world, s).video for s in seeds])
        recon, mean = reconstruct(model, jnp.asarray(to_float(video)))
        recon = jnp.clip(jnp.round((recon + 1.0) * 127.5), 0, 255)
        psnrs.append(np.asarray(psnr(recon, video)))
        ssims.append(np.asarray(ssim(recon, video)))
        latents.append(np.asarray(mean))
    psnrs, ssims, z = np.concatenate(psnrs), np.concatenate(ssims), np.concatenate(latents)
    flat = z.reshape(-1, z.shape[-1])
    return {
        "clips": int(n), "split": split, "frames": int(world.num_frames),
        "psnr_db": float(psnrs.mean()), "psnr_db_per_frame": psnrs.mean(axis=0).round(2).tolist(),
        "psnr_db_worst_clip": float(psnrs.mean(axis=1).min()),
        "ssim": float(ssims.mean()), "ssim_per_frame": ssims.mean(axis=0).round(4).tolist(),
        "latent_mean": flat.mean(axis=0).round(4).tolist(), "latent_std": flat.std(axis=0).round(4).tolist(),
        "latent_scale": float(1.0 / flat.std()),
        "compression": float(np.prod(video.shape[1:]) / np.prod(z.shape[1:])),
    }


def export_vae(model: VideoVAE, path: str, *, run_dir: str | None = None, world=None,
               extra: dict | None = None, eval_clips: int = 256) -> dict:
    """Write `path/config.json`, `path/params/` (Orbax, float16), `path/manifest.json`
    (with held-out metrics of the *exported* weights) and, from `run_dir`, the training
    `log.jsonl`. Returns the manifest."""
    manifest = {"model": "VideoVAE", "config": dataclasses.asdict(model.config), "params": store.count_params(model),
                "weights_dtype": jnp.dtype(store.PRETRAINED_DTYPE).name, **(extra or {})}
    with store.exporting(path) as tmp:
        store.write_export(tmp, config=model.config, params=nnx.state(model, nnx.Param), dtype=store.PRETRAINED_DTYPE)
        if run_dir is not None:
            manifest.update(_training_record(run_dir, tmp))
        # Measure what we ship: reload the float16 weights and evaluate them.
        manifest["metrics"] = reconstruction_metrics(VideoVAE.from_pretrained(tmp), world, n=eval_clips)
        store.write_json(os.path.join(tmp, "manifest.json"), manifest)
    return manifest


def _training_record(run_dir: str, out: str) -> dict:
    """The manifest's record of a VAE run (and of the run it was fine-tuned from), and the
    loss curve of every stage in `out/log.jsonl`, steps and times continuing across stages."""
    log = store.read_log(run_dir)
    record = {"steps": log[-1]["step"], "wall_time_s": log[-1]["time"], "final_train_loss": log[-1]["loss"]}
    init_manifest = os.path.join(run_dir, "init_manifest.json")
    if os.path.exists(init_manifest):  # a fine-tuning run: record the stage it started from
        before = store.read_json(init_manifest)
        record["init"] = {k: before.get(k) for k in ("command", "train", "steps", "wall_time_s", "init")}
        record["init"]["psnr_db"] = before.get("metrics", {}).get("psnr_db")
        record["total_steps"] = record["steps"] + before.get("total_steps", before["steps"])
        record["total_wall_time_s"] = round(
            record["wall_time_s"] + before.get("total_wall_time_s", before["wall_time_s"]), 2)
    stages = [log]
    if os.path.exists(os.path.join(run_dir, "init_log.jsonl")):
        stages.insert(0, store.read_rows(os.path.join(run_dir, "init_log.jsonl")))
    rows, step0, time0 = [], 0, 0
    for stage in stages:
        rows += [{**row, "step": row["step"] + step0, "time": round(row["time"] + time0, 2)} for row in stage]
        step0, time0 = step0 + stage[-1]["step"], time0 + stage[-1]["time"]
    store.write_log(os.path.join(out, "log.jsonl"), rows)
    return record


# ----------------------------------------------------------------------------------------
# The text-to-video model and its low-noise expert.


def export_text_to_video(run_dir: str, path: str, vae_path: str, *, extra: dict | None = None,
                         low_noise_below: float | None = None) -> dict:
    """Write `path/dit/` (config.json, the EMA weights as Orbax `params/`, manifest.json,
    log.jsonl) from a `train-dit` run, and copy the VAE it was trained with to `path/vae/`.
    With `low_noise_below = T`, write `path/low_noise/` instead: the low-noise expert that
    denoises at times `t <= T` for the model already in `path` (same VAE, same latents).
    Returns the manifest."""
    settings = store.read_json(os.path.join(run_dir, "train_config.json"))
    name = "dit" if low_noise_below is None else "low_noise"
    max_time = settings["diffusion"].get("max_time", 1.0)
    if low_noise_below is None and max_time < 1:
        raise ValueError(f"the DiT run {run_dir} trained only on times t < {max_time:g}, so it cannot start sampling "
                         f"from noise: export it as a low-noise expert (low_noise_below <= {max_time:g})")
    if low_noise_below is not None:
        main = read_settings(os.path.join(path, "dit"))
        check_experts(main, settings, low_noise_below, latent_scale=settings["train"]["latent_scale"])
    target = nnx.state(abstract_text_to_video_model(settings), nnx.Param)
    step, restored = store.latest_checkpoint(run_dir, "DiT", ema=target)
    config = {k: settings[k] for k in ("text", "dit", "diffusion")}
    config["latent_scale"] = settings["train"]["latent_scale"]
    config["weights_dtype"] = jnp.dtype(store.PRETRAINED_DTYPE).name  # float16, like the VAE
    if low_noise_below is not None:
        config["low_noise_below"] = float(low_noise_below)
    # The log up to the checkpoint's step: a run stopped after its last save logged more.
    log = [row for row in store.read_log(run_dir) if row["step"] <= step]
    manifest = {"model": "TextToVideoModel (EMA weights)",
                "params": sum(x.size for x in jax.tree.leaves(restored["ema"])), "steps": step,
                "wall_time_s": log[-1]["time"], "final_train_loss": log[-1]["loss"], "train": settings["train"],
                **(extra or {})}
    with store.exporting(os.path.join(path, name)) as tmp:
        store.write_export(tmp, config=config, params=restored["ema"], dtype=store.PRETRAINED_DTYPE,
                           manifest=manifest, log=log)
    if low_noise_below is None:
        with store.exporting(os.path.join(path, "vae")) as tmp:
            shutil.copytree(vae_path, tmp, dirs_exist_ok=True)
    return manifest


# ----------------------------------------------------------------------------------------
# Classifiers.


def export_classifier(model: nnx.Module, path: str, manifest: dict) -> None:
    """Save any classifier whose `.config` is a dataclass: weights, config and manifest."""
    with store.exporting(path) as tmp:
        store.write_export(tmp, config=model.config, params=nnx.state(model, nnx.Param), manifest=manifest)
