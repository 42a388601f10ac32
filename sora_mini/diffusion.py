"""Diffusion objectives on one continuous time axis (chapter 06).

Time `t` runs over [0, 1]; `t = 0` is data `x0`, `t = 1` is pure noise `eps ~ N(0, I)`.
Every process here is a way of mixing the two:

    x_t = a(t) * x0 + s(t) * eps

- **Rectified flow** (Liu et al. 2022; SD3, Open-Sora 2, HunyuanVideo, Wan): `a = 1 - t`,
  `s = t`, a straight line from data to noise. The model predicts the constant velocity
  along it, `v = dx_t/dt = eps - x0`, and sampling integrates that ODE from 1 to 0.
- **DDPM** (Ho et al. 2020): `a = sqrt(alpha_bar(t))`, `s = sqrt(1 - alpha_bar(t))`,
  with `alpha_bar` from the linear schedule (DDPM's betas 1e-4 .. 0.02 over 1000 steps, in
  closed form) or the cosine schedule (Nichol & Dhariwal 2021). The model predicts the
  noise `eps`, or `v = a * eps - s * x0` (Salimans & Ho 2022).

Whatever it predicts, `predict_x0_eps` turns a prediction back into `(x0_hat, eps_hat)`,
which is all the samplers in `sora_mini.sampling` need.

Training draws `t` per example: uniformly, or logit-normal (SD3: more weight on the
middle of the path, where the velocity is hardest to guess), optionally shifted toward
noise for larger inputs (`time_shift`, SD3's resolution-dependent shift: more tokens
carry more redundant signal, so the same `t` destroys less of it), and optionally kept
below `max_time`, for an expert that denoises only the low-noise end of the path.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

OBJECTIVES = ("flow", "ddpm")
PREDICTIONS = {"flow": ("velocity",), "ddpm": ("eps", "v")}
SCHEDULES = ("linear", "cosine")
TIME_SAMPLINGS = ("uniform", "logit_normal")


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    objective: str = "flow"  # "flow" (rectified flow) or "ddpm"
    prediction: str = "velocity"  # flow: "velocity"; ddpm: "eps" or "v"
    schedule: str = "linear"  # ddpm only: "linear" or "cosine"
    time_sampling: str = "logit_normal"  # "uniform" or "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    time_shift: float = 1.0  # > 1 moves training (and sampling) times toward noise
    # Draw this fraction of training times without the shift: a mixture of the shifted and
    # the plain logit-normal, so one run trains both the noisy band (layout, direction) and
    # the middle band (shape). Sampling still uses `time_shift`'s grid.
    unshifted_fraction: float = 0.0
    # Draw training times only below this (1: all of (0, 1)): the distribution above,
    # conditioned on t < max_time. A low-noise expert trains on its own band (Wan 2.2), so
    # none of its capacity goes to times the main model denoises. Sampling is unchanged.
    max_time: float = 1.0

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.prediction not in PREDICTIONS[self.objective]:
            raise ValueError(f"the {self.objective} objective predicts one of {PREDICTIONS[self.objective]}, "
                             f"got prediction={self.prediction!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"time_sampling must be one of {TIME_SAMPLINGS}, got {self.time_sampling!r}")
        if self.time_shift <= 0:
            raise ValueError(f"time_shift must be positive, got {self.time_shift}")
        if not 0.0 <= self.unshifted_fraction <= 1.0:
            raise ValueError(f"unshifted_fraction is a fraction of training times in [0, 1], "
                             f"got {self.unshifted_fraction}")
        if not 0.0 < self.max_time <= 1.0:
            raise ValueError(f"max_time is the time below which training times are drawn, in (0, 1], "
                             f"got {self.max_time}")

    def replace(self, **changes) -> DiffusionConfig:
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------------------
# DDPM schedules in closed form.

LINEAR_BETAS = (1e-4, 0.02)  # DDPM's beta_1 .. beta_T
NUM_DDPM_STEPS = 1000
COSINE_OFFSET = 0.008


def alpha_bar(t, schedule: str = "linear"):
    """Signal fraction `alpha_bar(t)` of DDPM at continuous time `t` in [0, 1].

    linear: the continuous limit of `prod_i (1 - beta_i)` with betas rising linearly from
    1e-4 to 0.02 over 1000 steps: `exp(-T (b0 t + (b1 - b0) t^2 / 2))`, T = 1000.
    cosine: `f(t) / f(0)` with `f(t) = cos^2(pi/2 (t + s) / (1 + s))`, s = 0.008."""
    t = jnp.asarray(t, jnp.float32)
    if schedule == "linear":
        b0, b1 = LINEAR_BETAS
        return jnp.exp(-NUM_DDPM_STEPS * (b0 * t + 0.5 * (b1 - b0) * t ** 2))
    if schedule == "cosine":
        f = lambda u: jnp.cos(0.5 * math.pi * (u + COSINE_OFFSET) / (1 + COSINE_OFFSET)) ** 2
        return jnp.clip(f(t) / f(0.0), 0.0, 1.0)
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")


def signal_noise(t, config: DiffusionConfig):
    """`(a(t), s(t))` of `x_t = a x0 + s eps`."""
    t = jnp.asarray(t, jnp.float32)
    if config.objective == "flow":
        return 1.0 - t, t
    ab = alpha_bar(t, config.schedule)
    return jnp.sqrt(ab), jnp.sqrt(1.0 - ab)


def snr(t, config: DiffusionConfig):
    """Signal-to-noise ratio `a^2 / s^2` (infinite at t = 0 for the flow)."""
    a, s = signal_noise(t, config)
    return a ** 2 / s ** 2


def _expand(t, x):
    return jnp.reshape(t, jnp.shape(t) + (1,) * (x.ndim - jnp.ndim(t)))


def add_noise(x0, eps, t, config: DiffusionConfig):
    """`x_t = a(t) x0 + s(t) eps`, with `t` `[B]` broadcast over the rest of `x0`."""
    a, s = signal_noise(t, config)
    return _expand(a, x0) * x0 + _expand(s, x0) * eps


def target(x0, eps, t, config: DiffusionConfig):
    """What the model is trained to output at `x_t`."""
    if config.prediction == "velocity":
        return eps - x0
    if config.prediction == "eps":
        return eps
    a, s = signal_noise(t, config)  # v-prediction
    return _expand(a, x0) * eps - _expand(s, x0) * x0


def predict_x0_eps(x_t, output, t, config: DiffusionConfig):
    """Invert a model output to `(x0_hat, eps_hat)` at `x_t`."""
    a, s = (_expand(u, x_t) for u in signal_noise(t, config))
    if config.prediction == "velocity":  # x_t = x0 + t v  and  eps = x0 + v
        x0 = x_t - s * output
        return x0, x0 + output
    if config.prediction == "eps":
        return (x_t - s * output) / jnp.maximum(a, 1e-8), output
    # v = a eps - s x0 with a^2 + s^2 = 1:  x0 = a x_t - s v,  eps = s x_t + a v
    return a * x_t - s * output, s * x_t + a * output


# ----------------------------------------------------------------------------------------
# Training times.


def shift_time(t, shift: float):
    """SD3's time shift: `shift * t / (1 + (shift - 1) t)`; `shift > 1` moves toward noise,
    keeps 0 and 1 fixed. SD3 uses `shift = sqrt(tokens / base_tokens)`."""
    return shift * t / (1.0 + (shift - 1.0) * t)


def unshift_time(t, shift: float):
    """The inverse of `shift_time`: `t / (shift - (shift - 1) t)`."""
    return t / (shift - (shift - 1.0) * t)


def resolution_shift(num_tokens: int, base_tokens: int) -> float:
    """The shift for a latent of `num_tokens` tokens when `base_tokens` trained with shift 1."""
    return math.sqrt(num_tokens / base_tokens)


def sample_time(key, batch: int, config: DiffusionConfig):
    """Training times `[B]` in (0, 1): each shifted by `time_shift`, except that with
    `unshifted_fraction = f > 0` each is left unshifted with probability f; with
    `max_time < 1`, conditioned on `t < max_time`."""
    shift = config.time_shift
    if config.unshifted_fraction > 0:
        key, k_mix = jax.random.split(key)
        shift = jnp.where(jax.random.bernoulli(k_mix, config.unshifted_fraction, (batch,)), 1.0, shift)
    if config.max_time < 1:
        t = _truncated_base_time(key, batch, config, unshift_time(config.max_time, shift))
    elif config.time_sampling == "uniform":
        t = jax.random.uniform(key, (batch,), minval=1e-5, maxval=1.0 - 1e-5)
    else:  # logit-normal: sigmoid of a normal
        t = jax.nn.sigmoid(config.logit_mean + config.logit_std * jax.random.normal(key, (batch,)))
    return shift_time(t, shift)  # shift 1 is the identity, exactly


def _truncated_base_time(key, batch: int, config: DiffusionConfig, bound):
    """Unshifted times conditioned on `t < bound` (`bound [B]` or scalar: the shift is
    monotone, so the shifted time is below `max_time` exactly when this one is below
    `unshift_time(max_time)`). Drawn by inverse CDF, so no draw is wasted: a uniform `u`
    below the bound's CDF value, mapped back through the inverse CDF."""
    if config.time_sampling == "uniform":
        return jax.random.uniform(key, (batch,), minval=1e-5, maxval=jnp.minimum(bound, 1.0 - 1e-5))
    # logit-normal: t = sigmoid(mean + std z), z ~ N(0, 1), so t < bound  <=>  z < z_max.
    z_max = (jnp.log(bound / (1.0 - bound)) - config.logit_mean) / config.logit_std
    u = jax.random.uniform(key, (batch,), minval=1e-6, maxval=jax.scipy.stats.norm.cdf(z_max))
    return jax.nn.sigmoid(config.logit_mean + config.logit_std * jax.scipy.special.ndtri(u))


def diffusion_loss(model_fn, x0, key, config: DiffusionConfig, frame_weight=None):
    """Mean squared error between `model_fn(x_t, t)` and the target, for clean latents
    `x0 [B, t, ...]`. `frame_weight [B, t]` weights latent frames (0 for frames the
    model was given, chapter 08). Returns `(loss, aux)` with the times drawn."""
    k_time, k_noise = jax.random.split(key)
    t = sample_time(k_time, x0.shape[0], config)
    eps = jax.random.normal(k_noise, x0.shape, x0.dtype)
    out = model_fn(add_noise(x0, eps, t, config), t)
    err = (out.astype(jnp.float32) - target(x0, eps, t, config)) ** 2
    if frame_weight is None:
        return jnp.mean(err), {"t": t}
    w = jnp.broadcast_to(_expand(jnp.asarray(frame_weight, jnp.float32), err), err.shape)
    return jnp.sum(w * err) / jnp.maximum(jnp.sum(w), 1.0), {"t": t}
