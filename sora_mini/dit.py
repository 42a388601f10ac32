"""The diffusion transformer (chapter 05): DiT blocks with adaLN-Zero over spacetime
patches, cross-attention to the caption. Peebles & Xie's DiT ("Scalable Diffusion Models
with Transformers", 2023), which Sora's report builds on, in video form:

    latent [B, t, h, w, c] --patchify + Linear--> tokens [B, N, D]   (N = t/pt * h/ph * w/pw)
    time [B] --TimestepEmbedder--> [B, D] --+-- c [B, D]   (the adaLN condition)
    pooled text [B, Dt] --Linear-----------/  (or a class label, for the image DiT)
    tokens --depth x DiTBlock(c, text tokens)--> FinalLayer(c) --unpatchify--> [B, t, h, w, c_out]
                                                (+ optional 3x3x3 output convolution, U-ViT)

A DiTBlock (adaLN-Zero, plus PixArt-style cross-attention):

    shift1, scale1, gate1, shift2, scale2, gate2 = Linear(SiLU(c))    # zero-initialised
    x = x + gate1 * SelfAttention(LN(x) * (1 + scale1) + shift1)      # RoPE on q and k
    x = x + CrossAttention(LN(x), text tokens, text mask)              # output proj zero-initialised
    x = x + gate2 * MLP(LN(x) * (1 + scale2) + shift2)

With the final layer zero too (`DiT.initialize_zero`), every block starts as the identity
and the model outputs zero. Self-attention is full 3D attention over all N tokens, or
"factorised" (Latte, Open-Sora 1.x): blocks alternate between attention within each frame
(spatial) and across frames at each position (temporal), `N * (h*w + t)` instead of `N^2`.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sora_mini.patchify import (apply_rope, patch_coordinates, patch_grid, patchify, rope_angles, sincos_embedding,
                                unpatchify)
from sora_mini.store import count_params  # noqa: F401  (re-exported: dit.count_params(model))


@dataclasses.dataclass(frozen=True)
class DiTConfig:
    in_channels: int = 8  # latent channels c
    patch_size: tuple[int, int, int] = (1, 2, 2)  # (pt, ph, pw)
    hidden_size: int = 128  # D
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    # Conditioning: text (cross-attention + pooled text in adaLN), or a class label.
    text_dim: int | None = 128  # the TextEncoder's width; None: no text
    num_classes: int | None = None  # class-conditional: a table of num_classes + 1 rows (the last = "none")
    learn_sigma: bool = False  # also predict a variance (2c output channels), as the DiT paper
    # Frame conditioning (chapter 08): known latent frames and their mask, concatenated to the noisy latent
    # (Wan, Open-Sora 2.0): c + c + 1 input channels. Image-to-video, extension, interpolation: "some frames known".
    frame_conditioning: bool = False
    # Architecture.
    attention: str = "full"  # "full" 3D attention, or "factorised" (spatial and temporal blocks alternate)
    pos_embed: str = "rope"  # "rope" (3D rotary, in attention) or "sincos" (fixed, added to the tokens)
    qk_norm: bool = True  # RMS-normalise queries and keys: keeps attention logits tame in bf16
    rope_theta: float = 10_000.0
    # RoPE is relative: alone, it tells a token where it is only from the grid's edges. absolute_pos also adds
    # a learned (zero-initialised) projection of the sin-cos table to the tokens, as Open-Sora 1.x does.
    absolute_pos: bool = False
    # U-ViT's output convolution (Bao et al. 2023): a Linear head draws each patch on its own, so an object that
    # straddles patches is drawn in pieces that need not agree. output_conv = F > 0: the head also emits F features
    # per latent pixel, and a (zero-initialised) 3x3x3 convolution of them adds what neighbouring pixels, across
    # patch borders and frames, say. 0: the DiT paper's head.
    output_conv: int = 0
    # Efficiency.
    dtype: str = "float32"  # compute dtype ("bfloat16" on GPUs/TPUs); parameters stay float32
    scan_layers: bool = False  # one compiled block, scanned over depth: compile time independent of depth
    remat: bool = False  # recompute block activations in the backward pass: memory for compute

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} must divide by num_heads={self.num_heads}")
        if self.attention not in ("full", "factorised"):
            raise ValueError(f"attention must be 'full' or 'factorised', got {self.attention!r}")
        if self.pos_embed not in ("rope", "sincos"):
            raise ValueError(f"pos_embed must be 'rope' or 'sincos', got {self.pos_embed!r}")
        if self.attention == "factorised" and self.depth % 2:
            raise ValueError(f"factorised attention alternates spatial and temporal blocks: depth={self.depth} "
                             "must be even")
        if len(self.patch_size) != 3:
            raise ValueError(f"patch_size must be (pt, ph, pw), got {self.patch_size}")
        if self.output_conv < 0:
            raise ValueError(f"output_conv is a number of features (0: off), got {self.output_conv}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def input_channels(self) -> int:
        """Channels the patch embedding reads: the noisy latent, plus known frames and mask."""
        return 2 * self.in_channels + 1 if self.frame_conditioning else self.in_channels

    @property
    def out_channels(self) -> int:
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def block_kinds(self) -> tuple[str, ...]:
        """The repeating pattern of self-attention kinds."""
        return ("full",) if self.attention == "full" else ("spatial", "temporal")

    def replace(self, **changes) -> DiTConfig:
        return dataclasses.replace(self, **changes)


def _paper(hidden: int, depth: int, heads: int, patch: int) -> DiTConfig:
    # The image DiT: class-conditional on ImageNet 256 (32x32x4 SD-VAE latents, one frame),
    # learned sigma, fixed sin-cos positions, no text, no QK-norm.
    return DiTConfig(in_channels=4, patch_size=(1, patch, patch), hidden_size=hidden, depth=depth,
                     num_heads=heads, text_dim=None, num_classes=1000, learn_sigma=True,
                     pos_embed="sincos", qk_norm=False)


DIT_PRESETS: dict[str, DiTConfig] = {
    # Video presets the course trains. tiny: the tiny VAE's 9x8x8x8 latents -> 144 tokens.
    "tiny": DiTConfig(in_channels=8, patch_size=(1, 2, 2), hidden_size=128, depth=4, num_heads=4, text_dim=128),
    # small: the small VAE's 5x8x8x16 latents of 64x64 clips, on a Colab GPU/TPU.
    "small": DiTConfig(in_channels=16, patch_size=(1, 2, 2), hidden_size=384, depth=12, num_heads=6, text_dim=256,
                       dtype="bfloat16"),
    # The DiT paper's models (Table 4), for checking this implementation against it.
    **{f"DiT-{name}/{p}": _paper(d, n, h, p)
       for name, (d, n, h) in {"S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}.items()
       for p in (2, 4, 8)},
}


# ---- Conditioning embedders ------------------------------------------------------------

def timestep_embedding(time, dim: int = 256, max_period: float = 10_000.0):
    """Sinusoidal features `[B, dim]` of diffusion time in [0, 1]. Time is scaled by 1000
    first, so the frequencies match DiT's integer timesteps 0..999."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = 1000.0 * jnp.asarray(time, jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class TimestepEmbedder(nnx.Module):
    """time [B] -> sinusoid [B, 256] -> Linear -> SiLU -> Linear -> [B, D]."""

    def __init__(self, dim: int, freq_dim: int = 256, *, dtype, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.02)
        self.freq_dim = freq_dim
        self.mlp = nnx.Sequential(nnx.Linear(freq_dim, dim, kernel_init=init, dtype=dtype, rngs=rngs), nnx.silu,
                                  nnx.Linear(dim, dim, kernel_init=init, dtype=dtype, rngs=rngs))

    def __call__(self, time):
        return self.mlp(timestep_embedding(time, self.freq_dim))


def adaln_modulate(x, shift, scale):
    """`x [B, N, D]` normalised, then scaled and shifted per sample (`[B, D]` each)."""
    return x * (1 + scale[:, None]) + shift[:, None]


# ---- Attention -------------------------------------------------------------------------

def _linear(cin, cout, dtype, rngs):
    # DiT's init for every Linear: Xavier-uniform, zero bias (DiT.initialize_zero then zeroes some).
    return nnx.Linear(cin, cout, kernel_init=nnx.initializers.xavier_uniform(), bias_init=nnx.initializers.zeros_init(),
                      dtype=dtype, rngs=rngs)


class SelfAttention(nnx.Module):
    """Multi-head self-attention over spacetime tokens `[B, N, D]` on a `(gt, gh, gw)`
    grid: over all N tokens ("full"), within each frame ("spatial") or across frames at
    each spatial position ("temporal"). RoPE angles `[N, head_dim/2]` rotate q and k."""

    def __init__(self, c: DiTConfig, kind: str, *, dtype, rngs: nnx.Rngs):
        self.kind, self.num_heads = kind, c.num_heads
        self.qkv = _linear(c.hidden_size, 3 * c.hidden_size, dtype, rngs)
        self.proj = _linear(c.hidden_size, c.hidden_size, dtype, rngs)
        rms_norm = lambda: nnx.RMSNorm(c.head_dim, dtype=dtype, rngs=rngs) if c.qk_norm else None
        self.q_norm, self.k_norm = rms_norm(), rms_norm()
        self.attention_fn = None  # jax.nn.dot_product_attention; parallel.sequence_parallel swaps in its own

    def __call__(self, x, grid, rope=None):
        (B, N, D), H = x.shape, self.num_heads  # x: [B, N, D], N = gt * gh * gw
        gt, gh, gw = grid
        q, k, v = jnp.split(self.qkv(x).reshape(B, N, H, 3 * D // H), 3, axis=-1)  # [B, N, H, D/H] each
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)  # [B, N, H, D/H], RMS-normalised over D/H
        if rope is not None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)  # [B, N, H, D/H], rotated by position
        if self.kind == "spatial":  # within each frame: [B * gt, gh * gw, H, D/H]
            q, k, v = (a.reshape(B * gt, gh * gw, *a.shape[2:]) for a in (q, k, v))
        elif self.kind == "temporal":  # across frames at each position: [B * gh * gw, gt, H, D/H]
            q, k, v = (a.reshape(B, gt, gh * gw, *a.shape[2:]).swapaxes(1, 2).reshape(B * gh * gw, gt, *a.shape[2:])
                       for a in (q, k, v))
        h = (self.attention_fn or jax.nn.dot_product_attention)(q, k, v)  # the shape of q
        if self.kind == "temporal":
            h = h.reshape(B, gh * gw, gt, *h.shape[2:]).swapaxes(1, 2)  # [B, gt, gh * gw, H, D/H]
        return self.proj(h.reshape(B, N, D))  # [B, N, D]


class CrossAttention(nnx.Module):
    """Video tokens `[B, N, D]` attend to text tokens `[B, L, Dt]`, ignoring padding."""

    def __init__(self, c: DiTConfig, *, dtype, rngs: nnx.Rngs):
        self.num_heads = c.num_heads
        self.q = _linear(c.hidden_size, c.hidden_size, dtype, rngs)
        self.kv = _linear(c.text_dim, 2 * c.hidden_size, dtype, rngs)
        self.proj = _linear(c.hidden_size, c.hidden_size, dtype, rngs)  # zero-initialised (DiT.initialize_zero)

    def __call__(self, x, text, text_mask):
        (B, N, D), L, H = x.shape, text.shape[1], self.num_heads  # x: [B, N, D]; text: [B, L, Dt]
        q = self.q(x).reshape(B, N, H, D // H)  # [B, N, H, D/H]
        k, v = jnp.split(self.kv(text).reshape(B, L, H, 2 * D // H), 2, axis=-1)  # [B, L, H, D/H] each
        mask = jnp.broadcast_to(text_mask[:, None, None, :], (B, 1, N, L))  # [B, 1, N, L]: real text keys only
        h = jax.nn.dot_product_attention(q, k, v, mask=mask)  # [B, N, H, D/H]
        return self.proj(h.reshape(B, N, D))  # [B, N, D]


# ---- Blocks ----------------------------------------------------------------------------

class DiTBlock(nnx.Module):
    def __init__(self, c: DiTConfig, kind: str = "full", *, rngs: nnx.Rngs):
        dtype, D = jnp.dtype(c.dtype), c.hidden_size
        # DiT's LayerNorms have no affine parameters: adaLN supplies scale and shift.
        self.norm1 = nnx.LayerNorm(D, epsilon=1e-6, use_bias=False, use_scale=False, dtype=dtype, rngs=rngs)
        self.attn = SelfAttention(c, kind, dtype=dtype, rngs=rngs)
        text = c.text_dim is not None
        self.norm_cross = nnx.LayerNorm(D, epsilon=1e-6, dtype=dtype, rngs=rngs) if text else None
        self.cross = CrossAttention(c, dtype=dtype, rngs=rngs) if text else None
        self.norm2 = nnx.LayerNorm(D, epsilon=1e-6, use_bias=False, use_scale=False, dtype=dtype, rngs=rngs)
        hidden = int(D * c.mlp_ratio)
        self.mlp = nnx.Sequential(_linear(D, hidden, dtype, rngs), lambda h: nnx.gelu(h, approximate=True),
                                  _linear(hidden, D, dtype, rngs))
        self.adaln = _linear(D, 6 * D, dtype, rngs)  # adaLN-Zero: zero-initialised (DiT.initialize_zero)

    def __call__(self, x, c, grid, rope=None, text=None, text_mask=None):
        shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(self.adaln(nnx.silu(c)), 6, axis=-1)  # [B, D] each
        x = x + gate1[:, None] * self.attn(adaln_modulate(self.norm1(x), shift1, scale1), grid, rope)  # [B, N, D]
        if self.cross is not None:
            x = x + self.cross(self.norm_cross(x), text, text_mask)  # [B, N, D]
        return x + gate2[:, None] * self.mlp(adaln_modulate(self.norm2(x), shift2, scale2))  # [B, N, D]


class FinalLayer(nnx.Module):
    """adaLN (shift, scale), then a Linear to the patch values, `[B, N, D] -> [B, t, h, w, c_out]`.
    With `output_conv = F`, a second Linear gives F features per latent pixel, and a 3x3x3
    convolution of them is added. (DiT.initialize_zero zeroes adaLN, Linear and convolution.)"""

    def __init__(self, c: DiTConfig, *, rngs: nnx.Rngs):
        dtype, D, P = jnp.dtype(c.dtype), c.hidden_size, int(np.prod(c.patch_size))
        self.patch_size = c.patch_size
        self.norm = nnx.LayerNorm(D, epsilon=1e-6, use_bias=False, use_scale=False, dtype=dtype, rngs=rngs)
        self.adaln = _linear(D, 2 * D, dtype, rngs)
        self.linear = _linear(D, P * c.out_channels, dtype, rngs)
        F = c.output_conv  # features per latent pixel for the output convolution (0: none)
        self.features = _linear(D, P * F, dtype, rngs) if F else None
        self.conv = nnx.Conv(F, c.out_channels, (3, 3, 3), padding="SAME", dtype=dtype, rngs=rngs) if F else None

    def __call__(self, x, c, grid):
        shift, scale = jnp.split(self.adaln(nnx.silu(c)), 2, axis=-1)  # [B, D] each
        h = adaln_modulate(self.norm(x), shift, scale)  # [B, N, D]
        out = unpatchify(self.linear(h), self.patch_size, grid)  # [B, N, P * c_out] -> [B, t, h, w, c_out]
        if self.conv is not None:
            features = unpatchify(self.features(h), self.patch_size, grid)  # [B, t, h, w, F]
            out = out + self.conv(nnx.gelu(features, approximate=True))  # [B, t, h, w, c_out]
        return out


class BlockGroup(nnx.Module):
    """One repeat of the attention pattern: a full block, or a (spatial, temporal) pair.
    With `scan_layers` the model stacks `depth / len(pattern)` of these and scans them."""

    def __init__(self, c: DiTConfig, *, rngs: nnx.Rngs):
        self.blocks = nnx.List([DiTBlock(c, kind, rngs=rngs) for kind in c.block_kinds])

    def __call__(self, x, *args):
        """`x [B, N, D]` -> the list of each block's output `[B, N, D]` (the last: the group's)."""
        states = []
        for block in self.blocks:
            x = block(x, *args)  # [B, N, D]
            states.append(x)
        return states


# ---- The model -------------------------------------------------------------------------

class DiT(nnx.Module):
    """`DiT(config, rngs=...)(x, time, text=..., text_mask=..., labels=...)`.

    - `x`: noisy latent `[B, t, h, w, c]`; any `(t, h, w)` divisible by the patch size
      (with RoPE the same weights serve every grid; sin-cos tables are made per grid too).
    - `time`: `[B]` diffusion time in [0, 1].
    - `text`, `text_mask`: the TextEncoder's `[B, L, text_dim]` tokens and `bool [B, L]`
      mask; `text_pooled` `[B, text_dim]` (default: the mean of the real tokens).
    - `labels`: `int [B]` for class-conditional configs (`config.num_classes` = none).
    - `known`, `known_mask` (with `frame_conditioning`): clean latents `[B, t, h, w, c]` and
      `[B, t]` (1 where latent frame f is given). Omitted: no frame is known (text only).
    Returns `float32 [B, t, h, w, out_channels]`; with `return_intermediates=True`, also a dict
    (compute dtype) of `"tokens"` `[B, N, D]` (embedded patches + positions), `"condition"`
    `[B, D]` and `"blocks"` `[depth, B, N, D]` (the tokens after each block)."""

    def __init__(self, config: DiTConfig, *, rngs: nnx.Rngs):
        c = self.config = config
        dtype, patch_dim = jnp.dtype(c.dtype), int(np.prod(c.patch_size)) * c.input_channels
        self.patch_embed = _linear(patch_dim, c.hidden_size, dtype, rngs)  # DiT's stride-p conv, on flat patches
        use_abs = c.absolute_pos and c.pos_embed == "rope"  # (sincos adds the table itself)
        self.abs_pos = _linear(c.hidden_size, c.hidden_size, dtype, rngs) if use_abs else None
        self.time_embed = TimestepEmbedder(c.hidden_size, dtype=dtype, rngs=rngs)
        self.text_pool = _linear(c.text_dim, c.hidden_size, dtype, rngs) if c.text_dim is not None else None
        self.label_embed = (nnx.Embed(c.num_classes + 1, c.hidden_size, embedding_init=nnx.initializers.normal(0.02),
                                      rngs=rngs) if c.num_classes is not None else None)
        groups = c.depth // len(c.block_kinds)
        if c.scan_layers:  # one BlockGroup whose parameters are stacked: [groups, ...]
            @nnx.split_rngs(splits=groups)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def make_groups(rngs):
                return BlockGroup(c, rngs=rngs)

            self.blocks = make_groups(rngs)
        else:
            self.blocks = nnx.List([BlockGroup(c, rngs=rngs) for _ in range(groups)])
        self.final = FinalLayer(c, rngs=rngs)
        self.initialize_zero()

    def initialize_zero(self):
        """Zero the weight and bias of each layer whose output is added to something: the model
        starts by changing nothing and learns what to add (DiT's `initialize_weights`).
        - Blocks: the adaLN modulation (adaLN-Zero: the gates start at 0, closing both gated
          branches) and the cross-attention output (no gate): every block is the identity.
        - The final layer's adaLN and Linear: the model outputs zero.
        - The absolute-position projection and the output convolution: no-ops, so a model
          without them grows into one that computes the same (`model.copy_weights`).
        Layers are built with their usual initialisers first, so the other parameters draw the
        same random numbers. Scanned blocks' parameters are stacked `[groups, ...]`: all zeroed."""
        zero = [self.abs_pos, self.final.adaln, self.final.linear, self.final.conv]
        for group in [self.blocks] if self.config.scan_layers else self.blocks:
            for block in group.blocks:
                zero += [block.adaln, None if block.cross is None else block.cross.proj]
        for layer in filter(None, zero):
            for param in (layer.kernel, layer.bias):
                param[...] = jnp.zeros_like(param[...])

    def condition(self, time, text=None, text_mask=None, text_pooled=None, labels=None):
        """The adaLN condition `c [B, D]`: time embedding + pooled text (or class) embedding."""
        cond = self.time_embed(time)  # [B, D]
        if self.text_pool is not None:
            if text_pooled is None:
                m = text_mask[..., None].astype(text.dtype)  # [B, L, 1]
                text_pooled = (text * m).sum(1) / jnp.maximum(m.sum(1), 1.0)  # [B, text_dim]
            cond = cond + self.text_pool(text_pooled)  # [B, D]
        if self.label_embed is not None:
            cond = cond + self.label_embed(labels)  # [B, D]
        return cond

    def _check_inputs(self, x, time, text, text_mask, text_pooled, labels, known, known_mask):
        """Raise a ValueError for inputs `__call__` cannot read. Shapes only: at trace time."""
        c = self.config
        if x.ndim != 5 or x.shape[-1] != c.in_channels:
            raise ValueError(f"x must be a latent [B, t, h, w, {c.in_channels}], got shape {x.shape}")
        B = x.shape[0]
        if (known is None) != (known_mask is None):
            raise ValueError("pass known frames and known_mask together")
        if known is not None and not c.frame_conditioning:
            raise ValueError("this DiT was not trained with frame conditioning (frame_conditioning=False): "
                             "it would ignore the known frames")
        if known is not None and (known.shape != x.shape or jnp.shape(known_mask) != x.shape[:2]):
            raise ValueError(f"known must be {x.shape} like x and known_mask [B, t] = {x.shape[:2]}, got "
                             f"{known.shape} and {jnp.shape(known_mask)}")
        if jnp.shape(time) != (B,):
            raise ValueError(f"time must be [B] = [{B}] in [0, 1], got shape {jnp.shape(time)}")
        if c.text_dim is None and (text is not None or text_pooled is not None):
            raise ValueError("this DiT has no text conditioning (text_dim=None): it would ignore the text given")
        if c.text_dim is not None:
            if text is None:
                raise ValueError("this DiT reads text: pass text [B, L, text_dim] and text_mask [B, L]")
            if text.ndim != 3 or text.shape[0] != B or text.shape[-1] != c.text_dim:
                raise ValueError(f"text must be [B={B}, L, {c.text_dim}], got shape {text.shape}")
            if text_mask is None or text_mask.shape != text.shape[:2]:
                raise ValueError(f"text_mask must be bool [B, L] = {text.shape[:2]}, got "
                                 f"{None if text_mask is None else text_mask.shape}")
        if c.num_classes is not None and labels is None:
            raise ValueError(f"this DiT is class-conditional: pass labels [B] in 0..{c.num_classes} "
                             f"({c.num_classes} = no class)")
        patch_grid(x.shape[1:4], c.patch_size)  # raises unless the patch size divides (t, h, w)

    def __call__(self, x, time, *, text=None, text_mask=None, text_pooled=None, labels=None, known=None,
                 known_mask=None, return_intermediates=False):
        self._check_inputs(x, time, text, text_mask, text_pooled, labels, known, known_mask)  # x: [B, t, h, w, c]
        c, dtype = self.config, jnp.dtype(self.config.dtype)
        if c.frame_conditioning:  # known frames and their mask ride along as input channels
            if known is None:  # no frame known: [B, t, h, w, c] and [B, t]
                known, known_mask = jnp.zeros_like(x), jnp.zeros(x.shape[:2])
            m = jnp.broadcast_to(jnp.asarray(known_mask, x.dtype)[:, :, None, None, None], (*x.shape[:4], 1))
            x = jnp.concatenate([x, known * m, m], axis=-1)  # [B, t, h, w, 2c + 1] (m: [B, t, h, w, 1])
        grid = patch_grid(x.shape[1:4], c.patch_size)  # (gt, gh, gw): N = gt * gh * gw tokens
        coords = patch_coordinates(grid)  # [N, 3], static: depends on the shape only
        tokens = self.patch_embed(patchify(x, c.patch_size).astype(dtype))  # [B, N, P * c_in] -> [B, N, D]
        rope = rope_angles(coords, c.head_dim, c.rope_theta) if c.pos_embed == "rope" else None  # [N, D/H/2]
        if c.pos_embed == "sincos" or self.abs_pos is not None:  # absolute positions: fixed, or learned from them
            table = jnp.asarray(sincos_embedding(coords, c.hidden_size), dtype)  # [N, D]
            tokens = tokens + (table if self.abs_pos is None else self.abs_pos(table))  # [B, N, D]
        cond = self.condition(time, text, text_mask, text_pooled, labels)  # [B, D]
        text = None if text is None else text.astype(dtype)  # [B, L, Dt]
        run = lambda group, h: group(h, cond, grid, rope, text, text_mask)  # [B, N, D] -> [B, N, D] per block
        run = nnx.remat(run) if c.remat else run  # remat: the blocks' activations recomputed in the backward pass
        if c.scan_layers:
            @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
            def scan_groups(h, group):
                states = run(group, h)  # [B, N, D] per block of the group
                return states[-1], (jnp.stack(states) if return_intermediates else None)  # [B, N, D], [k, B, N, D]

            h, states = scan_groups(tokens, self.blocks)  # [B, N, D], [groups, k, B, N, D] or None
            states = None if states is None else states.reshape(c.depth, *h.shape)  # [depth, B, N, D]
        else:
            h, states = tokens, []  # [B, N, D]
            for group in self.blocks:
                states += run(group, h)  # [B, N, D] per block
                h = states[-1]  # [B, N, D]
            states = jnp.stack(states) if return_intermediates else None  # [depth, B, N, D]
        out = self.final(h, cond, grid).astype(jnp.float32)  # [B, t, h, w, out_channels]
        return (out, {"tokens": tokens, "condition": cond, "blocks": states}) if return_intermediates else out


# ---- Cost: multiply-accumulates per forward pass (the DiT paper's "Gflops" convention) -

def gflops(config: DiTConfig, latent_shape, text_length: int = 72) -> float:
    """Forward-pass cost of one sample in G multiply-accumulates, counting the matmuls
    (linear layers and attention's `QK^T` and `AV`) and ignoring element-wise work, as
    the DiT paper's Table 4 does. `latent_shape` is `(t, h, w, c)`, or `(h, w, c)` for
    an image; `text_length` is the number of text tokens cross-attention reads."""
    c = config
    gt, gh, gw = patch_grid((1, *latent_shape) if len(latent_shape) == 3 else latent_shape, c.patch_size)
    N, D, P = gt * gh * gw, c.hidden_size, int(np.prod(c.patch_size))
    hidden = int(D * c.mlp_ratio)
    keys = {"full": N, "spatial": gh * gw, "temporal": gt}  # tokens each query attends to
    macs = N * P * c.input_channels * D  # patch embedding
    macs += N * D * D if c.absolute_pos and c.pos_embed == "rope" else 0  # absolute-position projection
    macs += 256 * D + D * D  # timestep MLP
    macs += (c.text_dim or 0) * D  # pooled text projection
    for i in range(c.depth):
        kind = c.block_kinds[i % len(c.block_kinds)]
        macs += D * 6 * D  # adaLN modulation (once per sample)
        macs += N * 4 * D * D + 2 * N * keys[kind] * D  # qkv, out proj; QK^T and AV
        macs += N * 2 * D * hidden  # MLP
        if c.text_dim is not None:
            macs += 2 * N * D * D + text_length * c.text_dim * 2 * D + 2 * N * text_length * D
    macs += D * 2 * D + N * D * P * c.out_channels  # final layer
    macs += N * D * P * c.output_conv + N * P * 27 * c.output_conv * c.out_channels  # output convolution
    return macs / 1e9
