"""Checks of a dataset's Parquet files against its manifest: paths, footers, keys, first images.

:func:`check_clip_files` reads footers only (every load); :func:`check_clip_keys` reads the
``clip_id`` and ``frame_index`` columns and each file's first image (once per command, before
Ray); :func:`damaged_file` reads a split's files whole. Clip files record their frames' size
and encoding under :data:`FRAME_KEY` (:func:`frame_key`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from varnext_ray.errors import UserError
from varnext_ray.frame_codec import decode_images
from varnext_ray.safe_io import kind_of, path_stat

if TYPE_CHECKING:
    from varnext_ray.manifest import Manifest, _ManifestSchema

# The columns readers select, with the Arrow types they can read (footers are checked for them).
COLUMNS: dict[str, tuple[str, Any]] = {
    "clip_id": ("a string", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)),
    "frame_index": ("an integer", pa.types.is_integer),
    "image": ("binary", lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t)),
}

MANIFEST_FIX = "re-run 'varnext ingest' to rewrite the dataset (never edit dataset.json)"
DAMAGED_FIX = "re-run 'varnext ingest' to rewrite the dataset: a file of it is damaged"


def _check_root_text(root: Path) -> None:
    """A UserError unless the dataset's path is text pyarrow takes, as Ray Data reads the files
    by it to train: UTF-8 bytes (a Latin-1 byte 0xff is not), and shown as such by this Python
    (under a non-UTF-8 locale it holds UTF-8 names as escaped bytes). Else every file of a good
    dataset read as damaged."""
    try:
        utf8 = os.fsencode(root).decode("utf-8") == str(root)
    except UnicodeDecodeError:
        raise UserError(
            "the dataset's path is not UTF-8 text, which pyarrow and Ray Data need to read it",
            str(root),
            "rename the dataset's folder (or move it) to a path of UTF-8 characters only",
        ) from None
    if not utf8:
        raise UserError(
            "the dataset's path is UTF-8, but this Python's non-UTF-8 locale gives it to pyarrow "
            "and Ray Data as other text, which they cannot read",
            str(root),
            "run under a UTF-8 locale (e.g. LC_ALL=C.UTF-8) or with PYTHONUTF8=1",
        )


def check_clip_files(root: Path, schema: _ManifestSchema, where: str) -> None:
    """Every clip file is a relative path inside the dataset, a regular Parquet file whose row
    count is the clip's frame count (footers only: cheap); the dataset's path is text pyarrow
    takes (:func:`_check_root_text`)."""
    _check_root_text(root)
    for n, clip in enumerate(schema.clips):
        rows = 0
        for file in clip.files:
            name = f"clips[{n}].files"
            parts = PurePosixPath(file).parts
            if PurePosixPath(file).is_absolute() or ".." in parts or "\\" in file:
                what = f"{name}: {file!r} is not a path inside the dataset"
                raise UserError(what, where, MANIFEST_FIX)
            path = root / file
            st = path_stat(path, f"{name}: {file!r}", MANIFEST_FIX)
            if st is None:
                raise UserError(f"{name}: {file!r} is missing", where, MANIFEST_FIX)
            if not stat.S_ISREG(st.st_mode):
                what = f"{name}: {file!r} is {kind_of(st.st_mode)}"
                raise UserError(what, where, MANIFEST_FIX)
            if not path.resolve().is_relative_to(root):  # a link leading out of the dataset
                what = f"{name}: {file!r} is a link to a file outside the dataset"
                raise UserError(what, where, MANIFEST_FIX)
            try:
                footer = pq.read_metadata(path)
                columns = footer.schema.to_arrow_schema()
            except (OSError, pa.ArrowException, ValueError) as err:
                what = f"{name}: {file!r} is not a readable Parquet file ({err})"
                raise UserError(what, where, MANIFEST_FIX) from None
            _check_columns(columns, f"{name}: {file!r}", where)
            _check_frame_key(footer, schema, f"{name}: {file!r}", where)
            rows += footer.num_rows
        if rows != clip.frames:
            what = f"clips[{n}].frames: is {clip.frames} but its files hold {rows} rows"
            raise UserError(what, where, MANIFEST_FIX)


def check_clip_keys(root: Path, schema: _ManifestSchema, where: str) -> None:
    """Every clip file's ``clip_id`` is its clip's id, and the clip's ``frame_index`` values,
    file after file, are 0 .. frames-1: what readers look frames up by (two small columns are
    read). Each file's first image decodes as the manifest's encoding and size (a file of
    another dataset, an edited ``encoding``), read alone: the other images are not read."""
    for n, clip in enumerate(schema.clips):
        indices = []
        for file in clip.files:
            try:
                too_large = _image_bytes_problem(pq.ParquetFile(root / file).metadata, schema.size)
                if too_large is not None:  # before any page is decompressed
                    raise UserError(f"clips[{n}].files: {file!r}: {too_large}", where, DAMAGED_FIX)
                keys = pq.read_table(root / file, columns=["clip_id", "frame_index"])
                first = next(
                    pq.ParquetFile(root / file, pre_buffer=False, buffer_size=1 << 16).iter_batches(
                        batch_size=1, columns=["image"]
                    ),
                    None,
                )
            except (OSError, pa.ArrowException, ValueError) as err:
                reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
                what = f"clips[{n}].files: {file!r} does not read ({reason})"
                raise UserError(what, where, DAMAGED_FIX) from None
            if first is not None and first.num_rows:
                try:
                    decode_images(first.column(0).to_pylist(), schema.encoding, tuple(schema.size))
                except UserError as err:
                    what = f"clips[{n}].files: {file!r}: {err.what}"
                    raise UserError(what, where, err.fix) from None
            ids = set(keys.column("clip_id").unique().to_pylist())
            if ids != {clip.id}:
                shown = ", ".join(repr(i) for i in sorted(map(str, ids))[:3])
                what = f"clips[{n}]: {file!r} holds frames of clip {shown}, not {clip.id!r}"
                raise UserError(what, where, MANIFEST_FIX)
            indices.append(keys.column("frame_index").to_numpy(zero_copy_only=False))
        found = np.concatenate(indices) if indices else np.empty(0, np.int64)
        if not np.array_equal(found, np.arange(clip.frames)):
            what = f"clips[{n}] ({clip.id!r}): its frame_index values are not 0..{clip.frames - 1}"
            raise UserError(what, where, MANIFEST_FIX)


def _image_bytes_problem(meta: pq.FileMetaData, size: tuple[int, int]) -> str | None:
    """What is wrong with a file whose ``image`` column holds more bytes, once decompressed,
    than its frames can at the manifest's size (read from the footer, before any page): one
    compressed page of zeros in a 146 KB file made the first image's read 1 GB (4 GB held).
    A raw frame is ``W*H*3`` bytes; a JPEG stays below twice that, headers included."""
    width, height = size
    per_frame = 2 * width * height * 3 + 65536
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            column = group.column(c)
            if column.path_in_schema != "image":
                continue
            if column.total_uncompressed_size > group.num_rows * per_frame + (1 << 20):
                return (
                    f"its images hold {column.total_uncompressed_size:,} bytes for "
                    f"{group.num_rows} frames of {width}x{height}, more than such frames can"
                )
    return None


def damaged_file(manifest: Manifest, split: str) -> str | None:
    """The first Parquet file of ``split`` that does not read whole, if any (a damaged page:
    footers are checked when the manifest loads, pages only when read)."""
    for file in manifest.files(split):
        try:
            pq.read_table(file)
        except (OSError, pa.ArrowException, ValueError):
            return file
    return None


FRAME_KEY = b"varnext.frames"  # Parquet metadata of a clip file: its frames' "WxH encoding"


def frame_key(size: tuple[int, int] | list[int], encoding: str) -> bytes:
    """What a clip file records of its frames under :data:`FRAME_KEY`, e.g. ``b"64x36 raw"``."""
    return f"{size[0]}x{size[1]} {encoding}".encode()


def _check_frame_key(
    footer: pq.FileMetaData, schema: _ManifestSchema, file: str, where: str
) -> None:
    """The frame size and encoding a clip file records match the manifest's (files written
    before the record existed have none, and are not checked)."""
    recorded = (footer.metadata or {}).get(FRAME_KEY)
    expected = frame_key(schema.size, schema.encoding)
    if recorded is not None and recorded != expected:
        said = recorded.decode(errors="replace")[:40]
        what = f"{file} holds frames of {said}, but size and encoding say {expected.decode()}"
        raise UserError(what, where, MANIFEST_FIX)


def _check_columns(schema: pa.Schema, file: str, where: str) -> None:
    """A clip file holds every column readers select (:data:`COLUMNS`), of a type they read."""
    for column, (want, readable) in COLUMNS.items():
        index = schema.get_field_index(column)
        if index < 0:
            raise UserError(f"{file} has no column {column!r}", where, MANIFEST_FIX)
        if not readable(schema.field(index).type):
            got = schema.field(index).type
            what = f"{file}: column {column!r} is {got}, not {want}"
            raise UserError(what, where, MANIFEST_FIX)
