"""Chapter 01's facade: the shapes world's data API under the one name the course uses.

The code lives in three modules with one job each: `sora_mini.world` (the vocabulary,
physics and renderer), `sora_mini.captions` (the caption grammar and its reader) and
`sora_mini.dataset` (clips, splits, Hugging Face datasets and batches). This module
re-exports their public names, so `data.make_clip`, `data.COLORS`, `data.iterate_batches`
and the rest keep working for the notebooks, benchmarks and tests.
"""

from sora_mini.captions import (
                                CAPTION_MOTIONS,
                                CAPTION_WORD,
                                caption_group_key,
                                caption_vocabulary,
                                parse_caption,
                                pillar_event,
)
from sora_mini.dataset import (
                                DEFAULT_SPLIT_SIZES,
                                SPLIT_SEED_OFFSETS,
                                build_dataset,
                                build_split,
                                clip_to_example,
                                dataset_features,
                                iterate_batches,
                                load_config,
                                load_shapes_world,
                                make_clip,
                                split_config,
)
from sora_mini.world import (
                                BACKGROUNDS,
                                COLORS,
                                DIRECTIONS,
                                GRAVITY,
                                HOLDOUT_PAIRS,
                                MOTIONS,
                                PILLAR_COLOR,
                                SHAPES,
                                SHAPES_WORLD_PRESETS,
                                SIZES,
                                SPEEDS,
                                Clip,
                                ObjectTrack,
                                ShapesWorldConfig,
                                coverage,
                                signed_distance,
                                simulate,
)

__all__ = [
    # sora_mini.world
    "COLORS", "BACKGROUNDS", "PILLAR_COLOR", "SHAPES", "SIZES", "SPEEDS", "DIRECTIONS",
    "MOTIONS", "GRAVITY", "HOLDOUT_PAIRS", "ShapesWorldConfig", "SHAPES_WORLD_PRESETS",
    "ObjectTrack", "Clip", "simulate", "signed_distance", "coverage",
    # sora_mini.captions
    "pillar_event", "caption_group_key", "CAPTION_WORD", "caption_vocabulary",
    "CAPTION_MOTIONS", "parse_caption",
    # sora_mini.dataset
    "make_clip", "SPLIT_SEED_OFFSETS", "DEFAULT_SPLIT_SIZES", "split_config",
    "dataset_features", "clip_to_example", "build_split", "build_dataset", "load_config",
    "load_shapes_world", "iterate_batches",
]
