"""Writing pictures and videos: PNG files and folders, GIFs, and H.264 mp4s.

Used by the synthetic scenes (:mod:`varnext_ray.synth`), predictions
(:mod:`varnext_ray.predict`) and the training loop's strips and rollout GIFs. Every writer takes
uint8 (H, W, 3) arrays.

Example:
    >>> write_video(Path("clip.mp4"), iter(frames), fps=30)
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from pathlib import Path

import av
import numpy as np
from PIL import Image

from varnext_ray.safe_io import parent_folders, write_atomic

FPS = 30  # frame rate of written videos unless told otherwise


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Writes a uint8 (H, W, 3) array as a PNG (parent folders created); returns the path."""
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) array (got {array.dtype} {array.shape})")
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    with parent_folders(path) as path:
        return write_atomic(path, buffer.getvalue())  # never half a picture


def write_png_folder(folder: Path, frames: Iterator[np.ndarray]) -> int:
    """Writes frames as ``frame_00001.png``... (ffmpeg's dump naming); returns the count."""
    folder.mkdir(parents=True)
    count = 0
    for count, frame in enumerate(frames, start=1):
        Image.fromarray(frame).save(folder / f"frame_{count:05d}.png", compress_level=1)
    return count


def save_gif(
    pictures: Iterable[np.ndarray], path: str | Path, *, frame_ms: int = 300, min_width: int = 0
) -> Path:
    """Writes pictures as a looping GIF (all held in memory; parent folders created).

    Pictures narrower than ``min_width`` are scaled up by a whole factor (nearest neighbour),
    so small frames stay visible.
    """
    images = [Image.fromarray(p) for p in pictures]
    width, height = images[0].size
    scale = max(1, min_width // max(width, 1))
    if scale > 1:
        size = (width * scale, height * scale)
        images = [image.resize(size, Image.Resampling.NEAREST) for image in images]
    with parent_folders(path) as path:
        images[0].save(
            path, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms, loop=0
        )
    return path


def write_video(path: Path, frames: Iterator[np.ndarray], fps: int = FPS) -> int:
    """Encodes frames to an H.264 mp4 with PyAV; returns the number written."""
    count = 0
    with av.open(str(path), mode="w") as container:
        stream = None
        for frame in frames:
            if stream is None:
                stream = container.add_stream("libx264", rate=fps)
                stream.height, stream.width = frame.shape[:2]
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": "16", "preset": "veryfast"}
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
            count += 1
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    return count
