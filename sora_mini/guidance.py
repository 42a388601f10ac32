"""Classifier guidance (chapter 07): steering the sampler with a classifier of noisy latents.

Classifier-free guidance only amplifies what the DiT learned from its captions. What it
learns is what its loss pays for, and the diffusion loss pays almost nothing for the
direction of motion: once an object can be seen in `x_t` at all, its motion can be read
from `x_t` itself, so the caption's direction word is worth little in mean squared error
(chapter 06's caption-attribute loss and absolute positions are one answer). A
classifier trained to say what the caption says pays for every word it gets wrong.

Dhariwal & Nichol ("Diffusion Models Beat GANs on Image Synthesis", 2021): with a
classifier `p(y | x_t, t)` trained on noised latents, the conditional score is

    grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t)

and `w > 1` times the second term sharpens the condition. On any path `x_t = a x0 + s eps`
the model's score is `-eps_hat / s`, so guidance moves the model's guesses to

    eps_hat' = eps_hat - w s g,   x0_hat' = x0_hat + w (s^2 / a) g,   g = grad log p(y | x_t)

(`sampling.classifier_guided`), still a split of the same `x_t`. At pure noise (`a = 0` on
the flow) `1 / a` blows up while the classifier sees nothing; the sampler holds `a` at
`sampling.GUIDANCE_MIN_SIGNAL` there.

The classifier reads what the sampler holds, a noisy latent `[B, t, h, w, c]`, and its
time. It is a "(2+1)D" convnet like FVD's (`sora_mini.fvd`): convolutions within each
latent frame, flattened so that *where* things are survives, then convolutions across
frames, which read how they move; the time embedding is added after each stage (a noisy
latent looks different at every t). For each property (colour, shape, motion) it says
which classes some object in the clip has: a sigmoid per class, so a clip of a red
circle and a blue square is red *and* blue. Guidance then raises the log-probability of
what the prompt names (`captions.parse_caption`, every clause).

    x_t [B, t, h, w, c] -> per frame: Conv 3x3, Conv 3x3 stride 2 (+ time) -> flatten -> Dense (+ time)
      -> [B, t, D] -> 2 x residual Conv over time -> mean over t -> LayerNorm
      -> {"color": [B, 8], "shape": [B, 3], "motion": [B, 10]} logits
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from sora_mini import loop, store
from sora_mini.captions import ATTRIBUTE_HEADS, caption_labels
from sora_mini.dataset import batch_indices
from sora_mini.diffusion import DiffusionConfig, add_noise, shift_time
from sora_mini.dit import TimestepEmbedder

LOAD_HINT = "train one with `python -m sora_mini train-guidance`"


@dataclasses.dataclass(frozen=True)
class LatentClassifierConfig:
    in_channels: int = 8  # latent channels c
    latent_size: tuple[int, int] = (8, 8)  # (h, w): the flattened frame features fix it
    channels: tuple[int, int] = (32, 64)
    feature_dim: int = 128


class LatentClassifier(nnx.Module):
    """`LatentClassifier(config, rngs=...)(x_t [B, t, h, w, c], time [B])` -> logits per
    head, one per class (sigmoid: is some object of this class in the clip?)."""

    def __init__(self, config: LatentClassifierConfig = LatentClassifierConfig(), *, rngs: nnx.Rngs):
        self.config = config
        c1, c2 = config.channels
        D = config.feature_dim
        self.time_embed = TimestepEmbedder(D, dtype=jnp.float32, rngs=rngs)
        self.conv1 = nnx.Conv(config.in_channels, c1, (3, 3), padding="SAME", rngs=rngs)
        self.time1 = nnx.Linear(D, c1, rngs=rngs)
        self.norm1 = nnx.GroupNorm(c1, num_groups=8, rngs=rngs)
        self.conv2 = nnx.Conv(c1, c2, (3, 3), strides=(2, 2), padding="SAME", rngs=rngs)
        self.norm2 = nnx.GroupNorm(c2, num_groups=8, rngs=rngs)
        h, w = config.latent_size
        self.frame_dense = nnx.Linear(((h + 1) // 2) * ((w + 1) // 2) * c2, D, rngs=rngs)
        self.temporal = nnx.List([nnx.Conv(D, D, (3,), padding="SAME", rngs=rngs) for _ in range(2)])
        self.norm = nnx.LayerNorm(D, rngs=rngs)
        self.heads = nnx.Dict({k: nnx.Linear(D, len(v), rngs=rngs) for k, v in ATTRIBUTE_HEADS.items()})

    def __call__(self, x, time):
        c = self.config
        if x.ndim != 5 or x.shape[-1] != c.in_channels or x.shape[2:4] != c.latent_size:
            raise ValueError(f"x must be a latent [B, t, {c.latent_size[0]}, {c.latent_size[1]}, {c.in_channels}], "
                             f"got shape {x.shape}")
        B, T = x.shape[:2]
        temb = self.time_embed(jnp.broadcast_to(time, (B,)))  # [B, D]
        h = self.conv1(x.reshape(B * T, *x.shape[2:]))  # frames as a batch of images
        h = h + jnp.repeat(self.time1(temb), T, axis=0)[:, None, None]
        h = nnx.gelu(self.norm1(h))
        h = nnx.gelu(self.norm2(self.conv2(h)))  # [B*T, h/2, w/2, c2]
        f = nnx.gelu(self.frame_dense(h.reshape(B, T, -1)) + temb[:, None])  # [B, T, D]: where things are
        for conv in self.temporal:
            f = f + nnx.gelu(conv(f))  # how they move
        f = self.norm(f.mean(axis=1))
        return {k: head(f) for k, head in self.heads.items()}


def log_prob(model: LatentClassifier, x, time, labels: dict):
    """`[B]`: `sum log p(class present | x_t)` over the classes `labels` marks 1."""
    logits = model(x, time)
    return sum((jax.nn.log_sigmoid(logits[k]) * y).sum(-1) for k, y in labels.items())


def latent_classifier_loss(model: LatentClassifier, x, time, labels: dict):
    """Binary cross-entropy per class; `exact` accuracy per head: every class right."""
    logits = model(x, time)
    losses, acc = {}, {}
    for k, y in labels.items():
        losses[k] = optax.sigmoid_binary_cross_entropy(logits[k], y).sum(-1).mean()
        acc[f"{k}_acc"] = ((logits[k] > 0) == (y > 0.5)).all(-1).mean()
    return sum(losses.values()), acc


def guidance_times(key, batch: int, config: DiffusionConfig):
    """Training times for the classifier: uniform before the sampler's time shift, the
    times a sampler's grid visits (`sampling.time_grid`), so it is trained where it is used."""
    return shift_time(jax.random.uniform(key, (batch,), minval=0.0, maxval=1.0), config.time_shift)


@dataclasses.dataclass(frozen=True)
class GuidanceTrainConfig(loop.TrainConfig):
    """How `train_latent_classifier` trains: a latent cache, noised as the sampler sees it."""

    steps: int = 2000
    batch_size: int = 64
    log_every: int = 20
    latent_scale: float = 1.0  # the DiT's: the classifier reads the sampler's latents


def make_classifier_train_step(diffusion_config: DiffusionConfig, tc: GuidanceTrainConfig):
    @nnx.jit
    def step(model, optimizer, mean, logvar, labels, key):
        k_z, k_t, k_eps = jax.random.split(key, 3)
        z = (mean + jnp.exp(0.5 * logvar) * jax.random.normal(k_z, mean.shape)) * tc.latent_scale
        t = guidance_times(k_t, z.shape[0], diffusion_config)
        x = add_noise(z, jax.random.normal(k_eps, z.shape), t, diffusion_config)
        (loss, acc), grads = nnx.value_and_grad(latent_classifier_loss, has_aux=True)(model, x, t, labels)
        optimizer.update(model, grads)
        return {"loss": loss, **acc}

    return step


def train_latent_classifier(latents: dict, tc: GuidanceTrainConfig, diffusion_config: DiffusionConfig,
                            config: LatentClassifierConfig | None = None, progress: bool = True):
    """Train on a latent cache (`encode-latents`: `mean`, `logvar` `[N, t, h, w, c]`,
    `caption` `[N]`), noised as the sampler sees them, on the shared loop. Returns
    `(model, log)`."""
    mean, logvar = np.asarray(latents["mean"], np.float32), np.asarray(latents["logvar"], np.float32)
    labels = caption_labels(latents["caption"])
    config = config or LatentClassifierConfig(in_channels=mean.shape[-1], latent_size=mean.shape[2:4])
    model = LatentClassifier(config, rngs=nnx.Rngs(tc.seed))
    optimizer = nnx.Optimizer(model, loop.make_optimizer(tc), wrt=nnx.Param)
    step_fn = make_classifier_train_step(diffusion_config, tc)
    key = jax.random.key(tc.seed)

    def run_step(step):
        rows = batch_indices(len(mean), step, tc.batch_size, tc.seed)
        return step_fn(model, optimizer, mean[rows], logvar[rows], {k: v[rows] for k, v in labels.items()},
                       jax.random.fold_in(key, step))

    log = loop.run_loop(run_step, steps=tc.steps, desc="train-guidance", log_every=tc.log_every, log_first=True,
                        progress=progress)
    return model, log


@nnx.jit
def _accuracy_batch(model, x, t, labels):
    logits = model(x, t)
    return {k: ((logits[k] > 0) == (labels[k] > 0.5)).all(-1) for k in labels}


def accuracy_by_time(model: LatentClassifier, latents: dict, times=(0.0, 0.25, 0.5, 0.75, 0.9), *,
                     latent_scale: float, diffusion_config: DiffusionConfig, n: int = 512, seed: int = 0) -> dict:
    """Per head, the share of the first `n` clips of a cache (posterior means) noised to
    each time whose classes it gets all right: `{t: {"color": .., "shape": .., "motion": ..}}`."""
    z = jnp.asarray(np.asarray(latents["mean"][:n], np.float32) * latent_scale)
    labels = caption_labels(latents["caption"][:n])
    eps = jax.random.normal(jax.random.key(seed), z.shape)
    out = {}
    for t in times:
        tt = jnp.full((len(z),), t, jnp.float32)
        hits = _accuracy_batch(model, add_noise(z, eps, tt, diffusion_config), tt, labels)
        out[float(t)] = {k: float(np.mean(hits[k])) for k in labels}
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
# Loading: `<model>/guidance/` holds config.json, params/ and manifest.json beside the DiT
# (written by `export.export_classifier`); `TextToVideo.from_pretrained` loads it.


def load_latent_classifier(path: str) -> LatentClassifier:
    """The guidance classifier in `path`: a directory, or a shipped name (`"tiny"` is `tiny/guidance`)."""
    path = store.resolve_pretrained(path, "guidance", what="guidance classifier", hint=LOAD_HINT)
    return store.load_model(path, LatentClassifierConfig, lambda c: LatentClassifier(c, rngs=nnx.Rngs(0)),
                            what="guidance classifier", hint=LOAD_HINT)
