"""Reading the shapes world back from pixels (chapters 07 and 09).

A generated video has no ground truth, but the world it imitates is simple enough to read
back: a flat background, a few flat-coloured shapes, a brown pillar. So a detector made of
plain NumPy can say which colours, shapes and motions a video shows, and compare them
with what the prompt asked for.

    video uint8 [T, H, W, 3]
      -> background: the palette background nearest the video's median colour
      -> unmixing: each pixel = background + alpha * (colour - background), for the palette
         colour that explains it best; anti-aliased or blurred edges get 0 < alpha < 1
      -> per colour and frame, connected regions of alpha > 1/4: area (sum of alpha) and
         centroid (alpha-weighted), the largest region being the colour's object
      -> shape: the circle, square or triangle template (rendered with `signed_distance`
         at the object's centroid, scaled to its area) with the best soft IoU
      -> motion: the least-squares velocity of the centroid over the first half of the clip,
         snapped to the nearest of the world's eight directions (or "still")

`detect` runs it on one video; `sora_mini.evaluate` scores generated videos with it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage

from sora_mini.video import check_video  # uint8 [T, H, W, 3], or a ValueError that says so
from sora_mini.world import BACKGROUNDS, COLORS, DIRECTIONS, PILLAR_COLOR, SHAPES, coverage, signed_distance

# Colours an object region can be unmixed into: the object palette, then the pillar (so a
# brown pillar is never read as a dark orange object).
_NAMES = (*COLORS, "pillar")
_RGB = np.array([*COLORS.values(), PILLAR_COLOR], np.float32)  # [K, 3]
_EIGHT = np.array([DIRECTIONS[d] for d in DIRECTIONS], np.float32)  # [8, 2] unit (dx, dy)


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
    min_alpha: float = 0.25  # a pixel belongs to a colour when at least this much of it is that colour
    max_residual: float = 48.0  # ... and the mixture explains it to within this RGB distance
    min_area: float = 4.0  # smaller regions (in pixels of alpha) are noise
    still_speed: float = 0.2  # pixels per frame: slower than this is "still" (the slowest mover does 0.48)


DEFAULT_DETECTOR = DetectorConfig()


@dataclasses.dataclass(frozen=True)
class DetectedObject:
    """The largest region of one colour in each frame of a video."""

    color: str
    shape: str  # the best-fitting template over the frames it is fully in view
    shape_scores: dict[str, float]  # mean soft IoU with each template
    area: np.ndarray  # float32 [T], pixels (0 where absent)
    position: np.ndarray  # float32 [T, 2], centroid (x, y) in pixels, NaN where absent
    count: np.ndarray  # int [T], regions of this colour in the frame (the count read back)

    @property
    def present(self) -> np.ndarray:
        return ~np.isnan(self.position[:, 0])

    def direction(self, config: DetectorConfig = DEFAULT_DETECTOR) -> str:
        return motion_direction(self.position, config)


@dataclasses.dataclass(frozen=True)
class Detection:
    background: str
    objects: tuple[DetectedObject, ...]  # largest mean area first
    pillar: tuple[float, float] | None = None  # the occluder's columns (x0, x1) in pixels, if one shows

    def find(self, color: str) -> DetectedObject | None:
        return next((o for o in self.objects if o.color == color), None)


def estimate_background(video) -> str:
    """The palette background nearest the median pixel: objects and the pillar cover far
    less than half of every clip of the world."""
    median = np.median(check_video(video).reshape(-1, 3).astype(np.float32), axis=0)
    names = list(BACKGROUNDS)
    rgb = np.array([BACKGROUNDS[n] for n in names], np.float32)
    return names[int(np.argmin(((rgb - median) ** 2).sum(-1)))]


def unmix(video, background: str, config: DetectorConfig = DEFAULT_DETECTOR):
    """Per pixel, the palette colour k and amount alpha with pixel ~ bg + alpha (c_k - bg).

    Returns labels int [T, H, W] (index into `_NAMES`, -1 for background) and alpha
    float32 [T, H, W]."""
    p = check_video(video).astype(np.float32) - np.asarray(BACKGROUNDS[background], np.float32)
    d = _RGB - np.asarray(BACKGROUNDS[background], np.float32)  # [K, 3]
    # Projection of each pixel on each colour's line from the background: [T, H, W, K].
    alpha = np.clip(np.einsum("thwc,kc->thwk", p, d) / (d * d).sum(-1), 0.0, 1.0)
    residual = np.linalg.norm(p[..., None, :] - alpha[..., None] * d, axis=-1)
    residual = np.where(alpha >= config.min_alpha, residual, np.inf)
    # The pillar is static and full-height: only columns that are mostly pillar over the
    # whole clip may hold it (half-covered orange or red edges lie near its colour too).
    pillar = _NAMES.index("pillar")
    pillar_columns = (np.argmin(residual, axis=-1) == pillar).mean(axis=(0, 1)) > 0.5  # [W]
    residual[..., ~pillar_columns, pillar] = np.inf
    k = np.argmin(residual, axis=-1)
    best = np.take_along_axis(residual, k[..., None], -1)[..., 0]
    labels = np.where(best <= config.max_residual, k, -1)
    return labels, np.where(labels >= 0, np.take_along_axis(alpha, k[..., None], -1)[..., 0], 0.0).astype(np.float32)


def shape_templates(centre, area: float, height: int, width: int) -> dict[str, np.ndarray]:
    """Anti-aliased coverage [H, W] of each shape at `centre` (x, y), scaled to `area`
    pixels. The world's shapes of "radius" r have areas pi r^2 (circle, and the square
    of half-side 0.886 r) and 3 sqrt(3)/4 (1.4 r)^2 (the triangle)."""
    xs = (np.arange(width, dtype=np.float32) + 0.5)[None, None, :]
    ys = (np.arange(height, dtype=np.float32) + 0.5)[None, :, None]
    centre = np.asarray(centre, np.float32)[None]
    return {s: coverage(signed_distance(s, math.sqrt(area / a), centre, xs, ys))[0]
            for s, a in UNIT_AREA.items()}


# Area of each shape of "radius" 1 as the world draws it.
UNIT_AREA = {"circle": math.pi, "square": (2 * 0.886) ** 2, "triangle": 3 * math.sqrt(3) / 4 * 1.4**2}


def soft_iou(a, b) -> float:
    return float(np.minimum(a, b).sum() / max(np.maximum(a, b).sum(), 1e-6))


def motion_direction(position, config: DetectorConfig = DEFAULT_DETECTOR) -> str:
    """One of the eight `DIRECTIONS`, or "still", from a centroid track [T, 2]: the
    least-squares velocity over the first half of the clip (a fast mover may bounce off a
    wall later; the world leaves every mover room to go its way for that long)."""
    position = np.asarray(position, np.float32)
    t = np.arange(len(position))[: len(position) // 2 + 1]
    xy = position[: len(t)]
    ok = ~np.isnan(xy[:, 0])
    if ok.sum() < 3:
        return "unknown"
    t, xy = t[ok], xy[ok]
    velocity = np.polyfit(t, xy, 1)[0]  # [2] pixels per frame
    if np.linalg.norm(velocity) < config.still_speed:
        return "still"
    return list(DIRECTIONS)[int(np.argmax(_EIGHT @ velocity))]


def detect(video, config: DetectorConfig = DEFAULT_DETECTOR) -> Detection:
    """Read the background and one object per colour (its largest region in each frame)."""
    video = check_video(video)
    T, H, W, _ = video.shape
    background = estimate_background(video)
    labels, alpha = unmix(video, background, config)
    pillar = labels == _NAMES.index("pillar")
    near_pillar = ndimage.binary_dilation(pillar, structure=np.ones((1, 3, 3), bool))
    objects = []
    for k, color in enumerate(_NAMES[:-1]):
        a = np.where(labels == k, alpha, 0.0)
        if a.sum() < config.min_area:
            continue
        area = np.zeros(T, np.float32)
        position = np.full((T, 2), np.nan, np.float32)
        count = np.zeros(T, int)
        scores, weights = {s: 0.0 for s in SHAPES}, 0.0
        for t in range(T):
            regions, n = ndimage.label(a[t] > 0, structure=np.ones((3, 3), bool))
            if n == 0:
                continue
            sizes = ndimage.sum(a[t], regions, index=np.arange(1, n + 1))
            count[t] = int((sizes >= config.min_area).sum())
            if sizes.max() < config.min_area:
                continue
            region = regions == 1 + int(np.argmax(sizes))
            w = np.where(region, a[t], 0.0)
            area[t] = w.sum()
            position[t] = ((w * (np.arange(W) + 0.5)).sum() / area[t], (w.T * (np.arange(H) + 0.5)).sum() / area[t])
            # Shape, weighted by area, from frames where the object is whole: not cut by the
            # frame's edge (only anti-aliased fringe there) and clear of the pillar. If it never
            # is, every frame counts.
            edge = np.concatenate([w[0], w[-1], w[:, 0], w[:, -1]]).max()
            weight = area[t] * (1.0 if edge < 0.5 and not near_pillar[t][region].any() else 1e-3)
            for s, template in shape_templates(position[t], area[t], H, W).items():
                scores[s] += weight * soft_iou(w, template)
            weights += weight
        if not area.any():
            continue
        scores = {s: v / weights for s, v in scores.items()}
        shape = max(scores, key=scores.get)
        objects.append(DetectedObject(color, shape, scores, area, position, count))
    objects.sort(key=lambda o: -o.area.mean())
    columns = np.flatnonzero(pillar.mean(axis=(0, 1)) > 0.5)
    span = (float(columns.min()), float(columns.max() + 1)) if len(columns) else None
    return Detection(background, tuple(objects), span)
