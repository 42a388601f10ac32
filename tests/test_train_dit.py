import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from sora_mini import data, dataset, diffusion, loop, store, train
from sora_mini.dit import DiTConfig
from sora_mini.model import TextToVideoModel
from sora_mini.text import TextConfig

TEXT = TextConfig(dim=16, depth=1, num_heads=2)
DIT = DiTConfig(in_channels=4, patch_size=(1, 2, 2), hidden_size=32, depth=2, num_heads=2, text_dim=16)


def _cache(n=12, nan=False):
    rng = np.random.default_rng(0)
    # One pattern plus a little per-clip noise: a distribution a small model can learn quickly.
    pattern = rng.normal(size=(1, 3, 4, 4, 4))
    mean = (1.5 * pattern + 0.05 * rng.normal(size=(n, 3, 4, 4, 4))).astype(np.float32)
    if nan:
        mean[:] = np.nan
    captions = [data.make_clip(data.ShapesWorldConfig(height=16, width=16, num_frames=5), s).caption for s in range(n)]
    return {"mean": mean, "logvar": np.full_like(mean, -8.0), "caption": np.asarray(captions)}


def _model(seed=0):
    return TextToVideoModel(TEXT, DIT, rngs=nnx.Rngs(seed))


def _tc(**kw):
    return train.DiTTrainConfig(**{**dict(steps=6, batch_size=4, learning_rate=3e-3, warmup_steps=2, save_every=3,
                                          log_every=1), **kw})


def test_training_lowers_the_diffusion_loss(tmp_path):
    train.train_dit(_model(), _cache(), _tc(steps=120, save_every=120), str(tmp_path), progress=False)
    losses = [r["loss"] for r in store.read_log(str(tmp_path))]
    assert len(losses) == 120 and all(np.isfinite(losses))
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:10]), (np.mean(losses[:10]), np.mean(losses[-20:]))


def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path):
    straight, ema_a = train.train_dit(_model(), _cache(), _tc(), str(tmp_path / "a"), progress=False)
    train.train_dit(_model(), _cache(), _tc(), str(tmp_path / "b"), progress=False, stop_after=4)
    resumed, ema_b = train.train_dit(_model(), _cache(), _tc(), str(tmp_path / "b"), progress=False)
    for x, y in zip(jax.tree.leaves(nnx.state(straight, nnx.Param)), jax.tree.leaves(nnx.state(resumed, nnx.Param)),
                    strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    for x, y in zip(jax.tree.leaves(ema_a), jax.tree.leaves(ema_b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    assert [r["step"] for r in store.read_log(str(tmp_path / "b"))] == list(range(1, 7))
    with pytest.raises(ValueError, match="different settings"):
        train.train_dit(_model(), _cache(), _tc(learning_rate=1e-3), str(tmp_path / "b"), progress=False)
    # A run saved before a setting existed resumes when the setting takes its default, and
    # not when it does not.
    config_file = tmp_path / "b" / "train_config.json"
    saved = json.loads(config_file.read_text())
    del saved["diffusion"]["unshifted_fraction"]
    config_file.write_text(json.dumps(saved))
    train.train_dit(_model(), _cache(), _tc(), str(tmp_path / "b"), progress=False)
    config_file.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"diffusion.unshifted_fraction: 0.0 -> 0.5"):
        train.train_dit(_model(), _cache(), _tc(), str(tmp_path / "b"),
                        diffusion.DiffusionConfig(unshifted_fraction=0.5), progress=False)


def test_a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(FloatingPointError, match="last good checkpoint is step None"):
        train.train_dit(_model(), _cache(nan=True), _tc(save_every=1), str(tmp_path), progress=False)
    assert not os.listdir(tmp_path / "checkpoints")  # nothing non-finite was saved
    with pytest.raises(ValueError, match="fewer than batch_size=4"):
        train.train_dit(_model(), _cache(n=3), _tc(), str(tmp_path / "small"), progress=False)


def test_batches_are_seeded_epochs_of_the_cache():
    rows = [dataset.batch_indices(10, s, 4, seed=1) for s in range(5)]
    flat = np.concatenate(rows)
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))  # whole epochs
    np.testing.assert_array_equal(dataset.batch_indices(10, 3, 4, seed=1), rows[3])


def test_the_caption_loss_teaches_the_text_encoder_what_the_caption_names(tmp_path):
    from sora_mini.captions import ATTRIBUTE_CLASSES, caption_label_matrix
    from sora_mini.text import Tokenizer

    # Captions that differ in one word each: the attribute head must read every one of them
    # from the pooled embedding, direction words included.
    captions = [f"a {c} {s} moves {d}" for c, s, d in
                [("red", "circle", "left"), ("red", "circle", "right"), ("blue", "square", "up"),
                 ("blue", "circle", "down"), ("green", "triangle", "left"), ("red", "triangle", "up")]]
    cache = {**_cache(n=6), "caption": np.asarray(captions)}
    model = TextToVideoModel(TEXT.replace(attribute_classes=ATTRIBUTE_CLASSES), DIT, rngs=nnx.Rngs(0))
    tc = _tc(steps=150, save_every=150, learning_rate=1e-2, caption_loss=1.0, caption_dropout=0.0)
    model, _ = train.train_dit(model, cache, tc, str(tmp_path), progress=False)
    log = store.read_log(str(tmp_path))
    assert np.mean([r["caption_loss"] for r in log[-10:]]) < 0.1 * log[0]["caption_loss"]  # measured: 0.84 -> 0.03
    ids, mask = Tokenizer.shapes_world(TEXT.max_length)(captions)
    logits = model.text.attribute_head(model.text(ids, mask)[1])
    np.testing.assert_array_equal(np.asarray(logits > 0), caption_label_matrix(captions) > 0)

    step = train.make_dit_train_step(diffusion.DiffusionConfig(), tc)
    optimizer = nnx.Optimizer(model, loop.make_optimizer(tc), wrt=nnx.Param)
    empty = Tokenizer.shapes_world(TEXT.max_length)("")[0][0]
    with pytest.raises(ValueError, match="caption_loss needs labels"):
        step(model, optimizer, nnx.state(model, nnx.Param), cache["mean"], cache["logvar"], ids, mask, empty,
             jax.random.key(0))

    with pytest.raises(ValueError, match=f"attribute_classes={ATTRIBUTE_CLASSES}"):
        train.train_dit(_model(), cache, tc, str(tmp_path / "no_head"), progress=False)
