"""Captions of the shapes world: a small grammar over the simulated facts, and its reader.

`write_caption` turns a scene's `ObjectTrack`s into a sentence, with a few phrasings per
fact; `parse_caption` reads a caption (or a prompt in its words) back into what it says of
each object, and `caption_labels` turns that into the attribute targets the classifiers
and the text encoder's attribute head learn. Both read the same phrase tables, so the
writer, the reader and the tokenizer's vocabulary (`caption_vocabulary`) cannot drift.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from sora_mini.world import BACKGROUNDS, COLORS, SHAPES, ObjectTrack

# ----------------------------------------------------------------------------------------
# The phrase tables: a few phrasings per fact.

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

# How captions split into words: the tokenizer (sora_mini.text) uses the same pattern.
CAPTION_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")
# What a caption can say one object does: a direction, falling, or staying still.
CAPTION_MOTIONS = tuple(_MOTION_PHRASES)
# What `caption_labels` reads from a caption, with its classes: 8 colours + 3 shapes +
# 10 motions, the heads of the latent classifier and of the text encoder's attribute head.
ATTRIBUTE_HEADS = {"color": tuple(COLORS), "shape": SHAPES, "motion": CAPTION_MOTIONS}
ATTRIBUTE_CLASSES = sum(len(classes) for classes in ATTRIBUTE_HEADS.values())  # 8 + 3 + 10


# ----------------------------------------------------------------------------------------
# Writing: the facts of a scene as a sentence.


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


def write_caption(rng: np.random.Generator, tracks: Sequence[ObjectTrack], background: str) -> str:
    """The caption of a scene: one clause per group of look-alike objects, in order, joined,
    and half the time the background. Phrasings are drawn from `rng`."""
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


# ----------------------------------------------------------------------------------------
# Reading: what a caption says of each object, and the attribute labels it implies.


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


def caption_labels(captions) -> dict[str, np.ndarray]:
    """`float32 [N, classes]` per head: 1 for each class some clause of the caption names
    (`parse_caption`), 0 otherwise. A head a caption says nothing about is all 0."""
    out = {k: np.zeros((len(captions), len(classes)), np.float32) for k, classes in ATTRIBUTE_HEADS.items()}
    for i, caption in enumerate(captions):
        for clause in parse_caption(str(caption)):
            for k, classes in ATTRIBUTE_HEADS.items():
                if clause[k] is not None:
                    out[k][i, classes.index(clause[k])] = 1.0
    return out


def caption_label_matrix(captions) -> np.ndarray:
    """`float32 [N, K]`: `caption_labels`' heads side by side (colour, shape, motion; K = 21),
    the targets of the text encoder's attribute head (`text.TextConfig.attribute_classes`)."""
    return np.concatenate(list(caption_labels(captions).values()), axis=1)
