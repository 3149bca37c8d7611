"""Video frames as players show them: square pixels, then turned and mirrored as the display
matrix says.

A decoded frame is the stored picture, and players do not show it as stored:

- Non-square pixels (a sample aspect ratio, SAR): an anamorphic 32x36 frame of SAR 2:1 is
  shown 64x36. Read as stored, a round object came out twice as tall as wide, and fitting the
  frame to ``--size`` cropped away half of what a player shows. :func:`square_pixels` scales
  the frame to its display aspect ratio first, as players do (the width times the SAR).
- A display matrix (an mp4's ``tkhd`` matrix, a phone's rotation, a selfie camera's mirror):
  :func:`upright` applies its 2x2 part as FFmpeg's autorotate does, so every one of the eight
  right-angle turns and mirrors is read as ``ffmpeg`` and ``ffplay`` show it. The rotation
  angle alone (PyAV's ``frame.rotation``) cannot tell a mirror from a turn: a horizontal
  mirror reads -180 degrees, and the frames were stored upside down.

The SAR is applied first, to the stored frame, and the matrix then turns the result: FFmpeg's
``transpose`` filter swaps the SAR with the axes, which comes to the same picture.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

import numpy as np
from av.sidedata.sidedata import Type
from PIL import Image

from varnext_ray.image_read import MAX_PIXELS

Matrix = tuple[int, ...]  # FFmpeg's AV_FRAME_DATA_DISPLAYMATRIX: 9 int32, 16.16 fixed point


def pixel_aspect(stream: Any) -> Fraction:
    """The SAR a player uses for the stream's frames: the container's where it says one, else
    the codec's (FFmpeg's ``av_guess_sample_aspect_ratio``); 1 where neither is valid."""
    for sar in (stream.sample_aspect_ratio, stream.codec_context.sample_aspect_ratio):
        if sar is not None and sar > 0:
            return Fraction(sar)
    return Fraction(1)


def display_size(size: tuple[int, int], sar: Fraction) -> tuple[int, int]:
    """(W, H) of a stored ``size`` frame at square pixels: the width times ``sar``.

    Where that would take the frame over :data:`MAX_PIXELS` (a huge SAR), the height is
    divided by it instead: the same aspect ratio, never more pixels than the limit allows.
    """
    w, h = size
    if sar == 1 or not w or not h:
        return w, h
    wide = max(1, round(w * sar))
    if wide * h <= max(MAX_PIXELS, w * h):
        return wide, h
    return w, max(1, round(h / sar))


def square_pixels(rgb: np.ndarray, sar: Fraction) -> np.ndarray:
    """(H, W, 3) ``rgb`` scaled to :func:`display_size` (itself where the pixels are square),
    with the filter :func:`~varnext_ray.frame_fit.fit_frame` uses."""
    h, w = rgb.shape[:2]
    size = display_size((w, h), sar)
    if size == (w, h):
        return rgb
    image = Image.fromarray(np.ascontiguousarray(rgb))
    return np.asarray(image.resize(size, Image.BILINEAR, reducing_gap=2.0))


def display_matrix(frame: Any) -> Matrix | None:
    """The display matrix a decoded frame carries (FFmpeg puts the container's on every frame),
    None where it has none."""
    side = frame.side_data.get(Type.DISPLAYMATRIX)
    if side is None:
        return None
    values = np.frombuffer(bytes(side), dtype=np.int32)  # int32_t in the machine's byte order
    return tuple(int(v) for v in values[:9]) if values.size >= 9 else None


def _theta(matrix: Matrix) -> int | None:
    """FFmpeg's ``get_rotation`` (clockwise degrees the frame is turned to be shown), to the
    nearest quarter turn: 0, 90, 180 or 270; None for a degenerate matrix (all zeros), which
    FFmpeg leaves unapplied.

    An angle between quarter turns (FFmpeg's ``rotate`` filter, black corners and resampling)
    is taken as the nearest quarter turn: only a hand-edited file holds one.
    """
    scale_x, scale_y = math.hypot(matrix[0], matrix[3]), math.hypot(matrix[1], matrix[4])
    if not scale_x or not scale_y:
        return None
    degrees = math.degrees(math.atan2(matrix[1] / scale_y, matrix[0] / scale_x))
    return round(degrees / 90) % 4 * 90


def upright(rgb: np.ndarray, matrix: Matrix | None) -> np.ndarray:
    """(H, W, 3) ``rgb`` turned and mirrored as ``matrix`` says players show it.

    The choice of transform per angle and the signs it reads are FFmpeg's autorotate
    (``fftools``' ``configure_input_video_filter``, ffplay's ``configure_video_filters``):
    90 is a clockwise turn or, with ``matrix[3] > 0``, a transpose; 180 a horizontal mirror
    where ``matrix[0] < 0`` and a vertical one where ``matrix[4] < 0`` (both: a half turn);
    270 a counter-clockwise turn or, with ``matrix[3] < 0``, the other diagonal's mirror; 0 a
    vertical mirror where ``matrix[4] < 0``.
    """
    theta = None if matrix is None else _theta(matrix)
    if theta is None:
        return rgb
    if theta == 90:
        shown = rgb.transpose(1, 0, 2) if matrix[3] > 0 else np.rot90(rgb, -1)
    elif theta == 180:
        shown = rgb[:, ::-1] if matrix[0] < 0 else rgb
        shown = shown[::-1] if matrix[4] < 0 else shown
    elif theta == 270:
        shown = np.rot90(rgb, -1)[::-1] if matrix[3] < 0 else np.rot90(rgb, 1)
    else:
        shown = rgb[::-1] if matrix[4] < 0 else rgb
    return rgb if shown is rgb else np.ascontiguousarray(shown)
