"""The shapes world: procedural captioned videos with per-frame ground truth.

Sora's report can only *show* object permanence, counting and physics; a world whose
truth we know lets us *measure* them. Every clip is a few coloured shapes moving on a
plain background: in straight lines with elastic bounces off the walls, falling under
gravity and bouncing on the floor, or standing still, optionally passing behind a static
pillar. A small grammar turns the simulated facts into a caption.

Conventions (see DESIGN.md):
- `Clip.video` is `uint8 [T, H, W, 3]` with `T = 1 + k * temporal_factor`, so the causal
  VAE maps it to `1 + k` latent frames.
- Positions are `(x, y)` in pixels of the frame: `x` to the right, `y` down, origin at the
  top-left corner, so the pixel `[row, col]` covers `[col, col+1) x [row, row+1)`.
- The same `(config, seed)` gives the same clip, byte for byte.

Public API: `ShapesWorldConfig`, `SHAPES_WORLD_PRESETS`, `make_clip`, `build_dataset`,
`load_shapes_world`, `iterate_batches`; the building blocks `simulate`, `signed_distance`
and `coverage` are public too, so chapter 01 can rebuild them and compare.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import queue
import re
import threading
from typing import Literal
from collections.abc import Iterator, Mapping, Sequence

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
    video: np.ndarray  # uint8 [T, H, W, 3]
    caption: str
    objects: tuple[ObjectTrack, ...]
    background: str
    occluder: tuple[float, float, float, float] | None  # pillar box (x0, y0, x1, y1) in pixels
    seed: int


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
    pairs = [(c, s) for c in config.colors for s in config.shapes]
    if config.holdout == "exclude":
        pairs = [p for p in pairs if p not in config.holdout_pairs]
    color, shape = pairs[rng.integers(len(pairs))]
    return color, shape, str(rng.choice(list(SIZES)))


def _sample_motion(config: ShapesWorldConfig, rng: np.random.Generator, force_horizontal: bool):
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
    # A one-pixel linear ramp across the edge: cheap, and smooth enough to anti-alias.
    return np.clip(0.5 - sd, 0.0, 1.0)


def _render(config, background, pillar, tracks_geometry):
    """Composite objects back to front, then the pillar on top.

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
# Captions: a small grammar over the simulated facts, a few phrasings per fact.

_NUMBERS = {1: "a", 2: "two", 3: "three"}
_SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
_SPEED_WORDS = {"slowly": ("slowly",), "normal": ("",), "quickly": ("quickly", "rapidly")}
# (singular, plural) verb phrases.
_MOTION_PHRASES = {
    "right": [("moves to the right", "move to the right"), ("moves right", "move right"),
              ("slides to the right", "slide to the right")],
    "left": [("moves to the left", "move to the left"), ("moves left", "move left"),
             ("slides to the left", "slide to the left")],
    "up": [("moves up", "move up"), ("moves upward", "move upward"), ("goes up", "go up")],
    "down": [("moves down", "move down"), ("moves downward", "move downward"),
             ("goes down", "go down")],
    "up-right": [("moves up and to the right", "move up and to the right"),
                 ("moves diagonally up and right", "move diagonally up and right")],
    "up-left": [("moves up and to the left", "move up and to the left"),
                ("moves diagonally up and left", "move diagonally up and left")],
    "down-right": [("moves down and to the right", "move down and to the right"),
                   ("moves diagonally down and right", "move diagonally down and right")],
    "down-left": [("moves down and to the left", "move down and to the left"),
                  ("moves diagonally down and left", "move diagonally down and left")],
    "fall": [("falls", "fall"), ("drops", "drop")],
    "still": [("stays still", "stay still"), ("does not move", "do not move"),
              ("rests in place", "rest in place")],
}
_BOUNCE_PHRASES = {
    "linear": [("bounces off the wall", "bounce off the wall"),
               ("bounces off the edge", "bounce off the edge")],
    "fall": [("bounces", "bounce"), ("bounces on the floor", "bounce on the floor")],
}
_PILLAR_PHRASES = {
    "passes": [("passes behind the pillar", "pass behind the pillar"),
               ("goes behind the pillar and comes back out", "go behind the pillar and come back out")],
    "hides": [("disappears behind the pillar", "disappear behind the pillar"),
              ("hides behind the pillar", "hide behind the pillar")],
}
_CLAUSE_JOINS = (" and ", " while ", ", and ")
_BACKGROUND_PHRASES = ("{} on a {} background", "{}, on {}")


def _plural(shape: str) -> str:
    return shape + "s"


def _describe_group(rng, tracks: Sequence[ObjectTrack]) -> str:
    """One clause for objects that look and move alike: 'two small red circles fall'."""
    first, n = tracks[0], len(tracks)
    number = 0 if n == 1 else 1
    size = str(rng.choice(_SIZE_WORDS[first.size]))
    noun = first.shape if n == 1 else _plural(first.shape)
    subject = f"{_NUMBERS[n]} {size} {first.color} {noun}"
    key = first.direction if first.motion == "linear" else first.motion
    verb = _MOTION_PHRASES[key][rng.integers(len(_MOTION_PHRASES[key]))][number]
    adverb = str(rng.choice(_SPEED_WORDS[first.speed])) if first.motion == "linear" else ""
    parts = [subject, f"{adverb} {verb}".strip()]
    if first.motion in _BOUNCE_PHRASES and first.bounced.any():  # the whole group bounced (group key)
        phrases = _BOUNCE_PHRASES[first.motion]
        parts.append("and " + phrases[rng.integers(len(phrases))][number])
    event = pillar_event(first)
    if event:
        phrases = _PILLAR_PHRASES[event]
        parts.append("and " + phrases[rng.integers(len(phrases))][number])
    return " ".join(parts)


def pillar_event(track: ObjectTrack) -> str:
    """'passes' (seen, hidden by the pillar, seen again), 'hides' (seen, then hidden by the
    pillar to the end) or '' (no such event)."""
    hidden = track.behind_pillar & ~track.visible
    if not hidden.any():
        return ""
    first = int(np.argmax(hidden))
    if not track.visible[:first].any():
        return ""  # never seen before it was hidden: claim nothing
    return "passes" if track.visible[first:].any() else "hides"


def caption_group_key(track: ObjectTrack) -> tuple:
    """Objects share a clause ("two red circles ...") only when everything the clause says
    is true of each of them: looks, motion, and whether it bounced or met the pillar."""
    return (track.shape, track.color, track.size, track.motion, track.direction, track.speed,
            bool(track.bounced.any()), pillar_event(track))


def _caption(rng, tracks: Sequence[ObjectTrack], background: str) -> str:
    groups: dict[tuple, list[ObjectTrack]] = {}
    for t in tracks:
        groups.setdefault(caption_group_key(t), []).append(t)
    clauses = [_describe_group(rng, g) for g in groups.values()]
    text = clauses[0]
    for clause in clauses[1:]:
        text += str(rng.choice(_CLAUSE_JOINS)) + clause
    if rng.random() < 0.5:
        text = str(rng.choice(_BACKGROUND_PHRASES)).format(text, background)
    return text


# How captions split into words: the tokenizer (sora_mini.text) uses the same pattern.
CAPTION_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def caption_vocabulary() -> list[str]:
    """Every word (and ',') the caption grammar can write, sorted: what the text encoder's
    tokenizer needs. Read from the phrase tables, so it can never fall out of step."""
    phrases = [*_NUMBERS.values(), *COLORS, *BACKGROUNDS, *SHAPES, *map(_plural, SHAPES),
               *(w for ws in _SIZE_WORDS.values() for w in ws), *(w for ws in _SPEED_WORDS.values() for w in ws),
               *(p for table in (_MOTION_PHRASES, _BOUNCE_PHRASES, _PILLAR_PHRASES)
                 for forms in table.values() for pair in forms for p in pair),
               *_CLAUSE_JOINS, *_BACKGROUND_PHRASES, "and"]
    words = set()
    for phrase in phrases:
        words.update(CAPTION_WORD.findall(phrase.replace("{}", " ").lower()))
    return sorted(words)


# What a caption can say one object does: a direction, falling, or staying still.
CAPTION_MOTIONS = tuple(_MOTION_PHRASES)


def parse_caption(caption: str) -> list[dict[str, str | None]]:
    """What a caption (or a prompt in its words) says of each object, clause by clause: its
    `color`, `shape` and `motion` (a `CAPTION_MOTIONS` key), `None` for what it does not
    say. Read with the grammar's own tables: each motion phrase ends a clause (the longest
    phrase where two start at the same word, so "moves up and to the right" is up-right),
    and the colour and shape words before it, since the last clause, are its subject. A
    caption with no motion phrase is one clause. The first clause is `objects[0]`."""
    text = f" {' '.join(CAPTION_WORD.findall(caption.lower()))} "
    found = []  # (where the phrase starts, -its length, motion)
    for motion, forms in _MOTION_PHRASES.items():
        for phrase in (p for pair in forms for p in pair):
            i = text.find(f" {phrase} ")
            while i >= 0:
                found.append((i, -len(phrase), motion))
                i = text.find(f" {phrase} ", i + 1)
    clauses, done = [], 0
    for i, minus_len, motion in sorted(found):
        if i < done:
            continue  # inside a longer phrase already read
        clauses.append((text[done:i].split(), motion))
        done = i - minus_len + 1
    if not found:
        clauses.append((text.split(), None))
    return [{"color": next((w for w in words if w in COLORS), None),
             "shape": next((w.removesuffix("s") for w in words if w.removesuffix("s") in SHAPES), None),
             "motion": motion} for words, motion in clauses]


# ----------------------------------------------------------------------------------------
# The clip generator.


def make_clip(config: ShapesWorldConfig, seed: int) -> Clip:
    """Draw, simulate, render and caption one clip. Deterministic in (config, seed)."""
    if not isinstance(config, ShapesWorldConfig):
        raise TypeError(f"config must be a ShapesWorldConfig, got {type(config).__name__}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    T, H, W = config.num_frames, config.height, config.width
    scale = min(H, W)
    background = str(rng.choice(config.backgrounds))
    pillar = None
    if rng.random() < config.p_occluder:
        half = 0.09 * W
        cx = rng.uniform(0.35 * W, 0.65 * W)
        pillar = (float(cx - half), 0.0, float(cx + half), float(H))
    n = int(rng.integers(config.min_objects, config.max_objects + 1))

    specs = []  # (shape, color, size, motion, direction, speed)
    for i in range(n):
        if i > 0 and rng.random() < config.p_same:
            specs.append(specs[-1])
            continue
        color, shape, size = _sample_looks(config, rng)
        if i == 0 and config.holdout == "only":
            pairs = [p for p in config.holdout_pairs if p[0] in config.colors and p[1] in config.shapes]
            color, shape = pairs[rng.integers(len(pairs))]
        # With a pillar, the first object crosses the frame sideways so it passes behind.
        specs.append((shape, color, size, *_sample_motion(config, rng, i == 0 and pillar is not None)))

    tracks_geometry, raw = [], []
    placed: list[tuple[np.ndarray, float]] = []
    for shape, color, size, motion, direction, speed in specs:
        radius = SIZES[size] * scale
        if pillar is not None and motion == "linear" and not placed:
            # The pillar crosser starts on the side of the pillar that has room for it.
            room_left = pillar[0] - radius > radius
            if direction == "right" and not room_left:
                direction = "left"
            elif direction == "left" and pillar[2] + radius >= W - radius:
                direction = "right"
        for attempt in range(60):  # rejection-sample a start in view
            start = np.array([rng.uniform(radius, W - radius), rng.uniform(radius, H - radius)])
            if motion == "fall":
                start[1] = rng.uniform(radius, 0.4 * H)
            elif motion == "linear" and attempt < 40:
                # Leave room to move the captioned way: the caption is then what the clip
                # shows for at least its first half (fast movers still bounce later).
                room = SPEEDS[speed] * scale * (T - 1) / 2  # px covered in the first half
                for axis, extent in ((0, W), (1, H)):
                    d = DIRECTIONS[direction][axis]
                    if not d:
                        continue
                    if config.mover_start == "behind":
                        back = (radius, 0.45 * extent) if d > 0 else (0.55 * extent, extent - radius)
                    else:
                        far = min(extent - radius, radius + abs(d) * room)  # nearest start from the far wall
                        back = (radius, extent - far) if d > 0 else (far, extent - radius)
                    start[axis] = rng.uniform(*back)
            if pillar is not None and motion == "linear" and not placed:
                # Start on the far side of the pillar from where it is heading.
                x0, _, x1, _ = pillar
                start[0] = (rng.uniform(radius, max(radius, x0 - radius)) if direction == "right"
                            else rng.uniform(min(W - radius, x1 + radius), W - radius))
            # Start in view: clear of the pillar and of every earlier object.
            clear = pillar is None or not (pillar[0] - radius < start[0] < pillar[2] + radius)
            if clear and all(np.linalg.norm(start - p) > radius + r + 1.0 for p, r in placed):
                break
        else:
            continue  # no room for this object: leave it out rather than start it hidden
        placed.append((start, radius))
        position, velocity, bounced = simulate(config, motion, direction, speed, radius, start)
        tracks_geometry.append((shape, color, radius, position))
        raw.append((shape, color, size, motion, direction, speed, position, velocity, bounced))

    video, alphas, weights, pillar_alpha = _render(config, background, pillar, tracks_geometry)

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
    caption = _caption(rng, tracks, background)
    return Clip(video=video, caption=caption, objects=tuple(tracks), background=background,
                occluder=pillar, seed=int(seed))


# ----------------------------------------------------------------------------------------
# Hugging Face `datasets`: splits by seed range, saved to and loaded from disk (or the hub).

# Each split draws clip seeds from its own range, so splits never share a clip.
SPLIT_SEED_OFFSETS = {"train": 0, "validation": 10_000_000, "test": 20_000_000,
                      "compositional": 30_000_000}
DEFAULT_SPLIT_SIZES = {"train": 10_000, "validation": 500, "test": 500, "compositional": 500}


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
    cache, keyed on the config, the split's seeds and this module's source)."""
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
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    (datasets.enable_progress_bars if enabled else datasets.disable_progress_bars)()
    try:
        yield
    finally:
        (datasets.enable_progress_bars if was_enabled else datasets.disable_progress_bars)()


def _config_hash(config: ShapesWorldConfig) -> str:
    import hashlib

    # The module's own source is part of the key: edit the world and old caches go stale.
    with open(__file__, "rb") as f:
        source = f.read()
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
# Batches for training: shuffled by seed, batch axis first, prefetched on a thread.


def iterate_batches(dataset, batch_size: int, *, seed: int = 0, columns: Sequence[str] = ("video", "caption"),
                    num_epochs: int | None = None, drop_remainder: bool = True,
                    prefetch: int = 2) -> Iterator[dict[str, np.ndarray]]:
    """Yield `{column: array}` batches with the batch axis first, ready for
    `jax.device_put(batch, sharding)`; videos come as `uint8 [B, T, H, W, 3]`.

    `dataset` is anything with `len()` and `dataset[list_of_indices] -> {column: values}`
    (a `datasets.Dataset` in NumPy format, or a dict of arrays). Epoch `e` is shuffled by
    `np.random.default_rng([seed, e])`, so the order is the same on every run and every
    host. `prefetch > 0` reads that many batches ahead on a background thread (in-process:
    no worker processes, which hung on these machines)."""
    # Checked here, eagerly: this function is not a generator, the one it returns is.
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if hasattr(dataset, "column_names") and isinstance(dataset.column_names, Mapping):
        raise ValueError(f"got a DatasetDict with splits {list(dataset)}; pass one split, e.g. dataset['train']")
    if hasattr(dataset, "select_columns"):  # an HF Dataset: never decode columns we don't hand out
        missing = [c for c in columns if c not in dataset.column_names]
        if missing:
            raise ValueError(f"columns {missing} not in the dataset; it has {dataset.column_names}")
        dataset = dataset.select_columns(list(columns))
    elif isinstance(dataset, Mapping):  # arrays (or an .npz): load each column once
        missing = [c for c in columns if c not in dataset]
        if missing:
            raise ValueError(f"columns {missing} not in the arrays; they have {list(dataset)}")
        dataset = {c: np.asarray(dataset[c]) for c in columns}
    n = len(next(iter(dataset.values()))) if isinstance(dataset, Mapping) else len(dataset)
    if drop_remainder and n < batch_size:
        raise ValueError(f"dataset has {n} examples, fewer than one batch of {batch_size}")

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

    def batches():
        epoch = 0
        while num_epochs is None or epoch < num_epochs:
            order = np.random.default_rng([seed, epoch]).permutation(n)
            stop = n - n % batch_size if drop_remainder else n
            for start in range(0, stop, batch_size):
                yield take(order[start:start + batch_size])
            epoch += 1

    return batches() if prefetch <= 0 else _prefetch(batches(), prefetch)


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
