import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sora_mini import data
from sora_mini.text import TEXT_PRESETS, TextConfig, TextEncoder, Tokenizer, clip_loss


def test_the_vocabulary_covers_every_caption_the_world_writes():
    tok = Tokenizer.shapes_world()
    world = data.ShapesWorldConfig()
    lengths = []
    for seed in range(1500):
        ids = tok.encode(data.make_clip(world, seed).caption)
        assert tok.ids["<unk>"] not in ids
        lengths.append(len(ids))
    assert max(lengths) <= tok.max_length
    assert TEXT_PRESETS["tiny"].vocab_size == tok.vocab_size and TEXT_PRESETS["tiny"].max_length == tok.max_length


def test_tokenizer_padding_unknown_words_empty_and_long_prompts():
    tok = Tokenizer.shapes_world()
    ids, mask = tok(["Two red circles fall.", "a zebra dances", ""])
    assert ids.shape == mask.shape == (3, tok.max_length) and ids.dtype == jnp.int32 and mask.dtype == jnp.bool_
    assert tok.decode(ids[0]) == "two red circles fall <unk>"  # '.' is not a word of the world
    assert list(ids[1, :4]) == [tok.ids["<cls>"], tok.ids["a"], tok.ids["<unk>"], tok.ids["<unk>"]]
    assert int(mask[2].sum()) == 1 and int(ids[2, 0]) == tok.ids["<cls>"]  # empty = unconditional: <cls> only
    long = " ".join(["red"] * 100)
    with pytest.warns(UserWarning, match="truncated to 72 tokens"):
        ids, mask = tok(long)
    assert bool(mask.all())
    with pytest.raises(ValueError, match="more than max_length=72"):
        tok(long, on_overflow="error")
    with pytest.raises(TypeError, match="must be a str"):
        tok([3])


def test_padding_never_changes_the_embeddings_of_real_tokens():
    tok = Tokenizer.shapes_world()
    enc = TextEncoder(TextConfig(vocab_size=tok.vocab_size, dim=32, depth=2, num_heads=4), rngs=nnx.Rngs(0))
    prompts = ["a small red circle falls and bounces", "two blue squares move left"]
    short_ids, short_mask = tok(prompts, max_length=16)
    long_ids, long_mask = tok(prompts, max_length=40)
    short, pooled_short = enc(short_ids, short_mask)
    long, pooled_long = enc(long_ids, long_mask)
    np.testing.assert_allclose(long[:, :16], short, atol=1e-5)
    np.testing.assert_allclose(pooled_long, pooled_short, atol=1e-5)
    assert float(jnp.abs(long[:, 16:]).max()) == 0.0  # padding rows are zero
    # Garbage ids under the padding mask change nothing either.
    garbage = jnp.where(long_mask, long_ids, 5)
    np.testing.assert_allclose(enc(garbage, long_mask)[0], long, atol=1e-5)


def test_encoder_is_deterministic_and_checks_its_inputs():
    tok = Tokenizer.shapes_world()
    ids, mask = tok(["a red circle"])
    a = TextEncoder(TEXT_PRESETS["tiny"], rngs=nnx.Rngs(7))(ids, mask)[0]
    b = TextEncoder(TEXT_PRESETS["tiny"], rngs=nnx.Rngs(7))(ids, mask)[0]
    c = TextEncoder(TEXT_PRESETS["tiny"], rngs=nnx.Rngs(8))(ids, mask)[0]
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    enc = TextEncoder(TEXT_PRESETS["tiny"], rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="exceed the encoder's max_length=72"):
        enc(jnp.zeros((1, 80), jnp.int32), jnp.ones((1, 80), bool))
    with pytest.raises(ValueError, match="integer token ids"):
        enc(ids.astype(jnp.float32), mask)


def test_clip_loss_prefers_matched_pairs():
    x = jax.random.normal(jax.random.key(0), (8, 16))
    matched = float(clip_loss(x, x, temperature=0.05))
    shuffled = float(clip_loss(x, x[::-1], temperature=0.05))
    assert matched < 0.05 < np.log(8) < shuffled
    assert float(clip_loss(x, x, temperature=1e6)) == pytest.approx(np.log(8), rel=1e-4)  # uniform: log B
