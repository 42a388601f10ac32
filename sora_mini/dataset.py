"""Clips, splits and batches: the shapes world as training data.

`make_clip` turns (config, seed) into a captioned `Clip`; the splits draw their clips from
disjoint seed ranges and are built into Hugging Face `datasets` (saved to disk or loaded
from the hub). One seeded order, `batch_indices`, decides which examples each training
step sees, for every loop of the package: `iterate_batches` over a stored dataset, the
latent-cache loops, and `world_batch`, which draws step `s`'s clips fresh from the world.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import queue
import re
import threading
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from sora_mini import captions as captions_lib
from sora_mini import world as world_lib
from sora_mini.captions import write_caption
from sora_mini.video import to_float
from sora_mini.world import Clip, ShapesWorldConfig, draw_scene

# ----------------------------------------------------------------------------------------
# The clip generator.


def make_clip(config: ShapesWorldConfig, seed: int) -> Clip:
    """Draw, simulate, render and caption one clip. Deterministic in (config, seed)."""
    if not isinstance(config, ShapesWorldConfig):
        raise TypeError(f"config must be a ShapesWorldConfig, got {type(config).__name__}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    scene = draw_scene(config, rng)
    caption = write_caption(rng, scene.objects, scene.background)
    return Clip(video=scene.video, caption=caption, objects=scene.objects, background=scene.background,
                occluder=scene.occluder, seed=int(seed))


# ----------------------------------------------------------------------------------------
# Hugging Face `datasets`: splits by seed range, saved to and loaded from disk (or the hub).

# Each split draws clip seeds from its own range, so splits never share a clip.
SPLIT_SEED_OFFSETS = {"train": 0, "validation": 10_000_000, "test": 20_000_000,
                      "compositional": 30_000_000}
DEFAULT_SPLIT_SIZES = {"train": 10_000, "validation": 500, "test": 500, "compositional": 500}
# The code a clip depends on: part of a built split's cache key (`_config_hash`).
_CLIP_SOURCES = (world_lib.__file__, captions_lib.__file__, __file__)


def split_config(config: ShapesWorldConfig, split: str) -> ShapesWorldConfig:
    """The config a split is drawn from: the compositional split holds the held-out pairs."""
    if split not in SPLIT_SEED_OFFSETS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLIT_SEED_OFFSETS)}")
    return config.replace(holdout="only" if split == "compositional" else "exclude")


def dataset_features(config: ShapesWorldConfig):
    """The `datasets.Features` schema of a shapes-world split (fixed T, H, W)."""
    from datasets import Array2D, Array4D, Features, List, Value

    T = config.num_frames
    return Features({
        "seed": Value("int64"),
        "video": Array4D(shape=(T, config.height, config.width, 3), dtype="uint8"),
        "caption": Value("string"),
        "background": Value("string"),
        "occluder": List(Value("float32"), length=4),  # pillar (x0, y0, x1, y1); -1s if none
        "objects": List({
            "shape": Value("string"),
            "color": Value("string"),
            "size": Value("string"),
            "motion": Value("string"),
            "direction": Value("string"),
            "speed": Value("string"),
            "position": Array2D(shape=(T, 2), dtype="float32"),
            "velocity": Array2D(shape=(T, 2), dtype="float32"),
            "visible": List(Value("bool"), length=T),
            "visible_fraction": List(Value("float32"), length=T),
            "bounced": List(Value("bool"), length=T),
            "behind_pillar": List(Value("bool"), length=T),
        }),
    })


def clip_to_example(clip: Clip) -> dict:
    """A `Clip` as one row of the dataset schema."""
    return {
        "seed": clip.seed,
        "video": clip.video,
        "caption": clip.caption,
        "background": clip.background,
        "occluder": list(clip.occluder) if clip.occluder is not None else [-1.0] * 4,
        "objects": [dataclasses.asdict(o) for o in clip.objects],
    }


def _generate_examples(config: ShapesWorldConfig, seeds: Sequence[int]):
    for seed in seeds:
        yield clip_to_example(make_clip(config, int(seed)))


def build_split(config: ShapesWorldConfig, split: str, size: int, *, num_proc: int | None = None,
                progress: bool = True):
    """Generate `size` clips of one split as a `datasets.Dataset` (Arrow files in the HF
    cache, keyed on the config, the split's seeds and the source of the clip code)."""
    import datasets

    if size <= 0:
        raise ValueError(f"split size must be positive, got {size} for {split!r}")
    cfg = split_config(config, split)
    offset = SPLIT_SEED_OFFSETS[split]
    seeds = list(range(offset, offset + size))
    with _progress_bars(progress):
        return datasets.Dataset.from_generator(
            _generate_examples, features=dataset_features(cfg),
            gen_kwargs={"config": cfg, "seeds": seeds},
            num_proc=num_proc if num_proc and num_proc > 1 and size >= 2 * num_proc else None,
            split=datasets.NamedSplit(split), keep_in_memory=False,
            config_name=f"shapes-world-{_config_hash(cfg)}-{offset}-{size}",
        )


@contextlib.contextmanager
def _progress_bars(enabled: bool):
    """Turn the `datasets` progress bars on or off for a block, then restore them."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    (datasets.enable_progress_bars if enabled else datasets.disable_progress_bars)()
    try:
        yield
    finally:
        (datasets.enable_progress_bars if was_enabled else datasets.disable_progress_bars)()


def _config_hash(config: ShapesWorldConfig) -> str:
    """A short key for the config and the code that draws its clips."""
    # The source of the world, the captions and this module is part of the key: edit the
    # world and old caches go stale.
    source = b""
    for path in _CLIP_SOURCES:
        with open(path, "rb") as f:
            source += f.read()
    key = json.dumps(dataclasses.asdict(config), sort_keys=True).encode() + source
    return hashlib.sha1(key).hexdigest()[:12]


def build_dataset(config: ShapesWorldConfig, path: str | os.PathLike | None = None,
                  sizes: Mapping[str, int] | None = None, *, num_proc: int | None = None,
                  progress: bool = True):
    """Build every split as a `datasets.DatasetDict`; save it to `path` when given.

    The config is saved beside the data (`shapes_world_config.json`) so a loader can tell
    what it reads. With a `path`, the returned dataset reads from there."""
    import datasets

    sizes = dict(DEFAULT_SPLIT_SIZES if sizes is None else sizes)
    dd = datasets.DatasetDict({
        split: build_split(config, split, size, num_proc=num_proc, progress=progress)
        for split, size in sizes.items()})
    if path is not None:
        path = os.fspath(path)
        with _progress_bars(progress):
            dd.save_to_disk(path)
        with open(os.path.join(path, "shapes_world_config.json"), "w") as f:
            json.dump(dataclasses.asdict(config), f, indent=2)
        # The generator's Arrow files in the HF cache are now a second copy: drop them.
        dd.cleanup_cache_files()
        dd = datasets.load_from_disk(path)
    return dd


def load_config(path: str | os.PathLike) -> ShapesWorldConfig:
    """The `ShapesWorldConfig` saved beside a dataset built by `build_dataset`."""
    file = os.path.join(os.fspath(path), "shapes_world_config.json")
    if not os.path.exists(file):
        raise FileNotFoundError(
            f"no shapes_world_config.json in {path}: not a dataset built by build_dataset")
    with open(file) as f:
        raw = json.load(f)
    for key in ("shapes", "colors", "backgrounds"):
        raw[key] = tuple(raw[key])
    raw["holdout_pairs"] = tuple(tuple(p) for p in raw["holdout_pairs"])
    raw.setdefault("mover_start", "behind")  # the only rule before the field existed
    return ShapesWorldConfig(**raw)


def load_shapes_world(source: str | os.PathLike, split: str | None = None):
    """Load the shapes world from a local directory (`build_dataset`'s output) or, when
    `source` is not a local path, from the Hugging Face hub (a repo id with the same schema).

    Returns a `DatasetDict` (or one split's `Dataset`) in NumPy format. Note that the NumPy
    formatter of `datasets` widens integers to int64: `row["video"]` is `[T, H, W, 3]`
    int64 with values in 0..255 (`.astype(np.uint8)` restores the stored dtype), while
    `iterate_batches` hands out `uint8 [B, T, H, W, 3]` directly."""
    import datasets

    source = os.fspath(source)
    if os.path.isdir(source):
        ds = datasets.load_from_disk(source)
    elif (re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not source.startswith(".")
          and not os.path.isdir(source.split("/")[0])):  # "data/shapes_world" is local, not a hub id
        try:  # an "owner/name" hub id: only reachable online
            ds = datasets.load_dataset(source)
        except Exception as e:
            raise FileNotFoundError(
                f"{source!r} is neither a local dataset directory nor a loadable Hugging Face "
                f"hub dataset ({type(e).__name__}: {e}); build one with "
                "`python -m sora_mini build-data --out DIR`") from e
    else:
        raise FileNotFoundError(f"no dataset directory at {source!r}; build one with "
                                "`python -m sora_mini build-data --out DIR`")
    if split is not None:
        if split not in ds:
            raise ValueError(f"split {split!r} not in dataset; it has {list(ds)}")
        ds = ds[split]
    return ds.with_format("numpy")


# ----------------------------------------------------------------------------------------
# Batches for training: one seeded order for every loop, batch axis first.


def batch_indices(n: int, step: int, batch_size: int, seed: int) -> np.ndarray:
    """The rows (out of `n`) of step `step`: epochs of a seeded permutation (epoch `e` is
    `np.random.default_rng([seed, e]).permutation(n)`), one after another, cut into batches
    that run on across epoch boundaries. A function of the step alone, so a resumed run
    draws exactly the batches an uninterrupted one would."""
    start = step * batch_size
    rows = []
    while len(rows) < batch_size:
        epoch, offset = divmod(start + len(rows), n)
        perm = np.random.default_rng([seed, epoch]).permutation(n)
        rows.extend(perm[offset:offset + batch_size - len(rows)].tolist())
    return np.asarray(rows)


def stream_seeds(step: int, batch_size: int) -> range:
    """The clip seeds of step `step` of an endless stream of training clips: `s*B .. s*B + B-1`
    (inside the train seed range). The VAE and the FVD classifier train on such streams."""
    return range(step * batch_size, (step + 1) * batch_size)


def world_batch(world: ShapesWorldConfig, step: int, batch_size: int,
                crop_size: int | None = None) -> np.ndarray:
    """`float32 [B, T, H, W, 3]` in [-1, 1]: the training clips of step `step`, each cut to a
    random `crop_size` square (the crop offsets, too, are a function of `step`). The world
    is an endless dataset: step `s` holds the clips of seeds `s*B .. s*B + B-1`."""
    if crop_size is not None and not 0 < crop_size <= min(world.height, world.width):
        raise ValueError(f"crop_size must lie in 1..{min(world.height, world.width)}, got {crop_size}")
    video = np.stack([make_clip(world, s).video for s in stream_seeds(step, batch_size)])
    if crop_size is not None:
        video = _random_crops(video, crop_size, step)
    return to_float(video)


def _random_crops(video: np.ndarray, crop_size: int, step: int) -> np.ndarray:
    """One seeded `crop_size` square window per clip of `video [B, T, H, W, 3]`."""
    batch_size, _, height, width = video.shape[:4]
    rng = np.random.default_rng([step, 7])
    ys = rng.integers(0, height - crop_size + 1, batch_size)
    xs = rng.integers(0, width - crop_size + 1, batch_size)
    return np.stack([v[:, y:y + crop_size, x:x + crop_size] for v, y, x in zip(video, ys, xs)])


def iterate_batches(dataset, batch_size: int, *, seed: int = 0, columns: Sequence[str] = ("video", "caption"),
                    num_epochs: int | None = None, drop_remainder: bool = True,
                    prefetch: int = 2) -> Iterator[dict[str, np.ndarray]]:
    """Yield `{column: array}` batches with the batch axis first, ready for
    `jax.device_put(batch, sharding)`; videos come as `uint8 [B, T, H, W, 3]`.

    `dataset` is anything with `len()` and `dataset[list_of_indices] -> {column: values}`
    (a `datasets.Dataset` in NumPy format, or a dict of arrays). Batch `s` holds the rows
    `batch_indices(n, s, batch_size, seed)`, the order every training loop of the package
    uses: epoch `e` is shuffled by `np.random.default_rng([seed, e])`, so the order is the
    same on every run and every host. `num_epochs` passes over the data make
    `num_epochs * n // batch_size` full batches (a batch may run on from one epoch into the
    next; when `batch_size` divides `n` each epoch is whole batches); `drop_remainder=False`
    adds the short batch that is left at the end. `prefetch > 0` reads that many batches
    ahead on a background thread (in-process: no worker processes, which hung on these
    machines)."""
    # Checked here, eagerly: this function is not a generator, the one it returns is.
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    dataset = _select_columns(dataset, columns)
    n = len(next(iter(dataset.values()))) if isinstance(dataset, Mapping) else len(dataset)
    if drop_remainder and n < batch_size:
        raise ValueError(f"dataset has {n} examples, fewer than one batch of {batch_size}")
    take = _row_reader(dataset, columns)

    def batches():
        if n == 0:
            return
        full = None if num_epochs is None else num_epochs * n // batch_size
        step = 0
        while full is None or step < full:
            yield take(batch_indices(n, step, batch_size, seed))
            step += 1
        rest = num_epochs * n - full * batch_size
        if rest and not drop_remainder:
            yield take(batch_indices(n, step, batch_size, seed)[:rest])

    return batches() if prefetch <= 0 else _prefetch(batches(), prefetch)


def _select_columns(dataset, columns: Sequence[str]):
    """`dataset` cut down to `columns`, checked: one HF split, or a mapping of arrays."""
    if hasattr(dataset, "column_names") and isinstance(dataset.column_names, Mapping):
        raise ValueError(f"got a DatasetDict with splits {list(dataset)}; pass one split, e.g. dataset['train']")
    if hasattr(dataset, "select_columns"):  # an HF Dataset: never decode columns we don't hand out
        missing = [c for c in columns if c not in dataset.column_names]
        if missing:
            raise ValueError(f"columns {missing} not in the dataset; it has {dataset.column_names}")
        return dataset.select_columns(list(columns))
    if isinstance(dataset, Mapping):  # arrays (or an .npz): load each column once
        missing = [c for c in columns if c not in dataset]
        if missing:
            raise ValueError(f"columns {missing} not in the arrays; they have {list(dataset)}")
        return {c: np.asarray(dataset[c]) for c in columns}
    return dataset


def _row_reader(dataset, columns: Sequence[str]):
    """`take(index) -> {column: array}`: the rows `index` of `dataset`, batch axis first."""
    # HF's NumPy formatter widens every integer column to int64; give each column back the
    # dtype its schema stores (uint8 for video: 8x less memory and host-to-device traffic).
    features = getattr(dataset, "features", None) or {}
    dtypes = {c: np.dtype(features[c].dtype) for c in columns
              if c in features and getattr(features[c], "dtype", None) not in (None, "string")}

    def take(index: np.ndarray) -> dict[str, np.ndarray]:
        if isinstance(dataset, Mapping):
            return {c: dataset[c][index] for c in columns}
        rows = dataset[index.tolist()]
        return {c: np.asarray(rows[c], dtype=dtypes.get(c)) for c in columns}

    return take


def _prefetch(iterator, size: int):
    """Run `iterator` on a daemon thread, `size` items ahead; re-raise its errors here."""
    q: queue.Queue = queue.Queue(maxsize=size)
    done, stop = object(), threading.Event()

    def put(item) -> bool:
        """Block until there is room, unless the consumer has gone."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def worker():
        try:
            for item in iterator:
                if not put(item):
                    return
            put(done)
        except BaseException as e:  # hand the error to the consumer
            put(e)
        finally:
            iterator.close()

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
