"""The image codecs of a frame dataset: a frame (H, W, 3) uint8 to its stored bytes and back.

Images are stored as ``raw`` (H*W*3 uint8 bytes, zstd-compressed by Parquet: the default),
``png`` or ``jpeg``; decoding checks every frame is the manifest's size.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from varnext_ray.errors import UserError

FRAME_CHANNELS = 3  # every stored frame is RGB: decoded to (H, W, 3)


def encode_image(frame: np.ndarray, encoding: str) -> bytes:
    """Encodes (H, W, 3) uint8 as the dataset's image bytes."""
    if encoding == "raw":
        return np.ascontiguousarray(frame).tobytes()
    buffer = io.BytesIO()
    if encoding == "png":
        Image.fromarray(frame).save(buffer, format="PNG", compress_level=1)
    else:
        Image.fromarray(frame).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def decode_images(blobs: Sequence[bytes], encoding: str, size: tuple[int, int]) -> np.ndarray:
    """Decodes image bytes to (N, H, W, 3) uint8; ``size`` is (W, H).

    Raises:
        UserError: A stored image is not ``size`` (a manifest edited by hand, or files from
            another dataset) or does not decode.
    """
    width, height = size
    out = np.empty((len(blobs), height, width, 3), np.uint8)
    fix = "re-run 'varnext ingest': the Parquet files do not match dataset.json"
    if any(not isinstance(blob, bytes) for blob in blobs):  # a null cell, or text
        kind = next(type(b).__name__ for b in blobs if not isinstance(b, bytes))
        raise UserError(f"a stored frame is {kind}, not image bytes", "dataset image column", fix)
    if encoding == "raw":  # one copy, into a writable array that torch can share
        flat = out.reshape(len(blobs), -1)
        for i, blob in enumerate(blobs):
            if len(blob) != flat.shape[1]:
                what = f"a stored frame has {len(blob)} bytes, not {width}x{height}x3"
                raise UserError(what, "dataset image column", fix)
            flat[i] = np.frombuffer(blob, dtype=np.uint8)
        return out
    for i, blob in enumerate(blobs):
        try:
            with Image.open(io.BytesIO(blob)) as image:
                if image.size != (width, height):
                    what = (
                        f"a stored frame is {image.size[0]}x{image.size[1]}, not {width}x{height}"
                    )
                    raise UserError(what, "dataset image column", fix)
                out[i] = np.asarray(image.convert("RGB"))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise UserError(f"a stored frame does not decode ({err})", "dataset", fix) from None
    return out
