"""A tiny exported text-to-video model (VAE, text encoder, DiT) for tests of the pipeline
and the commands built on it: trained for two steps, so its weights are real checkpoints."""

import numpy as np
from flax import nnx

from sora_mini import data, diffusion, train
from sora_mini.export import export_text_to_video, export_vae
from sora_mini.model import TextToVideoModel
from sora_mini.vae import VideoVAE

WORLD = data.ShapesWorldConfig(height=16, width=16, num_frames=9)


def export_tiny_model(root, text_config, dit_config, vae_config, clips: int = 8) -> dict:
    """Export `root/vae` and `root/model` (dit/ and vae/) trained 2 steps on a cache of `clips`
    random latents `[clips, 5, 8, 8, c]` with real captions of `WORLD`; returns the cache."""
    export_vae(VideoVAE(vae_config, rngs=nnx.Rngs(0)), str(root / "vae"), world=WORLD, eval_clips=2)
    mean = np.random.default_rng(0).normal(size=(clips, 5, 8, 8, vae_config.latent_channels)).astype(np.float32)
    cache = {"mean": mean, "logvar": np.full_like(mean, -8.0),
             "caption": np.asarray([data.make_clip(WORLD, s).caption for s in range(clips)])}
    tc = train.DiTTrainConfig(steps=2, batch_size=4, warmup_steps=1, save_every=2, log_every=1)
    settings = {"text": dict(text_config.__dict__),
                "dit": {**dit_config.__dict__, "patch_size": list(dit_config.patch_size)}}
    train.train_dit(TextToVideoModel(text_config, dit_config, rngs=nnx.Rngs(0)), cache, tc, str(root / "run"),
                    diffusion.DiffusionConfig(time_shift=3.0), progress=False, settings=settings)
    export_text_to_video(str(root / "run"), str(root / "model"), str(root / "vae"))
    return cache
