"""Fitting frames to a size: parsing ``--size`` and centre-cropping and resizing a frame to it.

Size policy (:func:`fit_frame`): a frame whose aspect ratio differs from the target's is
centre-cropped to the target aspect ratio (no letterboxing, no distortion), then resized with
an area-averaging filter. A crop that would keep less than one pixel row or column is refused.
"""

from __future__ import annotations

import re

import numpy as np
from PIL import Image

from varnext_ray.errors import UserError

MAX_SIDE = 8192  # of --size
MAX_ASPECT = 16  # of --size: the longer side at most 16 times the shorter


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
