"""Video files: opening one, choosing its main video stream, and numbering its frames.

Stream choice (:func:`main_video_stream`), much as ffmpeg's command line picks the video it
reads: attached pictures (cover art) are passed over, then a stream the container says has frames
beats one it does not (:func:`_has_frames`), then the stream of the largest frames wins, then one
marked default, then the first. A file holding a cover and its footage, or a thumbnail track and
its main video, is read for the footage, whichever stream comes first; a large track left empty
is passed over for the one that holds the frames.

Frame numbers (:class:`FrameNumbers`) are places in the file: after an undecodable stretch, the
first good frame is numbered as if the lost frames had been there, so ``source_frame``,
``--every`` and messages stay true to the footage.

Example:
    >>> with open_video("clip.mkv") as container:
    ...     stream = main_video_stream(container)
"""

from __future__ import annotations

import heapq
import os
import time
from pathlib import Path
from typing import Any

import av

OPEN_TIMEOUT_S = 30.0
# Reading (and decoding) this long without a new frame ends a video: the rest of the file is
# not video (a valid header followed by gigabytes of zeros was read to its end, 3-7 s per GB
# here). A real video yields a frame every few milliseconds.
STALL_S = 30.0
NO_VIDEO_FIX = "pass a video that has frames (`ffprobe FILE` lists the streams a file holds)"


def open_video(path: str | Path) -> Any:
    """``av.open`` of a video file, given up after :data:`OPEN_TIMEOUT_S`.

    Opening reads a container's header and probes its streams, milliseconds for a video; a
    large file that is none (gigabytes of zeros named ``.gif``) was read to its end first, at
    about 3 s per GB here. FFmpeg's interrupt callback (PyAV's open timeout) stops that read,
    and any later single read that runs :data:`STALL_S` (PyAV's read timeout: ``ExitError``).

    Raises:
        TimeoutError: It did not open in time (FFmpeg itself then says "End of file").
        OSError: It does not open; the reason is FFmpeg's own message where it logged one
            (a y4m header of ``W30000``: "Picture size 30000x30000 is invalid", where the
            error code alone read "Device or resource busy").
        Exception: What else PyAV raises for a file that does not open.
    """
    started = time.monotonic()
    previous = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)  # PyAV keeps FFmpeg's message only when logging
    try:
        # FFmpeg reads "cam-12:30.mp4" or "pipe:0.mp4" as a URL of protocol "cam-12" or
        # "pipe" (stdin): the file protocol, named, takes any path as it is.
        with av.logging.Capture():  # held here, never printed
            return av.open(f"file:{os.path.abspath(path)}", timeout=(OPEN_TIMEOUT_S, STALL_S))
    except Exception as err:
        if time.monotonic() - started < OPEN_TIMEOUT_S:
            said = getattr(err, "log", None)
            if said and str(said[-1]).strip():
                raise OSError(str(said[-1]).strip()) from None
            raise
    finally:
        av.logging.set_level(previous)
    raise TimeoutError(f"no video stream found within {OPEN_TIMEOUT_S:g} s of reading")


def _attached(stream: Any) -> bool:
    return bool(stream.disposition & av.stream.Disposition.attached_pic)


def _pixels(stream: Any) -> int:
    return (stream.codec_context.width or 0) * (stream.codec_context.height or 0)


def _has_frames(stream: Any) -> bool:
    """Whether the container says the stream holds frames: a frame count (mp4, avi) or an
    index entry (an mkv's cues, an mp4's or avi's sample index) for it.

    Without this, a large track written with no frame (an mkv holding a 128x72 stream with no
    packet beside the 64x36 footage) was chosen for its size and the file had "no decodable
    frame". Containers that say neither (MPEG-TS, a live mkv without cues) leave every stream
    False, so the ranking after it decides as before.
    """
    return (stream.frames or 0) > 0 or len(stream.index_entries) > 0


def main_video_stream(container: Any) -> Any | None:
    """The video stream to read (see the module docstring), None if there is none."""
    videos = [s for s in container.streams.video if not _attached(s)]
    if not videos:
        return None
    default = av.stream.Disposition.default
    return max(
        videos,
        key=lambda s: (_has_frames(s), _pixels(s), bool(s.disposition & default), -s.index),
    )


def stream_choice(container: Any, chosen: Any, path: str | Path) -> str | None:
    """The info line saying which video stream of ``path`` is read and which are passed over;
    None where it holds one. The caller logs it, so it is held back with the warnings of a
    command that may still fail (one ``error:`` line then, nothing before it)."""
    others = [s for s in container.streams.video if s is not chosen]
    if not others:
        return None
    passed = ", ".join(f"stream {s.index} ({_describe(s)})" for s in others)
    return (
        f"{path} holds {len(others) + 1} video streams: reading stream {chosen.index} "
        f"({_describe(chosen)}), passing over {passed}"
    )


def _describe(stream: Any) -> str:
    size = f"{stream.codec_context.width}x{stream.codec_context.height}"
    return f"{size} {stream.codec_context.name}" + (", a cover" if _attached(stream) else "")


def no_video_stream(container: Any) -> str:
    """What a container without a video stream to read holds, e.g. ``no video stream: the
    file holds only audio``."""
    kinds = sorted({"a cover picture" if _attached(s) else s.type for s in container.streams})
    if not kinds:
        return "no video stream: the file holds no streams at all, so no frames"
    return f"no video stream: the file holds only {' and '.join(kinds)}"


class FrameNumbers:
    """Numbers a stream's decoded frames by their place in the file.

    Frames are counted as the decoder gives them out. Where frames were lost, the count jumps
    by the frames lost, the larger of two counts:

    - the packets that failed to decode (a packet of a video stream holds one frame);
    - the packets whose timestamp lies between the frames before and after the loss. The
      decoder may drop the frames after a lost one without a word (those that refer to it);
      they are counted here. Timestamps are only compared, never divided by a frame rate, so
      variable frame rates, negative or huge timestamps and any rate number correctly.

    Without a failed packet, timestamps are not used: a file whose timestamps repeat, go back
    or are missing is numbered 0, 1, 2... in decoding order.

    Example:
        >>> numbers = FrameNumbers()
        >>> numbers.demuxed(packet)          # each packet read, before decoding it
        >>> numbers.failed()                 # a packet that did not decode
        >>> number, lost = numbers.place(frame.pts)
    """

    def __init__(self) -> None:
        self.next = 0  # the number of the next frame, were none lost
        self._failed = 0
        self._last: int | None = None  # timestamp of the last frame given out
        self._waiting: list[int] = []  # timestamps of packets read whose frame is not out yet

    def demuxed(self, packet: Any) -> None:
        """Notes a packet read from the stream (the empty one that ends it is not a frame)."""
        if packet.pts is not None and packet.size:
            heapq.heappush(self._waiting, packet.pts)

    def failed(self) -> int:
        """Notes a packet that did not decode (its frame is lost); returns how many in a row."""
        self._failed += 1
        return self._failed

    def place(self, pts: int | None) -> tuple[int, int]:
        """(number, frames lost just before it) of the next frame out of the decoder."""
        between = 0
        if pts is not None:
            rising = self._last is None or pts > self._last
            while self._waiting and self._waiting[0] <= pts:
                earlier = heapq.heappop(self._waiting)
                after_last = self._last is None or earlier > self._last
                between += rising and earlier < pts and after_last
            self._last = pts
        lost = max(self._failed, between) if self._failed else 0
        self._failed = 0
        number = self.next + lost
        self.next = number + 1
        return number, lost
