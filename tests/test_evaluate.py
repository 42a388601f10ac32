"""The shapes-world detector reads the truth back from real clips; adherence scores fall
when the videos contradict their prompts."""

import numpy as np
import pytest

from sora_mini import data, evaluate


@pytest.fixture(scope="module")
def clips():
    return evaluate.adherence_clips(60)


def test_adherence_clips_have_one_straight_mover(clips):
    assert len(clips) == 60
    for clip in clips:
        assert len(clip.objects) == 1 and clip.objects[0].motion == "linear" and clip.occluder is None
    # The test split's own seeds, in order: the same clips every time.
    assert [c.seed for c in evaluate.adherence_clips(3)] == [c.seed for c in clips[:3]]
    assert clips[0].seed >= data.SPLIT_SEED_OFFSETS["test"]


def test_detector_reads_real_clips(clips):
    """The ceiling: on the world itself, colour, shape and direction are all read right."""
    scores = evaluate.prompt_adherence([c.video for c in clips], clips)
    assert scores["color_accuracy"] == 1.0
    assert scores["shape_accuracy"] >= 0.95
    assert scores["direction_accuracy"] >= 0.95
    assert scores["left_right_accuracy"] == 1.0
    for clip in clips[:10]:
        found = evaluate.detect(clip.video)
        assert found.background == clip.background
        truth = clip.objects[0]
        obj = found.find(truth.color)
        # Centroids within half a pixel of the simulated centre while fully in view.
        inside = truth.visible_fraction > 0.99
        np.testing.assert_allclose(obj.position[inside], truth.position[inside], atol=0.5)
        assert (obj.count == 1).all()


def test_reversed_and_mirrored_videos_fail_direction(clips):
    # Played backwards, right is left. A mover that bounced in the second half starts the
    # reversed clip with the leg after its bounce, which runs the captioned way, so only
    # movers that never bounce are read as going exactly against their caption.
    never = [c for c in clips if not c.objects[0].bounced.any()]
    assert len(never) >= 20
    reversed_ = evaluate.prompt_adherence([c.video[::-1] for c in never], never)
    assert reversed_["color_accuracy"] == 1.0
    assert reversed_["direction_accuracy"] == 0.0 and reversed_["left_right_accuracy"] == 0.0
    assert evaluate.prompt_adherence([c.video[::-1] for c in clips], clips)["direction_accuracy"] <= 0.2
    mirrored = evaluate.prompt_adherence([c.video[:, :, ::-1] for c in clips], clips)
    assert mirrored["shape_accuracy"] >= 0.95  # circles, squares and upright triangles are symmetric
    assert mirrored["left_right_accuracy"] == 0.0


def test_wrong_colour_and_shape_are_caught(clips):
    # Swap red and blue channels: every colour but white and the greys changes name.
    swapped = [c.video[..., ::-1] for c in clips]
    assert evaluate.prompt_adherence(swapped, clips)["color_accuracy"] < 0.5
    # Render each clip's object with the next shape: the shape read must follow the pixels.
    shapes = {"circle": "square", "square": "triangle", "triangle": "circle"}
    cfg = data.SHAPES_WORLD_PRESETS["tiny"]
    xs = (np.arange(cfg.width) + 0.5)[None, None, :]
    ys = (np.arange(cfg.height) + 0.5)[None, :, None]
    videos = []
    for clip in clips[:20]:
        truth = clip.objects[0]
        radius = data.SIZES[truth.size] * min(cfg.height, cfg.width)
        a = data.coverage(data.signed_distance(shapes[truth.shape], radius, truth.position, xs, ys))[..., None]
        bg, fg = (np.asarray(p, np.float32) for p in (data.BACKGROUNDS[clip.background], data.COLORS[truth.color]))
        videos.append(np.round(bg + a * (fg - bg)).astype(np.uint8))
    assert evaluate.prompt_adherence(videos, clips[:20])["shape_accuracy"] == 0.0


def test_unmix_recovers_coverage():
    bg, fg = np.array(data.BACKGROUNDS["gray"], np.float32), np.array(data.COLORS["cyan"], np.float32)
    alphas = np.array([0.0, 0.1, 0.5, 0.8, 1.0], np.float32)
    video = np.round(bg + alphas[:, None] * (fg - bg)).astype(np.uint8).reshape(1, 1, 5, 3)
    labels, alpha = evaluate.unmix(video, "gray")
    assert labels[0, 0, 0] == -1 and labels[0, 0, 1] == -1  # below min_alpha: background
    assert (labels[0, 0, 2:] == list(data.COLORS).index("cyan")).all()
    np.testing.assert_allclose(alpha[0, 0, 2:], alphas[2:], atol=0.01)


def test_pillar_is_not_an_object():
    cfg = data.split_config(data.SHAPES_WORLD_PRESETS["tiny"], "test")
    seed = next(s for s in range(20_000_000, 20_000_200) if data.make_clip(cfg, s).occluder is not None)
    clip = data.make_clip(cfg, seed)
    found = evaluate.detect(clip.video)
    assert {o.color for o in found.objects} <= {o.color for o in clip.objects}


@pytest.mark.parametrize("direction", list(data.DIRECTIONS))
def test_motion_direction_of_straight_tracks(direction):
    v = np.array(data.DIRECTIONS[direction]) * 0.5  # the slowest speed
    track = np.array([16.0, 16.0]) + np.arange(17)[:, None] * v
    track[3] = np.nan  # a frame where the object was not seen
    assert evaluate.motion_direction(track) == direction
    assert evaluate.motion_direction(np.full((17, 2), 16.0)) == "still"
    assert evaluate.motion_direction(np.full((17, 2), np.nan)) == "unknown"


def test_errors():
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        evaluate.detect(np.zeros((17, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        evaluate.detect(np.zeros((17, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="one video per clip"):
        evaluate.prompt_adherence([], evaluate.adherence_clips(1))
