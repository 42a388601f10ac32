import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_mini.diffusion import (DiffusionConfig, add_noise, alpha_bar, diffusion_loss, predict_x0_eps,
                                 resolution_shift, sample_time, shift_time, signal_noise, snr, target,
                                 unshift_time)

CONFIGS = [DiffusionConfig(), DiffusionConfig("ddpm", "eps", "linear"), DiffusionConfig("ddpm", "v", "cosine"),
           DiffusionConfig("ddpm", "eps", "cosine", time_sampling="uniform")]


def test_linear_alpha_bar_is_the_limit_of_ddpms_discrete_product():
    betas = np.linspace(1e-4, 0.02, 1000)
    discrete = np.cumprod(1 - betas)  # alpha_bar after step i = 1..1000
    t = np.arange(1, 1001) / 1000
    continuous = np.asarray(alpha_bar(t, "linear"))
    # log alpha_bar differs by sum(beta^2)/2 + the endpoint offset: under 2% over the whole path
    np.testing.assert_allclose(np.log(continuous), np.log(discrete), rtol=0.02, atol=2e-3)
    assert float(alpha_bar(0.0, "linear")) == 1.0


def test_cosine_alpha_bar_and_snr_match_their_formulas():
    t = np.linspace(0, 1, 11)
    s = 0.008
    f = np.cos((t + s) / (1 + s) * np.pi / 2) ** 2
    np.testing.assert_allclose(alpha_bar(t, "cosine"), f / f[0], atol=1e-6)
    assert np.all(np.diff(np.asarray(alpha_bar(t, "cosine"))) < 0)
    cfg = DiffusionConfig("ddpm", "eps", "cosine")
    ab = np.asarray(alpha_bar(t[1:-1], "cosine"))
    np.testing.assert_allclose(snr(t[1:-1], cfg), ab / (1 - ab), rtol=1e-4)
    a, sig = signal_noise(t, cfg)
    np.testing.assert_allclose(np.asarray(a) ** 2 + np.asarray(sig) ** 2, 1.0, atol=1e-6)  # variance preserving
    flow = DiffusionConfig()
    np.testing.assert_allclose(snr(t[1:], flow), ((1 - t[1:]) / t[1:]) ** 2, rtol=1e-5)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.objective}-{c.prediction}-{c.schedule}")
def test_predictions_invert_to_the_true_data_and_noise(config):
    k = jax.random.split(jax.random.key(0), 3)
    x0 = jax.random.normal(k[0], (4, 3, 2, 2, 5))
    eps = jax.random.normal(k[1], x0.shape)
    t = jnp.array([0.05, 0.3, 0.6, 0.95])
    x_t = add_noise(x0, eps, t, config)
    x0_hat, eps_hat = predict_x0_eps(x_t, target(x0, eps, t, config), t, config)
    np.testing.assert_allclose(x0_hat, x0, atol=2e-4)
    np.testing.assert_allclose(eps_hat, eps, atol=2e-4)


def test_flow_path_is_a_straight_line_with_the_velocity_as_slope():
    cfg = DiffusionConfig()
    x0, eps = jnp.ones((1, 3)), -2 * jnp.ones((1, 3))
    for t in (0.0, 0.25, 1.0):
        np.testing.assert_allclose(add_noise(x0, eps, jnp.array([t]), cfg), (1 - t) * x0 + t * eps)
    np.testing.assert_allclose(target(x0, eps, jnp.array([0.5]), cfg), eps - x0)


def test_time_sampling_and_shift():
    assert float(shift_time(0.5, 3.0)) == pytest.approx(0.75)
    for shift in (0.5, 1.0, 3.0):
        assert float(shift_time(0.0, shift)) == 0.0 and float(shift_time(1.0, shift)) == pytest.approx(1.0)
    assert resolution_shift(4 * 144, 144) == pytest.approx(2.0)
    t = sample_time(jax.random.key(0), 20000, DiffusionConfig())
    assert float(t.min()) > 0 and float(t.max()) < 1
    assert float(jnp.median(t)) == pytest.approx(0.5, abs=0.02)  # logit-normal(0, 1): centred
    assert float(jnp.mean((t > 0.3) & (t < 0.7))) > 0.5  # weight on the middle
    shifted = sample_time(jax.random.key(0), 20000, DiffusionConfig(time_shift=3.0))
    assert float(jnp.median(shifted)) == pytest.approx(0.75, abs=0.02)
    u = sample_time(jax.random.key(1), 20000, DiffusionConfig(time_sampling="uniform"))
    assert float(jnp.mean(u < 0.25)) == pytest.approx(0.25, abs=0.02)


@pytest.mark.parametrize("fraction", [0.0, 0.5, 1.0])
def test_unshifted_fraction_draws_the_mixture_of_both_logit_normals(fraction):
    # CDF of the mixture: f * Phi(logit t) + (1 - f) * Phi(logit unshift(t)), the shifted
    # draw being the plain one pushed through shift_time.
    t = sample_time(jax.random.key(2), 40000, DiffusionConfig(time_shift=3.0, unshifted_fraction=fraction))
    grid = jnp.array([0.1, 0.2, 0.4, 0.6, 0.8, 0.9])
    logit = lambda u: jnp.log(u / (1 - u))
    cdf = (fraction * jax.scipy.stats.norm.cdf(logit(grid))
           + (1 - fraction) * jax.scipy.stats.norm.cdf(logit(unshift_time(grid, 3.0))))
    empirical = jnp.mean(t[:, None] <= grid[None], axis=0)
    np.testing.assert_allclose(empirical, cdf, atol=0.01)
    if fraction == 0.0:  # the option off draws exactly what it drew before it existed
        np.testing.assert_array_equal(t, shift_time(jax.nn.sigmoid(jax.random.normal(jax.random.key(2), (40000,))),
                                                    3.0))
    with pytest.raises(ValueError, match="unshifted_fraction is a fraction"):
        DiffusionConfig(unshifted_fraction=1.5)


@pytest.mark.parametrize("sampling,shift,fraction", [("logit_normal", 1.0, 0.0), ("logit_normal", 3.0, 0.0),
                                                     ("logit_normal", 3.0, 0.5), ("uniform", 3.0, 0.0)])
def test_max_time_draws_the_time_distribution_conditioned_below_it(sampling, shift, fraction):
    # Truncated CDF of each component: F(t) / F(max_time) below max_time, 1 at and above;
    # the mixture picks its component first, then draws it below max_time.
    max_time = 0.5
    cfg = DiffusionConfig(time_sampling=sampling, time_shift=shift, unshifted_fraction=fraction, max_time=max_time)
    t = sample_time(jax.random.key(3), 40000, cfg)
    assert float(t.min()) > 0 and float(t.max()) < max_time
    logit = lambda u: jnp.log(u / (1 - u))
    base_cdf = ((lambda u: jnp.clip(u, 0, 1)) if sampling == "uniform"
                else (lambda u: jax.scipy.stats.norm.cdf(logit(u))))
    component = lambda s, u: base_cdf(unshift_time(u, s)) / base_cdf(unshift_time(max_time, s))
    grid = jnp.array([0.05, 0.1, 0.2, 0.3, 0.4, 0.45])
    cdf = fraction * component(1.0, grid) + (1 - fraction) * component(shift, grid)
    empirical = jnp.mean(t[:, None] <= grid[None], axis=0)
    np.testing.assert_allclose(empirical, cdf, atol=0.01)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="max_time is the time below which"):
            DiffusionConfig(max_time=bad)


def test_an_oracle_model_has_zero_loss():
    x0 = jax.random.normal(jax.random.key(0), (8, 3, 4, 4, 2))
    oracle = lambda x_t, t: (x_t - x0) / t[:, None, None, None, None]  # = eps - x0 on the flow path
    loss, aux = diffusion_loss(oracle, x0, jax.random.key(1), DiffusionConfig())
    assert float(loss) < 1e-8 and aux["t"].shape == (8,)
    wrong, _ = diffusion_loss(lambda x_t, t: jnp.zeros_like(x_t), x0, jax.random.key(1), DiffusionConfig())
    assert float(wrong) == pytest.approx(2.0, rel=0.2)  # E|eps - x0|^2 = 2 for unit data


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="objective must be one of"):
        DiffusionConfig(objective="score")
    with pytest.raises(ValueError, match="predicts one of"):
        DiffusionConfig(objective="ddpm", prediction="velocity")
    with pytest.raises(ValueError, match="schedule must be one of"):
        alpha_bar(0.5, "quadratic")
    with pytest.raises(ValueError, match="time_shift must be positive"):
        DiffusionConfig(time_shift=0.0)
