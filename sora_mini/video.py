"""Videos in and out: mediapy wired to a known-good ffmpeg, and tiling clips into a grid.

mediapy shells out to an `ffmpeg` binary. Many machines have none, and the newest
imageio-ffmpeg wheel bundles ffmpeg 9, whose removed `-vsync` option breaks mediapy's
*reader*. We pin `imageio-ffmpeg<0.8` (ffmpeg 7: writes and reads) and point mediapy at
its binary, so the same code works on a bare laptop, in CI and on Colab. Set the
environment variable `SORA_MINI_FFMPEG` to use another binary.
"""

from __future__ import annotations

import functools
import html
import os
from collections.abc import Sequence

import mediapy
import numpy as np


@functools.cache
def ffmpeg_path() -> str:
    """The ffmpeg binary mediapy uses; configured once per process."""
    path = os.environ.get("SORA_MINI_FFMPEG")
    if not path:
        import imageio_ffmpeg  # ships a static ffmpeg inside its wheel

        path = imageio_ffmpeg.get_ffmpeg_exe()
    mediapy.set_ffmpeg(path)
    return path


def check_video(video) -> np.ndarray:
    """`video` as a `uint8 [T, H, W, 3]` array, or a `ValueError` that says what it is instead."""
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"expected a video of shape [T, H, W, 3], got {video.shape}")
    if video.dtype != np.uint8:
        raise ValueError(f"expected a uint8 video (values 0..255), got {video.dtype}; "
                         "convert [-1, 1] floats with sora_mini.video.to_uint8")
    return video


def to_uint8(video) -> np.ndarray:
    """Model space `float [-1, 1]` -> stored `uint8 [0, 255]` (rounded, clipped)."""
    return np.clip(np.round((np.asarray(video, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def to_float(video) -> np.ndarray:
    """Stored `uint8 [0, 255]` -> model space `float32 [-1, 1]`."""
    return np.asarray(video, np.float32) / 127.5 - 1.0


def write_video(path: str | os.PathLike, video, fps: int = 8) -> str:
    """Write `uint8 [T, H, W, 3]` to `.mp4` (H.264) or `.gif`, chosen by the suffix."""
    video = check_video(video)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    ffmpeg_path()
    if path.endswith(".gif"):
        mediapy.write_video(path, video, fps=fps, codec="gif")
    elif path.endswith(".mp4"):
        # H.264 in yuv420p (what every player reads) needs even sides: pad odd ones by one
        # edge pixel rather than let mediapy fall back to yuv444p, which many players refuse.
        T, H, W, _ = video.shape
        video = np.pad(video, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)), mode="edge")
        mediapy.write_video(path, video, fps=fps, codec="h264", qp=10)
    else:
        raise ValueError(f"unsupported video file {path!r}: expected a .mp4 or .gif suffix")
    return path


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Read a video file back as `uint8 [T, H, W, 3]`."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no video file at {path!r}")
    ffmpeg_path()
    return np.asarray(mediapy.read_video(path))


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file (.png, .jpg) as `uint8 [H, W, 3]` (any alpha channel dropped)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no image file at {path!r}")
    image = np.asarray(mediapy.read_image(path))
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.dtype != np.uint8:
        image = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    return image[..., :3]


def video_grid(videos: Sequence[np.ndarray] | np.ndarray, cols: int, pad: int = 2,
               pad_value: int = 255) -> np.ndarray:
    """Tile `N` clips `uint8 [T, H, W, 3]` into one `[T, rows*(H+pad)+pad, cols*(W+pad)+pad, 3]`."""
    videos = [check_video(v) for v in videos]
    if not videos:
        raise ValueError("video_grid needs at least one video")
    if len({v.shape for v in videos}) != 1:
        raise ValueError(f"all videos must share one shape, got {sorted({v.shape for v in videos})}")
    T, H, W, _ = videos[0].shape
    rows = -(-len(videos) // cols)
    grid = np.full((T, rows * (H + pad) + pad, cols * (W + pad) + pad, 3), pad_value, np.uint8)
    for i, v in enumerate(videos):
        r, c = divmod(i, cols)
        y, x = pad + r * (H + pad), pad + c * (W + pad)
        grid[:, y:y + H, x:x + W] = v
    return grid


def upscale(video: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling, so 32x32 clips are visible on screen without blur."""
    return np.repeat(np.repeat(np.asarray(video), factor, axis=-3), factor, axis=-2)


def show_videos(videos, titles=None, *, fps: int = 8, scale: int = 4, columns: int | None = None):
    """Show clips inline in a notebook (mediapy), upscaled for visibility."""
    ffmpeg_path()
    videos = [upscale(check_video(v), scale) for v in videos]
    return mediapy.show_videos(videos, titles=titles, fps=fps, columns=columns, codec="gif")


def write_gallery(out_dir: str | os.PathLike, videos: Sequence[np.ndarray], captions: Sequence[str], *,
                  title: str = "sora-mini", notes: Sequence[str] | None = None, fps: int = 8,
                  scale: int = 4) -> str:
    """Write each clip as `NN.gif` and `NN.mp4` (upscaled) and an `index.html` that shows the
    GIFs with their captions (and an optional note under each). Returns the page's path."""
    if len(videos) != len(captions) or (notes is not None and len(notes) != len(videos)):
        raise ValueError(f"need one caption (and note) per video, got {len(videos)} videos, {len(captions)} "
                         f"captions and {None if notes is None else len(notes)} notes")
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    cards = []
    for i, (video, caption) in enumerate(zip(videos, captions)):
        big = upscale(check_video(video), scale)
        write_video(os.path.join(out_dir, f"{i:02d}.gif"), big, fps=fps)
        write_video(os.path.join(out_dir, f"{i:02d}.mp4"), big, fps=fps)
        note = f'<p class="note">{html.escape(notes[i])}</p>' if notes is not None else ""
        cards.append(f'<figure><a href="{i:02d}.mp4"><img src="{i:02d}.gif" alt="{html.escape(caption)}"></a>'
                     f"<figcaption>{html.escape(caption)}</figcaption>{note}</figure>")
    page = os.path.join(out_dir, "index.html")
    with open(page, "w") as f:
        f.write(f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; background: #fafafa; }}
main {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); gap: 1.5em; }}
figure {{ margin: 0; }} img {{ width: 100%; image-rendering: pixelated; border-radius: 4px; }}
figcaption {{ font-size: 0.95em; }} .note {{ font-size: 0.8em; color: #666; margin: 0.3em 0; }}
</style></head>
<body><h1>{html.escape(title)}</h1>
<main>
{chr(10).join(cards)}
</main></body></html>
""")
    return page
