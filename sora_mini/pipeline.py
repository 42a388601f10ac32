"""Text to video: the trained pieces put together (chapters 06-07).

`TextToVideoModel` is what diffusion training optimises: the text encoder and the DiT,
trained jointly, with the encoder's `<cls>` output as the pooled text the DiT's adaLN
reads and its token embeddings as what cross-attention reads.

    ids, mask [B, L] --TextEncoder--> tokens [B, L, Dt], pooled [B, Dt]
    noisy latent [B, t, h, w, c], time [B] --DiT(tokens, mask, pooled)--> prediction
"""

from __future__ import annotations

from flax import nnx

from sora_mini.dit import DiT, DiTConfig
from sora_mini.text import TextConfig, TextEncoder


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
