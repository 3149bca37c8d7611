"""Reading images: one image file as RGB frames, and what its header says.

Image modes (:func:`read_image`): 16-bit grayscale (``I;16``, ``I``) is scaled to 8 bits (65535
-> 255, not clipped), float (``F``) from [0, 1]; palette, grayscale+alpha, CMYK and RGBA images
become RGB (alpha is dropped, after the palette's transparency is applied). An EXIF orientation
is applied: a photo stored sideways with ``Orientation=6`` is read upright. Images over
:data:`MAX_PIXELS` pixels are refused before decoding. An animated image (:func:`is_animated`)
is a video, not one still.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from varnext_ray.errors import UserError
from varnext_ray.safe_io import regular_file

MAX_PIXELS = 8192 * 8192  # per decoded image or video frame (an 8K frame is 33M pixels)
# The still-image formats read (Pillow's names), all decoded by Pillow itself. Pillow would
# identify any file it has a plugin for, whatever its name: an EPS named frame.png is handed
# to Ghostscript, a program of its own, where one is installed. (A phone's MPO opens as JPEG.)
STILL_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "PPM")


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
            with Image.open(path, formats=STILL_FORMATS) as image:
                w, h = image.size
                if w * h > max_pixels or min(w, h) < 1:
                    raise UserError(
                        f"image is {w}x{h}: over the limit of {max_pixels:,} pixels"
                        if w * h > max_pixels
                        else f"image is {w}x{h}: empty",
                        str(path),
                        "resize it (frames of up to 8192x8192 are read)",
                    )
                _one_frame(image, path)
                return to_rgb(_upright(image))
    except UserError:
        raise
    except Image.DecompressionBombWarning as err:
        raise UserError(f"cannot read as an image ({err})", str(path), fix) from None
    except DECODER_ERRORS as err:
        raise UserError(f"cannot read as an image ({short_error(err)})", str(path), fix) from None


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says (a phone photo stored sideways)."""
    try:
        orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    except DECODER_ERRORS:  # an unreadable EXIF block: the pixels are still good
        return image
    return ImageOps.exif_transpose(image) if orientation in range(2, 9) else image


def image_size(path: str | Path) -> tuple[int, int]:
    """(W, H) of an image file as its header says, without decoding it.

    Raises:
        UserError: Not a regular file (never opens a FIFO), or not readable as an image.
    """
    path = regular_file(path, "image", _IMAGE_FIX)
    try:
        with warnings.catch_warnings(), Image.open(path, formats=STILL_FORMATS) as image:
            warnings.simplefilter("ignore")
            return image.size
    except DECODER_ERRORS as err:
        raise UserError(
            f"cannot read as an image ({short_error(err)})", str(path), _IMAGE_FIX
        ) from None


def _one_frame(image: Image.Image, path: Path) -> None:
    """Refuses an image file of several frames (a multi-page TIFF, an animated WebP, GIF or
    APNG): which of them is the frame? An MPO (a phone's JPEG with a preview or a second
    view appended) is its first picture, as every viewer shows it."""
    frames = getattr(image, "n_frames", 1)
    if frames > 1 and image.format != "MPO":
        raise UserError(
            f"the image holds {frames} frames (pages or an animation), not one",
            str(path),
            "save each frame as a file of its own (PNG), or pass an animation as a video",
        )


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
                with Image.open(f, formats=("GIF", "PNG")) as image:
                    return image.format in ("GIF", "PNG") and bool(getattr(image, "is_animated", 0))
        except DECODER_ERRORS:
            return False


_ANIMATABLE = (b"GIF87a", b"GIF89a", b"\x89PNG\r\n\x1a\n")


def short_error(err: Exception) -> str:
    """A decoder's error for a message: its first line, at most 120 characters (its type's name
    if it says nothing)."""
    return str(err).splitlines()[0][:120] if str(err) else type(err).__name__
