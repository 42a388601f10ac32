"""Text to video: the trained pieces put together (chapters 06-07).

`TextToVideoModel` is what diffusion training optimises: the text encoder and the DiT,
trained jointly, with the encoder's `<cls>` output as the pooled text the DiT's adaLN
reads and its token embeddings as what cross-attention reads.

    ids, mask [B, L] --TextEncoder--> tokens [B, L, Dt], pooled [B, Dt]
    noisy latent [B, t, h, w, c], time [B] --DiT(tokens, mask, pooled)--> prediction
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from sora_mini import train
from sora_mini.diffusion import DiffusionConfig
from sora_mini.dit import DiT, DiTConfig
from sora_mini.patchify import patch_grid
from sora_mini.sampling import SAMPLERS, sample
from sora_mini.text import PAD_ID, TextConfig, TextEncoder, Tokenizer
from sora_mini.vae import PRETRAINED_DTYPE, VideoVAE, check_video_shape


class TextToVideoModel(nnx.Module):
    def __init__(self, text_config: TextConfig, dit_config: DiTConfig, *, rngs: nnx.Rngs):
        if dit_config.text_dim != text_config.dim:
            raise ValueError(f"the DiT reads text of width {dit_config.text_dim}, but the text encoder makes "
                             f"width {text_config.dim}")
        self.text = TextEncoder(text_config, rngs=rngs)
        self.dit = DiT(dit_config, rngs=rngs)

    def __call__(self, x, time, ids, mask):
        """Noisy latents `[B, t, h, w, c]`, times `[B]`, token ids and mask `[B, L]`."""
        tokens, pooled = self.text(ids, mask)
        return self.dit(x, time, text=tokens, text_mask=mask, text_pooled=pooled)


# ----------------------------------------------------------------------------------------
# Shipping and using the trained model: `export_pretrained` writes `dit/` beside a
# `vae/`; `TextToVideo.from_pretrained` loads both and turns prompts into videos.


def export_pretrained(run_dir: str, path: str, vae_path: str, *, extra: dict | None = None) -> dict:
    """Write `path/dit/` (config.json, the EMA weights as Orbax `params/`, manifest.json,
    log.jsonl) from a `train-dit` run, and copy the VAE it was trained with to `path/vae/`.
    Returns the manifest."""
    with open(os.path.join(run_dir, "train_config.json")) as f:
        settings = json.load(f)
    model = _abstract_model(settings)
    ema_target = nnx.state(model, nnx.Param)
    manager = train.checkpoint_manager(os.path.join(run_dir, "checkpoints"), read_only=True)
    try:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"the DiT run {run_dir} has no checkpoint yet")
        ema = manager.restore(step, args=ocp.args.Composite(ema=ocp.args.StandardRestore(ema_target)))["ema"]
    finally:
        manager.close()
    path = os.path.abspath(path)
    tmp = path + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "dit"))
    config = {k: settings[k] for k in ("text", "dit", "diffusion")}
    config["latent_scale"] = settings["train"]["latent_scale"]
    # Shipped as float16, like the VAE: half the size, and sampling cannot tell the difference.
    config["weights_dtype"] = jnp.dtype(PRETRAINED_DTYPE).name
    train._write_json(os.path.join(tmp, "dit", "config.json"), config)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(tmp, "dit", "params"), jax.tree.map(lambda x: x.astype(PRETRAINED_DTYPE), ema))
    # The log up to the checkpoint's step: a run stopped after its last save logged more.
    log = [row for row in train.read_log(run_dir) if row["step"] <= step]
    with open(os.path.join(tmp, "dit", "log.jsonl"), "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in log)
    manifest = {"model": "TextToVideoModel (EMA weights)", "params": sum(x.size for x in jax.tree.leaves(ema)),
                "steps": step, "wall_time_s": log[-1]["time"], "final_train_loss": log[-1]["loss"],
                "train": settings["train"], **(extra or {})}
    train._write_json(os.path.join(tmp, "dit", "manifest.json"), manifest)
    shutil.copytree(vae_path, os.path.join(tmp, "vae"))
    for name in ("dit", "vae"):  # replace piece by piece, each only once complete
        shutil.rmtree(os.path.join(path, name), ignore_errors=True)
        os.makedirs(path, exist_ok=True)
        os.replace(os.path.join(tmp, name), os.path.join(path, name))
    shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _configs(settings: dict):
    text = TextConfig(**settings["text"])
    dit = DiTConfig(**{**settings["dit"], "patch_size": tuple(settings["dit"]["patch_size"])})
    return text, dit, DiffusionConfig(**settings["diffusion"])


def _abstract_model(settings: dict) -> TextToVideoModel:
    text, dit, _ = _configs(settings)
    return nnx.eval_shape(lambda: TextToVideoModel(text, dit, rngs=nnx.Rngs(0)))


class TextToVideo:
    """`TextToVideo.from_pretrained("data/pretrained/tiny")("a red circle moves to the right")`
    -> `uint8 [T, H, W, 3]`. Sampling (text encoding, the whole sampler loop with
    classifier-free guidance, VAE decoding) is one jitted function per setting."""

    def __init__(self, vae, model: TextToVideoModel, diffusion_config, latent_scale: float, tokenizer=None):
        self.vae, self.model, self.diffusion = vae, model, diffusion_config
        self.latent_scale = float(latent_scale)
        self.tokenizer = tokenizer or Tokenizer.shapes_world(model.text.config.max_length)
        self._compiled = {}

    @classmethod
    def from_pretrained(cls, path) -> TextToVideo:
        path = os.path.abspath(os.fspath(path))
        config_file = os.path.join(path, "dit", "config.json")
        if not os.path.exists(config_file):
            raise FileNotFoundError(f"no pretrained text-to-video model at {path} (expected dit/config.json and vae/): "
                                    "train one with `python -m sora_mini train-dit` and export it")
        with open(config_file) as f:
            settings = json.load(f)
        model = _abstract_model(settings)
        stored = jnp.dtype(settings.get("weights_dtype", "float32"))
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, stored), nnx.state(model, nnx.Param))
        try:
            with ocp.StandardCheckpointer() as ckptr:
                params = ckptr.restore(os.path.join(path, "dit", "params"), target)
        except Exception as e:
            raise ValueError(f"the DiT weights in {path}/dit/params are missing or corrupt "
                             f"({type(e).__name__}: {str(e)[:200]})") from e
        nnx.update(model, jax.tree.map(lambda x: x.astype(jnp.float32), params))
        leftover = [x for x in jax.tree.leaves(nnx.state(model)) if isinstance(x, jax.ShapeDtypeStruct)]
        if leftover:
            raise ValueError(f"{len(leftover)} arrays of the model were not in {path}/dit/params")
        _, _, diffusion = _configs(settings)
        return cls(VideoVAE.from_pretrained(os.path.join(path, "vae")), model, diffusion, settings["latent_scale"])

    def _sampler(self, shape, sampler, steps, guided_mode):
        """One compiled sampler per shape, sampler, steps and guidance mode: `None` (no
        guidance), `1.0` (the conditional model alone) or `"scale"` (any other scale, passed
        in as a traced number, so changing it does not recompile)."""
        key = (shape, sampler, steps, guided_mode)
        if key not in self._compiled:
            cfg = self.diffusion

            @nnx.jit
            def run(model, vae, ids, mask, empty_ids, noise, rng, scale):
                B = noise.shape[0]
                guidance = scale if guided_mode == "scale" else guided_mode
                if guidance is None or guided_mode == 1.0:
                    text_ids, text_mask = ids, mask
                else:  # conditional half first, then the empty prompt
                    text_ids = jnp.concatenate([ids, jnp.broadcast_to(empty_ids, ids.shape)])
                    text_mask = text_ids != PAD_ID
                model_fn = lambda x, t: model(x, t, text_ids[: x.shape[0]], text_mask[: x.shape[0]])
                z = sample(model_fn, noise, config=cfg, sampler=sampler, steps=steps, guidance=guidance, key=rng)
                video = vae.decode(z[:B] / self.latent_scale)
                return jnp.clip(jnp.round((video + 1.0) * 127.5), 0, 255).astype(jnp.uint8)

            self._compiled[key] = run
        return self._compiled[key]

    def __call__(self, prompt: str, *, seed: int = 0, steps: int = 50, guidance: float | None = 4.0,
                 sampler: str = "euler", num_frames: int = 17, height: int = 32, width: int = 32):
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("the prompt is empty: describe a video, e.g. 'a red circle moves to the right' "
                             "(the empty prompt is reserved for classifier-free guidance)")
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
        check_video_shape(self.vae.config, num_frames, height, width)
        latent = self.vae.config.latent_shape(num_frames, height, width)
        patch_grid(latent, self.model.dit.config.patch_size)
        ids, mask = self.tokenizer([prompt], on_overflow="warn")
        empty_ids = self.tokenizer("")[0]
        k_noise, k_sample = jax.random.split(jax.random.key(seed))
        noise = jax.random.normal(k_noise, (1, *latent))
        mode = None if guidance is None else 1.0 if float(guidance) == 1.0 else "scale"
        run = self._sampler(latent, sampler, steps, mode)
        scale = jnp.float32(1.0 if guidance is None else guidance)
        return jax.device_get(run(self.model, self.vae, ids, mask, empty_ids, noise, k_sample, scale))[0]
