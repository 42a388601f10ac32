import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sora_mini import data, dataset, store, train
from sora_mini.export import export_vae, reconstruction_metrics
from sora_mini.metrics import psnr, ssim
from sora_mini.vae import VAE_PRESETS, VAEConfig, VideoVAE, vae_loss

SMALL = VAEConfig(latent_channels=4, channels=(8, 16), temporal_down=2, groups=4)
SMALL_T4 = VAEConfig(latent_channels=4, channels=(8, 16, 16), temporal_down=4, groups=4)


def _video(key, T, H=16, W=16, B=2):
    return jax.random.uniform(jax.random.key(key), (B, T, H, W, 3), minval=-1, maxval=1)


@pytest.mark.parametrize("config", [SMALL, SMALL_T4], ids=["ft2", "ft4"])
@pytest.mark.parametrize("T, H, W", [(1, 16, 16), (9, 16, 32), (17, 32, 16)])
def test_shapes(config, T, H, W):
    model = VideoVAE(config, rngs=nnx.Rngs(0))
    x = _video(0, T, H, W)
    mean, logvar = model.encode(x)
    want = (2, *config.latent_shape(T, H, W))
    assert mean.shape == logvar.shape == want
    assert want[1] == 1 + (T - 1) // config.temporal_down and want[2] == H // config.spatial_down
    recon, _, _ = model(x, jax.random.key(1))
    assert recon.shape == x.shape and recon.dtype == jnp.float32


@pytest.mark.parametrize("config", [SMALL, SMALL_T4], ids=["ft2", "ft4"])
def test_encoder_is_causal(config):
    """Changing frames after k leaves every latent frame that sees only frames <= k unchanged."""
    model = VideoVAE(config, rngs=nnx.Rngs(0))
    f = config.temporal_down
    x = _video(0, 1 + 4 * f)
    mean, _ = model.encode(x)
    for k in range(0, 1 + 4 * f, 3):
        changed = x.at[:, k + 1:].set(_video(1, 1 + 4 * f)[:, k + 1:])
        mean2, _ = model.encode(changed)
        for j in range(mean.shape[1]):
            sees_only_up_to_k = j * f <= k  # latent frame j covers input frames up to j * f_t
            same = bool(jnp.allclose(mean[:, j], mean2[:, j], atol=1e-6))
            assert same == sees_only_up_to_k, (k, j)


@pytest.mark.parametrize("config", [SMALL, SMALL_T4], ids=["ft2", "ft4"])
def test_decoder_is_causal(config):
    model = VideoVAE(config, rngs=nnx.Rngs(0))
    f = config.temporal_down
    z = jax.random.normal(jax.random.key(0), (1, 5, 4, 4, config.latent_channels))
    out = model.decode(z)
    for m in range(1, 5):
        out2 = model.decode(z.at[:, m:].add(1.0))
        unchanged = 1 + (m - 1) * f  # output frames 0 .. (m-1) f depend on latents < m only
        assert jnp.allclose(out[:, :unchanged], out2[:, :unchanged], atol=1e-6)
        assert not jnp.allclose(out[:, unchanged], out2[:, unchanged], atol=1e-4)


def test_image_is_a_one_frame_video():
    model = VideoVAE(SMALL_T4, rngs=nnx.Rngs(0))
    x = _video(0, 9)
    whole, _ = model.encode(x)
    image, _ = model.encode(x[:, :1])
    assert image.shape[1] == 1
    np.testing.assert_allclose(image[:, 0], whole[:, 0], rtol=1e-5, atol=1e-5)  # float reassociation only


def test_bad_inputs_raise_clear_errors():
    model = VideoVAE(SMALL_T4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"T = 1 \+ k \* 4 frames .*got T=8"):
        model.encode(_video(0, 8))
    with pytest.raises(ValueError, match="divisible by 4, got 18x16"):
        model.encode(_video(0, 5, 18, 16))
    with pytest.raises(ValueError, match=r"\[B, T, H, W, 3\]"):
        model.encode(_video(0, 5)[0])
    with pytest.raises(ValueError, match="floating point"):
        model.encode(jnp.zeros((1, 5, 16, 16, 3), jnp.uint8))
    with pytest.raises(ValueError, match=r"\[B, T, H, W, 4\]"):
        model.decode(jnp.zeros((1, 2, 4, 4, 3)))
    with pytest.raises(ValueError, match="temporal_down must be 1, 2 or 4"):
        VAEConfig(temporal_down=3)
    with pytest.raises(ValueError, match="too few"):
        VAEConfig(channels=(8, 16), temporal_down=4)


def test_presets_build_and_agree_with_their_shapes():
    for name, config in VAE_PRESETS.items():
        assert config.latent_shape(17, 64, 64)[0] == 1 + 16 // config.temporal_down, name
    assert VAE_PRESETS["tiny"].latent_shape(17, 32, 32) == (9, 8, 8, 8)


def test_overfits_one_batch():
    world = data.ShapesWorldConfig(height=16, width=16, num_frames=5)
    video = jnp.asarray(np.stack([data.make_clip(world, s).video for s in range(2)]), jnp.float32) / 127.5 - 1
    model = VideoVAE(SMALL, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, key):
        (loss, _), grads = nnx.value_and_grad(vae_loss, has_aux=True)(model, video, key)
        opt.update(model, grads)
        return loss

    losses = [float(step(model, opt, jax.random.key(i))) for i in range(300)]
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


def test_metrics_against_closed_forms():
    a = np.full((2, 3, 16, 16, 3), 100, np.uint8)
    b = a.astype(np.float32) + 5.0  # MSE 25
    np.testing.assert_allclose(psnr(a, b), 10 * np.log10(255 ** 2 / 25), rtol=1e-5)
    assert psnr(a, b).shape == (2, 3)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (4, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(ssim(img, img), 1.0, atol=1e-5)
    noisy = np.clip(img + rng.normal(0, 40, img.shape), 0, 255)
    assert np.all(ssim(img, noisy) < 0.9) and np.all(ssim(img, noisy) > 0.0)


TINY_TRAIN = dict(batch_size=2, num_frames=5, learning_rate=1e-3, warmup_steps=2, save_every=3, log_every=1)
WORLD16 = data.ShapesWorldConfig(height=16, width=16, num_frames=5)


def _params(model):
    return jax.tree.leaves(nnx.state(model, nnx.Param))


def test_kill_and_resume_equals_uninterrupted_run(tmp_path):
    tc = train.VAETrainConfig(steps=6, **TINY_TRAIN)
    straight = train.train_vae(SMALL, tc, str(tmp_path / "a"), WORLD16, progress=False)
    train.train_vae(SMALL, tc, str(tmp_path / "b"), WORLD16, progress=False, stop_after=4)  # "killed"
    log = store.read_log(str(tmp_path / "b"))
    assert log[-1]["step"] == 4
    resumed = train.train_vae(SMALL, tc, str(tmp_path / "b"), WORLD16, progress=False)
    for x, y in zip(_params(straight), _params(resumed), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    steps = [r["step"] for r in store.read_log(str(tmp_path / "b"))]
    assert steps == list(range(1, 7))  # no step logged twice after the resume
    # A run directory loads as a model too, with the last checkpoint's weights.
    loaded = VideoVAE.from_pretrained(str(tmp_path / "b"))
    for x, y in zip(_params(resumed), _params(loaded), strict=True):
        np.testing.assert_array_equal(x, y)


def test_export_and_from_pretrained(tmp_path):
    model = VideoVAE(SMALL, rngs=nnx.Rngs(3))
    manifest = export_vae(model, str(tmp_path / "vae"), world=WORLD16, eval_clips=4,
                                 extra={"command": "test"})
    assert manifest["command"] == "test" and manifest["weights_dtype"] == "float16"
    assert set(manifest["metrics"]) >= {"psnr_db", "ssim", "latent_std", "latent_scale"}
    assert json.load(open(tmp_path / "vae" / "manifest.json"))["params"] == manifest["params"]
    loaded = VideoVAE.from_pretrained(str(tmp_path / "vae"))
    x = _video(0, 5)
    np.testing.assert_allclose(loaded.encode(x)[0], model.encode(x)[0], atol=0.05)  # float16 weights
    with pytest.raises(FileNotFoundError, match="no pretrained VAE"):
        VideoVAE.from_pretrained(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="neither an exported VAE"):
        VideoVAE.from_pretrained(str(tmp_path))
    broken = tmp_path / "broken"
    shutil.copytree(tmp_path / "vae", broken)
    for root, _, files in os.walk(broken / "params"):
        for name in files:
            os.remove(os.path.join(root, name))
    with pytest.raises(ValueError, match="the VAE weights in .*broken/params are missing or corrupt"):
        VideoVAE.from_pretrained(str(broken))


def test_evaluate_reports_per_frame_quality():
    model = VideoVAE(SMALL, rngs=nnx.Rngs(0))
    m = reconstruction_metrics(model, WORLD16, n=4, batch_size=2)
    assert len(m["psnr_db_per_frame"]) == 5 and len(m["latent_std"]) == 4
    assert m["compression"] == pytest.approx((5 * 16 * 16 * 3) / (3 * 8 * 8 * 4))


def test_encode_latents_cache(tmp_path):
    import subprocess
    import sys

    model = VideoVAE(SMALL, rngs=nnx.Rngs(0))
    export_vae(model, str(tmp_path / "vae"), world=WORLD16, eval_clips=2)
    data.build_dataset(WORLD16, tmp_path / "ds", {"train": 5}, progress=False)
    out = subprocess.run([sys.executable, "-m", "sora_mini", "encode-latents", "--vae", str(tmp_path / "vae"),
                          "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "lat.npz"), "--batch-size", "2"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    cache = np.load(tmp_path / "lat.npz")
    assert cache["mean"].shape == (5, 3, 8, 8, 4) and cache["logvar"].shape == (5, 3, 8, 8, 4)
    assert list(cache["seed"]) == list(range(5))
    loaded = VideoVAE.from_pretrained(str(tmp_path / "vae"))
    clip = data.make_clip(data.split_config(WORLD16, "train"), 3)
    mean, _ = loaded.encode(jnp.asarray(clip.video[None], jnp.float32) / 127.5 - 1)
    np.testing.assert_allclose(cache["mean"][3], mean[0], atol=1e-5)
    assert cache["caption"][3] == clip.caption
    missing = subprocess.run([sys.executable, "-m", "sora_mini", "encode-latents", "--vae", str(tmp_path / "nope"),
                              "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "x.npz")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "no pretrained VAE" in missing.stderr


def test_world_batch_crops_are_seeded_windows_of_the_clips():
    world = data.ShapesWorldConfig(num_frames=5)
    full = dataset.world_batch(world, 3, 4)
    crops = dataset.world_batch(world, 3, 4, crop_size=16)
    assert full.shape == (4, 5, 32, 32, 3) and crops.shape == (4, 5, 16, 16, 3)
    np.testing.assert_array_equal(crops, dataset.world_batch(world, 3, 4, crop_size=16))
    for clip, crop in zip(full, crops):  # each crop is a window of its own clip
        found = any(np.array_equal(clip[:, y:y + 16, x:x + 16], crop) for y in range(17) for x in range(17))
        assert found
    np.testing.assert_array_equal(full[0], data.make_clip(world, 12).video / np.float32(127.5) - 1)  # seeds 4*3..
    with pytest.raises(ValueError, match="crop_size must lie in"):
        dataset.world_batch(world, 0, 2, crop_size=40)


def test_resuming_with_other_settings_is_refused(tmp_path):
    tc = train.VAETrainConfig(steps=2, **TINY_TRAIN)
    train.train_vae(SMALL, tc, str(tmp_path / "run"), WORLD16, progress=False)
    before = sorted(os.listdir(tmp_path / "run" / "checkpoints"))
    with pytest.raises(ValueError, match=r"different settings \(vae.channels"):
        train.train_vae(SMALL_T4, tc, str(tmp_path / "run"), WORLD16, progress=False)
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == before  # saved state untouched


@pytest.mark.parametrize("stride", [(1, 1, 1), (2, 2, 2), (1, 2, 2)])
@pytest.mark.parametrize("kernel", [(3, 3, 3), (1, 1, 1)])
def test_causal_conv_equals_a_3d_convolution_of_the_front_padded_video(stride, kernel):
    from sora_mini.vae import CausalConv3d

    conv = CausalConv3d(5, 7, kernel, stride, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 9, 8, 8, 5))
    padded = jnp.concatenate([jnp.repeat(x[:, :1], kernel[0] - 1, axis=1), x], axis=1)
    # The reference: the module's own nnx.Conv (XLA's 3D convolution) on the padded video.
    np.testing.assert_allclose(conv(x), conv.conv(padded), atol=1e-5)


def test_fine_tuning_starts_from_the_pretrained_weights_and_records_its_stages(tmp_path):
    tc = train.VAETrainConfig(steps=3, **TINY_TRAIN)
    first = train.train_vae(SMALL, tc, str(tmp_path / "a"), WORLD16, progress=False)
    export_vae(first, str(tmp_path / "vae"), run_dir=str(tmp_path / "a"), world=WORLD16, eval_clips=2,
                      extra={"command": "stage one"})
    pretrained = VideoVAE.from_pretrained(str(tmp_path / "vae"))
    start = train.train_vae(SMALL, tc, str(tmp_path / "b"), WORLD16, progress=False, stop_after=0,
                            init_from=str(tmp_path / "vae"))
    for x, y in zip(_params(pretrained), _params(start), strict=True):
        np.testing.assert_array_equal(x, y)
    tuned = train.train_vae(SMALL, tc, str(tmp_path / "b"), WORLD16, progress=False,
                            init_from=str(tmp_path / "vae"))
    # Export over the very directory it started from: the earlier stage survives in the manifest.
    manifest = export_vae(tuned, str(tmp_path / "vae"), run_dir=str(tmp_path / "b"), world=WORLD16,
                                 eval_clips=2)
    assert manifest["init"]["command"] == "stage one" and manifest["total_steps"] == 6
    steps = [json.loads(line)["step"] for line in open(tmp_path / "vae" / "log.jsonl")]
    assert steps == list(range(1, 7))
    with pytest.raises(ValueError, match="cannot fine-tune"):
        train.train_vae(SMALL_T4, tc, str(tmp_path / "c"), WORLD16, progress=False, init_from=str(tmp_path / "vae"))
    assert not (tmp_path / "c" / "train_config.json").exists()
