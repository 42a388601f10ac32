"""Text to video, the product (chapters 06-08): `TextToVideo` turns prompts into videos.

It samples with one `model.TextToVideoModel`, or with two experts on one path (eDiff-I,
Wan 2.2): the main model while `t > low_noise_below`, a low-noise expert after; with
classifier-free guidance, optionally classifier guidance, and known frames for
image-to-video, extension, interpolation and editing.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sora_mini import guidance as guidance_lib
from sora_mini import store
from sora_mini.captions import caption_labels
from sora_mini.model import (
    LOAD_HINT,
    TextToVideoModel,
    check_experts,
    check_switch,
    configs_from_settings,
    load_text_to_video_model,
)
from sora_mini.patchify import patch_grid
from sora_mini.sampling import SAMPLERS, sample
from sora_mini.text import PAD_ID, Tokenizer
from sora_mini.vae import VideoVAE, check_video_shape
from sora_mini.video import check_video, to_float, to_uint8


class TextToVideo:
    """`TextToVideo.from_pretrained("tiny")("a red circle moves to the right")`
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
        """The text-to-video model in `path`: a shipped name (`"tiny"`, see
        `store.resolve_pretrained`) or an exported directory with `dit/` and `vae/`, and
        optionally `low_noise/` (a low-noise expert) and `guidance/` (a guidance classifier)."""
        path = store.resolve_pretrained(path, what="text-to-video model", hint=LOAD_HINT)
        model, settings = load_text_to_video_model(os.path.join(path, "dit"))
        _, _, diffusion = configs_from_settings(settings)
        low, below = None, 0.0
        if os.path.exists(os.path.join(path, "low_noise", "config.json")):  # optional: a low-noise expert
            low, low_settings = load_text_to_video_model(os.path.join(path, "low_noise"))
            below = low_settings["low_noise_below"]
            check_experts(settings, low_settings, below, low_settings["latent_scale"])
        classifier, scale = None, 0.0
        if os.path.exists(os.path.join(path, "guidance", "config.json")):  # optional: classifier guidance
            classifier = guidance_lib.load_latent_classifier(os.path.join(path, "guidance"))
            scale = store.read_json(os.path.join(path, "guidance", "manifest.json")).get("classifier_guidance", 0.0)
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
        video = check_video(video)
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
                return check_video(video).copy()  # nothing is noised, nothing is changed
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
        below = check_switch(self.low_noise_below if low_noise_below is None else low_noise_below)
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
        labels = caption_labels([prompt])  # what the prompt names: float32 [1, classes] per head
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
    return check_video(frames if np.ndim(frames) == 4 else np.asarray(frames)[None])


@nnx.jit
def _vae_encode(vae, video):
    return vae.encode(video)


@nnx.jit
def _vae_decode(vae, z):
    return vae.decode(z)
