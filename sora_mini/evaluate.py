"""Measuring generated videos against the shapes world's ground truth (chapters 07 and 09).

The detector of `sora_mini.detect` reads colours, shapes, motions, counts and positions
back from pixels. Here it scores any `prompt -> video` function:

- prompt adherence (`adherence_clips`, `prompt_adherence`, `evaluate_adherence`): does the
  video show the colour, shape and direction its one-object prompt names?
- the world model (`world_clips`, `world_model_metrics`, `evaluate_world`): counts, sizes,
  permanence behind the pillar and physics, on every kind of clip, with the FVD.
The same function applied to the real clips gives the detector's ceiling.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from sora_mini import fvd
from sora_mini.dataset import SPLIT_SEED_OFFSETS, make_clip, split_config
from sora_mini.detect import (  # noqa: F401 (re-exported)
    DEFAULT_DETECTOR,
    UNIT_AREA,
    DetectedObject,
    Detection,
    DetectorConfig,
    detect,
    estimate_background,
    motion_direction,
    shape_templates,
    soft_iou,
    unmix,
)
from sora_mini.vae import reconstruct
from sora_mini.video import to_float, to_uint8
from sora_mini.world import COLORS, DIRECTIONS, GRAVITY, SHAPES, SHAPES_WORLD_PRESETS, SIZES, Clip, ShapesWorldConfig

# ----------------------------------------------------------------------------------------
# Prompt adherence: does the video show the colour, shape and direction the prompt names?


def adherence_clips(n: int, split: str = "test", config: ShapesWorldConfig | None = None):
    """The first `n` clips of a split (its seeds in order, continuing past the built split
    if needed) that hold exactly one object, moving in a straight line, with no pillar: their
    captions name one colour, one shape and one direction, which a video must then show."""
    config = split_config(config or SHAPES_WORLD_PRESETS["tiny"], split)
    offset, clips = SPLIT_SEED_OFFSETS[split], []
    seed = offset
    while len(clips) < n:
        clip = make_clip(config, seed)
        seed += 1
        if len(clip.objects) == 1 and clip.objects[0].motion == "linear" and clip.occluder is None:
            clips.append(clip)
    return clips


def _horizontal(direction: str) -> str:
    return "right" if direction.endswith("right") else "left" if direction.endswith("left") else ""


def prompt_adherence(videos: Sequence[np.ndarray], clips: Sequence[Clip],
                     config: DetectorConfig = DEFAULT_DETECTOR) -> dict:
    """Accuracies of what `detect` reads from `videos[i]` against the truth of `clips[i]`.

    The colour is right when the largest object read has the prompted colour (a video full
    of every colour does not pass). Shape and direction are read from the object of the
    prompted colour if there is one, else from the largest. `extra_objects_rate` is the
    share of videos that show more than the one object their prompt asked for."""
    if len(videos) != len(clips):
        raise ValueError(f"need one video per clip, got {len(videos)} videos for {len(clips)} clips")
    hits = {"color": [], "shape": [], "direction": [], "left_right": []}
    extra = []
    for video, clip in zip(videos, clips):
        truth = clip.objects[0]
        found = detect(video, config)
        hits["color"].append(bool(found.objects) and found.objects[0].color == truth.color)
        extra.append(len(found.objects) > 1)
        obj = found.find(truth.color) or (found.objects[0] if found.objects else None)
        hits["shape"].append(obj is not None and obj.shape == truth.shape)
        direction = obj.direction(config) if obj is not None else "unknown"
        hits["direction"].append(direction == truth.direction)
        if _horizontal(truth.direction):  # Sora's report: left/right confusion
            hits["left_right"].append(_horizontal(direction) == _horizontal(truth.direction))
    result = {f"{k}_accuracy": float(np.mean(v)) if v else float("nan") for k, v in hits.items()}
    result["extra_objects_rate"] = float(np.mean(extra))
    result["n"] = len(clips)
    return result


_MIRROR_WORDS = {"left": "right", "right": "left"}


def swap_left_right(caption: str) -> str:
    """The caption with every "left" and "right" exchanged."""
    return re.sub(r"\b(left|right)\b", lambda m: _MIRROR_WORDS[m.group(1)], caption)


# direction_control's clips: every mover starts on the side it moves away from.
LAYOUT_SHORTCUT_WORLD = SHAPES_WORLD_PRESETS["tiny"].replace(mover_start="behind")


def direction_control(generate: Callable[[str, int, np.ndarray], np.ndarray], n: int = 48, split: str = "test",
                      config: DetectorConfig = DEFAULT_DETECTOR, progress: bool = True) -> dict:
    """Does the prompt's direction word steer the motion, or the picture? The clips come
    from the world with `mover_start="behind"`: every mover starts on the side it moves
    away from, so the first frame implies the direction. Image to video from the first
    frame of a left- or right-moving clip, but prompted with left and right swapped:
    `follows_prompt` is the share of videos that go where the words say, `follows_layout`
    the share that go where the frame implies. A model that listens scores 1 and 0 (as
    far as the wall it starts beside lets it: fast movers bounce back sooner)."""
    clips = [c for c in adherence_clips(4 * n, split, LAYOUT_SHORTCUT_WORLD) if _horizontal(c.objects[0].direction)][:n]
    prompt, layout = [], []
    for i, clip in enumerate(tqdm(clips, desc="direction control", disable=not progress)):
        truth = _horizontal(clip.objects[0].direction)
        obj = detect(generate(swap_left_right(clip.caption), i, clip.video[0]), config).find(clip.objects[0].color)
        went = _horizontal(obj.direction(config)) if obj is not None else ""
        prompt.append(went == _MIRROR_WORDS[truth])
        layout.append(went == truth)
    return {"follows_prompt": float(np.mean(prompt)), "follows_layout": float(np.mean(layout)), "n": len(clips)}


CHANCE = {"color_accuracy": 1 / len(COLORS), "shape_accuracy": 1 / len(SHAPES),
          "direction_accuracy": 1 / len(DIRECTIONS), "left_right_accuracy": 1 / 2}


def vae_reconstructions(vae, videos: Sequence[np.ndarray], batch_size: int = 16) -> list[np.ndarray]:
    """Each video through the VAE and back (posterior mean): what the DiT could at best
    produce, since it only ever makes latents."""
    out = []
    for i in range(0, len(videos), batch_size):
        batch = to_float(np.stack(videos[i:i + batch_size]))
        out.extend(to_uint8(reconstruct(vae, batch)[0]))
    return out


def evaluate_adherence(generate: Callable[..., np.ndarray], n: int = 128, split: str = "test", *,
                       vae=None, progress: bool = True, first_frame: bool = False) -> dict:
    """Generate one video per adherence clip (prompt = its caption, seed = its index) and
    score it. Two ceilings come with it: the real clips (the detector's own accuracy) and,
    given the `vae`, the clips through the VAE (what latent generation can reach).
    `first_frame=True` scores image-to-video: `generate(prompt, seed, image)` also gets
    the clip's first frame, so only the motion is left to the prompt."""
    clips = adherence_clips(n, split)
    videos = [generate(c.caption, i, c.video[0]) if first_frame else generate(c.caption, i)
              for i, c in enumerate(tqdm(clips, desc="generate", disable=not progress))]
    result = {"model": prompt_adherence(videos, clips), "real": prompt_adherence([c.video for c in clips], clips)}
    if vae is not None:
        result["vae"] = prompt_adherence(vae_reconstructions(vae, [c.video for c in clips]), clips)
    return {**result, "chance": CHANCE, "n": n, "split": split}


# ----------------------------------------------------------------------------------------
# The world model (chapter 09): counts, sizes, permanence and physics, on every kind of
# clip the world makes, read back from the video and compared with the prompt's truth.
#
# Sora's report names its failures: objects that appear or vanish (the wolf pups whose
# number changes), left/right confusion, broken physics. Each has a measurement here.


def world_clips(n: int, split: str = "test", config: ShapesWorldConfig | None = None):
    """The first `n` clips of a split, of every kind (1-3 objects, falls, bounces, pillars)."""
    config = split_config(config or SHAPES_WORLD_PRESETS["tiny"], split)
    return [make_clip(config, SPLIT_SEED_OFFSETS[split] + i) for i in range(n)]


def object_radius(obj: DetectedObject) -> float:
    """The world's "radius" of an object, from its median area in the frames it shows."""
    area = np.median(obj.area[obj.present]) if obj.present.any() else 0.0
    return math.sqrt(area / UNIT_AREA[obj.shape])


def size_of(radius: float, height: int) -> str:
    """"small" or "large": the nearer of the world's two sizes (geometric midpoint)."""
    small, large = (SIZES[k] * height for k in ("small", "large"))
    return "small" if radius < math.sqrt(small * large) else "large"


def _near_pillar(x: float, radius: float, pillar) -> bool:
    return pillar is not None and pillar[0] - radius - 1.0 < x < pillar[1] + radius + 1.0


def permanence_events(obj: DetectedObject, pillar, radius: float) -> int:
    """How many times an object appears or vanishes where nothing explains it. Walls keep
    every object in view, so the only excuse is the pillar: an absence that starts or
    ends beside it is the object passing behind it."""
    present = obj.present
    events = 0
    t, T = 0, len(present)
    while t < T:
        if present[t]:
            t += 1
            continue
        end = t
        while end < T and not present[end]:
            end += 1
        before = obj.position[t - 1, 0] if t > 0 else None
        after = obj.position[end, 0] if end < T else None
        excused = any(x is not None and _near_pillar(x, radius, pillar) for x in (before, after))
        if not excused:
            events += (before is not None) + (after is not None)  # a vanishing, an appearance
        t = end
    return events


def one_step_errors(position, motion: str, radius: float, height: int, width: int, pillar=None) -> np.ndarray:
    """The world's physics predicts each position from the two before it: velocity kept,
    gravity added for a fall (`GRAVITY`), an elastic reflection at the walls. Returns
    the distances (pixels) between prediction and what the video shows, over the steps
    where the object is in view three frames running and clear of the pillar.

    The velocity into frame t is `p[t] - p[t-1]`, unless the object bounced on that step:
    then it is `p[t] - p'[t-1]` with `p'` the previous position mirrored in the wall. Per
    axis, the prediction takes whichever of the three (no bounce, either wall) fits."""
    p = np.asarray(position, np.float64)
    accel = np.array([0.0, GRAVITY * height]) if motion == "fall" else np.zeros(2)
    lo, hi = np.array([radius, radius]), np.array([width - radius, height - radius])
    errors = []
    for t in range(1, len(p) - 1):
        window = p[t - 1:t + 2]
        if np.isnan(window).any() or any(_near_pillar(x, radius, pillar) for x in window[:, 0]):
            continue
        previous = np.stack([p[t - 1], 2 * lo - p[t - 1], 2 * hi - p[t - 1]])  # [3 hypotheses, 2 axes]
        pred = p[t] + (p[t] - previous) + accel
        pred = np.where(pred < lo, 2 * lo - pred, np.where(pred > hi, 2 * hi - pred, pred))
        errors.append(float(np.linalg.norm(np.abs(pred - p[t + 1]).min(axis=0))))
    return np.asarray(errors, np.float32)


def world_model_metrics(videos: Sequence[np.ndarray], clips: Sequence[Clip],
                        config: DetectorConfig = DEFAULT_DETECTOR) -> dict:
    """What `detect` reads from `videos[i]` against the truth of `clips[i]` (whose caption
    was the prompt), for every prompted colour:

    - `color_recall`: the colour shows; `hallucination_rate`: videos showing a colour
      nobody asked for.
    - `count_accuracy`: the colour's number of objects (its most common count over the
      frames) is the prompted number; `count_stability`: share of frames at that count.
    - `shape_accuracy`, `size_accuracy`: a lone object's shape, and its size (small or
      large, read from its area); `direction_accuracy`, `left_right_accuracy`: a lone
      straight mover's direction (first half of the clip), and its horizontal part.
    - `permanence`: share of objects that never appear or vanish without the pillar to
      explain it; `reappearance`: objects that pass behind the pillar are back at the end.
    - physics: one-step errors of lone moving objects against the world's own dynamics
      (`physics_error_linear`, `physics_error_fall`: median pixels; `physics_ok`: share
      of steps within 1 pixel).
    """
    if len(videos) != len(clips):
        raise ValueError(f"need one video per clip, got {len(videos)} videos for {len(clips)} clips")
    rows = {k: [] for k in ("color_recall", "count_accuracy", "count_stability", "shape_accuracy", "size_accuracy",
                            "direction_accuracy", "left_right_accuracy", "permanence", "reappearance")}
    errors = {"linear": [], "fall": []}
    hallucinated = []
    for video, clip in zip(videos, clips):
        H, W = video.shape[1:3]
        found = detect(video, config)
        counts = Counter(o.color for o in clip.objects)
        hallucinated.append(any(o.color not in counts for o in found.objects))
        for color, n in counts.items():
            obj = found.find(color)
            rows["color_recall"].append(obj is not None)
            if obj is None:
                rows["count_accuracy"].append(False)
                continue
            mode = Counter(obj.count.tolist()).most_common(1)[0][0]
            rows["count_accuracy"].append(mode == n)
            rows["count_stability"].append(float(np.mean(obj.count == mode)))
            if n != 1:
                continue
            truth = next(o for o in clip.objects if o.color == color)
            radius = object_radius(obj)
            rows["shape_accuracy"].append(obj.shape == truth.shape)
            rows["size_accuracy"].append(size_of(radius, H) == truth.size)
            if truth.motion == "linear":
                direction = obj.direction(config)
                rows["direction_accuracy"].append(direction == truth.direction)
                if _horizontal(truth.direction):
                    rows["left_right_accuracy"].append(_horizontal(direction) == _horizontal(truth.direction))
            rows["permanence"].append(permanence_events(obj, found.pillar, radius) == 0)
            if truth.behind_pillar.any() and truth.visible[-1]:
                rows["reappearance"].append(bool(obj.present[-2:].any()))
            if truth.motion in errors:
                errors[truth.motion].append(one_step_errors(obj.position, truth.motion, radius, H, W, found.pillar))
    result = {k: float(np.mean(v)) if v else float("nan") for k, v in rows.items()}
    result["hallucination_rate"] = float(np.mean(hallucinated))
    for motion, errs in errors.items():
        e = np.concatenate(errs) if errs else np.zeros(0)
        result[f"physics_error_{motion}"] = float(np.median(e)) if len(e) else float("nan")
    steps = np.concatenate([np.concatenate(v) for v in errors.values() if v] or [np.zeros(0)])
    result["physics_ok"] = float(np.mean(steps < 1.0)) if len(steps) else float("nan")
    result["n"] = len(clips)
    return result


def evaluate_world(generate: Callable[[str, int], np.ndarray], n: int = 128, split: str = "test", *, vae=None,
                   classifier=None, progress: bool = True) -> dict:
    """`world_model_metrics` of one generated video per clip of `world_clips(n, split)`
    (prompt = its caption, seed = its index), with the real clips (the detector's
    ceiling) and, given the `vae`, their reconstructions. Given a `fvd.VideoClassifier`,
    also the shapes-world FVD of each set against the real clips. Its ceiling
    ("real") is a second, independent set of n real clips of the same split (the next n
    seeds): the distance two real samples of n clips are apart. The VAE's FVD is that
    second set's reconstructions, so it is measured on the same footing."""
    both = world_clips(2 * n, split)
    clips, others = both[:n], both[n:]
    real = [c.video for c in clips]
    videos = [generate(c.caption, i) for i, c in enumerate(tqdm(clips, desc=f"generate {split}",
                                                                 disable=not progress))]
    result = {"model": world_model_metrics(videos, clips), "real": world_model_metrics(real, clips)}
    if vae is not None:
        result["vae"] = world_model_metrics(vae_reconstructions(vae, real), clips)
    if classifier is not None:
        reference = fvd.features(classifier, real)
        other = [c.video for c in others]
        result["model"]["fvd"] = fvd.frechet_distance(fvd.features(classifier, videos), reference)
        result["real"]["fvd"] = fvd.frechet_distance(fvd.features(classifier, other), reference)
        if vae is not None:
            recon = vae_reconstructions(vae, other)
            result["vae"]["fvd"] = fvd.frechet_distance(fvd.features(classifier, recon), reference)
    return {**result, "n": n, "split": split}
