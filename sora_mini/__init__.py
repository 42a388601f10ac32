"""sora-mini: a small Sora-style text-to-video model, built from scratch in JAX.

One module per chapter of the course (see README.md):
- `sora_mini.data`: the shapes world, a procedural captioned video world with ground truth.
- `sora_mini.video`: writing, reading and tiling videos (mediapy with a pinned ffmpeg).
- `sora_mini.course`: small helpers the notebooks share (fast mode, exercise checks).
"""

__version__ = "0.1.0"
