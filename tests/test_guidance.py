"""Classifier guidance (chapter 07): the caption parser the labels come from, the noisy-latent
classifier, the guided sampler on a problem with a known answer, and the pipeline."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sora_mini import captions, data, diffusion, evaluate, export, guidance, store
from sora_mini.pipeline import TextToVideo
from sora_mini.sampling import classifier_guided, sample
from sora_mini.text import TextConfig
from sora_mini.dit import DiTConfig
from sora_mini.vae import VAEConfig

from tiny_models import export_tiny_model

FLOW = diffusion.DiffusionConfig()


def test_parse_caption_reads_every_clause_of_every_caption():
    world = data.split_config(data.SHAPES_WORLD_PRESETS["tiny"], "train")
    for seed in range(300):
        clip = data.make_clip(world, seed)
        groups = {}  # one clause per group of look-alike objects, in order (captions.write_caption)
        for obj in clip.objects:
            groups.setdefault(data.caption_group_key(obj), obj)
        truth = [{"color": o.color, "shape": o.shape, "motion": o.direction if o.motion == "linear" else o.motion}
                 for o in groups.values()]
        assert data.parse_caption(clip.caption) == truth, clip.caption


@pytest.mark.parametrize("prompt, expected", [
    ("a red circle moves up and to the right", [("red", "circle", "up-right")]),  # longest phrase, not "moves up"
    ("Two BIG blue squares move diagonally down and left, on navy", [("blue", "square", "down-left")]),
    ("a triangle goes up while a white circle falls", [(None, "triangle", "up"), ("white", "circle", "fall")]),
    ("a red circle moves right and bounces off the wall, and a blue square moves right",
     [("red", "circle", "right"), ("blue", "square", "right")]),
    ("a red circle", [("red", "circle", None)]),
    ("something else entirely", [(None, None, None)]),
])
def test_parse_caption_names_what_a_prompt_says(prompt, expected):
    assert [tuple(c.values()) for c in data.parse_caption(prompt)] == expected


def test_caption_labels_mark_every_class_named():
    labels = captions.caption_labels(["a green square falls while a red square moves left", "a circle"])
    named = {k: [[captions.ATTRIBUTE_HEADS[k][j] for j in np.flatnonzero(row)] for row in v] for k, v in labels.items()}
    assert named == {"color": [["red", "green"], []], "shape": [["square"], ["circle"]],
                     "motion": [["left", "fall"], []]}


SMALL = guidance.LatentClassifierConfig(in_channels=4, latent_size=(4, 4), channels=(8, 16), feature_dim=32)


def test_classifier_shapes_and_log_prob():
    model = guidance.LatentClassifier(SMALL, rngs=nnx.Rngs(0))
    x, t = jax.random.normal(jax.random.key(0), (3, 5, 4, 4, 4)), jnp.array([0.1, 0.5, 0.9])
    logits = model(x, t)
    assert {k: v.shape for k, v in logits.items()} == {k: (3, len(c)) for k, c in captions.ATTRIBUTE_HEADS.items()}
    labels = {k: jnp.asarray(v) for k, v in captions.caption_labels(["a red circle moves left", "a square",
                                                                      "nothing"]).items()}
    logp = guidance.log_prob(model, x, t, labels)
    red, circle, left, square = (captions.ATTRIBUTE_HEADS[k].index(c) for k, c in
                                 (("color", "red"), ("shape", "circle"), ("motion", "left"), ("shape", "square")))
    manual = [jax.nn.log_sigmoid(logits["color"][0, red]) + jax.nn.log_sigmoid(logits["shape"][0, circle])
              + jax.nn.log_sigmoid(logits["motion"][0, left]), jax.nn.log_sigmoid(logits["shape"][1, square]), 0.0]
    np.testing.assert_allclose(logp, manual, rtol=1e-5, atol=1e-7)  # a prompt naming nothing is not guided
    with pytest.raises(ValueError, match=r"latent \[B, t, 4, 4, 4\]"):
        model(jnp.ones((3, 5, 4, 4, 8)), t)


def test_classifier_overfits_one_noisy_batch():
    rng = np.random.default_rng(0)
    cache = {"mean": rng.normal(size=(8, 3, 4, 4, 4)).astype(np.float32),
             "logvar": np.full((8, 3, 4, 4, 4), -10.0, np.float32),
             "caption": np.asarray([f"a {c} circle moves {d}" for c, d in
                                    zip(["red", "blue"] * 4, ["left", "right", "up", "down"] * 2)])}
    tc = guidance.GuidanceTrainConfig(steps=150, batch_size=8, learning_rate=3e-3, warmup_steps=10)
    model, log = guidance.train_latent_classifier(cache, tc, diffusion.DiffusionConfig(time_shift=1.0), SMALL,
                                                  progress=False)
    assert log[-1]["loss"] < 0.2 * log[0]["loss"]  # not 0: near t = 1 nothing can be read
    acc = guidance.accuracy_by_time(model, cache, (0.0, 0.2), latent_scale=1.0, diffusion_config=FLOW, n=8)
    for t in (0.0, 0.2):  # every class of every clip right
        assert acc[t] == {"color": 1.0, "shape": 1.0, "motion": 1.0}, acc


def test_classifier_export_round_trips(tmp_path):
    model = guidance.LatentClassifier(SMALL, rngs=nnx.Rngs(3))
    export.export_classifier(model, str(tmp_path / "g"), {"note": "test"})
    loaded = guidance.load_latent_classifier(str(tmp_path / "g"))
    x, t = jax.random.normal(jax.random.key(0), (2, 3, 4, 4, 4)), jnp.array([0.3, 0.7])
    for k in captions.ATTRIBUTE_HEADS:
        np.testing.assert_array_equal(model(x, t)[k], loaded(x, t)[k])
    with pytest.raises(FileNotFoundError, match="train-guidance"):
        guidance.load_latent_classifier(str(tmp_path / "none"))


# ----------------------------------------------------------------------------------------
# The guided sampler, on data with a known answer: x0 = +1 or -1 with equal odds, the label
# its sign. On x_t = a x0 + s eps the exact denoiser is E[x0 | x_t] = tanh(a x / s^2) and the
# exact classifier p(y | x_t) = sigmoid(2 y a x / s^2).


def _two_points_velocity(x, t):
    a, s = 1 - t[:, None], t[:, None]
    x0 = jnp.tanh(a * x / s ** 2)
    return (x - a * x0) / s - x0  # eps_hat - x0_hat


def _two_points_grad(y):
    def grad(x, t):
        a, s = 1 - t, t
        return jax.grad(lambda x: jax.nn.log_sigmoid(2 * y * a * x / s ** 2).sum())(x)
    return grad


def test_classifier_guidance_keeps_the_model_on_its_path():
    x0, eps, x = (jax.random.normal(k, (4, 6)) for k in jax.random.split(jax.random.key(0), 3))
    g = jax.random.normal(jax.random.key(1), (4, 6))
    for cfg in (FLOW, diffusion.DiffusionConfig(objective="ddpm", prediction="eps")):
        t = 0.3
        a, s = diffusion.signal_noise(t, cfg)
        x = a * x0 + s * eps
        x0g, epsg = classifier_guided(x0, eps, t, g, 2.5, cfg)
        np.testing.assert_allclose(a * x0g + s * epsg, x, atol=1e-5)  # still a split of the same x_t
        np.testing.assert_allclose(-(epsg - eps) / s, 2.5 * g, atol=1e-5)  # the score gains w g


def test_classifier_guidance_picks_the_labelled_point():
    noise = jax.random.normal(jax.random.key(0), (512, 1))
    plain = sample(_two_points_velocity, noise, steps=50)
    assert 0.4 < float((plain > 0).mean()) < 0.6
    np.testing.assert_allclose(jnp.abs(plain), 1.0, atol=0.05)  # the exact model lands on the data
    for y in (1.0, -1.0):  # w = 1 is Bayes' rule: p(x0 | y) is the point y itself
        guided = sample(_two_points_velocity, noise, steps=50, classifier_grad=_two_points_grad(y),
                        classifier_scale=1.0)
        np.testing.assert_allclose(guided, y, atol=0.05)  # every sample, and still on the data
    half = sample(_two_points_velocity, noise, steps=50, classifier_grad=_two_points_grad(1.0), classifier_scale=0.3)
    assert 0.6 < float((half > 0).mean()) < 1.0  # w < 1: the label only tilts the odds


# ----------------------------------------------------------------------------------------
# The pipeline and the command line.

TEXT = TextConfig(dim=32, depth=1, num_heads=2)
DIT = DiTConfig(in_channels=4, hidden_size=32, depth=2, num_heads=2, text_dim=32)
VAE = VAEConfig(latent_channels=4, channels=(8, 16), temporal_down=2, groups=4)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("guided")
    np.savez(root / "lat.npz", **export_tiny_model(root, TEXT, DIT, VAE, clips=12))
    return root


def test_train_guidance_command_ships_a_classifier_the_pipeline_uses(model_dir):
    plain = TextToVideo.from_pretrained(model_dir / "model")
    assert plain.classifier is None and plain.classifier_guidance == 0.0
    prompt, size = "a red circle moves to the right", dict(num_frames=9, height=16, width=16, steps=4)
    with pytest.raises(ValueError, match="train-guidance"):
        plain(prompt, classifier_guidance=2.0, **size)

    res = subprocess.run([sys.executable, "-m", "sora_mini", "train-guidance", "--model", str(model_dir / "model"),
                          "--latents", str(model_dir / "lat.npz"), "--steps", "3", "--batch-size", "4",
                          "--held-out", "4", "--scale", "3"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    manifest = json.loads((model_dir / "model" / "guidance" / "manifest.json").read_text())
    assert manifest["clips"] == 8 and manifest["classifier_guidance"] == 3.0 and "train-guidance" in manifest["command"]
    assert set(manifest["held_out_accuracy_by_time"]["0.5"]) == set(captions.ATTRIBUTE_HEADS)

    pipe = TextToVideo.from_pretrained(model_dir / "model")
    assert pipe.classifier is not None and pipe.classifier_guidance == 3.0
    off = pipe(prompt, classifier_guidance=0.0, **size)
    np.testing.assert_array_equal(off, plain(prompt, **size))  # scale 0 is the unguided sampler
    on = pipe(prompt, **size)  # the manifest's scale by default
    assert on.shape == (9, 16, 16, 3) and on.dtype == np.uint8
    # Nudge the classifier so its gradient is large, and the video must change; same seed, same video.
    nnx.update(pipe.classifier.heads, jax.tree.map(lambda p: p * 20, nnx.state(pipe.classifier.heads, nnx.Param)))
    a, b = pipe(prompt, classifier_guidance=50.0, **size), pipe(prompt, classifier_guidance=50.0, **size)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a.astype(int) - off.astype(int)).max() > 0
    with pytest.raises(ValueError, match="classifier_guidance must be a number >= 0"):
        pipe(prompt, classifier_guidance=-1.0, **size)
    # Another size: the classifier cannot read it, so the default turns it off and asking for it says why.
    other = dict(size, height=32, width=32)
    np.testing.assert_array_equal(pipe(prompt, **other), pipe(prompt, classifier_guidance=0.0, **other))
    with pytest.raises(ValueError, match="reads 8x8 latents, this video's are 16x16"):
        pipe(prompt, classifier_guidance=3.0, **other)


def test_train_guidance_command_names_what_is_missing(model_dir, tmp_path):
    res = subprocess.run([sys.executable, "-m", "sora_mini", "train-guidance", "--model", str(tmp_path),
                          "--latents", str(model_dir / "lat.npz")], capture_output=True, text=True)
    assert res.returncode == 2 and "no pretrained text-to-video model" in res.stderr
    res = subprocess.run([sys.executable, "-m", "sora_mini", "train-guidance", "--model", str(model_dir / "model"),
                          "--latents", str(tmp_path / "none.npz")], capture_output=True, text=True)
    assert res.returncode == 2 and "no latent cache" in res.stderr


# ----------------------------------------------------------------------------------------
# The shipped classifier.

SHIPPED = store.resolve_pretrained("tiny")


def test_shipped_guidance_classifier_was_trained_by_the_documented_command_and_reads_motion():
    manifest = json.loads(open(os.path.join(SHIPPED, "guidance", "manifest.json")).read())
    assert manifest["command"].startswith("python -m sora_mini train-guidance") and manifest["classifier_guidance"] > 0
    pipe = TextToVideo.from_pretrained("tiny")
    assert pipe.classifier_guidance == manifest["classifier_guidance"]
    # Clean latents of real one-mover test clips: the motion head must name their direction.
    clips = evaluate.adherence_clips(48, "test")
    z = jnp.stack([pipe.encode(c.video) for c in clips])  # [48, 9, 8, 8, 8], the sampler's scale
    logits = pipe.classifier(z, jnp.zeros(len(clips)))
    motion = [captions.ATTRIBUTE_HEADS["motion"][i] for i in np.asarray(logits["motion"]).argmax(-1)]
    color = [captions.ATTRIBUTE_HEADS["color"][i] for i in np.asarray(logits["color"]).argmax(-1)]
    assert np.mean([m == c.objects[0].direction for m, c in zip(motion, clips)]) > 0.6  # chance: 0.1
    assert np.mean([k == c.objects[0].color for k, c in zip(color, clips)]) > 0.9
