"""The shipped model makes the same videos after a refactor as before it.

`tests/data/reference_videos.npz` was written by the package at commit c5f599b, before the
package was reorganised (issue 18), with the shipped tiny model (both experts, its default
classifier guidance) and 10 Euler steps. XLA may round differently on another CPU, so a
pixel may move by a level or two; anything more is a change of behaviour."""

import pathlib

import numpy as np
import pytest

from sora_mini.pipeline import TextToVideo

REFERENCE = pathlib.Path(__file__).parent / "data" / "reference_videos.npz"


@pytest.fixture(scope="module")
def shipped():
    return TextToVideo.from_pretrained("tiny")


def _assert_close(video, reference):
    assert video.shape == reference.shape and video.dtype == np.uint8
    diff = np.abs(video.astype(np.int16) - reference.astype(np.int16))
    assert np.mean(diff <= 2) >= 0.999, f"max difference {diff.max()}, {np.mean(diff > 2):.4%} of pixels beyond 2"


def test_shipped_model_makes_the_reference_videos(shipped):
    reference = np.load(REFERENCE)
    video = shipped("a red circle moves to the right", seed=0, steps=10)
    _assert_close(video, reference["text_to_video"])
    animated = shipped("a small green triangle moves up", seed=1, steps=10, image=reference["text_to_video"][0])
    _assert_close(animated, reference["image_to_video"])
