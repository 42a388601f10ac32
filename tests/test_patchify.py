import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sora_mini.patchify import (apply_rope, axis_dims, pack, patch_coordinates, patch_grid, patchify, rope_angles,
                                segment_mask, sincos_embedding, unpack, unpatchify)


@pytest.mark.parametrize("shape, patch", [((2, 9, 8, 8, 8), (1, 2, 2)), ((1, 4, 6, 10, 3), (2, 3, 5)),
                                          ((3, 1, 32, 32, 4), (1, 8, 8)), ((1, 6, 4, 2, 16), (3, 1, 2))])
def test_unpatchify_inverts_patchify_exactly(shape, patch):
    x = jax.random.normal(jax.random.key(sum(shape)), shape)
    tokens = patchify(x, patch)
    grid = patch_grid(shape[1:4], patch)
    assert tokens.shape == (shape[0], int(np.prod(grid)), int(np.prod(patch)) * shape[-1])
    np.testing.assert_array_equal(unpatchify(tokens, patch, grid), x)


def test_tokens_are_the_boxes_at_their_coordinates():
    x = jnp.arange(2 * 4 * 6 * 4 * 3, dtype=jnp.float32).reshape(2, 4, 6, 4, 3)
    patch = (2, 3, 2)
    tokens = patchify(x, patch)
    coords = patch_coordinates(patch_grid(x.shape[1:4], patch))
    assert coords.shape == (tokens.shape[1], 3) and coords.dtype == np.int32
    for i, (t, y, xx) in enumerate(coords):
        box = x[:, 2 * t:2 * t + 2, 3 * y:3 * y + 3, 2 * xx:2 * xx + 2]  # [B, pt, ph, pw, c]
        np.testing.assert_array_equal(tokens[:, i], box.reshape(2, -1))


def test_grids_that_the_patch_does_not_divide_are_refused():
    with pytest.raises(ValueError, match="h=7 is not divisible by the patch size 2"):
        patchify(jnp.zeros((1, 4, 7, 8, 4)), (1, 2, 2))
    with pytest.raises(ValueError, match="t=5 is not divisible"):
        patch_grid((5, 8, 8), (2, 2, 2))
    with pytest.raises(ValueError, match="patch_size must be three positive integers"):
        patchify(jnp.zeros((1, 4, 8, 8, 4)), (2, 2))
    with pytest.raises(ValueError, match=r"latent \[B, t, h, w, c\]"):
        patchify(jnp.zeros((4, 8, 8, 4)), (1, 2, 2))
    with pytest.raises(ValueError, match="unpatchify expects tokens"):
        unpatchify(jnp.zeros((1, 15, 16)), (1, 2, 2), (1, 4, 4))


def test_axis_dims_are_even_and_add_up():
    for dim in (6, 64, 128, 384, 1024, 1152, 72):
        parts = axis_dims(dim)
        assert sum(parts) == dim and all(p % 2 == 0 and p > 0 for p in parts)
    with pytest.raises(ValueError, match="even dimension"):
        axis_dims(63)


def test_sincos_embedding_matches_its_closed_form():
    coords = patch_coordinates((3, 4, 5))
    emb = sincos_embedding(coords, 48)
    dt, dy, dx = axis_dims(48)
    assert emb.shape == (60, 48)
    i = 37
    t, y, x = coords[i]
    w = 1.0 / 10_000 ** (np.arange(dy // 2) / (dy // 2))
    np.testing.assert_allclose(emb[i, dt:dt + dy // 2], np.sin(y * w), atol=1e-6)
    np.testing.assert_allclose(emb[i, dt + dy // 2:dt + dy], np.cos(y * w), atol=1e-6)
    np.testing.assert_allclose(emb[i, dt + dy + dx // 2:], np.cos(x * w), atol=1e-6)
    assert len(np.unique(emb.round(5), axis=0)) == 60  # every position distinct


def test_rope_scores_depend_only_on_coordinate_differences():
    head_dim = 24
    q = jax.random.normal(jax.random.key(0), (1, 1, 1, head_dim))
    k = jax.random.normal(jax.random.key(1), (1, 1, 1, head_dim))

    def score(m, n):
        qm = apply_rope(q, rope_angles(jnp.array([m]), head_dim))
        kn = apply_rope(k, rope_angles(jnp.array([n]), head_dim))
        return float((qm * kn).sum())

    base = score((2, 3, 1), (0, 1, 4))
    for shift in [(5, 0, 0), (0, 7, -2), (3, 11, 9)]:
        m = tuple(a + s for a, s in zip((2, 3, 1), shift))
        n = tuple(a + s for a, s in zip((0, 1, 4), shift))
        assert score(m, n) == pytest.approx(base, abs=1e-4)
    assert abs(score((2, 3, 1), (0, 2, 4)) - base) > 1e-3  # a different offset scores differently
    # A rotation keeps norms: RoPE changes directions only.
    rotated = apply_rope(q, rope_angles(jnp.array([(4, 5, 6)]), head_dim))
    np.testing.assert_allclose(jnp.linalg.norm(rotated), jnp.linalg.norm(q), rtol=1e-5)


def test_pack_unpack_and_segment_mask():
    shapes = [(2, 4, 4, 3), (1, 8, 4, 3), (3, 2, 6, 3)]
    latents = [jax.random.normal(jax.random.key(i), s) for i, s in enumerate(shapes)]
    tokens, coords, segments, grids = pack(latents, (1, 2, 2), length=32)
    assert tokens.shape == (32, 12) and coords.shape == (32, 3)
    assert list(np.bincount(segments[segments >= 0])) == [8, 8, 9] and (segments[25:] == -1).all()
    for a, b in zip(unpack(tokens, (1, 2, 2), grids), latents, strict=True):
        np.testing.assert_array_equal(a, b)
    mask = np.asarray(segment_mask(segments))
    assert mask[0, 7] and not mask[0, 8] and mask[8, 15] and not mask[16, 0] and mask.any(axis=1).all()
    with pytest.raises(ValueError, match="more than the packed length"):
        pack(latents, (1, 2, 2), length=20)
