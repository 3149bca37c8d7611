"""The image codecs of a frame dataset: a frame (H, W, 3) uint8 to its stored bytes and back.

Images are stored as ``raw`` (H*W*3 uint8 bytes, zstd-compressed by Parquet: the default),
``png`` or ``jpeg``; decoding checks every frame is the manifest's size.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
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
            # only the dataset's own encoding: a blob of another format is not its frame
            with Image.open(io.BytesIO(blob), formats=[encoding.upper()]) as image:
                if image.size != (width, height):
                    what = (
                        f"a stored frame is {image.size[0]}x{image.size[1]}, not {width}x{height}"
                    )
                    raise UserError(what, "dataset image column", fix)
                out[i] = np.asarray(image.convert("RGB"))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise UserError(f"a stored frame does not decode ({err})", "dataset", fix) from None
    return out


def decode_image_column(
    column: pa.Array | pa.ChunkedArray, encoding: str, size: tuple[int, int]
) -> np.ndarray:
    """Decodes a Parquet ``image`` column (Arrow binary) to (N, H, W, 3) uint8.

    Raw frames are a view of the column's own buffer when it is one chunk (no copy: Parquet's
    zstd decompression already wrote every frame's bytes, back to back), else one copy. The
    array is then read-only; a caller that writes to it copies first. JPEG and PNG frames go
    through :func:`decode_images`. Measured in Ray Data's decoding task (160x90 raw, one task
    per file): building a NumPy array of Python ``bytes`` from the column took a third of the
    task and the copy in :func:`decode_images` another eighth (py-spy; docs/data.md).

    Raises:
        UserError: As :func:`decode_images`: a null cell, a column that is not bytes, or a
            frame whose size is not ``size``.
    """
    fix = "re-run 'varnext ingest': the Parquet files do not match dataset.json"
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    kind = column.type
    if not any(
        test(kind)
        for test in (
            pa.types.is_binary,
            pa.types.is_large_binary,
            pa.types.is_fixed_size_binary,
            pa.types.is_binary_view,
        )
    ):
        raise UserError(
            f"the image column holds {kind}, not image bytes", "dataset image column", fix
        )
    if column.null_count:
        raise UserError("a stored frame is missing (a null cell)", "dataset image column", fix)
    offsets = {pa.binary(): np.int32, pa.large_binary(): np.int64}.get(kind)
    if encoding != "raw" or offsets is None:  # Parquet reads binary; other forms: a copy each
        return decode_images(column.to_pylist(), encoding, size)
    width, height = size
    n = len(column)
    starts = np.frombuffer(column.buffers()[1], offsets, n + 1, column.offset * offsets().itemsize)
    lengths = np.diff(starts)
    frame_bytes = width * height * FRAME_CHANNELS
    if (lengths != frame_bytes).any():
        what = (
            f"a stored frame has {lengths[lengths != frame_bytes][0]} bytes, not {width}x{height}x3"
        )
        raise UserError(what, "dataset image column", fix)
    if n == 0:
        return np.empty((0, height, width, FRAME_CHANNELS), np.uint8)
    flat = np.frombuffer(column.buffers()[2], np.uint8)[starts[0] : starts[-1]]
    return flat.reshape(n, height, width, FRAME_CHANNELS)
