"""Frame sources: finding videos and image folders, decoding them, fitting frames to a size.

A *source* is one video file (any container and codec PyAV decodes) or one folder of images
(PNG/JPEG named as an ffmpeg dump names them, read in natural order: ``frame_2`` before
``frame_10``). A directory given on the command line is searched recursively: every video in it
is a source, and every folder that holds images is one.

Bad input policy:
- A corrupt or truncated image, or an undecodable stretch of video, is skipped with a warning
  naming the file, recorded in ``skipped``; decoding resumes at the next good frame and the
  clip is cut there (the frames around a gap are not neighbours in time).
- A source named on the command line with no decodable frame, a missing path or an empty folder
  is a :class:`UserError`. A video *found inside* a directory that cannot be opened at all is
  skipped with a warning, so one bad file does not stop a folder of hundreds.

Size policy (``fit_frame``): a frame whose aspect ratio differs from the target's is
centre-cropped to the target aspect ratio (no letterboxing, no distortion), then resized with
an area-averaging filter. Grayscale, palette and RGBA images become RGB (alpha is dropped).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from PIL import Image

from varnext_ray.errors import UserError

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = frozenset(
    {
        ".mp4",
        ".avi",
        ".mkv",
        ".mov",
        ".webm",
        ".m4v",
        ".mpg",
        ".mpeg",
        ".ts",
        ".wmv",
        ".flv",
        ".gif",
    }
)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})


@dataclass(frozen=True)
class Source:
    """One video file or one folder of images."""

    kind: str  # "video" | "images"
    path: Path
    files: tuple[Path, ...] = ()  # the images of an image folder, in natural order
    named: bool = True  # named on the command line (not found inside a directory)


@dataclass
class Skipped:
    """What was skipped while decoding, for the manifest."""

    items: list[dict] = field(default_factory=list)

    def add(self, path: Path | str, reason: str) -> None:
        log.warning("skipped %s: %s", path, reason)
        self.items.append({"path": str(path), "reason": reason})


GAP = None  # yielded by decode_source where frames were lost: the clip must be cut there


def parse_size(text: str, where: str = "--size") -> tuple[int, int]:
    """Parses ``WxH`` into (W, H), raising a UserError for anything else."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if (
        not match
        or int(match[1]) < 8
        or int(match[2]) < 8
        or int(match[1]) > 8192
        or int(match[2]) > 8192
    ):
        raise UserError(
            f"size must be WxH with each side 8..8192 (got {text!r})",
            where,
            "pass e.g. --size 640x360",
        )
    return int(match[1]), int(match[2])


def natural_key(path: Path) -> list:
    """Sort key that orders ``frame_2.png`` before ``frame_10.png``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def discover_sources(paths: list[Path]) -> tuple[list[Source], list[dict]]:
    """Expands command-line paths into sources; returns (sources, ignored files)."""
    sources: list[Source] = []
    ignored: list[dict] = []
    for path in paths:
        if not path.exists():
            raise UserError(
                "no such file or directory",
                str(path),
                "check the path (videos and image folders are accepted)",
            )
        if path.is_file():
            if path.suffix.lower() in IMAGE_SUFFIXES:
                sources.append(Source("images", path, (path,)))
            else:  # let PyAV decide whether it decodes: any container it knows is welcome
                sources.append(Source("video", path))
            continue
        found = _walk(path, ignored)
        if not found:
            raise UserError(
                "no videos or images found in the folder",
                str(path),
                f"put videos ({', '.join(sorted(VIDEO_SUFFIXES))}) or PNG/JPEG frames in it",
            )
        sources.extend(found)
    return sources, ignored


def _walk(folder: Path, ignored: list[dict]) -> list[Source]:
    images = sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=natural_key,
    )
    found = [Source("images", folder, tuple(images), named=False)] if images else []
    for entry in sorted(folder.iterdir(), key=natural_key):
        if entry.is_dir():
            found.extend(_walk(entry, ignored))
        elif entry.suffix.lower() in VIDEO_SUFFIXES:
            found.append(Source("video", entry, named=False))
        elif entry.suffix.lower() not in IMAGE_SUFFIXES:
            ignored.append({"path": str(entry), "reason": "not a video or image"})
    return found


def fit_frame(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre-crops (H, W, 3) uint8 to the aspect ratio of ``size`` = (W, H), then resizes."""
    width, height = size
    h, w = frame.shape[:2]
    if (w, h) == (width, height):
        return frame
    if w * height > h * width:  # too wide: crop the sides
        crop_w = round(h * width / height)
        x0 = (w - crop_w) // 2
        frame = frame[:, x0 : x0 + crop_w]
    elif w * height < h * width:  # too tall: crop top and bottom
        crop_h = round(w * height / width)
        y0 = (h - crop_h) // 2
        frame = frame[y0 : y0 + crop_h]
    image = Image.fromarray(np.ascontiguousarray(frame))
    return np.asarray(image.resize((width, height), Image.BILINEAR, reducing_gap=2.0))


def decode_source(source: Source, skipped: Skipped) -> Iterator[tuple[int, np.ndarray] | None]:
    """Yields (frame number in the source, (H, W, 3) uint8 RGB) or GAP where frames were lost."""
    if source.kind == "images":
        yield from _decode_images(source, skipped)
    else:
        yield from _decode_video(source, skipped)


def _decode_images(source: Source, skipped: Skipped) -> Iterator[tuple[int, np.ndarray] | None]:
    lost = False
    for number, path in enumerate(source.files):
        try:
            with Image.open(path) as image:
                rgb = np.asarray(image.convert("RGB"))
        except (OSError, ValueError, SyntaxError) as err:
            skipped.add(path, f"undecodable image ({err})")
            lost = True
            continue
        if lost:
            yield GAP
            lost = False
        yield number, rgb


def _decode_video(source: Source, skipped: Skipped) -> Iterator[tuple[int, np.ndarray] | None]:
    try:
        container = av.open(str(source.path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as err:
        if source.named:
            raise UserError(
                f"cannot open as a video ({_short(err)})",
                str(source.path),
                "check the file plays, or convert it with ffmpeg",
            ) from None
        skipped.add(source.path, f"cannot open as a video ({_short(err)})")
        return
    with container:
        if not container.streams.video:
            skipped.add(source.path, "no video stream")
            return
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        number, bad_packets = 0, 0
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.FFmpegError as err:
                bad_packets += 1
                if bad_packets == 1:
                    skipped.add(
                        source.path, f"undecodable stretch near frame {number} ({_short(err)})"
                    )
                continue
            if bad_packets:
                yield GAP
                bad_packets = 0
            for frame in frames:
                yield number, frame.to_ndarray(format="rgb24")
                number += 1


def _short(err: Exception) -> str:
    return str(err).splitlines()[0][:120] if str(err) else type(err).__name__
