"""A Fréchet video distance for the shapes world (chapter 09).

FVD (Unterthiner et al. 2018) compares two sets of videos by the statistics of their
features under a pretrained video classifier (I3D on Kinetics-400): fit a Gaussian to each
set's features and measure the Fréchet (2-Wasserstein) distance between them,

    FD = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)).

Kinetics features know nothing of circles on navy backgrounds, so this world gets its own
classifier: a small 3D convnet trained on shapes-world clips to read what the world is
made of (the largest object's colour and shape, its motion, how many objects, the
background). Its penultimate layer is the feature space: it has to see colour, shape,
count and motion to do its job, so a generator that gets any of them wrong moves its
features away from the real clips'.

    video [B, T, H, W, 3] -> per frame: 3 x (Conv 3x3 stride 2, GroupNorm, GELU) -> [B, T, 4, 4, 64]
      -> flatten each frame (where things are) -> Dense -> [B, T, 128]
      -> 2 x (Conv over time, kernel 3) (how they move) -> mean over T -> features [B, 128]
      -> one linear head per property

Per-frame 2D convolutions and a temporal convolution on top (a "(2+1)D" network) rather
than 3D convolutions: the same receptive field, and an order of magnitude faster to train
on a CPU.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import optax
import scipy.linalg
from flax import nnx

from sora_mini import loop, store
from sora_mini.captions import ATTRIBUTE_HEADS
from sora_mini.dataset import SPLIT_SEED_OFFSETS, make_clip, split_config, stream_seeds
from sora_mini.video import to_float
from sora_mini.world import BACKGROUNDS, SHAPES_WORLD_PRESETS, SIZES, Clip, ShapesWorldConfig

# What the classifier learns to read, with its classes: what a caption names (colour,
# shape, motion: the eight directions, "fall", "still"), and how many objects, on what.
CLIP_HEADS = {**ATTRIBUTE_HEADS, "count": (1, 2, 3), "background": tuple(BACKGROUNDS)}
LOAD_HINT = "train one with `python -m sora_mini train-fvd-classifier --out runs/classifier`"


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    channels: tuple[int, ...] = (16, 32, 64)  # one strided Conv3d stage each
    feature_dim: int = 128


@dataclasses.dataclass(frozen=True)
class ClassifierTrainConfig(loop.TrainConfig):
    """How `train_classifier` trains: a fresh stream of training-split clips
    (`dataset.stream_seeds`), AdamW."""

    steps: int = 1500
    learning_rate: float = 2e-3
    warmup_steps: int = 50
    log_every: int = 20


def clip_labels(clip: Clip) -> dict[str, int]:
    """The classes of one clip: the largest object's colour, shape and motion, the number
    of objects, the background."""
    first = max(clip.objects, key=lambda o: SIZES[o.size])
    motion = first.direction if first.motion == "linear" else first.motion
    return {"color": CLIP_HEADS["color"].index(first.color), "shape": CLIP_HEADS["shape"].index(first.shape),
            "motion": CLIP_HEADS["motion"].index(motion), "count": len(clip.objects) - 1,
            "background": CLIP_HEADS["background"].index(clip.background)}


class VideoClassifier(nnx.Module):
    def __init__(self, config: ClassifierConfig = ClassifierConfig(), *, rngs: nnx.Rngs):
        self.config = config
        convs, norms, cin = [], [], 3
        for c in config.channels:
            convs.append(nnx.Conv(cin, c, (3, 3), strides=(2, 2), padding="SAME", rngs=rngs))
            norms.append(nnx.GroupNorm(c, num_groups=8, rngs=rngs))
            cin = c
        self.convs, self.norms = nnx.List(convs), nnx.List(norms)
        side = 32 // 2 ** len(config.channels)  # the tiny world's 32x32 frames
        self.frame_dense = nnx.Linear(side * side * cin, config.feature_dim, rngs=rngs)
        D = config.feature_dim
        self.temporal = nnx.List([nnx.Conv(D, D, (3,), padding="SAME", rngs=rngs) for _ in range(2)])
        self.heads = nnx.Dict({k: nnx.Linear(D, len(v), rngs=rngs) for k, v in CLIP_HEADS.items()})

    def features(self, video):
        """`float [B, T, 32, 32, 3]` in [-1, 1] -> `[B, feature_dim]`."""
        B, T = video.shape[:2]
        x = video.reshape(B * T, *video.shape[2:])  # frames as a batch of images
        for conv, norm in zip(self.convs, self.norms):
            x = nnx.gelu(norm(conv(x)))
        x = nnx.gelu(self.frame_dense(x.reshape(B, T, -1)))  # [B, T, D]
        for conv in self.temporal:
            x = x + nnx.gelu(conv(x))
        return x.mean(axis=1)

    def __call__(self, video):
        f = self.features(video)
        return {k: head(f) for k, head in self.heads.items()}


def video_classifier_loss(model: VideoClassifier, video, labels: dict):
    """Softmax cross-entropy summed over the heads, and each head's accuracy."""
    logits = model(video)
    losses = {k: optax.softmax_cross_entropy_with_integer_labels(logits[k], labels[k]).mean() for k in CLIP_HEADS}
    accuracy = {f"{k}_acc": (logits[k].argmax(-1) == labels[k]).mean() for k in CLIP_HEADS}
    return sum(losses.values()), accuracy


@nnx.jit
def _train_step(model, optimizer, video, labels):
    (loss, acc), grads = nnx.value_and_grad(video_classifier_loss, has_aux=True)(model, video, labels)
    optimizer.update(model, grads)
    return {"loss": loss, **acc}


def labelled_batch(world: ShapesWorldConfig, seeds) -> tuple[np.ndarray, dict]:
    """`(float32 videos [B, T, H, W, 3], {head: int [B]})` of the clips with these seeds."""
    clips = [make_clip(world, int(s)) for s in seeds]
    video = to_float(np.stack([c.video for c in clips]))
    labels = {k: np.asarray([clip_labels(c)[k] for c in clips]) for k in CLIP_HEADS}
    return video, labels


def train_classifier(tc: ClassifierTrainConfig = ClassifierTrainConfig(), world: ShapesWorldConfig | None = None,
                     progress: bool = True) -> VideoClassifier:
    """Train on a fresh stream of training-split clips on the shared loop."""
    world = split_config(world or SHAPES_WORLD_PRESETS["tiny"], "train")
    model = VideoClassifier(rngs=nnx.Rngs(tc.seed))
    optimizer = nnx.Optimizer(model, loop.make_optimizer(tc), wrt=nnx.Param)

    def run_step(step):
        video, labels = labelled_batch(world, stream_seeds(step, tc.batch_size))
        return _train_step(model, optimizer, jnp.asarray(video), labels)

    loop.run_loop(run_step, steps=tc.steps, desc="train-fvd-classifier", log_every=tc.log_every, progress=progress)
    return model


def classifier_accuracy(model: VideoClassifier, n: int = 256, split: str = "test", batch_size: int = 64) -> dict:
    world = split_config(SHAPES_WORLD_PRESETS["tiny"], split)
    offset = SPLIT_SEED_OFFSETS[split]
    hits = {k: [] for k in CLIP_HEADS}
    for i in range(0, n, batch_size):
        video, labels = labelled_batch(world, range(offset + i, offset + min(n, i + batch_size)))
        logits = _logits(model, jnp.asarray(video))
        for k in CLIP_HEADS:
            hits[k].extend((np.asarray(logits[k]).argmax(-1) == labels[k]).tolist())
    return {k: float(np.mean(v)) for k, v in hits.items()}


@nnx.jit
def _logits(model, video):
    return model(video)


@nnx.jit
def _features(model, video):
    return model.features(video)


def features(model: VideoClassifier, videos, batch_size: int = 64) -> np.ndarray:
    """`uint8 [N, T, H, W, 3]` (or a list of such videos) -> `float64 [N, feature_dim]`."""
    videos = np.asarray(videos)
    if videos.ndim != 5 or videos.dtype != np.uint8:
        raise ValueError(f"expected uint8 videos [N, T, H, W, 3], got {videos.dtype} {videos.shape}")
    out = [np.asarray(_features(model, jnp.asarray(to_float(videos[i:i + batch_size]))))
           for i in range(0, len(videos), batch_size)]
    return np.concatenate(out).astype(np.float64)


def frechet_distance(a, b) -> float:
    """Fréchet distance between Gaussians fitted to feature sets `a [N, D]` and `b [M, D]`."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two feature sets [N >= 2, D] of the same D, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = (np.atleast_2d(np.cov(x, rowvar=False, ddof=1)) for x in (a, b))
    covmean = scipy.linalg.sqrtm(cov_a @ cov_b)
    if np.iscomplexobj(covmean):  # numerical noise makes tiny imaginary parts
        covmean = covmean.real
    return float(max(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2.0 * covmean), 0.0))


def fvd(model: VideoClassifier, videos_a, videos_b) -> float:
    """The shapes world's FVD between two sets of `uint8 [T, H, W, 3]` videos."""
    return frechet_distance(features(model, videos_a), features(model, videos_b))


# ----------------------------------------------------------------------------------------
# Loading: the shipped `"classifier"` (`sora_mini/pretrained/classifier/`), or any directory
# written by `export.export_classifier`.


def load_classifier(path: str = "classifier") -> VideoClassifier:
    """The video classifier in `path`: a directory, or a shipped name (`"classifier"`)."""
    path = store.resolve_pretrained(path, what="video classifier", hint=LOAD_HINT)
    return store.load_model(path, ClassifierConfig, lambda c: VideoClassifier(c, rngs=nnx.Rngs(0)),
                            what="video classifier", hint=LOAD_HINT)
