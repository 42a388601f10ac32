"""A causal 3D-convolution video VAE (chapter 02).

Sora works in the latent space of a "video compression network". Every open system since
(Open-Sora-Plan, CogVideoX, HunyuanVideo, Wan) uses a *causal* 3D-convolution VAE: time
is padded only from the past, so latent frame j depends only on input frames up to its
window, and the first frame is encoded on its own. An image is then a one-frame video,
and `T = 1 + k * f_t` frames map to `t = 1 + k` latent frames.

    video [B, T, H, W, 3] in [-1, 1]
      -> Encoder -> (mean, logvar) [B, 1 + (T-1)/f_t, H/f_s, W/f_s, c]
      -> z = mean + exp(logvar / 2) * eps
      -> Decoder -> video [B, T, H, W, 3]

Everything that mixes information across frames is causal: the 3D convolutions (padded in
time with copies of the first frame), the temporal down- and upsampling, and the
normalisation (GroupNorm per frame, never over time).
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import jax.numpy as jnp
from flax import nnx

from sora_mini import store


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """Shape of a `VideoVAE`. Downsampling stages halve H and W; the first
    `log2(temporal_down)` of them also halve time (causally)."""

    in_channels: int = 3
    latent_channels: int = 8
    channels: tuple[int, ...] = (16, 32, 64)  # width at full resolution, then after each stage
    num_res_blocks: int = 1  # per resolution, in the encoder and the decoder
    temporal_down: int = 2  # f_t in {1, 2, 4}
    use_attention: bool = False  # per-frame self-attention in the bottleneck
    groups: int = 8  # GroupNorm groups
    kl_weight: float = 1e-6
    l1_weight: float = 1.0
    mse_weight: float = 1.0

    def __post_init__(self):
        if self.temporal_down not in (1, 2, 4):
            raise ValueError(f"temporal_down must be 1, 2 or 4, got {self.temporal_down}")
        stages = len(self.channels) - 1
        if stages < 1 or 2 ** stages < self.temporal_down:
            raise ValueError(f"{len(self.channels)} channel widths give {stages} downsampling stages, "
                             f"too few for temporal_down={self.temporal_down}")
        if any(c % self.groups for c in self.channels):
            raise ValueError(f"every width in channels={self.channels} must divide by groups={self.groups}")
        if not 1 <= self.latent_channels <= 64:
            raise ValueError(f"latent_channels must lie in 1..64, got {self.latent_channels}")

    @property
    def spatial_down(self) -> int:
        return 2 ** (len(self.channels) - 1)

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """`(t, h, w, c)` of the latent of a `[T, H, W, 3]` video; raises on bad shapes."""
        check_video_shape(self, num_frames, height, width)
        return (1 + (num_frames - 1) // self.temporal_down, height // self.spatial_down,
                width // self.spatial_down, self.latent_channels)


VAE_PRESETS: dict[str, VAEConfig] = {
    # 17x32x32x3 -> 9x8x8x8: 11x fewer numbers. Trains on this CPU in under an hour.
    "tiny": VAEConfig(),
    # 17x64x64x3 -> 5x8x8x16 (4x8x8, as Open-Sora and CogVideoX): a Colab GPU/TPU.
    "small": VAEConfig(latent_channels=16, channels=(32, 64, 128, 128), num_res_blocks=2,
                       temporal_down=4, use_attention=True, groups=16),
    # Wider and deeper, for real accelerators and 128x128 clips.
    "base": VAEConfig(latent_channels=16, channels=(64, 128, 256, 256), num_res_blocks=2,
                      temporal_down=4, use_attention=True, groups=32),
}


def check_video_shape(config: VAEConfig, num_frames: int, height: int, width: int) -> None:
    f_t, f_s = config.temporal_down, config.spatial_down
    if num_frames < 1 or (num_frames - 1) % f_t:
        k = max(0, (num_frames - 1) // f_t)
        raise ValueError(f"the VAE needs T = 1 + k * {f_t} frames (e.g. {1 + k * f_t} or "
                         f"{1 + (k + 1) * f_t}), got T={num_frames}")
    if height % f_s or width % f_s or height <= 0 or width <= 0:
        raise ValueError(f"the VAE needs H and W divisible by {f_s}, got {height}x{width}")


# ----------------------------------------------------------------------------------------
# Causal building blocks. All take and return [B, T, H, W, C].


class CausalConv3d(nnx.Module):
    """A 3D convolution that never looks at future frames.

    Time is padded with `k_t - 1` copies of the first frame *in front* (none behind), so
    output frame j sees input frames j - k_t + 1 .. j: the first output frame sees only
    frame 0. Space is zero-padded ('SAME'). With `stride_t = 2`, output frame j sees
    input frames up to 2j, and `T = 1 + 2m` frames become `1 + m`.

    The weights are an ordinary `nnx.Conv` kernel `[k_t, k_h, k_w, C_in, C_out]`, but the
    sum over time is written out as `k_t` per-frame 2D convolutions: XLA's CPU backend runs
    those faster than its 3D convolution (`benchmarks/bench_vae.py` measures by how much), and the result
    is the same (`tests/test_vae.py` checks it against `lax.conv_general_dilated` in 3D)."""

    def __init__(self, cin: int, cout: int, kernel=(3, 3, 3), stride=(1, 1, 1), *, rngs: nnx.Rngs):
        self.kt, self.stride = kernel[0], stride
        self.padding = ((kernel[1] // 2,) * 2, (kernel[2] // 2,) * 2)
        self.conv = nnx.Conv(cin, cout, kernel, strides=stride, padding=((0, 0), *self.padding), rngs=rngs)

    def __call__(self, x):
        if self.kt > 1:
            first = jnp.repeat(x[:, :1], self.kt - 1, axis=1)  # [B, k_t - 1, H, W, C]
            x = jnp.concatenate([first, x], axis=1)
        B, T = x.shape[:2]
        st = self.stride[0]
        t_out = (T - self.kt) // st + 1
        kernel = self.conv.kernel[...]  # [k_t, k_h, k_w, C_in, C_out]
        out = 0.0
        for a in range(self.kt):  # output frame j += conv2d(input frame j * s_t + a, kernel[a])
            frames = x[:, a: a + (t_out - 1) * st + 1: st]  # [B, t_out, H, W, C_in]
            y = jax.lax.conv_general_dilated(
                frames.reshape(B * t_out, *frames.shape[2:]), kernel[a].astype(x.dtype), self.stride[1:],
                self.padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
            out = out + y
        out = out.reshape(B, t_out, *out.shape[1:])
        return out + self.conv.bias[...].astype(x.dtype)


class FrameGroupNorm(nnx.Module):
    """GroupNorm over (H, W, channel group) of each frame separately: statistics over
    time would let later frames change earlier ones and break causality."""

    def __init__(self, channels: int, groups: int, *, rngs: nnx.Rngs):
        self.norm = nnx.GroupNorm(channels, num_groups=groups, rngs=rngs)

    def __call__(self, x):
        B, T = x.shape[:2]
        return self.norm(x.reshape(B * T, *x.shape[2:])).reshape(x.shape)


class ResBlock(nnx.Module):
    """norm -> SiLU -> causal conv, twice, plus a (1x1x1-projected) skip."""

    def __init__(self, cin: int, cout: int, groups: int, *, rngs: nnx.Rngs):
        self.norm1 = FrameGroupNorm(cin, groups, rngs=rngs)
        self.conv1 = CausalConv3d(cin, cout, rngs=rngs)
        self.norm2 = FrameGroupNorm(cout, groups, rngs=rngs)
        self.conv2 = CausalConv3d(cout, cout, rngs=rngs)
        self.skip = CausalConv3d(cin, cout, (1, 1, 1), rngs=rngs) if cin != cout else None

    def __call__(self, x):
        h = self.conv1(nnx.silu(self.norm1(x)))
        h = self.conv2(nnx.silu(self.norm2(h)))
        return h + (self.skip(x) if self.skip is not None else x)


class FrameAttention(nnx.Module):
    """Self-attention over the pixels of each frame (not across frames: stays causal)."""

    def __init__(self, channels: int, groups: int, *, rngs: nnx.Rngs):
        self.norm = FrameGroupNorm(channels, groups, rngs=rngs)
        self.qkv = nnx.Linear(channels, 3 * channels, rngs=rngs)
        self.out = nnx.Linear(channels, channels, rngs=rngs)

    def __call__(self, x):
        B, T, H, W, C = x.shape
        q, k, v = jnp.split(self.qkv(self.norm(x)).reshape(B * T, H * W, 1, 3 * C), 3, axis=-1)
        h = jax.nn.dot_product_attention(q, k, v)  # [B*T, HW, 1 head, C]
        return x + self.out(h.reshape(B, T, H, W, C))


class Downsample(nnx.Module):
    """Halve H and W, and optionally time (causally, keeping the first frame alone)."""

    def __init__(self, channels: int, temporal: bool, *, rngs: nnx.Rngs):
        self.conv = CausalConv3d(channels, channels, stride=(2 if temporal else 1, 2, 2), rngs=rngs)

    def __call__(self, x):
        return self.conv(x)


class Upsample(nnx.Module):
    """Double H and W (nearest), and optionally time: frame 0 stays one frame, every later
    latent frame becomes two, so `1 + m` frames become `1 + 2m`. Then a causal conv."""

    def __init__(self, cin: int, cout: int, temporal: bool, *, rngs: nnx.Rngs):
        self.temporal = temporal
        # Narrowing to `cout` here keeps the widest convolution off the largest grid.
        self.conv = CausalConv3d(cin, cout, rngs=rngs)

    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
        if self.temporal:
            x = jnp.concatenate([x[:, :1], jnp.repeat(x[:, 1:], 2, axis=1)], axis=1)
        return self.conv(x)


# ----------------------------------------------------------------------------------------
# Encoder, decoder, VAE.


def _bottleneck(config: VAEConfig, rngs: nnx.Rngs) -> nnx.Sequential:
    """ResBlock, optional per-frame attention, ResBlock at the lowest resolution
    (the same shape in the encoder and the decoder)."""
    c, g = config.channels[-1], config.groups
    return nnx.Sequential(
        ResBlock(c, c, g, rngs=rngs),
        *([FrameAttention(c, g, rngs=rngs)] if config.use_attention else []),
        ResBlock(c, c, g, rngs=rngs))


def _temporal_stages(config: VAEConfig) -> list[bool]:
    n = int(math.log2(config.temporal_down))
    return [i < n for i in range(len(config.channels) - 1)]


class Encoder(nnx.Module):
    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs):
        ch, g = config.channels, config.groups
        self.conv_in = CausalConv3d(config.in_channels, ch[0], rngs=rngs)
        self.stages = nnx.List()
        for i, temporal in enumerate(_temporal_stages(config)):
            blocks = [ResBlock(ch[i] if j == 0 else ch[i + 1], ch[i + 1], g, rngs=rngs)
                      for j in range(config.num_res_blocks)]
            self.stages.append(nnx.Sequential(Downsample(ch[i], temporal, rngs=rngs), *blocks))
        self.mid = _bottleneck(config, rngs)
        self.norm_out = FrameGroupNorm(ch[-1], g, rngs=rngs)
        self.conv_out = CausalConv3d(ch[-1], 2 * config.latent_channels, rngs=rngs)

    def __call__(self, x):
        h = self.conv_in(x)
        for stage in self.stages:
            h = stage(h)
        h = self.mid(h)
        return self.conv_out(nnx.silu(self.norm_out(h)))  # [B, t, h, w, 2c]


class Decoder(nnx.Module):
    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs):
        ch, g = config.channels, config.groups
        self.conv_in = CausalConv3d(config.latent_channels, ch[-1], rngs=rngs)
        self.mid = _bottleneck(config, rngs)
        self.stages = nnx.List()
        for i, temporal in reversed(list(enumerate(_temporal_stages(config)))):
            blocks = [ResBlock(ch[i], ch[i], g, rngs=rngs) for _ in range(config.num_res_blocks)]
            self.stages.append(nnx.Sequential(Upsample(ch[i + 1], ch[i], temporal, rngs=rngs), *blocks))
        self.norm_out = FrameGroupNorm(ch[0], g, rngs=rngs)
        self.conv_out = CausalConv3d(ch[0], config.in_channels, rngs=rngs)

    def __call__(self, z):
        h = self.mid(self.conv_in(z))
        for stage in self.stages:
            h = stage(h)
        return self.conv_out(nnx.silu(self.norm_out(h)))


class VideoVAE(nnx.Module):
    """`encode(video) -> (mean, logvar)`, `decode(z) -> video`, and `__call__` for training."""

    def __init__(self, config: VAEConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.encoder = Encoder(config, rngs=rngs)
        self.decoder = Decoder(config, rngs=rngs)

    def _check(self, x, channels: int, what: str):
        if x.ndim != 5 or x.shape[-1] != channels:
            raise ValueError(f"{what} must be [B, T, H, W, {channels}], got shape {x.shape}")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"{what} must be floating point in [-1, 1], got {x.dtype} "
                             "(convert uint8 videos with sora_mini.video.to_float)")

    def encode(self, video):
        """`float [B, T, H, W, 3]` in [-1, 1] -> `(mean, logvar)`, each `[B, t, h, w, c]`."""
        self._check(video, self.config.in_channels, "video")
        check_video_shape(self.config, *video.shape[1:4])
        moments = self.encoder(video)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, z):
        """`[B, t, h, w, c]` -> `float [B, 1 + (t-1) * f_t, h * f_s, w * f_s, 3]`."""
        self._check(z, self.config.latent_channels, "latent")
        return self.decoder(z)

    @classmethod
    def from_pretrained(cls, path) -> VideoVAE:
        """Load a shipped VAE by name (`"tiny"`, the VAE of the `tiny` model, or `"tiny/vae"`;
        see `store.resolve_pretrained`), an exported VAE directory (`config.json` + `params/`,
        see `export.export_vae`) or the latest checkpoint of a training run directory. Raises
        `FileNotFoundError` when nothing is there and `ValueError` when the weights are corrupt."""
        return _load_pretrained(cls, path)

    def __call__(self, video, key):
        """Reconstruct with the reparameterisation trick: returns `(recon, mean, logvar)`."""
        mean, logvar = self.encode(video)
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)
        return self.decode(z), mean, logvar


def vae_loss(model: VideoVAE, video, key):
    """L1 + MSE reconstruction plus a lightly weighted KL to N(0, 1).

    The KL weight is tiny on purpose: the VAE is a compressor first, and a latent that is
    only roughly Gaussian is rescaled by `latent_scale` before diffusion anyway."""
    c = model.config
    recon, mean, logvar = model(video, key)
    err = recon - video
    l1 = jnp.mean(jnp.abs(err))
    mse = jnp.mean(err ** 2)
    kl = 0.5 * jnp.mean(jnp.sum(mean ** 2 + jnp.exp(logvar) - 1.0 - logvar, axis=-1))
    loss = c.l1_weight * l1 + c.mse_weight * mse + c.kl_weight * kl
    return loss, {"loss": loss, "l1": l1, "mse": mse, "kl": kl}


@nnx.jit
def reconstruct(model: VideoVAE, video):
    """`(reconstruction, mean)` of `float [B, T, H, W, 3]` videos through the posterior mean."""
    mean, _ = model.encode(video)
    return model.decode(mean), mean


# ----------------------------------------------------------------------------------------
# Loading: an export (`export.export_vae`) or the latest checkpoint of a training run.

LOAD_HINT = "train one with `python -m sora_mini train-vae --preset tiny --out DIR --export PATH`"


def _load_pretrained(cls, path) -> VideoVAE:
    path = store.resolve_pretrained(path, "vae", what="VAE", hint=LOAD_HINT)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no pretrained VAE at {path}: {LOAD_HINT}")
    if os.path.exists(os.path.join(path, "config.json")) and os.path.isdir(os.path.join(path, "params")):
        # Exported VAEs store float16 weights without saying so in config.json.
        return store.load_model(path, VAEConfig, lambda c: cls(c, rngs=nnx.Rngs(0)), what="VAE", hint=LOAD_HINT,
                                stored_dtype=store.PRETRAINED_DTYPE)
    if os.path.exists(os.path.join(path, "train_config.json")):  # a training run directory
        config = store.config_from_dict(VAEConfig, store.read_json(os.path.join(path, "train_config.json"))["vae"])
        model = store.abstract_model(lambda: cls(config, rngs=nnx.Rngs(0)))
        _, restored = store.latest_checkpoint(path, "VAE", model=nnx.state(model))
        nnx.update(model, restored["model"])
        return model
    raise FileNotFoundError(f"{path} holds neither an exported VAE (config.json + params/) "
                            "nor a training run (train_config.json + checkpoints/)")
