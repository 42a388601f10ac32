import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sora_mini import dit
from sora_mini.dit import DIT_PRESETS, DiT, DiTConfig, SelfAttention, count_params, gflops
from sora_mini.patchify import patch_coordinates, patch_grid, rope_angles

SMALL = DiTConfig(in_channels=4, patch_size=(1, 2, 2), hidden_size=48, depth=2, num_heads=4, text_dim=16)
# Peebles & Xie (2023), Table 4: parameters and Gflops of the class-conditional image DiT.
PAPER = {"S": (33e6, {2: 6.06, 4: 1.41, 8: 0.36}), "B": (130e6, {2: 23.01, 4: 5.56, 8: 1.42}),
         "L": (458e6, {2: 80.71, 4: 19.70, 8: 5.01}), "XL": (675e6, {2: 118.64, 4: 29.05, 8: 7.39})}


def _inputs(B=2, shape=(3, 4, 4), c=4, L=6, text_dim=16, key=0):
    k = jax.random.split(jax.random.key(key), 3)
    x = jax.random.normal(k[0], (B, *shape, c))
    time = jax.random.uniform(k[1], (B,))
    text = jax.random.normal(k[2], (B, L, text_dim))
    mask = jnp.arange(L)[None] < jnp.array([L, 2])[:B, None]
    return x, time, text, mask


def _randomize(model, key=1, scale=0.2):
    """Give every parameter (also the zero-initialised ones) random values."""
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(key), len(leaves))
    new = [scale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
    nnx.update(model, jax.tree.unflatten(treedef, new))
    return model


@pytest.mark.parametrize("name", list(PAPER))
def test_presets_reproduce_the_dit_paper_table(name):
    params, flops = PAPER[name]
    for p in (2, 4, 8):
        config = DIT_PRESETS[f"DiT-{name}/{p}"]
        model = nnx.eval_shape(lambda c=config: DiT(c, rngs=nnx.Rngs(0)))  # shapes only: no memory
        assert count_params(model) == pytest.approx(params, rel=0.01)
        assert gflops(config, (32, 32, 4)) == pytest.approx(flops[p], rel=0.02)


def test_adaln_zero_every_block_is_the_identity_and_the_output_is_zero():
    model = DiT(SMALL, rngs=nnx.Rngs(0))
    x, time, text, mask = _inputs()
    assert float(jnp.abs(model(x, time, text=text, text_mask=mask)).max()) == 0.0
    tokens = jax.random.normal(jax.random.key(3), (2, 12, 48))
    cond = model.condition(time, text, mask)
    assert float(jnp.abs(cond).max()) > 0  # the condition itself is not zero...
    for group in model.blocks:
        for block in group.blocks:  # ...but every block passes its input through unchanged
            np.testing.assert_array_equal(block(tokens, cond, (3, 2, 2), None, text, mask), tokens)


# The layers DiT.initialize_zero zeroes, by path with the block and group indices left out.
ZERO_INIT = {"blocks.blocks.adaln", "blocks.blocks.cross.proj", "final.adaln", "final.linear", "final.conv", "abs_pos"}


@pytest.mark.parametrize("scan_layers", [False, True])
def test_initialize_zero_zeroes_exactly_the_layers_added_to_something(scan_layers):
    c = SMALL.replace(attention="factorised", depth=4, absolute_pos=True, output_conv=6, scan_layers=scan_layers)
    for path, param in nnx.to_flat_state(nnx.state(DiT(c, rngs=nnx.Rngs(0)), nnx.Param)):
        name = ".".join(p for p in path[:-1] if isinstance(p, str))
        if path[-1] == "kernel":  # scanned: one stacked [groups, ...] array for all groups
            assert bool((param[...] == 0).all()) == (name in ZERO_INIT), name
        elif name in ZERO_INIT:
            assert bool((param[...] == 0).all()), name


def _intermediates(model, *inputs):
    x, time, text, mask = inputs
    out, inter = model(x, time, text=text, text_mask=mask, return_intermediates=True)
    np.testing.assert_array_equal(out, model(x, time, text=text, text_mask=mask))  # the same output as without
    return out, inter


@pytest.mark.parametrize("scan_layers", [False, True])
def test_at_initialisation_every_block_is_the_identity(scan_layers):
    # A lost adaLN or cross-attention zero changes some block's activation, a lost absolute-
    # position zero the tokens, a lost Linear or convolution zero in the head the output (the
    # head's adaLN alone is not seen here: the test above checks it).
    c = SMALL.replace(attention="factorised", depth=4, absolute_pos=True, output_conv=6, scan_layers=scan_layers)
    x, time, text, mask = inputs = _inputs()
    out, inter = _intermediates(DiT(c, rngs=nnx.Rngs(0)), *inputs)
    assert inter["blocks"].shape == (4, 2, 12, 48) and float(jnp.abs(inter["condition"]).max()) > 0
    for activation in inter["blocks"]:
        np.testing.assert_array_equal(activation, inter["tokens"])
    assert float(jnp.abs(out).max()) == 0.0
    # The same seed builds the same patch embedding first: without absolute positions, the same tokens.
    plain = DiT(c.replace(absolute_pos=False), rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(_intermediates(plain, *inputs)[1]["tokens"], inter["tokens"])


def test_intermediates_are_the_blocks_activations_in_order_scanned_or_not():
    plain = _randomize(DiT(SMALL.replace(attention="factorised", depth=4), rngs=nnx.Rngs(0)))
    scanned = DiT(plain.config.replace(scan_layers=True), rngs=nnx.Rngs(0))
    state = nnx.state(plain, nnx.Param)
    state["blocks"] = jax.tree.map(lambda *xs: jnp.stack(xs), *[state["blocks"][i] for i in range(len(plain.blocks))])
    nnx.update(scanned, state)
    x, time, text, mask = inputs = _inputs()
    grid = patch_grid(x.shape[1:4], SMALL.patch_size)
    rope = rope_angles(patch_coordinates(grid), SMALL.head_dim)
    out, inter = _intermediates(plain, *inputs)
    assert inter["tokens"].shape == (2, 12, 48) and inter["condition"].shape == (2, 48)
    assert inter["blocks"].shape == (4, 2, 12, 48)
    np.testing.assert_allclose(inter["condition"], plain.condition(time, text, mask), atol=1e-6)
    h = inter["tokens"]  # each activation is the block's output from the one before
    for group in plain.blocks:
        for block in group.blocks:
            h = block(h, inter["condition"], grid, rope, text, mask)
    np.testing.assert_allclose(h, inter["blocks"][-1], atol=1e-5)
    np.testing.assert_allclose(plain.final(inter["blocks"][-1], inter["condition"], grid), out, atol=1e-6)
    scanned_out, scanned_inter = _intermediates(scanned, *inputs)
    np.testing.assert_allclose(scanned_out, out, atol=1e-4)
    for key in ("tokens", "condition", "blocks"):
        assert scanned_inter[key].shape == inter[key].shape
        np.testing.assert_allclose(scanned_inter[key], inter[key], atol=1e-4)
    assert not np.allclose(inter["blocks"][1], inter["blocks"][2], atol=1e-3)  # the blocks do change the tokens


def test_output_convolution_starts_at_zero_and_reaches_across_patch_borders():
    c = SMALL.replace(output_conv=6)
    x, time, text, mask = _inputs()
    assert float(jnp.abs(DiT(c, rngs=nnx.Rngs(0))(x, time, text=text, text_mask=mask)).max()) == 0.0
    # The head alone, on a (3, 2, 2) grid of 2x2 patches (a 3x4x4 latent). Change token 4,
    # the patch of frame 1 at rows 0-1, columns 0-1.
    tokens = jax.random.normal(jax.random.key(2), (1, 12, 48))
    changed = tokens.at[:, 4].set(jax.random.normal(jax.random.key(4), (48,)))
    cond = jax.random.normal(jax.random.key(3), (1, 48))
    for config, reach in ((SMALL, (slice(1, 2), slice(0, 2), slice(0, 2))),  # the Linear head: its patch only
                          (c, (slice(0, 3), slice(0, 3), slice(0, 3)))):  # + 3x3x3 conv: one pixel further
        head = _randomize(dit.FinalLayer(config, rngs=nnx.Rngs(0)))
        diff = jnp.abs(head(changed, cond, (3, 2, 2)) - head(tokens, cond, (3, 2, 2))).sum(-1)[0]  # [3, 4, 4]
        inside = np.zeros(diff.shape, bool)
        inside[reach] = True
        assert bool((diff[inside] > 1e-4).all()) and float(diff[~inside].max()) < 1e-6
    assert gflops(c, (3, 4, 4, 4)) > gflops(SMALL, (3, 4, 4, 4))


def test_text_padding_does_not_leak():
    model = _randomize(DiT(SMALL, rngs=nnx.Rngs(0)))
    x, time, text, mask = _inputs()
    out = model(x, time, text=text, text_mask=mask)
    garbage = jnp.where(mask[..., None], text, 100.0)  # change only the padded text positions
    np.testing.assert_allclose(model(x, time, text=garbage, text_mask=mask), out, atol=1e-5)
    longer = jnp.concatenate([text, jax.random.normal(jax.random.key(9), (2, 5, 16))], axis=1)
    longer_mask = jnp.concatenate([mask, jnp.zeros((2, 5), bool)], axis=1)
    np.testing.assert_allclose(model(x, time, text=longer, text_mask=longer_mask), out, atol=1e-5)
    assert not np.allclose(model(x, time, text=text + 0.5 * mask[..., None], text_mask=mask), out, atol=1e-3)


@pytest.mark.parametrize("pos_embed", ["rope", "sincos"])
@pytest.mark.parametrize("attention", ["full", "factorised"])
def test_one_model_serves_any_grid(attention, pos_embed):
    model = _randomize(DiT(SMALL.replace(attention=attention, pos_embed=pos_embed), rngs=nnx.Rngs(0)))
    for shape in [(1, 4, 4), (3, 4, 8), (5, 8, 2)]:
        x, time, text, mask = _inputs(shape=shape)
        out = model(x, time, text=text, text_mask=mask)
        assert out.shape == x.shape and out.dtype == jnp.float32 and bool(jnp.isfinite(out).all())


def test_factorised_attention_mixes_only_along_its_axis():
    c = SMALL.replace(qk_norm=False)
    grid, B, N = (3, 2, 2), 1, 12
    x = jax.random.normal(jax.random.key(0), (B, N, 48))
    frame1 = (jnp.arange(N) // 4 == 1)[None, :, None]  # tokens of frame 1
    position0 = (jnp.arange(N) % 4 == 0)[None, :, None]  # tokens at spatial position 0
    spatial = _randomize(SelfAttention(c, "spatial", dtype=jnp.float32, rngs=nnx.Rngs(0)))
    temporal = _randomize(SelfAttention(c, "temporal", dtype=jnp.float32, rngs=nnx.Rngs(0)))
    changed = x + 3.0 * frame1
    # Spatial attention: changing frame 1 changes only frame 1's outputs.
    diff = jnp.abs(spatial(changed, grid) - spatial(x, grid)).sum(-1)[0]
    assert bool((diff[~frame1[0, :, 0]] < 1e-5).all()) and bool((diff[frame1[0, :, 0]] > 1e-3).all())
    # Temporal attention: changing position 0 (in every frame) changes only position 0.
    changed = x + 3.0 * position0
    diff = jnp.abs(temporal(changed, grid) - temporal(x, grid)).sum(-1)[0]
    assert bool((diff[~position0[0, :, 0]] < 1e-5).all()) and bool((diff[position0[0, :, 0]] > 1e-3).all())


def test_scan_and_remat_compute_the_same_function():
    plain = _randomize(DiT(SMALL.replace(attention="factorised", depth=4), rngs=nnx.Rngs(0)))
    x, time, text, mask = _inputs()
    want = plain(x, time, text=text, text_mask=mask)
    for flags in [dict(scan_layers=True), dict(scan_layers=True, remat=True), dict(remat=True)]:
        other = DiT(plain.config.replace(**flags), rngs=nnx.Rngs(0))
        state = nnx.state(plain, nnx.Param)
        if flags.get("scan_layers"):  # stack the per-group weights along a leading axis
            groups = [state["blocks"][i] for i in range(len(plain.blocks))]
            state["blocks"] = jax.tree.map(lambda *xs: jnp.stack(xs), *groups)
        nnx.update(other, state)
        np.testing.assert_allclose(other(x, time, text=text, text_mask=mask), want, atol=1e-4)


def test_bfloat16_compute_stays_close_to_float32():
    f32 = _randomize(DiT(SMALL, rngs=nnx.Rngs(0)), scale=0.05)
    bf16 = DiT(SMALL.replace(dtype="bfloat16"), rngs=nnx.Rngs(0))
    nnx.update(bf16, nnx.state(f32, nnx.Param))
    x, time, text, mask = _inputs()
    a, b = f32(x, time, text=text, text_mask=mask), bf16(x, time, text=text, text_mask=mask)
    assert b.dtype == jnp.float32
    assert float(jnp.abs(a - b).max()) < 0.05 * float(jnp.abs(a).max())


def test_class_conditional_model_uses_its_labels():
    config = DiTConfig(in_channels=4, patch_size=(1, 2, 2), hidden_size=48, depth=2, num_heads=4, text_dim=None,
                       num_classes=10, learn_sigma=True, pos_embed="sincos")
    model = _randomize(DiT(config, rngs=nnx.Rngs(0)))
    x, time, _, _ = _inputs(shape=(1, 8, 8))
    out = model(x, time, labels=jnp.array([3, 10]))  # 10: the "no class" row, for guidance
    assert out.shape == (2, 1, 8, 8, 8)
    assert not np.allclose(out, model(x, time, labels=jnp.array([4, 10])))
    with pytest.raises(ValueError, match="class-conditional: pass labels"):
        model(x, time)
    with pytest.raises(ValueError, match="no text conditioning"):
        model(x, time, labels=jnp.array([3, 10]), text=jnp.zeros((2, 4, 16)), text_mask=jnp.ones((2, 4), bool))


def test_bad_inputs_raise_clear_errors():
    model = DiT(SMALL, rngs=nnx.Rngs(0))
    x, time, text, mask = _inputs()
    with pytest.raises(ValueError, match=r"latent \[B, t, h, w, 4\]"):
        model(x[..., :3], time, text=text, text_mask=mask)
    with pytest.raises(ValueError, match=r"time must be \[B\]"):
        model(x, time[:1], text=text, text_mask=mask)
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        model(x[:, :, :3], time, text=text, text_mask=mask)
    with pytest.raises(ValueError, match="this DiT reads text"):
        model(x, time)
    with pytest.raises(ValueError, match=r"text must be \[B=2, L, 16\]"):
        model(x, time, text=text[..., :8], text_mask=mask)
    with pytest.raises(ValueError, match="factorised attention alternates"):
        DiTConfig(attention="factorised", depth=3)
    with pytest.raises(ValueError, match="must divide by num_heads"):
        DiTConfig(hidden_size=50, num_heads=4)


def test_a_train_step_overfits_one_batch():
    model = DiT(SMALL, rngs=nnx.Rngs(0))
    x, time, text, mask = _inputs()
    target = jax.random.normal(jax.random.key(5), x.shape)
    optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
        def loss_fn(model):
            return jnp.mean((model(x, time, text=text, text_mask=mask) - target) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    losses = [float(step(model, optimizer)) for _ in range(150)]
    assert losses[0] == pytest.approx(float(jnp.mean(target ** 2)), rel=1e-5)  # zero output at init
    assert losses[-1] < losses[0] / 20


def test_video_presets_build_and_cost_what_gflops_says():
    model = nnx.eval_shape(lambda: DiT(DIT_PRESETS["tiny"], rngs=nnx.Rngs(0)))
    assert 1e6 < count_params(model) < 3e6
    full = gflops(DIT_PRESETS["tiny"], (9, 8, 8, 8))
    factorised = gflops(DIT_PRESETS["tiny"].replace(attention="factorised"), (9, 8, 8, 8))
    assert factorised < full
    # Attention's share grows with N^2: at 4x the tokens, full attention costs > 4x.
    assert gflops(DIT_PRESETS["tiny"], (17, 16, 16, 8)) > 4 * full
    assert dit.timestep_embedding(jnp.array([0.0, 1.0])).shape == (2, 256)
