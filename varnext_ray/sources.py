"""Frame sources: finding videos and image folders, decoding them, fitting frames to a size.

A *source* is one video file (any container and codec PyAV decodes) or one folder of images
(PNG/JPEG named as an ffmpeg dump names them, read in natural order: ``frame_2`` before
``frame_10``). A directory given on the command line is searched recursively: every video in it
is a source, and every folder that holds images is one. An animated image (a GIF or an APNG,
whatever its suffix) is a video: its frames are a clip, not one still; among a folder's stills
it leaves a hole that cuts their clip. Where a folder holds one frame in two formats
(``f_1.png`` and ``f_1.jpg``), the PNG is read and the other is skipped with a warning.

Bad input policy:
- A corrupt or truncated image, or an undecodable stretch of video, is skipped with a warning
  naming the file, recorded in ``skipped``; decoding resumes at the next good frame and the
  clip is cut there (the frames around a gap are not neighbours in time).
- A source named on the command line with no decodable frame or no video stream, a missing
  path or an empty folder is a :class:`UserError`. A video *found inside* a directory that
  cannot be opened at all is skipped with a warning, so one bad file does not stop a folder of
  hundreds.

Size policy (``fit_frame``): a frame whose aspect ratio differs from the target's is
centre-cropped to the target aspect ratio (no letterboxing, no distortion), then resized with
an area-averaging filter. A crop that would keep less than one pixel row or column is refused.
Image modes (``read_image``): 16-bit grayscale (``I;16``, ``I``) is scaled to 8 bits (65535 ->
255, not clipped), float (``F``) from [0, 1]; palette, grayscale+alpha, CMYK and RGBA images
become RGB (alpha is dropped, after the palette's transparency is applied). An EXIF orientation
is applied: a photo stored sideways with ``Orientation=6`` is read upright.

Paths: every path is resolved to its real path, so a folder reached twice (a symlink loop, the
same folder named twice, a symlink to a sibling) is read once; FIFOs, devices and sockets are
never opened (named ones are a UserError, found ones are ignored and listed in ``ignored``).
Images over :data:`MAX_PIXELS` pixels and videos whose frames are larger are refused before
decoding.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import stat
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import av
import numpy as np
from PIL import ExifTags, Image, ImageOps

from varnext_ray import video
from varnext_ray.errors import UserError
from varnext_ray.safe_io import kind_of, os_reason, path_stat, regular_file
from varnext_ray.video import (
    NO_VIDEO_FIX,
    FrameNumbers,
    main_video_stream,
    no_video_stream,
    open_video,
)

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
MAX_PIXELS = 8192 * 8192  # per decoded image or video frame (an 8K frame is 33M pixels)
MAX_SIDE = 8192  # of --size
MAX_ASPECT = 16  # of --size: the longer side at most 16 times the shorter


@dataclass(frozen=True)
class Source:
    """One video file or one folder of images."""

    kind: str  # "video" | "images"
    path: Path
    files: tuple[Path, ...] = ()  # the images of an image folder, in natural order
    named: bool = True  # named on the command line (not found inside a directory)
    # Images of a folder left out as another format of a kept frame: (left out, kept).
    duplicates: tuple[tuple[Path, Path], ...] = ()
    # Animated images among ``files``, read as videos of their own: holes that cut the clip.
    animated: frozenset[Path] = frozenset()


@dataclass
class Skipped:
    """What was skipped while decoding, for the manifest."""

    items: list[dict] = field(default_factory=list)

    def add(self, path: Path | str, reason: str) -> None:
        log.warning("skipped %s: %s", path, reason)
        self.items.append({"path": str(path), "reason": reason})


@contextlib.contextmanager
def warnings_after_success(*others: logging.Logger) -> Iterator[None]:
    """Holds the "skipped ..." warnings logged inside (and whatever ``others`` log) and logs
    them only if no error escapes.

    A failed command then prints only its one ``error:`` line, not a warning per undecodable
    frame before it.
    """
    held: list[tuple[logging.Logger, logging.LogRecord]] = []
    loggers = [log, *others]
    filters = []
    for logger in loggers:

        def hold(record: logging.LogRecord, logger: logging.Logger = logger) -> bool:
            held.append((logger, record))
            return False

        logger.addFilter(hold)
        filters.append(hold)
    try:
        yield
    finally:
        for logger, hold in zip(loggers, filters, strict=True):
            logger.removeFilter(hold)
    for logger, record in held:  # only reached on success, in the order they were logged
        logger.handle(record)


GAP = None  # yielded by decode_source where frames were lost: the clip must be cut there


def parse_size(text: str, where: str = "--size", max_side: int = MAX_SIDE) -> tuple[int, int]:
    """Parses ``WxH`` into (W, H), raising a UserError for anything else.

    Each side is 8..``max_side`` and the longer side at most :data:`MAX_ASPECT` times the
    shorter.
    """
    match = re.fullmatch(r"\s*([0-9]{1,6})\s*[xX]\s*([0-9]{1,6})\s*", text)
    shown = repr(text if len(text) <= 40 else text[:37] + "...")
    if not match or not all(8 <= int(side) <= max_side for side in match.groups()):
        raise UserError(
            f"size must be WxH with each side 8..{max_side} (got {shown})",
            where,
            "pass e.g. --size 640x360",
        )
    width, height = int(match[1]), int(match[2])
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise UserError(
            f"size {width}x{height} has an aspect ratio beyond {MAX_ASPECT}:1",
            where,
            "pass a frame-like size such as 640x360 (the frames are centre-cropped to it)",
        )
    return width, height


def natural_key(path: Path) -> list:
    """Sort key that orders ``frame_2.png`` before ``frame_10.png``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


_SOURCE_FIX = "check the path (videos and image folders are accepted)"
MAX_DEPTH = 32  # folder levels searched below a named folder


def _real(path: Path) -> str:
    """The canonical path (symlinks resolved), to read each file or folder once."""
    return os.path.realpath(path)


def discover_sources(paths: list[Path]) -> tuple[list[Source], list[dict]]:
    """Expands command-line paths into sources; returns (sources, ignored files).

    A file or folder reached twice (named twice, through a symlink, in a symlink loop) is read
    once. A named path that is missing, unreadable or not a regular file or folder (a FIFO, a
    device) is a UserError; such entries found inside a folder are listed in ``ignored``.
    """
    sources: list[Source] = []
    ignored: list[dict] = []
    seen: set[str] = set()
    for path in paths:
        st = path_stat(path, "source", _SOURCE_FIX)
        if st is None:
            raise UserError("no such file or directory", str(path), _SOURCE_FIX)
        real = _real(path)
        if real in seen:
            ignored.append({"path": str(path), "reason": "named twice (read once)"})
            continue
        if stat.S_ISREG(st.st_mode):
            seen.add(real)
            if path.suffix.lower() in IMAGE_SUFFIXES and not is_animated(path):
                sources.append(Source("images", path, (path,)))
            else:  # let PyAV decide whether it decodes: any container it knows is welcome
                sources.append(Source("video", path))
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise UserError(
                f"source is {kind_of(st.st_mode)}, not a video, image or folder",
                str(path),
                "pass a video file, an image or a folder of them",
            )
        before = len(ignored)
        found = _walk(path, ignored, seen, 0, named=True)
        if not found:
            raise _nothing_found(path, ignored[before:])
        sources.extend(found)
    return sources, ignored


def _nothing_found(folder: Path, left_out: list[dict]) -> UserError:
    """The error for a named folder with no source in it, saying what its search left out."""
    what = "no videos or images found in the folder"
    fixes = [f"put videos ({', '.join(sorted(VIDEO_SUFFIXES))}) or PNG/JPEG frames in it"]
    if left_out:
        what += f"; its search left out {describe_ignored(left_out)}"
        fixes = [*ignored_fixes(left_out), *fixes]
    return UserError(what, str(folder), "; or ".join(fixes))


class _LeftOut(NamedTuple):
    """A kind of ``ignored`` entry, known by how its reason starts."""

    start: str
    one: str
    many: str
    expected: bool  # False: frames the user meant to ingest are lost, so it is always said
    fix: str = ""


_LEFT_OUT = (
    _LeftOut(
        "deeper than",
        f"folder over {MAX_DEPTH} levels deep",
        f"folders over {MAX_DEPTH} levels deep",
        False,
        f"pass the deep folder itself (a search goes {MAX_DEPTH} folder levels down)",
    ),
    _LeftOut(
        "cannot list",
        "unreadable folder",
        "unreadable folders",
        False,
        "make the folders readable (chmod) or run as a user who can read them",
    ),
    _LeftOut(
        "cannot read",
        "unreadable entry",
        "unreadable entries",
        False,
        "make the entries readable or remove broken links",
    ),
    _LeftOut(
        "not a video or image", "file not a video or image", "files not videos or images", True
    ),
)
_OTHER = _LeftOut("", "other entry", "other entries", True)  # repeats, FIFOs, devices


def _left_out(entry: dict) -> _LeftOut:
    return next((k for k in _LEFT_OUT if entry["reason"].startswith(k.start)), _OTHER)


def unexpected_ignored(ignored: list[dict]) -> list[dict]:
    """The entries of ``ignored`` a user would not expect: folders too deep, unreadable ones."""
    return [entry for entry in ignored if not _left_out(entry).expected]


def describe_ignored(ignored: list[dict]) -> str:
    """``ignored`` counted by reason with one example each, unexpected reasons first, e.g.
    ``1 folder over 32 levels deep (e.g. a/a/...), 2 files not videos or images (e.g. x.txt)``."""
    groups: dict[_LeftOut, list[dict]] = {}
    for entry in sorted(ignored, key=lambda e: _left_out(e).expected):
        groups.setdefault(_left_out(entry), []).append(entry)
    parts = []
    for kind, entries in groups.items():
        example = entries[0]["path"]
        if kind.start in ("cannot list", "cannot read", ""):  # the reason says more
            example += f": {entries[0]['reason']}"
        parts.append(
            f"{len(entries)} {kind.one if len(entries) == 1 else kind.many} (e.g. {example})"
        )
    return ", ".join(parts)


def ignored_fixes(ignored: list[dict]) -> list[str]:
    """What to do about the unexpected entries of ``ignored``, one fix per reason."""
    return list(dict.fromkeys(_left_out(e).fix for e in unexpected_ignored(ignored)))


def _entries(folder: Path, ignored: list[dict], named: bool) -> list[tuple[Path, int]]:
    """(entry, st_mode) of a folder, sorted naturally; unreadable entries go to ``ignored``."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as err:
        if named:
            raise UserError(
                f"cannot list the folder ({os_reason(err)})", str(folder), _SOURCE_FIX
            ) from None
        ignored.append({"path": str(folder), "reason": f"cannot list ({os_reason(err)})"})
        return []
    out = []
    for name in names:
        entry = folder / name
        try:
            out.append((entry, os.stat(entry).st_mode))
        except (OSError, ValueError) as err:
            reason = os_reason(err) if isinstance(err, OSError) else str(err)
            ignored.append({"path": str(entry), "reason": f"cannot read ({reason})"})
    return sorted(out, key=lambda item: natural_key(item[0]))


def _walk(
    folder: Path, ignored: list[dict], seen: set[str], depth: int, named: bool = False
) -> list[Source]:
    real = _real(folder)
    if real in seen:
        ignored.append({"path": str(folder), "reason": "already read (a symlink or repeat)"})
        return []
    seen.add(real)
    if depth > MAX_DEPTH:
        ignored.append({"path": str(folder), "reason": f"deeper than {MAX_DEPTH} folders"})
        return []
    entries = _entries(folder, ignored, named)
    images, animated = [], set()
    for entry, mode in entries:
        image = stat.S_ISREG(mode) and entry.suffix.lower() in IMAGE_SUFFIXES
        if not image or _real(entry) in seen:
            continue
        if is_animated(entry):  # its frames are a clip of their own: a video source below
            animated.add(entry)
            continue
        seen.add(_real(entry))
        images.append(entry)
    stills, duplicates = _one_per_stem(images)
    found = []
    if stills:  # an animated image keeps its place: the frames around it are not neighbours
        kept = animated.union(stills)
        files = tuple(entry for entry, _ in entries if entry in kept)
        found.append(Source("images", folder, files, False, duplicates, frozenset(animated)))
    for entry, mode in entries:
        suffix = entry.suffix.lower()
        if stat.S_ISDIR(mode):
            found.extend(_walk(entry, ignored, seen, depth + 1))
        elif not stat.S_ISREG(mode):
            ignored.append({"path": str(entry), "reason": f"{kind_of(mode)}, not a file"})
        elif suffix in VIDEO_SUFFIXES or entry in animated:
            if _real(entry) in seen:
                ignored.append({"path": str(entry), "reason": "already read (a symlink or repeat)"})
                continue
            seen.add(_real(entry))
            found.append(Source("video", entry, named=False))
        elif suffix not in IMAGE_SUFFIXES:
            ignored.append({"path": str(entry), "reason": "not a video or image"})
    return found


_FORMAT_RANK = {".png": 0, ".jpg": 1, ".jpeg": 1}  # lossless first


def _one_per_stem(images: list[Path]) -> tuple[list[Path], tuple[tuple[Path, Path], ...]]:
    """One image per stem (case ignored): ``f_1.png`` and ``f_1.jpg`` are one frame twice.

    Keeps the PNG (lossless), else the first in natural order; returns the kept images in their
    order and the (left out, kept) pairs.
    """
    kept: dict[str, Path] = {}
    for path in images:
        best = kept.setdefault(path.stem.lower(), path)
        if _FORMAT_RANK[path.suffix.lower()] < _FORMAT_RANK[best.suffix.lower()]:
            kept[path.stem.lower()] = path
    chosen = set(kept.values())
    left_out = tuple((p, kept[p.stem.lower()]) for p in images if p not in chosen)
    return [p for p in images if p in chosen], left_out


def is_animated(path: Path) -> bool:
    """Whether an image file holds more than one frame (an animated GIF or APNG, whatever its
    suffix). Only the header is read; a file that cannot be read counts as a still (reading it
    as an image later says why)."""
    try:
        # O_NONBLOCK: should the path be swapped for a FIFO after the listing, open does not block.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False
    with os.fdopen(fd, "rb") as f:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode) or not f.read(8).startswith(_ANIMATABLE):
                return False
            f.seek(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(f) as image:
                    return image.format in ("GIF", "PNG") and bool(getattr(image, "is_animated", 0))
        except DECODER_ERRORS:
            return False


_ANIMATABLE = (b"GIF87a", b"GIF89a", b"\x89PNG\r\n\x1a\n")


MAX_UPSCALE = 16  # a frame's centre crop is enlarged at most this many times a side to fit


def fit_frame(
    frame: np.ndarray,
    size: tuple[int, int],
    where: str = "--size",
    max_upscale: float | None = None,
) -> np.ndarray:
    """Centre-crops (H, W, 3) uint8 to the aspect ratio of ``size`` = (W, H), then resizes.

    Raises:
        UserError: The crop would keep less than one row or column, or (with ``max_upscale``)
            it would be enlarged more than that many times along a side.
    """
    h, w = frame.shape[:2]
    if (w, h) == tuple(size):
        return frame
    check_fit((w, h), size, where, max_upscale)
    image = Image.fromarray(np.ascontiguousarray(centre_crop(frame, size)))
    return np.asarray(image.resize(tuple(size), Image.BILINEAR, reducing_gap=2.0))


def check_fit(
    frame_size: tuple[int, int],
    size: tuple[int, int],
    where: str = "--size",
    max_upscale: float | None = None,
) -> None:
    """Raises the UserError :func:`fit_frame` would for a frame of ``frame_size`` = (W, H)."""
    (w, h), (width, height) = frame_size, size
    crop_w, crop_h = crop_size((w, h), size)
    if min(crop_w, crop_h) < 1:
        raise UserError(
            f"a {w}x{h} frame cropped to the aspect ratio of {width}x{height} keeps no pixels "
            f"({crop_w}x{crop_h})",
            where,
            f"pass a size closer to the frames' aspect ratio, e.g. --size {_like(w, h)}",
        )
    factor = max(width / crop_w, height / crop_h)
    if max_upscale is not None and factor > max_upscale:
        raise UserError(
            f"{width}x{height} would enlarge the {crop_w}x{crop_h} centre crop of {w}x{h} frames "
            f"{factor:.0f} times (at most {max_upscale:g})",
            where,
            f"pass a size near the frames' own, e.g. --size {_like(w, h)}",
        )


def crop_size(frame_size: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """(W, H) of the centre crop of a ``frame_size`` frame to the aspect ratio of ``size``."""
    (w, h), (width, height) = frame_size, size
    if w * height > h * width:  # too wide: crop the sides
        return round(h * width / height), h
    if w * height < h * width:  # too tall: crop top and bottom
        return w, round(w * height / width)
    return w, h


def centre_crop(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The centre of (H, W, 3) ``frame`` at the aspect ratio of ``size`` = (W, H), at the
    frame's own resolution (a view, not a copy)."""
    h, w = frame.shape[:2]
    crop_w, crop_h = crop_size((w, h), size)
    x0, y0 = (w - crop_w) // 2, (h - crop_h) // 2
    return frame[y0 : y0 + crop_h, x0 : x0 + crop_w]


def _like(w: int, h: int) -> str:
    """A --size of the frames' own aspect ratio, within the allowed sides."""
    scale = min(1.0, 640 / max(w, h, 1))
    return f"{max(8, round(w * scale))}x{max(8, round(h * scale))}"


_MODE_SCALE = {"I;16": 257.0, "I;16L": 257.0, "I;16B": 257.0, "I;16N": 257.0, "I": 257.0}


def to_rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow image as (H, W, 3) uint8 RGB, scaling 16-bit and float modes properly.

    ``image.convert("RGB")`` clips 16-bit grayscale at 255 (a white frame); here 65535 -> 255.
    Palette images are converted through RGBA, so their transparency is applied, not warned.
    """
    mode = image.mode
    if mode in _MODE_SCALE:
        values = np.asarray(image, dtype=np.float64)
        if mode == "I" and values.size and values.max() <= 255 and values.min() >= 0:
            scale = 1.0  # an 8-bit image stored as 32-bit ints
        else:
            scale = _MODE_SCALE[mode]
        gray = np.clip(np.round(values / scale), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0)
        gray = np.clip(np.round(values * 255), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    if mode in ("P", "PA", "LA", "La", "RGBa") or (mode == "L" and "transparency" in image.info):
        image = image.convert("RGBA")
    return np.ascontiguousarray(np.asarray(image.convert("RGB")))


# A decoder fed hostile bytes may raise anything (OSError, SyntaxError, struct.error,
# IndexError, DecompressionBombError, ...): each is a file it cannot read, never a traceback.
DECODER_ERRORS = (Exception,)


_IMAGE_FIX = "check the file opens in an image viewer, or re-export it as PNG"


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB (see :func:`to_rgb`).

    Raises:
        UserError: Not a regular file (never opens a FIFO), larger than ``max_pixels`` (checked
            from the header, before decoding), or undecodable.
    """
    fix = _IMAGE_FIX
    path = regular_file(path, "image", fix)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)  # e.g. palette transparency notes
            with Image.open(path) as image:
                w, h = image.size
                if w * h > max_pixels or min(w, h) < 1:
                    raise UserError(
                        f"image is {w}x{h}: over the limit of {max_pixels:,} pixels"
                        if w * h > max_pixels
                        else f"image is {w}x{h}: empty",
                        str(path),
                        "resize it (frames of up to 8192x8192 are read)",
                    )
                return to_rgb(_upright(image))
    except UserError:
        raise
    except Image.DecompressionBombWarning as err:
        raise UserError(f"cannot read as an image ({err})", str(path), fix) from None
    except DECODER_ERRORS as err:
        raise UserError(f"cannot read as an image ({_short(err)})", str(path), fix) from None


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says (a phone photo stored sideways)."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except DECODER_ERRORS:  # an unreadable EXIF block: the pixels are still good
        return image
    return ImageOps.exif_transpose(image) if orientation in range(2, 9) else image


def decode_source(source: Source, skipped: Skipped) -> Iterator[tuple[int, np.ndarray] | None]:
    """Yields (frame number in the source, (H, W, 3) uint8 RGB) or GAP where frames were lost."""
    if source.kind == "images":
        yield from _decode_images(source, skipped)
    else:
        yield from _decode_video(source, skipped)


def _decode_images(source: Source, skipped: Skipped) -> Iterator[tuple[int, np.ndarray] | None]:
    for left_out, kept in source.duplicates:
        skipped.add(
            left_out, f"same stem as {kept.name}: one frame stored twice ({kept.name} used)"
        )
    lost = False
    for number, path in enumerate(source.files):
        if path in source.animated:  # read as a video of its own
            lost = True
            continue
        try:
            rgb = read_image(path)
        except UserError as err:
            if source.named:  # one image named on the command line: say why, once
                raise
            skipped.add(path, f"undecodable image ({err.what})")
            lost = True
            continue
        if lost:
            yield GAP
            lost = False
        yield number, rgb


_OPEN_FIX = "check the file plays, or convert it with ffmpeg"


def open_video_stream(path: Path, *, say_choice: bool = False) -> tuple[Any, Any]:
    """The opened container of a video file and the stream to read (:func:`main_video_stream`;
    ``say_choice`` logs which where there are several). Reads the header only, no frame.

    Raises:
        UserError: Not a regular file (never opens a FIFO), not a video, no video stream, or
            frames over :data:`MAX_PIXELS` pixels.
    """
    regular_file(path, "video", _OPEN_FIX)
    try:
        container = open_video(path)
    except DECODER_ERRORS as err:
        raise UserError(f"cannot open as a video ({_short(err)})", str(path), _OPEN_FIX) from None
    stream = main_video_stream(container, path if say_choice else None)
    if stream is None:
        what, fix = no_video_stream(container), NO_VIDEO_FIX
    elif (w := stream.codec_context.width or 0) * (h := stream.codec_context.height or 0) > (
        MAX_PIXELS
    ):
        what = f"video frames of {w}x{h} are over the limit of {MAX_PIXELS:,} pixels"
        fix = "downscale it with ffmpeg first"
    else:
        return container, stream
    container.close()
    raise UserError(what, str(path), fix)


def frame_size(source: Source) -> tuple[int, int]:
    """(W, H) of a source's frames as its header says, without decoding a frame: the main
    video stream's, or a single image's (the first image of a folder's).

    Raises:
        UserError: As :func:`open_video_stream` or :func:`read_image` would.
    """
    if source.kind == "video":
        container, stream = open_video_stream(source.path)
        with container:
            return stream.codec_context.width, stream.codec_context.height
    path = regular_file(source.files[0], "image", _IMAGE_FIX)
    try:
        with warnings.catch_warnings(), Image.open(path) as image:
            warnings.simplefilter("ignore")
            return image.size
    except DECODER_ERRORS as err:
        raise UserError(f"cannot read as an image ({_short(err)})", str(path), _IMAGE_FIX) from None


def _decode_video(source: Source, skipped: Skipped) -> Iterator[tuple[int, np.ndarray] | None]:
    """The frames of the main video stream, numbered by their place in the file
    (:class:`~varnext_ray.video.FrameNumbers`), GAP before the first after a loss."""
    try:
        container, stream = open_video_stream(source.path, say_choice=True)
    except UserError as err:
        if source.named:
            raise
        skipped.add(source.path, err.what)
        return
    with container:
        stream.thread_type = "AUTO"
        numbers, since_frame = FrameNumbers(), 0.0
        packets = _packets(container, stream, source, skipped)
        while True:
            started = time.monotonic()  # reading and decoding only, not the caller's time
            try:
                packet = next(packets, None)
            except av.ExitError:  # a single read ran STALL_S (open_video's read timeout)
                skipped.add(source.path, _stalled(numbers.next))
                return
            if packet is None:
                return
            numbers.demuxed(packet)
            frames = _decode_packet(packet, numbers, source, skipped)
            since_frame = 0.0 if frames else since_frame + time.monotonic() - started
            if since_frame > video.STALL_S:
                skipped.add(source.path, _stalled(numbers.next))
                return
            for pts, rgb in frames:
                number, lost = numbers.place(pts)
                if lost:
                    yield GAP
                if rgb is None:  # a stream that changes size midway
                    skipped.add(source.path, f"frame {number} is over {MAX_PIXELS:,} pixels")
                    return
                yield number, rgb


def _decode_packet(
    packet: Any, numbers: FrameNumbers, source: Source, skipped: Skipped
) -> list[tuple[int | None, np.ndarray | None]]:
    """(pts, RGB) of the frames a packet gives out; a frame over the pixel limit is never
    converted (None). A packet that fails is counted lost; the first of a stretch is said."""
    try:
        return [
            (f.pts, _upright_frame(f) if f.width * f.height <= MAX_PIXELS else None)
            for f in packet.decode()
        ]
    except DECODER_ERRORS as err:
        if numbers.failed() == 1:
            near = f"near frame {numbers.next}"
            skipped.add(source.path, f"undecodable stretch {near} ({_short(err)})")
        return []


def _upright_frame(frame: Any) -> np.ndarray:
    """A decoded video frame as RGB, turned as its display matrix says players show it (a
    phone filming upright stores its frames sideways with a rotation of -90 or 90 degrees)."""
    rgb = frame.to_ndarray(format="rgb24")
    turns = round((frame.rotation or 0) / 90) % 4  # counter-clockwise quarter turns
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def _packets(container: Any, stream: Any, source: Source, skipped: Skipped) -> Iterator[Any]:
    """The stream's packets; a demuxing error ends the video (recorded in ``skipped``)."""
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except av.ExitError:  # a read ran STALL_S: the caller says so
            raise
        except DECODER_ERRORS as err:
            skipped.add(source.path, f"unreadable after this point ({_short(err)})")
            return
        yield packet


def _stalled(frames: int) -> str:
    return (
        f"no frame in {video.STALL_S:g} s of reading after frame {frames}: the rest of the file is "
        "not video (the frames read before it are kept)"
    )


def _short(err: Exception) -> str:
    return str(err).splitlines()[0][:120] if str(err) else type(err).__name__
