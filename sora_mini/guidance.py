"""Classifier guidance (chapter 07): steering the sampler with a classifier of noisy latents.

Classifier-free guidance only amplifies what the DiT learned from its captions. What it
learns is what its loss pays for, and the diffusion loss pays almost nothing for the
direction of motion: once an object can be seen in `x_t` at all, its motion can be read
from `x_t` itself, so the caption's direction word is worth little in mean squared error
(chapter 09 measures the shipped model's direction at 0.21 over eight directions). A
classifier trained to say what the caption says pays for every word it gets wrong.

Dhariwal & Nichol ("Diffusion Models Beat GANs on Image Synthesis", 2021): with a
classifier `p(y | x_t, t)` trained on noised latents, the conditional score is

    grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t)

and `w > 1` times the second term sharpens the condition. On any path `x_t = a x0 + s eps`
the model's score is `-eps_hat / s`, so guidance moves the model's guesses to

    eps_hat' = eps_hat - s w' g,   x0_hat' = x0_hat + (s^2 / a) w' g,   g = grad log p(y | x_t).

At pure noise (`a = 0` on the flow) the exact rule divides by zero while the classifier
sees nothing; we use `w' = w a`, guidance that fades in as the signal does:

    x0_hat' = x0_hat + w s^2 g,   eps_hat' = eps_hat - w a s g.

The classifier reads what the DiT reads, a noisy latent `[B, t, h, w, c]` and its time, with
the DiT's own parts: patch embedding, sin-cos positions, adaLN-Zero blocks conditioned on the
time alone (no text), then the mean token into one linear head per property of the first
object a caption names (`data.parse_caption`): colour, shape and motion.

    x_t [B, t, h, w, c] --patchify + Linear + sincos--> [B, N, D] --depth x DiTBlock(time)-->
      mean over N --LayerNorm--> {"color": [B, 8], "shape": [B, 3], "motion": [B, 10]}
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from sora_mini import data
from sora_mini.diffusion import DiffusionConfig, add_noise, shift_time
from sora_mini.fvd import export_classifier, restore_params  # noqa: F401  (export_classifier: any classifier)
from sora_mini.dit import DiTBlock, DiTConfig, TimestepEmbedder
from sora_mini.patchify import patch_coordinates, patch_grid, patchify, sincos_embedding

HEADS = {"color": tuple(data.COLORS), "shape": data.SHAPES, "motion": data.CAPTION_MOTIONS}


@dataclasses.dataclass(frozen=True)
class LatentClassifierConfig:
    in_channels: int = 8  # latent channels c
    patch_size: tuple[int, int, int] = (1, 2, 2)
    hidden_size: int = 96
    depth: int = 3
    num_heads: int = 4

    def block_config(self) -> DiTConfig:
        # The DiT's blocks, with no text: adaLN reads the time embedding alone.
        return DiTConfig(in_channels=self.in_channels, patch_size=self.patch_size, hidden_size=self.hidden_size,
                         depth=self.depth, num_heads=self.num_heads, text_dim=None, pos_embed="sincos")


class LatentClassifier(nnx.Module):
    """`LatentClassifier(config, rngs=...)(x_t [B, t, h, w, c], time [B])` -> logits per head."""

    def __init__(self, config: LatentClassifierConfig = LatentClassifierConfig(), *, rngs: nnx.Rngs):
        self.config = config
        c = config.block_config()
        D = c.hidden_size
        self.patch_embed = nnx.Linear(int(np.prod(c.patch_size)) * c.in_channels, D, rngs=rngs)
        self.time_embed = TimestepEmbedder(D, dtype=jnp.float32, rngs=rngs)
        self.blocks = nnx.List([DiTBlock(c, rngs=rngs) for _ in range(c.depth)])
        self.norm = nnx.LayerNorm(D, rngs=rngs)
        self.heads = nnx.Dict({k: nnx.Linear(D, len(v), rngs=rngs) for k, v in HEADS.items()})

    def __call__(self, x, time):
        c = self.config
        if x.ndim != 5 or x.shape[-1] != c.in_channels:
            raise ValueError(f"x must be a latent [B, t, h, w, {c.in_channels}], got shape {x.shape}")
        grid = patch_grid(x.shape[1:4], c.patch_size)
        tokens = self.patch_embed(patchify(x, c.patch_size))  # [B, N, D]
        tokens = tokens + jnp.asarray(sincos_embedding(patch_coordinates(grid), c.hidden_size))
        cond = self.time_embed(jnp.broadcast_to(time, x.shape[:1]))  # [B, D]
        for block in self.blocks:
            tokens = block(tokens, cond, grid)
        h = self.norm(tokens.mean(axis=1))  # [B, D]
        return {k: head(h) for k, head in self.heads.items()}


def caption_labels(captions) -> dict[str, np.ndarray]:
    """`int32 [N]` per head: the class each caption names for its first object, -1 where
    it names none (such examples do not count in that head's loss)."""
    parsed = [data.parse_caption(str(c)) for c in captions]
    return {k: np.asarray([classes.index(p[k]) if p[k] is not None else -1 for p in parsed], np.int32)
            for k, classes in HEADS.items()}


def log_prob(model: LatentClassifier, x, time, labels: dict):
    """`[B]`: the sum over heads of `log p(label | x_t)`, heads with label -1 left out."""
    logits = model(x, time)
    total = 0.0
    for k, y in labels.items():
        logp = jax.nn.log_softmax(logits[k])
        total = total + jnp.where(y >= 0, jnp.take_along_axis(logp, jnp.maximum(y, 0)[:, None], -1)[:, 0], 0.0)
    return total


def classifier_loss(model: LatentClassifier, x, time, labels: dict):
    logits = model(x, time)
    losses, acc = {}, {}
    for k, y in labels.items():
        valid = (y >= 0).astype(jnp.float32)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits[k], jnp.maximum(y, 0))
        losses[k] = (ce * valid).sum() / jnp.maximum(valid.sum(), 1.0)
        acc[f"{k}_acc"] = ((logits[k].argmax(-1) == y) * valid).sum() / jnp.maximum(valid.sum(), 1.0)
    return sum(losses.values()), acc


def guidance_times(key, batch: int, config: DiffusionConfig):
    """Training times for the classifier: uniform before the sampler's time shift, the
    times a sampler's grid visits (`sampling.time_grid`), so it is trained where it is used."""
    return shift_time(jax.random.uniform(key, (batch,), minval=0.0, maxval=1.0), config.time_shift)


@dataclasses.dataclass(frozen=True)
class GuidanceTrainConfig:
    steps: int = 2000
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    latent_scale: float = 1.0  # the DiT's: the classifier reads the sampler's latents
    seed: int = 0


def make_classifier_train_step(diffusion_config: DiffusionConfig, tc: GuidanceTrainConfig):
    @nnx.jit
    def step(model, optimizer, mean, logvar, labels, key):
        k_z, k_t, k_eps = jax.random.split(key, 3)
        z = (mean + jnp.exp(0.5 * logvar) * jax.random.normal(k_z, mean.shape)) * tc.latent_scale
        t = guidance_times(k_t, z.shape[0], diffusion_config)
        x = add_noise(z, jax.random.normal(k_eps, z.shape), t, diffusion_config)
        (loss, acc), grads = nnx.value_and_grad(classifier_loss, has_aux=True)(model, x, t, labels)
        optimizer.update(model, grads)
        return {"loss": loss, **acc}

    return step


def train_latent_classifier(latents: dict, tc: GuidanceTrainConfig, diffusion_config: DiffusionConfig,
                            config: LatentClassifierConfig | None = None, progress: bool = True):
    """Train on a latent cache (`encode-latents`: `mean`, `logvar` `[N, t, h, w, c]`,
    `caption` `[N]`), noised as the sampler sees them. Returns `(model, log)`."""
    from tqdm.auto import tqdm

    from sora_mini.train import latent_batch_indices

    mean, logvar = np.asarray(latents["mean"], np.float32), np.asarray(latents["logvar"], np.float32)
    labels = caption_labels(latents["caption"])
    config = config or LatentClassifierConfig(in_channels=mean.shape[-1])
    model = LatentClassifier(config, rngs=nnx.Rngs(tc.seed))
    warmup = min(tc.warmup_steps, tc.steps // 2)
    schedule = optax.warmup_cosine_decay_schedule(0.0, tc.learning_rate, warmup, max(tc.steps, warmup + 1),
                                                  tc.learning_rate * 0.01)
    optimizer = nnx.Optimizer(model, optax.adamw(schedule, weight_decay=tc.weight_decay), wrt=nnx.Param)
    step_fn = make_classifier_train_step(diffusion_config, tc)
    key, log = jax.random.key(tc.seed), []
    bar = tqdm(range(tc.steps), desc="train-guidance", disable=not progress)
    for step in bar:
        rows = latent_batch_indices(len(mean), step, tc.batch_size, tc.seed)
        metrics = step_fn(model, optimizer, mean[rows], logvar[rows], {k: v[rows] for k, v in labels.items()},
                          jax.random.fold_in(key, step))
        if step % 20 == 0 or step == tc.steps - 1:
            log.append({"step": step, **{k: float(v) for k, v in metrics.items()}})
            bar.set_postfix({k: f"{log[-1][k]:.3f}" for k in ("loss", "motion_acc")})
    return model, log


@nnx.jit
def _accuracy_batch(model, x, t, labels):
    logits = model(x, t)
    return {k: logits[k].argmax(-1) == labels[k] for k in labels}


def accuracy_by_time(model: LatentClassifier, latents: dict, times=(0.0, 0.25, 0.5, 0.75, 0.9), *,
                     latent_scale: float, diffusion_config: DiffusionConfig, n: int = 512, seed: int = 0) -> dict:
    """Accuracy per head on the first `n` clips of a cache (posterior means), noised to
    each time: `{t: {"color": .., "shape": .., "motion": ..}}`, over clips that name one."""
    z = jnp.asarray(np.asarray(latents["mean"][:n], np.float32) * latent_scale)
    labels = caption_labels(latents["caption"][:n])
    eps = jax.random.normal(jax.random.key(seed), z.shape)
    out = {}
    for t in times:
        tt = jnp.full((len(z),), t, jnp.float32)
        hits = _accuracy_batch(model, add_noise(z, eps, tt, diffusion_config), tt, labels)
        out[float(t)] = {k: float(np.asarray(hits[k])[labels[k] >= 0].mean()) for k in labels}
    return out


# ----------------------------------------------------------------------------------------
# Guiding a sampler.


def classifier_grad_fn(model: LatentClassifier, labels: dict):
    """`(x [B, ...], t scalar) -> grad log p(labels | x_t)` for `sampling.sample`."""

    def fn(x, t):
        tt = jnp.full((x.shape[0],), t, jnp.float32)
        return jax.grad(lambda x: log_prob(model, x, tt, labels).sum())(x)

    return fn


# ----------------------------------------------------------------------------------------
# Shipping: `<model>/guidance/` holds config.json, params/ and manifest.json beside the DiT
# (written by `fvd.export_classifier`, which saves any classifier with a config).


def load_latent_classifier(path: str) -> LatentClassifier:
    config_file = os.path.join(os.path.abspath(path), "config.json")
    if not os.path.exists(config_file):
        raise FileNotFoundError(f"no guidance classifier at {path} (expected config.json and params/): train one "
                                "with `python -m sora_mini train-guidance`")
    with open(config_file) as f:
        raw = json.load(f)
    config = LatentClassifierConfig(**{**raw, "patch_size": tuple(raw["patch_size"])})
    return restore_params(nnx.eval_shape(lambda: LatentClassifier(config, rngs=nnx.Rngs(0))), path)
