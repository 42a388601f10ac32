"""Captions to vectors: a word tokenizer and a small transformer text encoder (chapter 04).

    "two red circles fall" --Tokenizer--> ids int32 [B, L], mask bool [B, L]
                            --TextEncoder--> tokens [B, L, D] (zero at padding), pooled [B, D]

The DiT reads the per-token embeddings through cross-attention (which word says what
about which object) and the pooled one through adaLN (the gist of the whole prompt).

Large systems use a *frozen* encoder trained on far more text than their videos have
captions: Imagen and Open-Sora use T5, Sora and DALL-E 3 re-caption videos and read
them with large language models. The encoder then already knows that "crimson" is near
"red" and how "to the left of" composes. The shapes world's grammar has 79 words, so a
small encoder learned jointly with the denoiser (or contrastively against video latents,
`clip_loss`) is enough here; swapping in a frozen T5 changes only this module.

Prompt rules, all documented and tested:
- Words outside the vocabulary become `<unk>` (never an error): the model sees that a
  word was there, not what it was.
- An empty prompt is legal and means "no text": only the `<cls>` token. Diffusion
  training drops captions to it, which is what classifier-free guidance needs.
- A prompt longer than `max_length` tokens is truncated with a `UserWarning` (or raises
  `ValueError` with `on_overflow="error"`).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sora_mini.captions import CAPTION_WORD, caption_vocabulary

PAD, UNK, CLS = "<pad>", "<unk>", "<cls>"
SPECIALS = (PAD, UNK, CLS)  # ids 0, 1, 2
PAD_ID = SPECIALS.index(PAD)  # every tokenizer pads with id 0: masks are `ids != PAD_ID`


class Tokenizer:
    """Lower-cases, splits into words and punctuation, maps each to an id. Every
    sequence starts with `<cls>` (whose output is the pooled embedding) and is padded
    with `<pad>` (id 0) to `max_length`."""

    def __init__(self, words: Sequence[str], max_length: int = 72):
        words = [w for w in dict.fromkeys(words) if w not in SPECIALS]
        self.vocab = list(SPECIALS) + words
        self.ids = {w: i for i, w in enumerate(self.vocab)}
        if max_length < 2:
            raise ValueError(f"max_length must be at least 2 (<cls> and one word), got {max_length}")
        self.max_length = max_length

    @classmethod
    def shapes_world(cls, max_length: int = 72) -> Tokenizer:
        """The tokenizer for shapes-world captions: every word the grammar can write."""
        return cls(caption_vocabulary(), max_length)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def pad_id(self) -> int:
        return self.ids[PAD]

    def split(self, text: str) -> list[str]:
        return CAPTION_WORD.findall(text.lower())

    def encode(self, text: str) -> list[int]:
        """`<cls>` followed by one id per word (unknown words -> `<unk>`), unpadded."""
        if not isinstance(text, str):
            raise TypeError(f"a prompt must be a str, got {type(text).__name__}")
        return [self.ids[CLS]] + [self.ids.get(w, self.ids[UNK]) for w in self.split(text)]

    def decode(self, ids) -> str:
        return " ".join(self.vocab[i] for i in np.asarray(ids).tolist() if i != self.pad_id and i != self.ids[CLS])

    def __call__(self, texts: str | Sequence[str], max_length: int | None = None, on_overflow: str = "warn"):
        """Prompts -> `(ids int32 [B, L], mask bool [B, L])` with `L = max_length`."""
        if on_overflow not in ("warn", "error"):
            raise ValueError(f"on_overflow must be 'warn' or 'error', got {on_overflow!r}")
        texts = [texts] if isinstance(texts, str) else list(texts)
        L = max_length or self.max_length
        ids = np.full((len(texts), L), self.pad_id, np.int32)
        for i, text in enumerate(texts):
            seq = self.encode(text)
            if len(seq) > L:
                message = (f"prompt {i} has {len(seq)} tokens (with <cls>), more than max_length={L}: "
                           f"{text[:60]!r}...")
                if on_overflow == "error":
                    raise ValueError(message)
                warnings.warn(message + f" It is truncated to {L} tokens.", UserWarning, stacklevel=2)
                seq = seq[:L]
            ids[i, :len(seq)] = seq
        return jnp.asarray(ids), jnp.asarray(ids != self.pad_id)


# ----------------------------------------------------------------------------------------
# The encoder: a pre-LayerNorm transformer with key-padding masks.


@dataclasses.dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 82  # len(Tokenizer.shapes_world().vocab)
    max_length: int = 72
    dim: int = 128
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: float = 4.0
    # > 0: a linear head on `pooled` that says which colours, shapes and motions the caption
    # names (`captions.caption_label_matrix`, trained by `DiTTrainConfig.caption_loss`).
    # An encoder learned only through the denoiser keeps just the words the diffusion
    # loss pays for, and the direction words are worth little to it (chapter 06).
    attribute_classes: int = 0

    def __post_init__(self):
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} must divide by num_heads={self.num_heads}")

    def replace(self, **changes) -> TextConfig:
        return dataclasses.replace(self, **changes)


TEXT_PRESETS = {
    "tiny": TextConfig(dim=128, depth=2, num_heads=4),  # ~0.4M parameters
    "small": TextConfig(dim=256, depth=4, num_heads=4),  # ~3.2M
}


def attention_mask(mask):
    """`bool [B, L]` key-padding mask -> `[B, 1, L_q, L_k]` for `jax.nn.dot_product_attention`:
    every query may look at every real key and at no padding key."""
    return jnp.broadcast_to(mask[:, None, None, :], (mask.shape[0], 1, mask.shape[1], mask.shape[1]))


class TextBlock(nnx.Module):
    def __init__(self, c: TextConfig, *, rngs: nnx.Rngs):
        self.num_heads = c.num_heads
        self.norm1 = nnx.LayerNorm(c.dim, rngs=rngs)
        self.qkv = nnx.Linear(c.dim, 3 * c.dim, rngs=rngs)
        self.proj = nnx.Linear(c.dim, c.dim, rngs=rngs)
        self.norm2 = nnx.LayerNorm(c.dim, rngs=rngs)
        hidden = int(c.dim * c.mlp_ratio)
        self.mlp = nnx.Sequential(nnx.Linear(c.dim, hidden, rngs=rngs), nnx.gelu, nnx.Linear(hidden, c.dim, rngs=rngs))

    def __call__(self, x, mask):
        B, L, D = x.shape
        q, k, v = jnp.split(self.qkv(self.norm1(x)).reshape(B, L, self.num_heads, 3 * D // self.num_heads), 3, -1)
        h = jax.nn.dot_product_attention(q, k, v, mask=attention_mask(mask))  # [B, L, heads, D/heads]
        x = x + self.proj(h.reshape(B, L, D))
        return x + self.mlp(self.norm2(x))


class TextEncoder(nnx.Module):
    """`(ids [B, L], mask [B, L]) -> (tokens [B, L, dim], pooled [B, dim])`.

    Token and learned position embeddings, `depth` transformer blocks whose attention
    ignores padding keys, a final LayerNorm. Padding rows come out as zeros, and no real
    token's embedding depends on how much padding follows it. `pooled` is the `<cls>`
    token's output (position 0, always present)."""

    def __init__(self, config: TextConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embed = nnx.Embed(config.vocab_size, config.dim, rngs=rngs)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (config.max_length, config.dim)))
        self.blocks = nnx.List([TextBlock(config, rngs=rngs) for _ in range(config.depth)])
        self.norm = nnx.LayerNorm(config.dim, rngs=rngs)
        self.attribute_head = (nnx.Linear(config.dim, config.attribute_classes, rngs=rngs)
                               if config.attribute_classes else None)

    def __call__(self, ids, mask):
        c = self.config
        if ids.ndim != 2 or mask.shape != ids.shape:
            raise ValueError(f"ids and mask must both be [B, L], got {ids.shape} and {mask.shape}")
        if ids.shape[1] > c.max_length:
            raise ValueError(f"sequences of {ids.shape[1]} tokens exceed the encoder's max_length={c.max_length}")
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(f"ids must be integer token ids, got {ids.dtype}")
        x = self.embed(ids) + self.pos[: ids.shape[1]]
        for block in self.blocks:
            x = block(x, mask)
        x = self.norm(x) * mask[..., None]
        return x, x[:, 0]


def clip_loss(text_pooled, video_embedding, temperature: float = 0.07):
    """CLIP's symmetric InfoNCE: matched (caption, clip) pairs on the diagonal of the
    `[B, B]` cosine-similarity matrix should win over every mismatched pair.
    Inputs `[B, D]` each (project them to a shared D first)."""
    a = text_pooled / jnp.linalg.norm(text_pooled, axis=-1, keepdims=True).clip(1e-6)
    b = video_embedding / jnp.linalg.norm(video_embedding, axis=-1, keepdims=True).clip(1e-6)
    logits = a @ b.T / temperature
    labels = jnp.arange(logits.shape[0])
    log_p_text = jax.nn.log_softmax(logits, axis=1)[labels, labels]
    log_p_video = jax.nn.log_softmax(logits, axis=0)[labels, labels]
    return -0.5 * (log_p_text.mean() + log_p_video.mean())
