"""Writing pictures and videos: PNG files and folders, GIFs, H.264 mp4s, and sets of them.

Used by the synthetic scenes (:mod:`varnext_ray.synth`), predictions
(:mod:`varnext_ray.predict`) and the training loop's strips and rollout GIFs. Every writer takes
uint8 (H, W, 3) arrays. PNGs, GIFs and mp4s are written through a temporary file beside the
target and a rename, so no reader ever sees half a file, and a failing write (a full disk, a
folder made read-only) is a :class:`~varnext_ray.errors.UserError` naming ``where`` (the path
by default), never a bare ``OSError``. :func:`staged_files` makes several files appear together
or not at all.

Example:
    >>> write_video(Path("clip.mp4"), iter(frames), fps=30)
    >>> with staged_files([Path("p_k1.png"), Path("p_k2.png")]) as stage:
    ...     for picture, out in zip(pictures, [Path("p_k1.png"), Path("p_k2.png")]):
    ...         save_png(picture, stage(out), where=str(out))
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

from varnext_ray.atomic_write import hidden_name, parent_folders, write_atomic
from varnext_ray.errors import UserError
from varnext_ray.safe_io import os_reason

FPS = 30  # frame rate of written videos unless told otherwise
WRITE_FIX = "free some space there, or choose a path in a folder you can write to"


def save_png(array: np.ndarray, path: str | Path, *, where: str | None = None) -> Path:
    """Writes a uint8 (H, W, 3) array as a PNG (parent folders created); returns the path.

    A failing write is a UserError naming ``where`` (default: the path).
    """
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) array (got {array.dtype} {array.shape})")
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    with parent_folders(path) as path:
        return write_atomic(path, buffer.getvalue(), flag=where)  # never half a picture


def write_png_folder(folder: Path, frames: Iterator[np.ndarray]) -> int:
    """Writes frames as ``frame_00001.png``... (ffmpeg's dump naming); returns the count."""
    folder.mkdir(parents=True)
    count = 0
    for count, frame in enumerate(frames, start=1):
        Image.fromarray(frame).save(folder / f"frame_{count:05d}.png", compress_level=1)
    return count


GIF_MAX_FRAME_MS = 655_350  # a GIF frame's delay is 16 bits of hundredths of a second


def save_gif(
    pictures: Iterable[np.ndarray],
    path: str | Path,
    *,
    frame_ms: int = 300,
    min_width: int = 0,
    where: str | None = None,
) -> Path:
    """Writes pictures as a looping GIF (all held in memory; parent folders created).

    Pictures narrower than ``min_width`` are scaled up by a whole factor (nearest neighbour),
    so small frames stay visible. A frame shows for ``frame_ms``, at most GIF's longest delay
    (a time-lapse of one frame an hour shows each for 11 minutes). A failing write is a
    UserError naming ``where``.
    """
    frame_ms = min(frame_ms, GIF_MAX_FRAME_MS)
    images = [Image.fromarray(p) for p in pictures]
    width, height = images[0].size
    scale = max(1, min_width // max(width, 1))
    if scale > 1:
        size = (width * scale, height * scale)
        images = [image.resize(size, Image.Resampling.NEAREST) for image in images]
    buffer = io.BytesIO()
    images[0].save(
        buffer, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms, loop=0
    )
    with parent_folders(path) as path:
        return write_atomic(path, buffer.getvalue(), flag=where)


def _writing(where: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``call(*args)``, its OSError or PyAV error (a full disk) turned into a UserError."""
    try:
        return call(*args, **kwargs)
    except (OSError, av.FFmpegError) as err:
        reason = os_reason(err) if isinstance(err, OSError) else str(err)
        raise UserError(f"cannot write ({reason})", where, WRITE_FIX) from None


def write_video(
    path: str | Path, frames: Iterator[np.ndarray], fps: int = FPS, *, where: str | None = None
) -> int:
    """Encodes frames to an H.264 mp4 with PyAV; returns the number written.

    Written to a temporary file beside ``path`` and renamed into place when complete (parent
    folders created, and removed again on failure). A failing write is a UserError naming
    ``where`` (default: the path); an error of ``frames`` itself passes through unchanged.
    """
    path = Path(path)
    where = where or str(path)
    tmp = path.with_name(hidden_name(path.stem, f"tmp-{uuid.uuid4().hex[:8]}.mp4"))
    with parent_folders(path):
        try:
            # The file is ours, not PyAV's: PyAV leaves its own open when the header's write
            # fails (a full disk), and the open file then keeps the disk busy.
            with _writing(where, open, tmp, "xb", buffering=0) as file:
                container = _writing(where, av.open, file, mode="w", format="mp4")
                try:
                    count = _encode(container, frames, fps, where)
                except BaseException:
                    with contextlib.suppress(Exception):
                        container.close()
                    raise
                _writing(where, container.close)
                _writing(where, os.fsync, file.fileno())
            _writing(where, os.replace, tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return count


def _encode(container: Any, frames: Iterator[np.ndarray], fps: int, where: str) -> int:
    """Encodes and muxes ``frames`` into an open PyAV ``container``; returns the count."""
    count, stream = 0, None
    for frame in frames:  # (H, W, 3) uint8; outside _writing: the source's errors are its own
        if stream is None:
            stream = _writing(where, container.add_stream, "libx264", rate=fps)
            stream.height, stream.width = frame.shape[:2]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "16", "preset": "veryfast"}
        picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
        for packet in _writing(where, stream.encode, picture):
            _writing(where, container.mux, packet)
        count += 1
    if stream is not None:
        for packet in _writing(where, stream.encode):
            _writing(where, container.mux, packet)
    return count


# ---- a set of files that appears whole or not at all ------------------------------------------


@contextlib.contextmanager
def staged_files(
    outs: Sequence[Path], *, overwrite: bool = False
) -> Iterator[Callable[[Path], Path]]:
    """Yields ``stage``: ``stage(out)`` is where to write ``out``, in a hidden folder beside the
    outputs (``.<name>.partial-<pid>-<random>``, on their filesystem). When the block ends,
    the files written there are moved into place together; if it fails, nothing was moved.

    An output that exists is replaced only with ``overwrite`` (else a UserError, also for one
    that appeared while writing). Should a move fail midway, the outputs already moved are
    taken back (a replaced file gets its old content again), so the set never mixes new and
    old files. The staging folder, and the parent folders made for it (:func:`parent_folders`),
    are removed on failure.

    Raises:
        UserError: A folder or file cannot be made, written or moved (a full disk), or an
            output exists without ``overwrite``.
        ValueError: The outputs are not all in one folder.
    """
    outs = [Path(p) for p in outs]
    folder = outs[0].parent
    if any(p.parent != folder for p in outs):
        raise ValueError(f"outputs of one set must share a folder (got {outs})")
    hidden = folder / hidden_name(outs[0].name, f"partial-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    written: list[Path] = []

    def stage(out: Path) -> Path:  # a short name: a temporary name beside it must fit too
        if Path(out) not in outs:
            raise ValueError(f"{out} is not one of the staged outputs")
        written.append(Path(out))
        return hidden / _staged_name(outs, Path(out))

    with parent_folders(hidden, WRITE_FIX):
        try:
            _writing(str(outs[0]), hidden.mkdir)
            yield stage
            moves = [(hidden / _staged_name(outs, p), p) for p in outs if p in written]
            _move_into_place(moves, overwrite)
        finally:
            shutil.rmtree(hidden, ignore_errors=True)


def _staged_name(outs: list[Path], out: Path) -> str:
    return f"{outs.index(out)}{out.suffix.lower()}"


def _move_into_place(moves: list[tuple[Path, Path]], overwrite: bool) -> None:
    """Moves each staged file to its output; on failure takes back what was moved."""
    done: list[tuple[Path, Path | None]] = []  # (output, backup of the file it replaced)
    current = Path()
    try:
        for staged, current in moves:
            try:
                os.link(staged, current)  # a new name: refused atomically if it exists
                done.append((current, None))
                continue
            except FileExistsError:
                if not overwrite:
                    fix = "pass --overwrite to replace it, or choose another path"
                    raise UserError("the output already exists", str(current), fix) from None
            backup = staged.with_name(f"replaced-{len(done)}")
            os.link(current, backup)  # the old file, put back should a later move fail
            with contextlib.suppress(OSError):  # a replaced file keeps its mode
                os.chmod(staged, stat.S_IMODE(os.stat(current).st_mode))
            os.replace(staged, current)
            done.append((current, backup))
    except BaseException as err:
        for out, backup in reversed(done):
            with contextlib.suppress(OSError):
                if backup is None:
                    os.unlink(out)
                else:
                    os.replace(backup, out)
        if isinstance(err, OSError):
            raise UserError(f"cannot write ({os_reason(err)})", str(current), WRITE_FIX) from None
        raise
