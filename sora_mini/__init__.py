"""sora-mini: a small Sora-style text-to-video model, built from scratch in JAX.

One module per chapter of the course (see README.md):
- `sora_mini.data`: the shapes world, a procedural captioned video world with ground truth.
- `sora_mini.video`: writing, reading and tiling videos (mediapy with a pinned ffmpeg).
- `sora_mini.vae`, `sora_mini.train`: the causal video VAE and its training loop.
- `sora_mini.patchify`: spacetime patches, 3D sin-cos and rotary positions, packing.
- `sora_mini.text`: the caption tokenizer and a small transformer text encoder.
- `sora_mini.dit`: the diffusion transformer (adaLN-Zero, spacetime and cross-attention).
- `sora_mini.diffusion`, `sora_mini.sampling`: rectified flow and DDPM objectives; samplers.
- `sora_mini.pipeline`: the text encoder and DiT trained together; `TextToVideo`.
- `sora_mini.evaluate`: a shapes-world detector that reads videos back; prompt adherence.
- `sora_mini.course`: small helpers the notebooks share (fast mode, exercise checks).
"""

__version__ = "0.1.0"
