import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_mini.diffusion import DiffusionConfig, signal_noise
from sora_mini.sampling import ddim_invert, guided, sample, time_grid

FLOW = DiffusionConfig()
DDPM = DiffusionConfig("ddpm", "eps", "linear")
MU, SIGMA = 0.7, 0.5  # data ~ N(MU, SIGMA^2) per coordinate: every sampler's answer is known


def gaussian_model(config):
    """The exact prediction for Gaussian data: E[eps | x_t] and E[x0 | x_t] in closed form."""
    def model_fn(x, t):
        a, s = signal_noise(t, config)
        a, s = a[:, None], s[:, None]
        var = a ** 2 * SIGMA ** 2 + s ** 2
        eps = s / var * (x - a * MU)
        x0 = MU + a * SIGMA ** 2 / var * (x - a * MU)
        return eps - x0 if config.prediction == "velocity" else eps
    return model_fn


def run(model_fn, noise, **kw):
    return jax.jit(lambda n: sample(model_fn, n, **kw))(noise)


def test_euler_is_exact_on_a_straight_path():
    k1, k2 = jax.random.split(jax.random.key(0))
    x0, eps = jax.random.normal(k1, (3, 5)), jax.random.normal(k2, (3, 5))
    true_velocity = lambda x, t: eps - x0
    for steps in (1, 7):
        np.testing.assert_allclose(run(true_velocity, eps, steps=steps), x0, atol=1e-5)
    shifted = DiffusionConfig(time_shift=3.0)
    np.testing.assert_allclose(run(true_velocity, eps, config=shifted, steps=4), x0, atol=1e-5)


def test_flow_samplers_map_noise_to_the_gaussian_with_their_orders():
    z = jax.random.normal(jax.random.key(1), (256, 4))
    exact = MU + SIGMA * z  # the flow ODE's map for Gaussian data is this linear map
    model_fn = gaussian_model(FLOW)
    err = {(s, n): float(jnp.abs(run(model_fn, z, sampler=s, steps=n) - exact).max())
           for s in ("euler", "heun") for n in (50, 200)}
    assert err["heun", 50] < 3e-3 and err["heun", 50] < err["euler", 50] / 20, err
    assert 3 < err["euler", 50] / err["euler", 200] < 5  # first order: 4x the steps, 1/4 the error
    assert 10 < err["heun", 50] / err["heun", 200] < 25  # second order: 1/16
    # On the flow's straight-line process, DDIM's jump is exactly an Euler step.
    np.testing.assert_allclose(run(model_fn, z, sampler="ddim", steps=10), run(model_fn, z, sampler="euler", steps=10),
                               atol=1e-5)


def test_ddim_is_deterministic_and_inverts():
    model_fn = gaussian_model(DDPM)
    z = jax.random.normal(jax.random.key(2), (64, 4))
    a = run(model_fn, z, config=DDPM, sampler="ddim", steps=100)
    b = run(model_fn, z, config=DDPM, sampler="ddim", steps=100)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(jnp.mean(a), MU, atol=0.1)
    np.testing.assert_allclose(jnp.std(a), SIGMA, atol=0.08)
    x0 = MU + SIGMA * jax.random.normal(jax.random.key(3), (64, 4))
    errors = []
    for steps in (100, 1000):  # inversion is first order too: its error falls with the steps
        noise = jax.jit(lambda x, n=steps: ddim_invert(model_fn, x, config=DDPM, steps=n))(x0)
        back = run(model_fn, noise, config=DDPM, sampler="ddim", steps=steps)
        errors.append(float(jnp.abs(back - x0).max()))
    assert errors[1] < 0.015 and errors[1] < errors[0] / 5, errors


def test_ddpm_sampler_draws_the_data_distribution_and_is_seeded():
    model_fn = gaussian_model(DDPM)
    z = jax.random.normal(jax.random.key(4), (4000, 1))
    out = run(model_fn, z, config=DDPM, sampler="ddpm", steps=100, key=jax.random.key(5))
    assert float(jnp.mean(out)) == pytest.approx(MU, abs=0.05)
    assert float(jnp.std(out)) == pytest.approx(SIGMA, abs=0.05)
    again = run(model_fn, z, config=DDPM, sampler="ddpm", steps=100, key=jax.random.key(5))
    other = run(model_fn, z, config=DDPM, sampler="ddpm", steps=100, key=jax.random.key(6))
    np.testing.assert_array_equal(out, again)
    assert not np.allclose(out, other)


def test_guidance_one_is_the_conditional_prediction():
    x = jax.random.normal(jax.random.key(0), (3, 4))
    calls = []

    def model_fn(x, t):  # a doubled batch: conditional half scaled by 1, unconditional half by 0.25
        calls.append(x.shape[0])
        if x.shape[0] == 3:
            return x
        return x * jnp.concatenate([jnp.ones((3, 1)), 0.25 * jnp.ones((3, 1))])

    np.testing.assert_allclose(guided(model_fn, x, 0.5, 1.0), x)
    assert calls == [3]  # w = 1 needs no unconditional half: one call on the batch itself
    np.testing.assert_allclose(guided(model_fn, x, 0.5, 3.0), 0.25 * x + 3.0 * 0.75 * x, rtol=1e-6)
    assert calls == [3, 6]  # any other scale: one call on the doubled batch
    # A traced scale of 1 (the pipeline passes scales as numbers) gives the same through the doubled batch.
    traced = jax.jit(lambda w: guided(model_fn, x, 0.5, w))(1.0)
    np.testing.assert_allclose(traced, x, rtol=1e-6)
    conditional_only = lambda x, t: x
    np.testing.assert_allclose(run(model_fn, x, guidance=1.0, steps=5), run(conditional_only, x, steps=5), atol=1e-6)


def test_time_grid_and_bad_arguments():
    g = time_grid(4, FLOW)
    np.testing.assert_allclose(g, [1.0, 0.75, 0.5, 0.25, 0.0])
    assert float(time_grid(4, DDPM)[0]) < 1.0
    f = lambda x, t: x
    with pytest.raises(ValueError, match="unknown sampler 'rk4'"):
        sample(f, jnp.zeros((1, 2)), sampler="rk4")
    with pytest.raises(ValueError, match="variance-preserving"):
        sample(f, jnp.zeros((1, 2)), sampler="ddpm", key=jax.random.key(0))
    with pytest.raises(ValueError, match="pass key="):
        sample(f, jnp.zeros((1, 2)), config=DDPM, sampler="ddpm")
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        sample(f, jnp.zeros((1, 2)), steps=0)
