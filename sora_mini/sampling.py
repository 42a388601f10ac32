"""Samplers: from noise at t = 1 to a latent at t = 0 (chapter 07).

A sampler only needs, at each `(x_t, t)`, the model's guess of the clean latent and the
noise, `(x0_hat, eps_hat)` (`sora_mini.diffusion.predict_x0_eps`). From there:

- **euler**: the ODE `dx/dt = a'(t) x0_hat + s'(t) eps_hat`, one model call per step. On
  the rectified-flow path `dx/dt = eps - x0` is the predicted velocity itself, and when
  the model is exact Euler lands on the data in one step: the path is straight.
- **heun**: Euler, then a second call at the end of the step and the average slope
  (second order; the last step, which ends at t = 0, stays Euler as in EDM).
- **ddim** (eta = 0): jump to `a(t') x0_hat + s(t') eps_hat`: deterministic, and
  invertible (`ddim_invert`), which chapter 08 uses to edit videos.
- **ddpm**: DDIM with eta = 1, the ancestral sampler: fresh noise at every step. It
  needs a variance-preserving process (`objective="ddpm"`).

Classifier-free guidance (Ho & Salimans 2022): with `guidance=w` the model is called once
on a doubled batch, conditional half first, and the prediction becomes
`uncond + w * (cond - uncond)`. The model function decides what "unconditional" means
(the empty prompt, for the DiT). Classifier guidance (Dhariwal & Nichol 2021) adds the
gradient of a classifier of noisy latents, `classifier_grad`, to the model's score
(`classifier_guided`; the classifier is `sora_mini.guidance`).

Known frames (chapter 08): with `known` latents and a `known_mask` over latent frames,
every step first puts the known frames where they would be at time t, `a(t) known + s(t)
noise` with the starting noise itself (for the flow, their exact straight path), and the
end result takes them verbatim: given frames come back exactly, the others are generated
around them. This "replacement" works with any model; a model trained with frame
conditioning also reads the known frames directly (the caller's `model_fn` passes them).
`t_start < 1` starts from a partly noised latent instead of pure noise: SDEdit.

The loop is a `lax.fori_loop`: jit the caller (`jax.jit`/`nnx.jit` around a function that
calls `sample`) and the whole sampler compiles to one program, whatever `steps` is.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sora_mini.diffusion import DiffusionConfig, add_noise, predict_x0_eps, shift_time, signal_noise, unshift_time

SAMPLERS = ("euler", "heun", "ddim", "ddpm")
RECTIFIED_FLOW = DiffusionConfig()  # the default process: rectified flow, velocity prediction


def time_grid(steps: int, config: DiffusionConfig, t_start: float = 1.0):
    """`[steps + 1]` times from `t_start` (at most 1, or DDPM's last step 0.999) down to
    0, uniform before `config.time_shift` is applied (the shift training used)."""
    t_max = 1.0 if config.objective == "flow" else 1.0 - 1e-3  # a(1) = 0 would make x0_hat blow up
    u_start = unshift_time(jnp.minimum(jnp.asarray(t_start, jnp.float32), t_max), config.time_shift)
    return shift_time(jnp.linspace(1.0, 0.0, steps + 1) * u_start, config.time_shift)


def guided(model_fn, x, t, guidance: float | None):
    """The model's prediction, with classifier-free guidance when `guidance` is a number:
    one call on `[x; x]`, whose first half the model conditions and second half not."""
    t = jnp.broadcast_to(t, (x.shape[0],))
    if guidance is None or (isinstance(guidance, (int, float)) and guidance == 1.0):
        return model_fn(x, t)  # w = 1 is the conditional prediction: no unconditional half needed
    out = model_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]))
    cond, uncond = jnp.split(out, 2)
    return uncond + guidance * (cond - uncond)


GUIDANCE_MIN_SIGNAL = 0.05  # classifier guidance divides by a(t); below this it uses this


def classifier_guided(x0, eps, t, grad, scale, config: DiffusionConfig):
    """The model's `(x0_hat, eps_hat)` at `(x, t)` moved by a classifier's gradient `grad =
    grad log p(y | x_t)` (shaped like `x`) so that the score `-eps_hat / s` gains `w grad`:
    `eps - w s g` and `x0 + w s^2 g / a`, which keep `a x0 + s eps = x`. Near pure noise
    `a(t) -> 0` makes `1 / a` blow up while the classifier sees nothing; there `a` is held at
    `GUIDANCE_MIN_SIGNAL`, which only weakens guidance at the first steps."""
    a, s = signal_noise(t, config)
    k = scale * s / jnp.maximum(a, GUIDANCE_MIN_SIGNAL)
    return x0 + k * s * grad, eps - k * a * grad


def _velocity(x, x0, eps, t, config):
    # dx/dt of x_t = a(t) x0 + s(t) eps, holding the model's (x0, eps) fixed.
    _, (da, ds) = jax.jvp(lambda u: signal_noise(u, config), (t,), (jnp.ones_like(t),))
    return da * x0 + ds * eps


def known_frames_at(t, x, known, known_mask, noise, config: DiffusionConfig):
    """`x` with its known latent frames (`known_mask` `[B, t_frames]`, 1 = known) replaced
    by where they are at time `t` on their noising path, `a(t) known + s(t) noise`."""
    m = jnp.asarray(known_mask, x.dtype).reshape(*jnp.shape(known_mask), *(1,) * (x.ndim - 2))
    a, s = signal_noise(t, config)
    return m * (a * known + s * noise) + (1 - m) * x


def sample(model_fn, noise, *, config: DiffusionConfig = RECTIFIED_FLOW, sampler: str = "euler",
           steps: int = 50, guidance: float | None = None, key=None, known=None, known_mask=None,
           t_start: float = 1.0, start=None, classifier_grad=None, classifier_scale=0.0):
    """Integrate from `noise` (the latent at t = 1, e.g. `jax.random.normal(key, shape)`)
    to t = 0 with `steps` steps. `model_fn(x [B, ...], t [B]) -> prediction` (as trained
    under `config`); `key` is needed by `ddpm` only. Returns the latent `x_0`.

    `known [B, t, ...]` and `known_mask [B, t]` (1 = latent frame given) fix those frames
    (returned exactly). `t_start` with `start` (a clean latent) begins at `x = a(t_start)
    start + s(t_start) noise` and integrates from there: SDEdit; `t_start = 0` returns
    `start` itself."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if sampler == "ddpm":
        if config.objective != "ddpm":
            raise ValueError("the ddpm sampler needs a variance-preserving process (objective='ddpm'); "
                             "use euler, heun or ddim for rectified flow")
        if key is None:
            raise ValueError("the ddpm sampler draws fresh noise each step: pass key=")
    if (known is None) != (known_mask is None):
        raise ValueError("pass known frames and known_mask together")
    if known is not None and (known.shape != noise.shape or jnp.shape(known_mask) != noise.shape[:2]):
        raise ValueError(f"known must be shaped like the noise {noise.shape} and known_mask [B, t] = "
                         f"{noise.shape[:2]}, got {known.shape} and {jnp.shape(known_mask)}")
    if start is not None and start.shape != noise.shape:
        raise ValueError(f"start must be a latent shaped like the noise {noise.shape}, got {start.shape}")
    if start is None and not (isinstance(t_start, (int, float)) and t_start == 1.0):
        raise ValueError("t_start < 1 starts from a partly noised latent: pass start= (the clean latent to edit)")
    grid = time_grid(steps, config, t_start)
    if start is None:
        x_init = noise
    else:  # SDEdit: the clean latent noised to the first time of the grid
        x_init = add_noise(start, noise, jnp.full((noise.shape[0],), grid[0]), config)

    def pin(x, t):  # the known frames, on their own path
        return x if known is None else known_frames_at(t, x, known, known_mask, noise, config)

    def predict(x, t):
        x0, eps = predict_x0_eps(x, guided(model_fn, x, t, guidance), jnp.full((x.shape[0],), t), config)
        if classifier_grad is None:
            return x0, eps
        return classifier_guided(x0, eps, t, classifier_grad(x, t), classifier_scale, config)

    def step(i, carry):
        x, key = carry
        t, t_next = grid[i], grid[i + 1]
        x = pin(x, t)
        x0, eps = predict(x, t)
        if sampler == "euler":
            x = x + (t_next - t) * _velocity(x, x0, eps, t, config)
        elif sampler == "heun":
            v = _velocity(x, x0, eps, t, config)
            x_euler = x + (t_next - t) * v

            def correct(x_euler):
                x_euler = pin(x_euler, t_next)
                x0_e, eps_e = predict(x_euler, t_next)
                return x + (t_next - t) * 0.5 * (v + _velocity(x_euler, x0_e, eps_e, t_next, config))

            # lax.cond, not jnp.where: the last step (to t = 0) skips the second model call.
            x = jax.lax.cond(t_next > 0, correct, lambda x_euler: x_euler, x_euler)
        else:
            a_next, s_next = signal_noise(t_next, config)
            if sampler == "ddim":
                x = a_next * x0 + s_next * eps
            else:  # ddpm = DDIM with eta = 1: the posterior q(x_t' | x_t, x0) sampled
                a, _ = signal_noise(t, config)
                ab, ab_next = a ** 2, a_next ** 2
                sigma = jnp.sqrt((1 - ab_next) / (1 - ab) * (1 - ab / ab_next))
                key, sub = jax.random.split(key)
                z = jax.random.normal(sub, x.shape, x.dtype)
                x = a_next * x0 + jnp.sqrt(jnp.maximum(1 - ab_next - sigma ** 2, 0.0)) * eps + sigma * z
        return x, key

    x, _ = jax.lax.fori_loop(0, steps, step, (x_init, key if key is not None else jax.random.key(0)))
    return pin(x, 0.0)  # a(0) = 1, s(0) = 0: the known frames exactly


def ddim_invert(model_fn, x0, *, config: DiffusionConfig = RECTIFIED_FLOW, steps: int = 50,
                guidance: float | None = None):
    """Run DDIM backwards, data to noise: the latent at the start of the time grid that
    `sample(..., sampler="ddim")` maps back to (nearly) `x0`."""
    grid = time_grid(steps, config)[::-1]  # 0 -> t_max

    def step(i, x):
        t, t_next = grid[i], grid[i + 1]
        out = guided(model_fn, x, t, guidance)
        x0_hat, eps_hat = predict_x0_eps(x, out, jnp.full((x.shape[0],), t), config)
        a_next, s_next = signal_noise(t_next, config)
        return a_next * x0_hat + s_next * eps_hat

    return jax.lax.fori_loop(0, steps, step, x0)
