"""Decoding sources: the frames of a video or an image folder, with what was skipped.

Bad input policy:
- A corrupt or truncated image, or an undecodable stretch of video, is skipped with a warning
  naming the file, recorded in ``skipped``; decoding resumes at the next good frame and the
  clip is cut there (the frames around a gap are not neighbours in time).
- A source named on the command line with no decodable frame or no video stream is a
  :class:`UserError`. A video *found inside* a directory that cannot be opened at all is
  skipped with a warning, so one bad file does not stop a folder of hundreds.

Videos whose frames are over :data:`~varnext_ray.image_read.MAX_PIXELS` pixels, or whose
frame size FFmpeg could not learn (0x0: a stream it cannot decode), are refused before decoding.
Frames are read as players show them (:mod:`varnext_ray.frame_display`). The sources come from
:mod:`varnext_ray.sources`; the images are read by :mod:`varnext_ray.image_read`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from varnext_ray import video
from varnext_ray.errors import UserError
from varnext_ray.frame_display import (
    display_matrix,
    display_size,
    pixel_aspect,
    square_pixels,
    upright,
)
from varnext_ray.image_read import (
    DECODER_ERRORS,
    MAX_PIXELS,
    image_size,
    read_image,
    short_error,
)
from varnext_ray.safe_io import regular_file
from varnext_ray.sources import Source
from varnext_ray.video import (
    NO_VIDEO_FIX,
    FrameNumbers,
    main_video_stream,
    no_video_stream,
    open_video,
    stream_choice,
)

log = logging.getLogger(__name__)


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


def decode_source(source: Source, skipped: Skipped) -> Iterator[tuple[int, np.ndarray] | None]:
    """Yields (frame number in the source, (H, W, 3) uint8 RGB) or GAP where frames were lost."""
    if source.kind == "images":
        yield from _decode_images(source, skipped)
    else:
        yield from _decode_video(source, skipped)


def _decode_images(source: Source, skipped: Skipped) -> Iterator[tuple[int, np.ndarray] | None]:
    """A folder's frames numbered by their place in it, GAP after a place left empty: an
    animated image (a video of its own), a frame read already or unreadable (``holes``, in
    ``ignored``) or undecodable, so frames on either side of it are never neighbours."""
    for left_out, kept in source.duplicates:
        skipped.add(
            left_out, f"same stem as {kept.name}: one frame stored twice ({kept.name} used)"
        )
    lost = False
    for number, path in enumerate(source.files):
        if path in source.animated or path in source.holes:
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

# FFmpeg picks a demuxer by a file's content, whatever its name. These read other inputs that
# the file names (a list of files, a playlist, a session description): the same footage
# again under another name (a list naming one clip 50 times read as 50 clips), files outside
# the sources, or the network. Their footage is read from the files themselves.
READS_OTHER_INPUTS = frozenset({"concat", "hls", "dash", "imf", "sdp", "rtsp"})
# FFmpeg's text-mode art decoders: they draw a text file (a README.txt or .nfo beside the
# footage) as pictures of its characters.
TEXT_ART_CODECS = frozenset({"ansi", "bintext", "xbin", "idf"})


def open_video_stream(path: Path, *, say_choice: bool = False) -> tuple[Any, Any]:
    """The opened container of a video file and the stream to read (:func:`main_video_stream`;
    ``say_choice`` logs which where there are several). Reads the header only, no frame.

    The choice is logged here, through this module's logger, so that
    :func:`warnings_after_success` holds it back: a command that then fails (the stream read
    has no frame) prints its one ``error:`` line alone.

    Raises:
        UserError: Not a regular file (never opens a FIFO), not a video, no video stream, a
            stream FFmpeg cannot decode (:func:`_undecodable`), or frames over
            :data:`MAX_PIXELS` pixels.
    """
    regular_file(path, "video", _OPEN_FIX)
    try:
        container = open_video(path)
    except DECODER_ERRORS as err:
        raise UserError(
            f"cannot open as a video ({short_error(err)})", str(path), _OPEN_FIX
        ) from None
    if set(container.format.name.split(",")) & READS_OTHER_INPUTS:  # before any stream is read
        container.close()
        raise UserError(
            f"a list or playlist (FFmpeg reads it as {container.format.long_name}): it names "
            "other files to read, not footage of its own",
            str(path),
            "pass the video files it names instead",
        )
    stream = main_video_stream(container)
    if stream is None:
        what, fix = no_video_stream(container), NO_VIDEO_FIX
    elif stream.codec_context.name in TEXT_ART_CODECS:
        what = (
            f"a text file (FFmpeg reads it as {container.format.long_name} and would draw its "
            "characters as pictures), not a video"
        )
        fix = "pass only video files (move text files out of the sources)"
    elif (refused := _undecodable(stream, path)) is not None:
        what, fix = refused
    elif (w := stream.codec_context.width or 0) * (h := stream.codec_context.height or 0) > (
        MAX_PIXELS
    ):
        what = f"video frames of {w}x{h} are over the limit of {MAX_PIXELS:,} pixels"
        fix = "downscale it with ffmpeg first"
    else:
        if say_choice and (line := stream_choice(container, stream, path)):
            log.info("%s", line)
        return container, stream
    container.close()
    raise UserError(what, str(path), fix)


def _undecodable(stream: Any, path: Path) -> tuple[str, str] | None:
    """(what, fix) for a video stream whose frame size FFmpeg could not learn (0x0), else None.

    Opening decodes a frame or two to learn the size; 0x0 means none decoded (an animated WebP,
    which the bundled FFmpeg reads as a 0x0 stream; ffmpeg itself refuses such a stream:
    "unspecified size"). It was refused as a frame too small for ``--size``, with a fix that
    did not help; no ``--size`` can.
    """
    w, h = stream.codec_context.width or 0, stream.codec_context.height or 0
    if w and h:
        return None
    codec = stream.codec_context.name or "unknown codec"
    return (
        f"no decodable frame: FFmpeg cannot decode this {codec} video stream "
        f"(its frame size reads {w}x{h})",
        f"convert it to an mp4 or to PNG frames (e.g. `magick {path.name} frame_%04d.png`) "
        "and pass the result",
    )


def frame_size(source: Source) -> tuple[int, int]:
    """(W, H) of a source's frames as its header says, without decoding a frame: the main
    video stream's, or a single image's (the first image of a folder's).

    Raises:
        UserError: As :func:`open_video_stream` or
            :func:`~varnext_ray.image_read.image_size` would.
    """
    if source.kind == "video":
        container, stream = open_video_stream(source.path)
        with container:  # as shown: non-square pixels scaled (frame_display.square_pixels)
            stored = stream.codec_context.width, stream.codec_context.height
            return display_size(stored, pixel_aspect(stream))
    return image_size(source.files[0])


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
        frames = packet.decode()
        sar = pixel_aspect(packet.stream)  # after decoding: the codec's, where it is the one
        return [
            (f.pts, _upright_frame(f, sar) if f.width * f.height <= MAX_PIXELS else None)
            for f in frames
        ]
    except DECODER_ERRORS as err:
        if numbers.failed() == 1:
            near = f"near frame {numbers.next}"
            skipped.add(source.path, f"undecodable stretch {near} ({short_error(err)})")
        return []


def _upright_frame(frame: Any, sar: Fraction) -> np.ndarray:
    """A decoded video frame as RGB, as players show it (:mod:`varnext_ray.frame_display`):
    its pixels made square (an anamorphic frame stored 32x36 at SAR 2:1 is 64x36), then
    turned and mirrored as its display matrix says (a phone filming upright stores its frames
    sideways; a selfie camera stores them mirrored)."""
    rgb = square_pixels(frame.to_ndarray(format="rgb24"), sar)
    return upright(rgb, display_matrix(frame))


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
            skipped.add(source.path, f"unreadable after this point ({short_error(err)})")
            return
        yield packet


def _stalled(frames: int) -> str:
    return (
        f"no frame in {video.STALL_S:g} s of reading after frame {frames}: the rest of the file is "
        "not video (the frames read before it are kept)"
    )
