"""The shapes world: its vocabulary, its physics and its renderer, with per-frame truth.

Sora's report can only *show* object permanence, counting and physics; a world whose
truth we know lets us *measure* them. Every clip is a few coloured shapes moving on a
plain background: in straight lines with elastic bounces off the walls, falling under
gravity and bouncing on the floor, or standing still, optionally passing behind a static
pillar. This module draws, simulates and renders such a scene; `sora_mini.captions` puts
it into words and `sora_mini.dataset` turns (config, seed) into a captioned `Clip`.

Conventions (see DESIGN.md):
- `Clip.video` is `uint8 [T, H, W, 3]` with `T = 1 + k * temporal_factor`, so the causal
  VAE maps it to `1 + k` latent frames.
- Positions are `(x, y)` in pixels of the frame: `x` to the right, `y` down, origin at the
  top-left corner, so the pixel `[row, col]` covers `[col, col+1) x [row, row+1)`.
- The same `(config, seed)` gives the same clip, byte for byte.

The building blocks `simulate`, `signed_distance`, `coverage` and `render` are public, so
chapter 01 can rebuild them and compare.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np

# ----------------------------------------------------------------------------------------
# The vocabulary of the world.

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (235, 215, 40),
    "green": (40, 185, 60),
    "cyan": (40, 210, 220),
    "blue": (45, 85, 235),
    "purple": (150, 60, 210),
    "white": (240, 240, 240),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (12, 12, 12),
    "gray": (95, 95, 95),
    "navy": (18, 22, 70),
}
PILLAR_COLOR = (125, 90, 55)  # a brown pillar, unlike every object and background colour
SHAPES = ("circle", "square", "triangle")
# Object "radius" as a fraction of min(H, W): 3.2 px and 5.4 px at 32x32.
SIZES = {"small": 0.10, "large": 0.17}
# Speed in fractions of min(H, W) per frame: 0.5, 1.0 and 1.6 px per frame at 32x32, so
# over 17 frames a normal object crosses half the frame.
SPEEDS = {"slowly": 0.015, "normal": 0.03, "quickly": 0.05}
_D = 1 / math.sqrt(2)
DIRECTIONS: dict[str, tuple[float, float]] = {  # unit (dx, dy), y pointing down
    "right": (1.0, 0.0),
    "left": (-1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
    "up-right": (_D, -_D),
    "up-left": (-_D, -_D),
    "down-right": (_D, _D),
    "down-left": (-_D, _D),
}
MOTIONS = ("linear", "fall", "still")
GRAVITY = 0.012  # fraction of H per frame^2: an object dropped from the top lands in ~10 frames
# Colour-shape pairs that never appear in training: the compositional hold-out split is
# made only of clips that contain one, to test whether a model composes attributes.
HOLDOUT_PAIRS = (("red", "triangle"), ("blue", "circle"), ("yellow", "square"))


@dataclasses.dataclass(frozen=True)
class ShapesWorldConfig:
    """How clips of the shapes world are drawn. Frozen: it names a distribution."""

    height: int = 32
    width: int = 32
    num_frames: int = 17
    temporal_factor: int = 4  # the VAE's temporal compression f_t: T must be 1 + k * f_t
    fps: int = 8
    min_objects: int = 1
    max_objects: int = 3
    shapes: tuple[str, ...] = SHAPES
    colors: tuple[str, ...] = tuple(COLORS)
    backgrounds: tuple[str, ...] = tuple(BACKGROUNDS)
    p_fall: float = 0.2  # motion kind probabilities; the rest move in straight lines
    p_still: float = 0.1
    p_same: float = 0.3  # an extra object copies the previous one's looks and motion (counting)
    p_occluder: float = 0.3
    holdout_pairs: tuple[tuple[str, str], ...] = HOLDOUT_PAIRS
    # "exclude": no held-out pair appears (train/validation/test); "only": the first
    # object is a held-out pair (compositional split); "ignore": anything goes.
    holdout: Literal["exclude", "only", "ignore"] = "exclude"
    # Where a straight mover starts along its direction. "clear": anywhere it has room to
    # move the captioned way for the first half of the clip, so the first frame says little
    # about the direction and only the caption can (a slow mover may start on either side).
    # "behind": on the side it moves away from, so the layout alone implies the direction,
    # a shortcut a model learns instead of the words (chapter 09's direction control).
    mover_start: Literal["clear", "behind"] = "clear"

    def __post_init__(self):
        for name in ("height", "width", "num_frames", "temporal_factor", "fps"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value <= 0:
                raise ValueError(f"ShapesWorldConfig.{name} must be a positive int, got {value!r}")
        if min(self.height, self.width) < 16:
            raise ValueError(f"frames must be at least 16x16 pixels, got {self.height}x{self.width}")
        if (self.num_frames - 1) % self.temporal_factor:
            k = (self.num_frames - 1) // self.temporal_factor
            raise ValueError(
                f"num_frames must be 1 + k * temporal_factor = 1 + k * {self.temporal_factor} "
                f"(e.g. {1 + k * self.temporal_factor} or {1 + (k + 1) * self.temporal_factor}), "
                f"got {self.num_frames}")
        if not 1 <= self.min_objects <= self.max_objects <= 3:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects <= 3, got {self.min_objects}, {self.max_objects}")
        for field, known in (("colors", COLORS), ("backgrounds", BACKGROUNDS), ("shapes", SHAPES)):
            values = getattr(self, field)
            if not values:
                raise ValueError(f"ShapesWorldConfig.{field} must not be empty")
            unknown = [v for v in values if v not in known]
            if unknown:
                raise ValueError(f"unknown {field} {unknown}; expected some of {sorted(known)}")
        for color, shape in self.holdout_pairs:
            if color not in COLORS or shape not in SHAPES:
                raise ValueError(f"holdout pair {(color, shape)} names an unknown colour or shape")
        if self.holdout not in ("exclude", "only", "ignore"):
            raise ValueError(f"holdout must be 'exclude', 'only' or 'ignore', got {self.holdout!r}")
        if self.mover_start not in ("clear", "behind"):
            raise ValueError(f"mover_start must be 'clear' or 'behind', got {self.mover_start!r}")
        for name in ("p_fall", "p_still", "p_same", "p_occluder"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.p_fall + self.p_still > 1.0:
            raise ValueError("p_fall + p_still must be at most 1")
        pairs = [(c, s) for c in self.colors for s in self.shapes]
        allowed = [p for p in pairs if (p in self.holdout_pairs) == (self.holdout == "only")]
        if self.holdout != "ignore" and not allowed:
            raise ValueError(f"holdout={self.holdout!r} leaves no colour-shape pair to draw")

    @property
    def latent_frames(self) -> int:
        return 1 + (self.num_frames - 1) // self.temporal_factor

    def replace(self, **changes) -> ShapesWorldConfig:
        return dataclasses.replace(self, **changes)


SHAPES_WORLD_PRESETS: dict[str, ShapesWorldConfig] = {
    "tiny": ShapesWorldConfig(),  # 17 x 32 x 32: this CPU
    "small": ShapesWorldConfig(height=64, width=64),  # a Colab GPU/TPU
    "base": ShapesWorldConfig(height=128, width=128, num_frames=33),  # real accelerators
}


# ----------------------------------------------------------------------------------------
# A clip and its ground truth.


@dataclasses.dataclass(frozen=True)
class ObjectTrack:
    """One object's identity and its per-frame truth (T frames)."""

    shape: str
    color: str
    size: str
    motion: str  # "linear" | "fall" | "still"
    direction: str  # a key of DIRECTIONS for "linear", "down" for "fall", "" for "still"
    speed: str  # a key of SPEEDS for "linear", "" otherwise
    position: np.ndarray  # float32 [T, 2], centre (x, y) in pixels
    velocity: np.ndarray  # float32 [T, 2], pixels per frame, after any bounce at frame t
    visible: np.ndarray  # bool [T]: the pixel under the centre shows this object
    visible_fraction: np.ndarray  # float32 [T]: share of the object's area that shows
    bounced: np.ndarray  # bool [T]: it bounced on the step into frame t
    behind_pillar: np.ndarray  # bool [T]: its centre is hidden by the pillar


@dataclasses.dataclass(frozen=True)
class Clip:
    """A captioned clip of the shapes world, with the truth of every object in it."""

    video: np.ndarray  # uint8 [T, H, W, 3]
    caption: str
    objects: tuple[ObjectTrack, ...]
    background: str
    occluder: tuple[float, float, float, float] | None  # pillar box (x0, y0, x1, y1) in pixels
    seed: int


@dataclasses.dataclass(frozen=True)
class Scene:
    """What `draw_scene` makes: a `Clip` before its caption is written."""

    video: np.ndarray  # uint8 [T, H, W, 3]
    objects: tuple[ObjectTrack, ...]
    background: str
    occluder: tuple[float, float, float, float] | None  # pillar box (x0, y0, x1, y1) in pixels


# ----------------------------------------------------------------------------------------
# Simulation: plain NumPy on [T, 2] trajectories.


def simulate(config: ShapesWorldConfig, motion: str, direction: str, speed: str, radius: float,
             start: np.ndarray):
    """Integrate one object's trajectory; walls reflect it elastically.

    Returns position [T, 2], velocity [T, 2], bounced [T]."""
    T, H, W = config.num_frames, config.height, config.width
    scale = min(H, W)
    lo, hi = np.array([radius, radius]), np.array([W - radius, H - radius])
    if motion == "linear":
        vel = np.array(DIRECTIONS[direction]) * SPEEDS[speed] * scale
    else:
        vel = np.zeros(2)
    accel = np.array([0.0, GRAVITY * H]) if motion == "fall" else np.zeros(2)
    pos = start.astype(np.float64)
    positions, velocities, bounced = [pos.copy()], [vel.copy()], [False]
    for _ in range(T - 1):
        # Semi-implicit Euler: v += a, then x += v. A crossing of a wall is mirrored back
        # inside and the velocity component flipped: an elastic bounce within the step.
        vel = vel + accel
        pos = pos + vel
        hit = False
        for axis in range(2):
            if pos[axis] < lo[axis]:
                pos[axis], vel[axis], hit = 2 * lo[axis] - pos[axis], -vel[axis], True
            elif pos[axis] > hi[axis]:
                pos[axis], vel[axis], hit = 2 * hi[axis] - pos[axis], -vel[axis], True
        positions.append(pos.copy())
        velocities.append(vel.copy())
        bounced.append(hit)
    return (np.asarray(positions, np.float32), np.asarray(velocities, np.float32),
            np.asarray(bounced, bool))


def _sample_looks(config: ShapesWorldConfig, rng: np.random.Generator):
    """A (colour, shape, size) the config allows."""
    pairs = [(c, s) for c in config.colors for s in config.shapes]
    if config.holdout == "exclude":
        pairs = [p for p in pairs if p not in config.holdout_pairs]
    color, shape = pairs[rng.integers(len(pairs))]
    return color, shape, str(rng.choice(list(SIZES)))


def _sample_motion(config: ShapesWorldConfig, rng: np.random.Generator, force_horizontal: bool):
    """A (motion, direction, speed); `force_horizontal` for the object that crosses the pillar."""
    if force_horizontal:
        return "linear", str(rng.choice(["left", "right"])), str(rng.choice(["normal", "quickly"]))
    u = rng.random()
    if u < config.p_fall:
        return "fall", "down", ""
    if u < config.p_fall + config.p_still:
        return "still", "", ""
    return "linear", str(rng.choice(list(DIRECTIONS))), str(rng.choice(list(SPEEDS)))


# ----------------------------------------------------------------------------------------
# Rendering: anti-aliased coverage from signed distances, vectorised over [T, H, W].


def signed_distance(shape: str, radius: float, centre: np.ndarray, xs: np.ndarray,
                     ys: np.ndarray) -> np.ndarray:
    """Signed distance in pixels (negative inside) from pixel centres to the shape.

    centre: [T, 2]; xs: [1, 1, W]; ys: [1, H, 1] -> [T, H, W]."""
    dx = xs - centre[:, 0, None, None]
    dy = ys - centre[:, 1, None, None]
    if shape == "circle":
        return np.sqrt(dx * dx + dy * dy) - radius
    if shape == "square":  # half-side 0.886 r: the same area as the circle
        return np.maximum(np.abs(dx), np.abs(dy)) - 0.886 * radius
    if shape == "triangle":  # upward equilateral, circumradius 1.4 r, centred on its centroid
        R = 1.4 * radius
        s = math.sqrt(3) / 2
        # Intersection of three half-planes; outward normals (0, 1), (±sqrt3/2, -1/2).
        edges = np.maximum(dy, np.maximum(s * dx - 0.5 * dy, -s * dx - 0.5 * dy))
        return edges - 0.5 * R
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def coverage(sd: np.ndarray) -> np.ndarray:
    """How much of each pixel a shape covers, in [0, 1], from its signed distance."""
    # A one-pixel linear ramp across the edge: cheap, and smooth enough to anti-alias.
    return np.clip(0.5 - sd, 0.0, 1.0)


def render(config, background, pillar, tracks_geometry):
    """Composite objects back to front, then the pillar on top.

    `tracks_geometry` holds one `(shape, color, radius, position [T, 2])` per object.
    Returns video uint8 [T, H, W, 3], per object its coverage and its visible weight
    (coverage times what every later layer lets through), both [T, H, W], and the pillar's
    coverage [T, H, W]."""
    T, H, W = config.num_frames, config.height, config.width
    xs = (np.arange(W, dtype=np.float32) + 0.5)[None, None, :]
    ys = (np.arange(H, dtype=np.float32) + 0.5)[None, :, None]
    frame = np.broadcast_to(np.asarray(BACKGROUNDS[background], np.float32), (T, H, W, 3)).copy()
    alphas = []
    for shape, color, radius, position in tracks_geometry:
        a = coverage(signed_distance(shape, radius, position, xs, ys)).astype(np.float32)
        frame += a[..., None] * (np.asarray(COLORS[color], np.float32) - frame)
        alphas.append(a)
    if pillar is not None:
        x0, _, x1, _ = pillar
        # Coverage of each pixel column by [x0, x1): exact box filter, so edges anti-alias.
        cols = np.clip(np.minimum(xs + 0.5, x1) - np.maximum(xs - 0.5, x0), 0.0, 1.0)
        pillar_alpha = np.broadcast_to(cols, (T, H, W)).astype(np.float32)
        frame += pillar_alpha[..., None] * (np.asarray(PILLAR_COLOR, np.float32) - frame)
    else:
        pillar_alpha = np.zeros((T, H, W), np.float32)
    # What shows of object i: its own alpha, times what every later layer lets through.
    weights, through = [], 1.0 - pillar_alpha
    for a in reversed(alphas):
        weights.append(a * through)
        through = through * (1.0 - a)
    weights.reverse()
    video = np.clip(np.round(frame), 0, 255).astype(np.uint8)
    return video, alphas, weights, pillar_alpha


# ----------------------------------------------------------------------------------------
# A scene: draw the layout, place and simulate each object, render, measure what shows.


def draw_scene(config: ShapesWorldConfig, rng: np.random.Generator) -> Scene:
    """Draw, simulate and render one scene from `rng`. Every draw comes from this one
    generator in a fixed order (the caption's after it: `sora_mini.dataset.make_clip`), so
    a seed names one scene."""
    scale = min(config.height, config.width)
    background = str(rng.choice(config.backgrounds))
    pillar = _sample_pillar(config, rng)
    n = int(rng.integers(config.min_objects, config.max_objects + 1))
    specs = _sample_specs(config, rng, n, pillar is not None)

    tracks_geometry, raw = [], []
    placed: list[tuple[np.ndarray, float]] = []
    for shape, color, size, motion, direction, speed in specs:
        radius = SIZES[size] * scale
        crosses = pillar is not None and motion == "linear" and not placed
        if crosses:
            direction = _crossing_direction(config, pillar, direction, radius)
        start = _place_start(config, rng, pillar, placed, motion, direction, speed, radius, crosses)
        if start is None:
            continue  # no room for this object: leave it out rather than start it hidden
        placed.append((start, radius))
        position, velocity, bounced = simulate(config, motion, direction, speed, radius, start)
        tracks_geometry.append((shape, color, radius, position))
        raw.append((shape, color, size, motion, direction, speed, position, velocity, bounced))

    video, alphas, weights, pillar_alpha = render(config, background, pillar, tracks_geometry)
    tracks = _measure_tracks(config, raw, alphas, weights, pillar_alpha)
    return Scene(video=video, objects=tuple(tracks), background=background, occluder=pillar)


def _sample_pillar(config: ShapesWorldConfig, rng: np.random.Generator):
    """The pillar's box (x0, y0, x1, y1), full height near the middle, or None."""
    if rng.random() >= config.p_occluder:
        return None
    W, half = config.width, 0.09 * config.width
    cx = rng.uniform(0.35 * W, 0.65 * W)
    return (float(cx - half), 0.0, float(cx + half), float(config.height))


def _sample_specs(config: ShapesWorldConfig, rng: np.random.Generator, n: int, has_pillar: bool):
    """`n` (shape, color, size, motion, direction, speed) tuples, one per object."""
    specs = []
    for i in range(n):
        if i > 0 and rng.random() < config.p_same:
            specs.append(specs[-1])
            continue
        color, shape, size = _sample_looks(config, rng)
        if i == 0 and config.holdout == "only":
            pairs = [p for p in config.holdout_pairs if p[0] in config.colors and p[1] in config.shapes]
            color, shape = pairs[rng.integers(len(pairs))]
        # With a pillar, the first object crosses the frame sideways so it passes behind.
        specs.append((shape, color, size, *_sample_motion(config, rng, i == 0 and has_pillar)))
    return specs


def _crossing_direction(config: ShapesWorldConfig, pillar, direction: str, radius: float) -> str:
    """The pillar crosser starts on the side of the pillar that has room for it."""
    room_left = pillar[0] - radius > radius
    if direction == "right" and not room_left:
        return "left"
    if direction == "left" and pillar[2] + radius >= config.width - radius:
        return "right"
    return direction


def _start_window(config: ShapesWorldConfig, d: float, extent: float, radius: float,
                  room: float) -> tuple[float, float]:
    """Where along one axis a straight mover with direction component `d` may start."""
    if config.mover_start == "behind":
        return (radius, 0.45 * extent) if d > 0 else (0.55 * extent, extent - radius)
    far = min(extent - radius, radius + abs(d) * room)  # nearest start from the far wall
    return (radius, extent - far) if d > 0 else (far, extent - radius)


def _place_start(config: ShapesWorldConfig, rng: np.random.Generator, pillar, placed, motion: str,
                 direction: str, speed: str, radius: float, crosses: bool):
    """Rejection-sample a start in view, or None when 60 tries find no room."""
    T, H, W = config.num_frames, config.height, config.width
    for attempt in range(60):
        start = np.array([rng.uniform(radius, W - radius), rng.uniform(radius, H - radius)])
        if motion == "fall":
            start[1] = rng.uniform(radius, 0.4 * H)
        elif motion == "linear" and attempt < 40:
            # Leave room to move the captioned way: the caption is then what the clip
            # shows for at least its first half (fast movers still bounce later).
            room = SPEEDS[speed] * min(H, W) * (T - 1) / 2  # px covered in the first half
            for axis, extent in ((0, W), (1, H)):
                d = DIRECTIONS[direction][axis]
                if d:
                    start[axis] = rng.uniform(*_start_window(config, d, extent, radius, room))
        if crosses:
            # Start on the far side of the pillar from where it is heading.
            x0, _, x1, _ = pillar
            start[0] = (rng.uniform(radius, max(radius, x0 - radius)) if direction == "right"
                        else rng.uniform(min(W - radius, x1 + radius), W - radius))
        # Start in view: clear of the pillar and of every earlier object.
        clear = pillar is None or not (pillar[0] - radius < start[0] < pillar[2] + radius)
        if clear and all(np.linalg.norm(start - p) > radius + r + 1.0 for p, r in placed):
            return start
    return None


def _measure_tracks(config: ShapesWorldConfig, raw, alphas, weights, pillar_alpha) -> list[ObjectTrack]:
    """Each object's `ObjectTrack`: its simulated motion and what of it the video shows."""
    T, H, W = config.num_frames, config.height, config.width
    tracks = []
    t_idx = np.arange(T)
    for (shape, color, size, motion, direction, speed, position, velocity, bounced), a, w in zip(
            raw, alphas, weights):
        own = np.clip(np.floor(position).astype(int), 0, [W - 1, H - 1])
        # The object shows at its centre pixel if at least 3/4 of that pixel is its colour.
        centre_weight = w[t_idx, own[:, 1], own[:, 0]]
        area = a.sum(axis=(1, 2))
        tracks.append(ObjectTrack(
            shape=shape, color=color, size=size, motion=motion,
            direction=direction if motion == "linear" else ("down" if motion == "fall" else ""),
            speed=speed if motion == "linear" else "",
            position=position, velocity=velocity,
            visible=centre_weight >= 0.75,
            visible_fraction=(w.sum(axis=(1, 2)) / np.maximum(area, 1e-6)).astype(np.float32),
            bounced=bounced,
            behind_pillar=pillar_alpha[t_idx, own[:, 1], own[:, 0]] >= 0.25,
        ))
    return tracks
