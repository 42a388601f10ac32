"""Image quality metrics of videos: PSNR and SSIM per frame (chapter 02 measures the VAE with them)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def psnr(a, b) -> jax.Array:
    """Per-frame PSNR in dB of `uint8`-range videos `[..., T, H, W, 3]` -> `[..., T]`."""
    mse = jnp.mean((jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32)) ** 2, axis=(-3, -2, -1))
    return 10.0 * jnp.log10(255.0 ** 2 / jnp.maximum(mse, 1e-10))


def psnr_from_mse(mse: float) -> float:
    """PSNR in dB of a mean squared error of videos in [-1, 1]: a peak-to-peak range of 2,
    so PSNR = 10 log10(4 / mse)."""
    return float(10 * np.log10(4.0 / max(mse, 1e-12)))


def ssim(a, b, window: int = 7, sigma: float = 1.5) -> jax.Array:
    """Per-frame SSIM (Wang et al. 2004, Gaussian window, per channel, averaged) of
    `uint8`-range videos `[..., T, H, W, 3]` -> `[..., T]`. A 7-pixel window suits 32x32."""
    a = jnp.asarray(a, jnp.float32)
    b = jnp.asarray(b, jnp.float32)
    lead, (H, W, C) = a.shape[:-3], a.shape[-3:]
    a, b = a.reshape(-1, H, W, C), b.reshape(-1, H, W, C)
    g = jnp.exp(-0.5 * ((jnp.arange(window) - (window - 1) / 2) / sigma) ** 2)
    g = g / g.sum()
    kernel = jnp.tile((g[:, None] * g[None, :])[:, :, None, None], (1, 1, 1, C))  # depthwise HWIO

    def blur(x):
        return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", feature_group_count=C,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.mean(axis=(1, 2, 3)).reshape(lead)
