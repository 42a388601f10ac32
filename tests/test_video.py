import subprocess

import numpy as np
import pytest

from sora_mini import video
from sora_mini.data import ShapesWorldConfig, make_clip


@pytest.fixture(scope="module")
def clip_video():
    return make_clip(ShapesWorldConfig(), 5).video


def test_ffmpeg_is_one_mediapy_can_read_with():
    out = subprocess.run([video.ffmpeg_path(), "-hide_banner", "-vsync", "vfr", "-f", "lavfi",
                          "-i", "color=c=red:s=16x16:d=0.1", "-f", "null", "-"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-500:]


@pytest.mark.parametrize("suffix, tolerance", [(".mp4", 6.0), (".gif", 6.0)])
def test_write_then_read_round_trip(tmp_path, clip_video, suffix, tolerance):
    path = video.write_video(tmp_path / f"clip{suffix}", clip_video, fps=8)
    back = video.read_video(path)
    assert back.shape == clip_video.shape and back.dtype == np.uint8
    err = np.abs(back.astype(float) - clip_video.astype(float)).mean()
    assert err < tolerance, err
    # 4:2:0 chroma costs a few levels at 32x32, but every frame comes back, in order.
    per_frame = np.abs(back.astype(float) - clip_video.astype(float)).mean(axis=(1, 2, 3))
    assert np.all(per_frame < 2 * tolerance), per_frame


def test_video_errors(tmp_path, clip_video):
    with pytest.raises(ValueError, match=r"uint8 video"):
        video.write_video(tmp_path / "x.mp4", clip_video.astype(np.float32))
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        video.write_video(tmp_path / "x.mp4", clip_video[0])
    with pytest.raises(ValueError, match=r"\.mp4 or \.gif"):
        video.write_video(tmp_path / "x.avi", clip_video)
    with pytest.raises(FileNotFoundError):
        video.read_video(tmp_path / "missing.mp4")


def test_grid_and_conversions(clip_video):
    grid = video.video_grid([clip_video] * 5, cols=2, pad=2)
    assert grid.shape == (17, 3 * 34 + 2, 2 * 34 + 2, 3)
    assert np.array_equal(grid[:, 2:34, 36:68], clip_video)
    assert np.all(grid[:, 70:, 36:] == 255)  # the empty sixth cell is padding
    assert video.upscale(clip_video, 3).shape == (17, 96, 96, 3)
    assert np.array_equal(video.to_uint8(video.to_float(clip_video)), clip_video)
    f = video.to_float(clip_video)
    assert f.dtype == np.float32 and f.min() >= -1 and f.max() <= 1
    with pytest.raises(ValueError, match="share one shape"):
        video.video_grid([clip_video, clip_video[:5]], cols=2)


def test_odd_sizes_are_padded_to_even_for_h264(tmp_path, clip_video):
    odd = np.ascontiguousarray(clip_video[:, :31, :29])
    back = video.read_video(video.write_video(tmp_path / "odd.mp4", odd))
    assert back.shape == (17, 32, 30, 3)
    assert np.abs(back[:, :31, :29].astype(float) - odd).mean() < 6.0
