"""Chapter 08: conditioning on frames (image-to-video, extension, interpolation), editing
by SDEdit, long videos, and training a DiT to read known frames."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sora_mini import data, diffusion, loop, train
from sora_mini.dit import DiT, DiTConfig
from sora_mini.patchify import patchify
from sora_mini.model import TextToVideoModel, copy_weights
from sora_mini.pipeline import TextToVideo
from sora_mini.sampling import sample, time_grid
from sora_mini.text import TextConfig, Tokenizer
from sora_mini.vae import VAEConfig

from tiny_models import WORLD, export_tiny_model

SHAPE = (2, 5, 4, 4, 3)  # [B, t, h, w, c]


def toy_model(x, t):
    # Any smooth function of (x, t) will do: the known frames must come back whatever it says.
    return jnp.tanh(x * 0.7 + t[:, None, None, None, None]) + jnp.roll(x, 1, axis=1) * 0.3


@pytest.mark.parametrize("sampler", ["euler", "heun", "ddim"])
def test_known_frames_come_back_exactly(sampler):
    k1, k2 = jax.random.split(jax.random.key(0))
    noise, known = jax.random.normal(k1, SHAPE), jax.random.normal(k2, SHAPE)
    mask = jnp.array([[1, 0, 0, 0, 0], [1, 1, 0, 0, 1]], jnp.float32)  # image-to-video; interpolation
    out = sample(toy_model, noise, sampler=sampler, steps=7, known=known, known_mask=mask)
    given = mask.astype(bool)
    np.testing.assert_array_equal(np.asarray(out)[given], np.asarray(known)[given])  # both endpoints, bit-exact
    assert np.abs(np.asarray(out - known)[~given]).min() > 0  # the rest is generated, not copied
    free = sample(toy_model, noise, sampler=sampler, steps=7)
    assert not np.allclose(out[:, 1:4], free[:, 1:4])  # the known frames steer the generated ones


def test_known_frames_follow_their_own_path_on_the_flow():
    # With the exact velocity of a single data point, replacement changes nothing: the
    # generated frames land on that point too, and the known ones never leave their path.
    k1, k2 = jax.random.split(jax.random.key(1))
    noise, x0 = jax.random.normal(k1, SHAPE), jax.random.normal(k2, SHAPE)
    exact = lambda x, t: (x - x0) / jnp.maximum(t, 1e-6)[:, None, None, None, None]  # (x_t - x0) / t = eps - x0
    mask = jnp.zeros(SHAPE[:2]).at[:, 0].set(1.0)
    out = sample(exact, noise, steps=3, known=x0, known_mask=mask)
    np.testing.assert_allclose(out, x0, atol=1e-5)


def test_sdedit_start_time_zero_returns_the_input_and_one_is_plain_sampling():
    k1, k2 = jax.random.split(jax.random.key(2))
    noise, clip = jax.random.normal(k1, SHAPE), jax.random.normal(k2, SHAPE)
    np.testing.assert_array_equal(sample(toy_model, noise, steps=5, start=clip, t_start=0.0), clip)
    np.testing.assert_allclose(sample(toy_model, noise, steps=5, start=clip, t_start=1.0),
                               sample(toy_model, noise, steps=5), atol=1e-6)
    half = sample(toy_model, noise, steps=5, start=clip, t_start=0.5)
    assert 0 < float(jnp.abs(half - clip).mean()) < float(jnp.abs(sample(toy_model, noise, steps=5) - clip).mean())
    with pytest.raises(ValueError, match="start="):
        sample(toy_model, noise, steps=5, t_start=0.5)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_time_grid_starts_at_t_start_under_any_shift(shift):
    config = diffusion.DiffusionConfig(time_shift=shift)
    for t_start in (1.0, 0.7, 0.2):
        grid = np.asarray(time_grid(10, config, t_start))
        assert grid[0] == pytest.approx(t_start, abs=1e-6) and grid[-1] == 0.0
        assert np.all(np.diff(grid) < 0)
    np.testing.assert_allclose(diffusion.unshift_time(diffusion.shift_time(0.3, shift), shift), 0.3, atol=1e-7)


def test_random_frame_masks_cover_every_task_at_the_rate_asked():
    masks = np.asarray(train.random_frame_masks(jax.random.key(0), 4000, 9, 0.5))
    assert masks.shape == (4000, 9) and set(np.unique(masks)) <= {0.0, 1.0}
    assert abs((masks.sum(1) == 0).mean() - 0.5) < 0.05  # half text-only (plus a few empty random draws)
    rows = {tuple(r) for r in masks.astype(int)}
    assert (1, 0, 0, 0, 0, 0, 0, 0, 0) in rows  # image to video
    assert (1, 1, 1, 0, 0, 0, 0, 0, 0) in rows and (0, 0, 0, 0, 0, 0, 1, 1, 1) in rows  # extend, both ways
    assert (1, 0, 0, 0, 0, 0, 0, 0, 1) in rows  # interpolation
    assert (1, 1, 1, 1, 1, 1, 1, 1, 0) in rows  # a clip of all but one latent frame, extended
    assert (0, 1, 1, 1, 1, 1, 1, 1, 1) in rows
    # No task but "random" ever leaves nothing to generate.
    structured = masks[masks.sum(1) > 0]
    assert (structured.sum(1) < 9).mean() > 0.97
    assert not np.asarray(train.random_frame_masks(jax.random.key(1), 64, 9, 0.0)).any()


def test_the_loss_ignores_frames_of_zero_weight():
    x0 = jax.random.normal(jax.random.key(0), SHAPE)
    config = diffusion.DiffusionConfig()

    def right_but_frame0(x, t):  # the exact velocity, plus junk on frame 0
        eps = (x - (1 - t)[:, None, None, None, None] * x0) / t[:, None, None, None, None]
        return (eps - x0).at[:, 0].add(5.0)

    weight = jnp.ones(SHAPE[:2]).at[:, 0].set(0.0)
    assert float(diffusion.diffusion_loss(right_but_frame0, x0, jax.random.key(1), config, weight)[0]) < 1e-8
    assert float(diffusion.diffusion_loss(right_but_frame0, x0, jax.random.key(1), config)[0]) > 4.0


DIT = DiTConfig(in_channels=3, patch_size=(1, 2, 2), hidden_size=32, depth=2, num_heads=2, text_dim=16)
TEXT = TextConfig(dim=16, depth=1, num_heads=2)


def test_dit_reads_known_frames_only_when_built_for_them():
    x = jax.random.normal(jax.random.key(0), SHAPE)
    plain, fc = DiT(DIT, rngs=nnx.Rngs(0)), DiT(DIT.replace(frame_conditioning=True, text_dim=None), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="frame_conditioning=False"):
        plain(x, jnp.ones(2), text=jnp.zeros((2, 3, 16)), text_mask=jnp.ones((2, 3), bool), known=x,
              known_mask=jnp.ones((2, 5)))
    kernel = fc.final.linear.kernel  # away from zero, so the output shows what the model read
    kernel[...] = jax.random.normal(jax.random.key(1), kernel.shape)
    t = jnp.full((2,), 0.5)
    none = fc(x, t)
    np.testing.assert_array_equal(none, fc(x, t, known=x, known_mask=jnp.zeros((2, 5))))  # mask 0 = no frame given
    assert not np.allclose(none, fc(x, t, known=x, known_mask=jnp.ones((2, 5))))
    with pytest.raises(ValueError, match="known_mask"):
        fc(x, t, known=x, known_mask=jnp.ones((2, 4)))


def test_widening_a_text_to_video_model_keeps_its_function_exactly():
    source = TextToVideoModel(TEXT, DIT, rngs=nnx.Rngs(0))
    # Away from the zero init (gates, final layer), so the comparison means something.
    nnx.update(source, jax.tree.map(lambda p: p + 0.03 * jnp.cos(jnp.arange(p.size).reshape(p.shape)),
                                    nnx.state(source, nnx.Param)))
    # Grown by every thing copy_weights may add: known-frame inputs, absolute positions, the
    # output convolution and the text encoder's attribute head (a training signal only: the
    # output ignores it).
    target = TextToVideoModel(TEXT.replace(attribute_classes=5),
                              DIT.replace(frame_conditioning=True, absolute_pos=True, output_conv=4), rngs=nnx.Rngs(1))
    copy_weights(source, target)
    x = jax.random.normal(jax.random.key(0), SHAPE)
    ids, mask = Tokenizer.shapes_world(TEXT.max_length)(["a red circle", "two blue squares fall"])
    t = jnp.array([0.2, 0.9])
    before = source(x, t, ids, mask)
    assert float(jnp.abs(before).max()) > 0.01
    np.testing.assert_array_equal(before, target(x, t, ids, mask, known=2 * x, known_mask=jnp.ones((2, 5))))
    with pytest.raises(ValueError, match="frame-conditioned"):
        copy_weights(target, source)
    # RoPE alone is blind to where a token is: on a latent that is the same everywhere,
    # every patch gets the same output. With the absolute positions switched on, not.
    flat = jnp.ones(SHAPE)
    def spread(out):  # how much the patches' outputs differ from the first patch's
        tokens = patchify(out, DIT.patch_size)  # [B, N, pt*ph*pw*c]
        return float(jnp.abs(tokens - tokens[:, :1]).max())

    assert spread(target(flat, t, ids, mask)) < 1e-5
    kernel = target.dit.abs_pos.kernel
    kernel[...] = 0.05 * jnp.cos(jnp.arange(kernel.size)).reshape(kernel.shape)
    assert spread(target(flat, t, ids, mask)) > 1e-3
    with pytest.raises(ValueError, match="only frame_conditioning, absolute_pos, output_conv and an attribute head"):
        copy_weights(source, TextToVideoModel(TEXT, DIT.replace(depth=4), rngs=nnx.Rngs(0)))


def test_ema_warm_up_follows_the_first_steps():
    model = TextToVideoModel(TEXT, DIT.replace(frame_conditioning=True), rngs=nnx.Rngs(0))
    tc = train.DiTTrainConfig(batch_size=2, learning_rate=1e-2, warmup_steps=0)
    step = train.make_dit_train_step(diffusion.DiffusionConfig(), tc)
    opt = nnx.Optimizer(model, loop.make_optimizer(tc), wrt=nnx.Param)
    before = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
    ids, mask = Tokenizer.shapes_world(TEXT.max_length)(["a red circle", "a blue square"])
    empty = Tokenizer.shapes_world(TEXT.max_length)("")[0][0]
    mean = jax.random.normal(jax.random.key(0), SHAPE)
    ema, _ = step(model, opt, before, mean, jnp.full(SHAPE, -10.0), ids, mask, empty, jax.random.key(1))
    after = nnx.state(model, nnx.Param)
    # Update 1 decays by min(0.999, 1 / 10): the EMA is 10% initial weights, 90% new ones.
    jax.tree.map(lambda e, b, a: np.testing.assert_allclose(e, 0.1 * b + 0.9 * a, atol=1e-6), ema, before, after)


def test_a_frame_conditioned_dit_learns_to_read_the_given_frames():
    # Four still clips (every latent frame the same) under one caption: from the text alone
    # the model cannot tell which clip it is denoising, from a given frame it can. Times
    # near 1 (a large shift) make that the whole difference: there v = eps - x0 ~ x_t - x0,
    # a guess of E[x0] = 0 without the frame, x0 itself with it.
    still = jnp.repeat(jax.random.normal(jax.random.key(0), (4, 1, *SHAPE[2:])), SHAPE[1], axis=1)
    tok = Tokenizer.shapes_world(TEXT.max_length)
    ids, mask = tok(["a red circle"] * 4)

    def final_loss(rate):
        model = TextToVideoModel(TEXT, DIT.replace(frame_conditioning=True), rngs=nnx.Rngs(0))
        tc = train.DiTTrainConfig(batch_size=4, learning_rate=3e-3, warmup_steps=5, steps=200, caption_dropout=0.0,
                                  frame_condition_rate=rate)
        step = train.make_dit_train_step(diffusion.DiffusionConfig(time_shift=20.0), tc)
        opt = nnx.Optimizer(model, loop.make_optimizer(tc), wrt=nnx.Param)
        ema = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))
        losses = [float(step(model, opt, ema, still, jnp.full(still.shape, -20.0), ids, mask, tok("")[0][0],
                             jax.random.key(i))[1]["loss"]) for i in range(200)]
        return np.mean(losses[-50:])

    # Measured: 0.60 against 0.89 after 120 steps, and apart further with more; a model that
    # ignored the frames would land on the same loss both ways.
    assert final_loss(1.0) < 0.75 * final_loss(0.0)


# ----------------------------------------------------------------------------------------
# The pipeline on a small exported frame-conditioned model.

VAE = VAEConfig(latent_channels=4, channels=(8, 16), temporal_down=2, groups=4)  # 9x16x16 -> 5x8x8x4
PIPE_DIT = DIT.replace(in_channels=4, frame_conditioning=True)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("cond")
    export_tiny_model(root, TEXT, PIPE_DIT, VAE)
    return TextToVideo.from_pretrained(root / "model"), WORLD, root


def test_pipeline_keeps_given_latent_frames_in_every_mode(pipe):
    pipe, world, _ = pipe
    clip = data.make_clip(world, 3).video
    z = pipe.encode(clip)
    for kwargs, given in [(dict(image=clip[0]), [0]), (dict(video=clip[:5]), [0, 1, 2]),
                          (dict(video=clip[-5:], mode="extend_backward"), [3, 4]),
                          (dict(image=clip[0], end=clip[-1]), [0, 4]),
                          (dict(video=clip, mask=[1, 0, 1, 0, 0]), [0, 2])]:
        known, mask = pipe.conditioning(9, 16, 16, **kwargs)
        assert np.flatnonzero(mask).tolist() == given, kwargs
        out = pipe._sample_latent("a red circle", (5, 8, 8, 4), 0, 4, 4.0, "euler", known, mask)
        np.testing.assert_array_equal(np.asarray(out)[given], np.asarray(known)[given])
    # Causal VAE: the start of a clip encodes to the start of the whole clip's latents.
    np.testing.assert_allclose(pipe.conditioning(9, 16, 16, video=clip[:5])[0][:3], z[:3], atol=1e-5)
    video = pipe("a red circle", image=clip[0], num_frames=9, steps=4)
    assert video.shape == (9, 16, 16, 3) and video.dtype == np.uint8
    assert len(pipe._compiled) == 1  # every conditioning mode runs the same program


def test_editing_with_strength_zero_returns_the_input_and_more_changes_more(pipe):
    pipe, world, _ = pipe
    clip = data.make_clip(world, 4).video
    np.testing.assert_array_equal(pipe("a blue square", video=clip, strength=0.0), clip)
    assert pipe("a blue square", video=clip, strength=0.5, steps=4).shape == clip.shape
    z = pipe.encode(clip)  # in latent space (this VAE is untrained): the further noised, the further away
    edits = [pipe._sample_latent("a blue square", z.shape, 0, 4, 4.0, "euler", jnp.zeros(z.shape), np.zeros(5), z, s)
             for s in (0.1, 0.5, 1.0)]
    diffs = [float(jnp.abs(e - z).mean()) for e in edits]
    assert diffs[0] < diffs[1] < diffs[2]


def test_long_video_extends_in_overlapping_windows(pipe):
    pipe, *_ = pipe
    calls, sample = [], pipe._sample_latent

    def spy(*args, **kwargs):  # (prompt, latent, seed, steps, guidance, sampler, known, known_mask)
        calls.append((np.asarray(args[6]), np.asarray(args[7]), sample(*args, **kwargs)))
        return calls[-1][2]

    pipe._sample_latent = spy
    try:
        video = pipe.long_video("a red circle moves right", 21, window_frames=9, overlap=2, steps=2, height=16,
                                width=16)
    finally:
        del pipe._sample_latent
    assert video.shape == (21, 16, 16, 3) and len(calls) == 3  # 9 frames, then 6 new ones per window
    assert not calls[0][1].any() and (calls[1][1] == [1, 1, 0, 0, 0]).all()
    first, second = pipe.decode(calls[0][2]), pipe.decode(calls[1][2])
    # The next window starts from the last 1 + 2 frames made, encoded afresh: its latent
    # frame 0 is a single-frame latent, as every training clip's is.
    np.testing.assert_allclose(calls[1][0][:2], pipe.encode(first[-3:]), atol=1e-5)
    assert not calls[1][0][2:].any()
    np.testing.assert_array_equal(video[:9], first)
    np.testing.assert_array_equal(video[9:15], second[3:])
    with pytest.raises(ValueError, match="overlap"):
        pipe.long_video("a red circle", 21, window_frames=9, overlap=5, height=16, width=16)


@pytest.mark.parametrize("kwargs, match", [
    (dict(mode="sideways", video=np.zeros((5, 16, 16, 3), np.uint8)), "unknown mode"),
    (dict(strength=0.5), "strength"),
    (dict(video=np.zeros((5, 16, 16, 3), np.uint8), strength=1.5), r"\[0, 1\]"),
    (dict(video=np.zeros((9, 16, 16, 3), np.uint8), mask=[1, 0]), r"mask must be bool \[latent frames\] = \[5\]"),
    (dict(video=np.zeros((9, 16, 16, 3), np.uint8)), "nothing of 9 frames"),
    (dict(image=np.zeros((32, 32, 3), np.uint8), height=16, width=16), "32x32, the video 16x16"),
    (dict(video=np.zeros((5, 16, 16, 3), np.uint8), mode="extend_backward", end=np.zeros((16, 16, 3), np.uint8)),
     "interpolation"),
    (dict(image=np.zeros((16, 16, 3), np.float32)), "uint8"),
    (dict(image=np.zeros((16, 16, 3), np.uint8), video=np.zeros((5, 16, 16, 3), np.uint8)), "not both"),
    (dict(video=np.zeros((9, 16, 16, 3), np.uint8), mask=[1, 0, 0, 0, 0], end=np.zeros((16, 16, 3), np.uint8)),
     "does not combine"),
])
def test_pipeline_conditioning_errors_name_what_was_expected(pipe, kwargs, match):
    pipe, *_ = pipe
    with pytest.raises(ValueError, match=match):
        pipe("a red circle", num_frames=9, steps=2, **kwargs)


def test_generate_cli_animates_an_image(pipe, tmp_path):
    import mediapy

    _, world, root = pipe
    image = tmp_path / "first.png"
    mediapy.write_image(image, data.make_clip(world, 5).video[0])
    out = tmp_path / "v.mp4"
    subprocess.run([sys.executable, "-m", "sora_mini", "generate", "a red circle moves right", "--model",
                    str(root / "model"), "--image", str(image), "--frames", "9", "--steps", "2", "--out", str(out),
                    "--scale", "1"], check=True, capture_output=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    from sora_mini.video import read_video

    assert read_video(out).shape == (9, 16, 16, 3)
