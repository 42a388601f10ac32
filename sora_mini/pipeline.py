"""Text to video: the trained pieces put together (chapters 06-07).

`TextToVideoModel` is what diffusion training optimises: the text encoder and the DiT,
trained jointly, with the encoder's `<cls>` output as the pooled text the DiT's adaLN
reads and its token embeddings as what cross-attention reads.

    ids, mask [B, L] --TextEncoder--> tokens [B, L, Dt], pooled [B, Dt]
    noisy latent [B, t, h, w, c], time [B] --DiT(tokens, mask, pooled)--> prediction

`TextToVideo` samples with one such model, or with two experts on one path (eDiff-I,
Wan 2.2): the main model while `t > low_noise_below`, a low-noise expert after.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from sora_mini import guidance as guidance_lib
from sora_mini import train
from sora_mini.diffusion import DiffusionConfig
from sora_mini.dit import DiT, DiTConfig
from sora_mini.patchify import patch_grid
from sora_mini.sampling import SAMPLERS, sample
from sora_mini.text import PAD_ID, TextConfig, TextEncoder, Tokenizer
from sora_mini.vae import PRETRAINED_DTYPE, VideoVAE, check_video_shape, restore_params
from sora_mini.video import _check_video, to_float, to_uint8


class TextToVideoModel(nnx.Module):
    def __init__(self, text_config: TextConfig, dit_config: DiTConfig, *, rngs: nnx.Rngs):
        if dit_config.text_dim != text_config.dim:
            raise ValueError(f"the DiT reads text of width {dit_config.text_dim}, but the text encoder makes "
                             f"width {text_config.dim}")
        self.text = TextEncoder(text_config, rngs=rngs)
        self.dit = DiT(dit_config, rngs=rngs)

    def __call__(self, x, time, ids, mask, *, known=None, known_mask=None):
        """Noisy latents `[B, t, h, w, c]`, times `[B]`, token ids and mask `[B, L]`; known
        latent frames and their mask `[B, t]` for a frame-conditioned DiT."""
        return self.denoise(x, time, self.text(ids, mask), mask, known=known, known_mask=known_mask)

    def denoise(self, x, time, encoded, mask, *, known=None, known_mask=None):
        """The DiT on an already encoded caption, `encoded = self.text(ids, mask)`: training
        encodes once and also reads `pooled` for the caption-attribute loss."""
        tokens, pooled = encoded
        return self.dit(x, time, text=tokens, text_mask=mask, text_pooled=pooled, known=known, known_mask=known_mask)


def init_from_pretrained(model: TextToVideoModel, path: str) -> dict:
    """Copy the pretrained model in `path` (`dit/`) into `model` (`copy_weights`), to
    fine-tune it. Returns the pretrained model's manifest."""
    copy_weights(_load_model(os.path.join(path, "dit"))[0], model)  # (see copy_weights for what may change)
    with open(os.path.join(path, "dit", "manifest.json")) as f:
        return json.load(f)


def copy_weights(source: TextToVideoModel, target: TextToVideoModel) -> None:
    """`target` takes `source`'s weights. The configs must agree except that `target` may
    add `frame_conditioning`, `absolute_pos`, an `output_conv` or a text `attribute_head`
    (for the caption-attribute loss; it keeps its fresh init), and starts as exactly the
    same function: a text-to-video model grows into a frame-conditioned one by widening the
    patch embedding with zero rows for the new input channels (known frames, mask), as
    InstructPix2Pix widens Stable Diffusion; the absolute-position projection and the
    output convolution's kernel start at zero."""
    old, new = source.dit.config, target.dit.config
    grown = old.replace(frame_conditioning=new.frame_conditioning, absolute_pos=new.absolute_pos,
                        output_conv=old.output_conv or new.output_conv)
    text_old, text_new = source.text.config, target.text.config
    if text_old.attribute_classes == 0:
        text_old = text_old.replace(attribute_classes=text_new.attribute_classes)
    if old.frame_conditioning and not new.frame_conditioning:
        raise ValueError("the source model reads known frames; the target must be frame-conditioned too")
    if old.absolute_pos and not new.absolute_pos:
        raise ValueError("the source model has absolute positions; the target must have them too")
    if text_old != text_new or grown != new:
        raise ValueError(f"cannot copy weights between different models (only frame_conditioning, absolute_pos, "
                         f"output_conv and an attribute head may be added): {source.text.config}, {old} -> "
                         f"{text_new}, {new}")
    params = nnx.state(source, nnx.Param)
    if old.input_channels != new.input_channels:  # rows are ordered (position in the patch, channel)
        kernel = params["dit"]["patch_embed"]["kernel"][...]  # [P * c_in, D]
        P = kernel.shape[0] // old.input_channels
        kernel = jnp.pad(kernel.reshape(P, old.input_channels, -1),
                         ((0, 0), (0, new.input_channels - old.input_channels), (0, 0)))
        params["dit"]["patch_embed"]["kernel"] = nnx.Param(kernel.reshape(P * new.input_channels, -1))
    nnx.update(target, params)


# ----------------------------------------------------------------------------------------
# Shipping and using the trained model: `export_pretrained` writes `dit/` beside a
# `vae/`; `TextToVideo.from_pretrained` loads both and turns prompts into videos.


def export_pretrained(run_dir: str, path: str, vae_path: str, *, extra: dict | None = None,
                      low_noise_below: float | None = None) -> dict:
    """Write `path/dit/` (config.json, the EMA weights as Orbax `params/`, manifest.json,
    log.jsonl) from a `train-dit` run, and copy the VAE it was trained with to `path/vae/`.
    With `low_noise_below = T`, write `path/low_noise/` instead: the low-noise expert that
    denoises at times `t <= T` for the model already in `path` (same VAE, same latents).
    Returns the manifest."""
    with open(os.path.join(run_dir, "train_config.json")) as f:
        settings = json.load(f)
    name = "dit" if low_noise_below is None else "low_noise"
    max_time = settings["diffusion"].get("max_time", 1.0)
    if low_noise_below is None and max_time < 1:
        raise ValueError(f"the DiT run {run_dir} trained only on times t < {max_time:g}, so it cannot start sampling "
                         f"from noise: export it as a low-noise expert (low_noise_below <= {max_time:g})")
    if low_noise_below is not None:
        main = _read_config(os.path.join(path, "dit"))
        _check_experts(main, settings, low_noise_below, latent_scale=settings["train"]["latent_scale"])
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
    os.makedirs(os.path.join(tmp, name))
    config = {k: settings[k] for k in ("text", "dit", "diffusion")}
    config["latent_scale"] = settings["train"]["latent_scale"]
    # Shipped as float16, like the VAE: half the size, and sampling cannot tell the difference.
    config["weights_dtype"] = jnp.dtype(PRETRAINED_DTYPE).name
    if low_noise_below is not None:
        config["low_noise_below"] = float(low_noise_below)
    train._write_json(os.path.join(tmp, name, "config.json"), config)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.join(tmp, name, "params"), jax.tree.map(lambda x: x.astype(PRETRAINED_DTYPE), ema))
    # The log up to the checkpoint's step: a run stopped after its last save logged more.
    log = [row for row in train.read_log(run_dir) if row["step"] <= step]
    with open(os.path.join(tmp, name, "log.jsonl"), "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in log)
    manifest = {"model": "TextToVideoModel (EMA weights)", "params": sum(x.size for x in jax.tree.leaves(ema)),
                "steps": step, "wall_time_s": log[-1]["time"], "final_train_loss": log[-1]["loss"],
                "train": settings["train"], **(extra or {})}
    train._write_json(os.path.join(tmp, name, "manifest.json"), manifest)
    pieces = [name]
    if low_noise_below is None:
        shutil.copytree(vae_path, os.path.join(tmp, "vae"))
        pieces.append("vae")
    for piece in pieces:  # replace piece by piece, each only once complete
        shutil.rmtree(os.path.join(path, piece), ignore_errors=True)
        os.makedirs(path, exist_ok=True)
        os.replace(os.path.join(tmp, piece), os.path.join(path, piece))
    shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _read_config(directory: str) -> dict:
    config_file = os.path.join(directory, "config.json")
    if not os.path.exists(config_file):
        raise FileNotFoundError(f"no pretrained text-to-video model at {os.path.dirname(directory)} (expected "
                                f"{os.path.basename(directory)}/config.json and vae/): train one with "
                                "`python -m sora_mini train-dit` and export it")
    with open(config_file) as f:
        return json.load(f)


def _load_model(directory: str) -> tuple[TextToVideoModel, dict]:
    """The text encoder and DiT exported to `directory` (`dit/` or `low_noise/`), in float32."""
    settings = _read_config(directory)
    model = restore_params(_abstract_model(settings), directory, what="DiT weights",
                           stored_dtype=jnp.dtype(settings.get("weights_dtype", "float32")))
    return model, settings


def _check_switch(low_noise_below) -> float:
    below = float(low_noise_below)
    if not 0.0 <= below <= 1.0:
        raise ValueError(f"low_noise_below is a time in [0, 1] (0: the main model throughout), got {low_noise_below!r}")
    return below


def _check_experts(main: dict, low: dict, low_noise_below: float, latent_scale: float) -> None:
    """Two experts denoise one sampling path: the same latents (VAE, scale), the same
    prediction on the same time axis, the same tokens."""
    _check_switch(low_noise_below)
    same = {"latent_scale": (main["latent_scale"], latent_scale),
            "latent channels": (main["dit"]["in_channels"], low["dit"]["in_channels"]),
            "vocabulary": ((main["text"]["vocab_size"], main["text"]["max_length"]),
                           (low["text"]["vocab_size"], low["text"]["max_length"]))}
    for key in ("objective", "prediction", "schedule"):
        same[f"diffusion {key}"] = (main["diffusion"][key], low["diffusion"][key])
    differ = [f"{k}: {a!r} against {b!r}" for k, (a, b) in same.items() if a != b]
    if differ:
        raise ValueError(f"the low-noise expert does not fit the main model ({'; '.join(differ)})")
    max_time = low["diffusion"].get("max_time", 1.0)
    if low_noise_below > max_time:
        raise ValueError(f"the low-noise expert trained only on times t < {max_time:g}; it cannot take over at "
                         f"low_noise_below = {low_noise_below:g}")


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

    def __init__(self, vae, model: TextToVideoModel, diffusion_config, latent_scale: float, tokenizer=None,
                 classifier=None, classifier_guidance: float = 0.0, low_noise_model: TextToVideoModel | None = None,
                 low_noise_below: float = 0.0):
        """`classifier`: a `guidance.LatentClassifier` of this model's noisy latents, and
        `classifier_guidance` the scale a call uses unless it passes its own (0: none).
        `low_noise_model`: a second `TextToVideoModel` that takes over from `model` at times
        `t <= low_noise_below` (a call may pass its own; 0: `model` throughout)."""
        self.vae, self.model, self.diffusion = vae, model, diffusion_config
        self.latent_scale = float(latent_scale)
        self.tokenizer = tokenizer or Tokenizer.shapes_world(model.text.config.max_length)
        self.classifier, self.classifier_guidance = classifier, float(classifier_guidance)
        self.low_noise_model, self.low_noise_below = low_noise_model, float(low_noise_below)
        self._compiled = {}

    @classmethod
    def from_pretrained(cls, path) -> TextToVideo:
        path = os.path.abspath(os.fspath(path))
        model, settings = _load_model(os.path.join(path, "dit"))
        _, _, diffusion = _configs(settings)
        low, below = None, 0.0
        if os.path.exists(os.path.join(path, "low_noise", "config.json")):  # optional: a low-noise expert
            low, low_settings = _load_model(os.path.join(path, "low_noise"))
            below = low_settings["low_noise_below"]
            _check_experts(settings, low_settings, below, low_settings["latent_scale"])
        classifier, scale = None, 0.0
        if os.path.exists(os.path.join(path, "guidance", "config.json")):  # optional: classifier guidance
            classifier = guidance_lib.load_latent_classifier(os.path.join(path, "guidance"))
            with open(os.path.join(path, "guidance", "manifest.json")) as f:
                scale = json.load(f).get("classifier_guidance", 0.0)
        return cls(VideoVAE.from_pretrained(os.path.join(path, "vae")), model, diffusion, settings["latent_scale"],
                   classifier=classifier, classifier_guidance=scale, low_noise_model=low, low_noise_below=below)

    # ------------------------------------------------------------------------------------
    # Sampling. One compiled program per (latent shape, sampler, steps, guidance mode,
    # editing or not, classifier guidance or not, one expert or two); the guidance scales,
    # the classifier's labels, the known frames, their mask, the editing strength and the
    # experts' switching time are traced inputs, so text-to-video, image-to-video,
    # extension and interpolation all run the same program.

    def _sampler(self, shape, sampler, steps, guided_mode, editing: bool = False, classify: bool = False,
                 experts: bool = False):
        """`guided_mode`: `None` (no guidance), `1.0` (the conditional model alone) or
        `"scale"` (any other scale, passed in as a traced number). `classify`: add
        classifier guidance (`self.classifier`, labels and scale traced). `experts`:
        `low_noise_model` denoises at `t <= below` (traced)."""
        key = (shape, sampler, steps, guided_mode, editing, classify, experts)
        if key not in self._compiled:
            cfg = self.diffusion

            @nnx.jit
            def run(model, low, below, classifier, ids, mask, empty_ids, noise, rng, scale, known, known_mask, start,
                    t_start, labels, classifier_scale):
                guidance = scale if guided_mode == "scale" else guided_mode
                if guidance is None or guided_mode == 1.0:
                    text_ids, text_mask = ids, mask
                else:  # conditional half first, then the empty prompt; both see the known frames
                    text_ids = jnp.concatenate([ids, jnp.broadcast_to(empty_ids, ids.shape)])
                    text_mask = text_ids != PAD_ID
                frames = jnp.concatenate([known, known]), jnp.concatenate([known_mask, known_mask])

                def denoiser(expert):
                    # model_fn(x, t) of one expert; its text encoder runs once, outside the sampler loop.
                    tokens, pooled = expert.text(text_ids, text_mask)
                    reads = expert.dit.config.frame_conditioning

                    def fn(x, t):
                        n = x.shape[0]  # the prompts alone, or the guided batch [prompts; empty prompt]
                        extra = dict(known=frames[0][:n], known_mask=frames[1][:n]) if reads else {}
                        return expert.denoise(x, t, (tokens[:n], pooled[:n]), text_mask[:n], **extra)

                    return fn

                model_fn = denoiser(model)
                if experts:  # every sampler step has one time for the whole batch: only one expert runs
                    high_fn, low_fn = model_fn, denoiser(low)
                    model_fn = lambda x, t: jax.lax.cond(jnp.reshape(t, (-1,))[0] > below, high_fn, low_fn, x, t)

                grad = guidance_lib.classifier_grad_fn(classifier, labels) if classify else None
                return sample(model_fn, noise, config=cfg, sampler=sampler, steps=steps, guidance=guidance, key=rng,
                              known=known, known_mask=known_mask, start=start if editing else None,
                              t_start=t_start if editing else 1.0, classifier_grad=grad,
                              classifier_scale=classifier_scale)

            self._compiled[key] = run
        return self._compiled[key]

    def encode(self, video) -> jax.Array:
        """`uint8 [T, H, W, 3]` -> the latent `[t, h, w, c]` the DiT works in (the VAE's
        posterior mean, times the latent scale)."""
        video = _check_video(video)
        check_video_shape(self.vae.config, *video.shape[:3])
        mean, _ = _vae_encode(self.vae, jnp.asarray(to_float(video))[None])
        return mean[0] * self.latent_scale

    def decode(self, latent) -> np.ndarray:
        """The DiT's latent `[t, h, w, c]` -> `uint8 [1 + (t - 1) f_t, H, W, 3]`."""
        return to_uint8(jax.device_get(_vae_decode(self.vae, jnp.asarray(latent)[None] / self.latent_scale))[0])

    def _end_latents(self, clip) -> jax.Array:
        # Latent frame j >= 1 of a causal VAE encodes pixel frames f_t (j - 1) + 1 .. f_t j:
        # the last k latent frames of a clip hold its last k * f_t frames. Encoding the end clip
        # from its own start and dropping that start's single-frame latent gives exactly such
        # latents. A single image is held for 1 + f_t frames first.
        clip = _as_clip(clip)
        if len(clip) == 1:
            clip = np.repeat(clip, 1 + self.vae.config.temporal_down, axis=0)
        return self.encode(clip)[1:]

    def conditioning(self, num_frames: int, height: int, width: int, *, image=None, video=None, mode=None,
                     end=None, mask=None):
        """The known latent frames `[t, h, w, c]` and their mask `[t]` (1 = given) for a
        clip of `num_frames`: `image` or `video` with `mode="extend"` begins the clip,
        `video` with `mode="extend_backward"` (or `end`) ends it, both is interpolation,
        and `video` of the clip's full length with `mask` (bool `[t]`) gives any frames."""
        t = self.vae.config.latent_shape(num_frames, height, width)[0]
        known = jnp.zeros(self.vae.config.latent_shape(num_frames, height, width))
        known_mask = np.zeros(t, np.float32)
        begin = None
        if image is not None:
            begin = _as_clip(image)
        if video is not None and mode in (None, "extend"):
            begin = video
        if mode == "extend_backward":
            end = video
        if mask is not None:
            mask = np.asarray(mask, bool)
            if mask.shape != (t,):
                raise ValueError(f"mask must be bool [latent frames] = [{t}] for {num_frames} frames, got {mask.shape}")
            z = self.encode(video)
            if z.shape != known.shape:
                raise ValueError(f"with mask=, video must be the whole clip ({num_frames} frames of {height}x{width}), "
                                 f"got {np.shape(video)}")
            return jnp.where(mask[:, None, None, None], z, 0.0), mask.astype(np.float32)
        if begin is not None:
            z = self.encode(begin)
            if len(z) >= t:
                raise ValueError(f"the given start ({len(begin)} frames) leaves nothing of {num_frames} frames to "
                                 "generate: ask for more num_frames")
            known = known.at[: len(z)].set(z)
            known_mask[: len(z)] = 1
        if end is not None:
            z = self._end_latents(end)
            if len(z) + known_mask.sum() >= t:
                raise ValueError(f"the given frames fill all {num_frames} frames: ask for more num_frames")
            known = known.at[t - len(z):].set(z)
            known_mask[t - len(z):] = 1
        return known, known_mask

    def __call__(self, prompt: str, *, seed: int = 0, steps: int = 50, guidance: float | None = 4.0,
                 sampler: str = "euler", num_frames: int = 17, height: int | None = None, width: int | None = None,
                 image=None, video=None, mode: str | None = None, end=None, mask=None, strength: float | None = None,
                 classifier_guidance: float | None = None, low_noise_below: float | None = None):
        """A `uint8 [num_frames, H, W, 3]` video of `prompt`.

        - text to video: the prompt alone.
        - image to video: `image=` (`uint8 [H, W, 3]`) is the first frame.
        - extension: `video=` (1 + 2k frames) with `mode="extend"` starts the clip (forward),
          with `mode="extend_backward"` ends it (backward in time).
        - interpolation ("connecting two videos"): `image=`/`video=` starts it, `end=` (an
          image or a clip) ends it.
        - any frames: `video=` of the whole clip with `mask=` (bool over latent frames).
        - editing (SDEdit): `video=` with `strength=` in [0, 1]: how far toward noise the
          video is pushed before it is denoised under the prompt; 0 returns it unchanged.
        Height and width default to the given frames' size, or 32. `classifier_guidance`:
        the classifier guidance scale (default: the model's `classifier_guidance`; 0: off).
        `low_noise_below`: the time at and below which the low-noise expert denoises
        (default: the model's `low_noise_below`; 0: the main model throughout). A value above
        the band the expert trained on (its `max_time`) is allowed here, for experiments;
        `from_pretrained` and `export_pretrained` refuse it as the model's own switch."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("the prompt is empty: describe a video, e.g. 'a red circle moves to the right' "
                             "(the empty prompt is reserved for classifier-free guidance)")
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        if mode is None and video is not None:
            mode = "edit" if strength is not None else None if mask is not None else "extend"
        if (mode == "edit") != (strength is not None) or (mode == "edit" and (image is not None or end is not None)):
            raise ValueError("editing takes video= and strength= (and no image= or end=); "
                             "strength is only for editing")
        if mode in ("extend_backward", "edit") and video is None or mask is not None and video is None:
            raise ValueError(f"mode={mode!r} and mask= need video=")
        if image is not None and video is not None:
            raise ValueError("pass the first frame as image= or the start as video=, not both")
        if mask is not None and (image is not None or end is not None):
            raise ValueError("mask= picks frames of video= (the whole clip); it does not combine with image= or end=")
        if mode == "extend_backward" and (end is not None or image is not None):
            raise ValueError("mode='extend_backward' ends the clip with video=; for interpolation pass the start as "
                             "image= or video= and the end as end=")
        given = image if image is not None else video if video is not None else end
        if given is not None:
            shape = np.shape(given)
            height, width = height or shape[-3], width or shape[-2]
            if mode == "edit":
                num_frames = shape[0]
        height, width = height or 32, width or 32
        check_video_shape(self.vae.config, num_frames, height, width)
        latent = self.vae.config.latent_shape(num_frames, height, width)
        for expert in (self.model, self.low_noise_model):
            if expert is not None:
                patch_grid(latent, expert.dit.config.patch_size)
        for name, frames in (("image", image), ("video", video), ("end", end)):
            if frames is not None and np.ndim(frames) >= 3 and np.shape(frames)[-3:-1] != (height, width):
                raise ValueError(f"{name} is {np.shape(frames)[-3]}x{np.shape(frames)[-2]}, the video {height}x{width}")
        if mode == "edit":
            strength = float(strength)
            if not 0.0 <= strength <= 1.0:
                raise ValueError(f"strength must lie in [0, 1], got {strength}")
            if strength == 0.0:
                return _check_video(video).copy()  # nothing is noised, nothing is changed
            start, known, known_mask = self.encode(video), jnp.zeros(latent), np.zeros(latent[0], np.float32)
        else:
            start = jnp.zeros(latent)
            known, known_mask = self.conditioning(num_frames, height, width, image=image, video=video, mode=mode,
                                                  end=end if mode != "extend_backward" else None, mask=mask)
        z = self._sample_latent(prompt, latent, seed, steps, guidance, sampler, known, known_mask, start,
                                strength if mode == "edit" else None, classifier_guidance, low_noise_below)
        return self.decode(z)

    def _classifier_scale(self, classifier_guidance, latent) -> float:
        """The classifier guidance scale for a latent `[t, h, w, c]`: the one asked for, else
        the model's default where its classifier reads latents of this size, else 0."""
        reads = self.classifier is not None and tuple(latent[1:3]) == tuple(self.classifier.config.latent_size)
        if classifier_guidance is None:
            return self.classifier_guidance if reads else 0.0
        scale = float(classifier_guidance)
        if scale < 0 or not np.isfinite(scale):
            raise ValueError(f"classifier_guidance must be a number >= 0 (0: off), got {classifier_guidance!r}")
        if scale > 0 and self.classifier is None:
            raise ValueError("classifier_guidance needs a guidance classifier: this model has none (train one with "
                             "`python -m sora_mini train-guidance`, which puts it in <model>/guidance)")
        if scale > 0 and not reads:
            h, w = self.classifier.config.latent_size
            raise ValueError(f"the guidance classifier reads {h}x{w} latents, this video's are "
                             f"{latent[1]}x{latent[2]}: pass classifier_guidance=0 for this size")
        return scale

    def _low_noise_below(self, low_noise_below) -> float:
        below = _check_switch(self.low_noise_below if low_noise_below is None else low_noise_below)
        if below > 0 and self.low_noise_model is None:
            raise ValueError("low_noise_below needs a low-noise expert: this model has none (export one with "
                             "`python -m sora_mini train-dit ... --export <model> --low-noise-below T`)")
        return below

    def _sample_latent(self, prompt, latent, seed, steps, guidance, sampler, known, known_mask, start=None,
                       strength=None, classifier_guidance=None, low_noise_below=None):
        ids, mask = self.tokenizer([prompt], on_overflow="warn")
        empty_ids = self.tokenizer("")[0]
        k_noise, k_sample = jax.random.split(jax.random.key(seed))
        noise = jax.random.normal(k_noise, (1, *latent))
        mode = None if guidance is None else 1.0 if float(guidance) == 1.0 else "scale"
        classifier_scale = self._classifier_scale(classifier_guidance, latent)
        below = self._low_noise_below(low_noise_below)
        run = self._sampler(tuple(latent), sampler, steps, mode, editing=strength is not None,
                            classify=classifier_scale > 0, experts=below > 0)
        scale = jnp.float32(1.0 if guidance is None else guidance)
        start = jnp.zeros(latent) if start is None else start
        labels = guidance_lib.caption_labels([prompt])  # what the prompt names: float32 [1, classes] per head
        return run(self.model, self.low_noise_model if below > 0 else None, jnp.float32(below),
                   self.classifier if classifier_scale > 0 else None, ids, mask, empty_ids, noise, k_sample, scale,
                   jnp.asarray(known)[None], jnp.asarray(known_mask, jnp.float32)[None], jnp.asarray(start)[None],
                   jnp.float32(strength or 1.0), labels, jnp.float32(classifier_scale))[0]

    def long_video(self, prompt: str, num_frames: int, *, overlap: int = 3, window_frames: int = 17, seed: int = 0,
                   steps: int = 50, guidance: float | None = 4.0, sampler: str = "euler", height: int = 32,
                   width: int = 32, classifier_guidance: float | None = None, low_noise_below: float | None = None):
        """A video longer than the model was trained on: the first window from the prompt,
        then windows that each start from the last frames made so far (extension in
        overlapping windows of `window_frames`, `overlap` of whose latent frames are known).

        Each window is a clip the DiT could have been trained on: its known start is those
        last `1 + f_t (overlap - 1)` pixel frames encoded afresh, so latent frame 0 is the
        causal VAE's single-frame latent, as in training, and not a mid-clip latent that
        holds `f_t` frames. Each window is decoded on its own and the windows are joined
        where the next one's new frames begin."""
        check_video_shape(self.vae.config, num_frames, height, width)
        window = self.vae.config.latent_shape(window_frames, height, width)
        if not 1 <= overlap < window[0]:
            raise ValueError(f"overlap must lie in 1..{window[0] - 1} latent frames, got {overlap}")
        context = 1 + self.vae.config.temporal_down * (overlap - 1)  # pixel frames of `overlap` latents
        mask = (np.arange(window[0]) < overlap).astype(np.float32)
        guides = dict(classifier_guidance=classifier_guidance, low_noise_below=low_noise_below)
        z = self._sample_latent(prompt, window, seed, steps, guidance, sampler, jnp.zeros(window), np.zeros_like(mask),
                                **guides)
        frames = self.decode(z)  # [window_frames, H, W, 3]
        video, i = [frames], 0
        while sum(map(len, video)) < num_frames:
            i += 1
            known = jnp.zeros(window).at[:overlap].set(self.encode(frames[-context:]))
            z = self._sample_latent(prompt, window, seed + i, steps, guidance, sampler, known, mask, **guides)
            frames = self.decode(z)
            video.append(frames[context:])
        return np.concatenate(video)[:num_frames]


MODES = (None, "extend", "extend_backward", "edit")


def _as_clip(frames) -> np.ndarray:
    """An image `[H, W, 3]` or a clip `[T, H, W, 3]` (uint8) as a clip."""
    return _check_video(frames if np.ndim(frames) == 4 else np.asarray(frames)[None])


@nnx.jit
def _vae_encode(vae, video):
    return vae.encode(video)


@nnx.jit
def _vae_decode(vae, z):
    return vae.decode(z)
