"""sora-mini: a small Sora-style text-to-video model, built from scratch in JAX.

One module per job, in layers that only point down (the map, with each module's chapter,
is docs/architecture.md):
- base: `world`, `captions`, `dataset` (the shapes world; `data` re-exports them), `video`,
  `metrics`, `store` (saving and loading), `patchify`, `diffusion`, `course`.
- models: `vae`, `text`, `dit`, `sampling`.
- model: `model` (`TextToVideoModel`: the text encoder and DiT trained together).
- training: `loop` (the shared loop), `train`, `export`, `fvd`.
- evaluation: `detect`, `guidance`, `evaluate`.
- product: `pipeline` (`TextToVideo`), `presets`, `recipes`; `python -m sora_mini` calls `recipes`.
"""

__version__ = "0.1.0"
