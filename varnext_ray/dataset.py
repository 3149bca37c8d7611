"""Reading a frame dataset: the manifest, the image codecs, and Ray Datasets of frames/triplets.

A frame dataset is a directory holding ``dataset.json`` (the manifest) and one Parquet file per
clip piece under ``<split>/``, with the columns ``clip_id``, ``frame_index`` (0.. within the
clip), ``source_frame`` (the frame's number in its source), ``split`` and ``image`` (bytes).

Images are stored as ``raw`` (H*W*3 uint8 bytes, zstd-compressed by Parquet: the default),
``png`` or ``jpeg``. Decoding yields uint8 (H, W, 3). The uint8 -> float work is left to
:func:`to_model_input`, which runs on the training device: moving uint8 moves a quarter of the
bytes of float32, and the permute to (B, C, H, W) there yields a channels_last tensor for free.

Example:
    >>> ds = frames_dataset("runs/dataset", "train")
    >>> for batch in ds.iter_torch_batches(batch_size=32):
    ...     x = to_model_input(batch["image"], "cpu")  # (B, 3, H, W) float32 in [0, 1]
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from varnext_ray.config_errors import problems_from_validation
from varnext_ray.errors import UserError, list_problems
from varnext_ray.safe_io import MANIFEST_LIMIT, kind_of, path_stat, read_json

if TYPE_CHECKING:
    import ray.data
    import torch

MANIFEST = "dataset.json"
FORMAT_VERSION = 1
ENCODINGS = ("raw", "png", "jpeg")
SPLITS = ("train", "val", "test")
FRAME_CHANNELS = 3  # every stored frame is RGB: decoded to (H, W, 3)
# The columns readers select, with the Arrow types they can read (footers are checked for them).
COLUMNS: dict[str, tuple[str, Any]] = {
    "clip_id": ("a string", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t)),
    "frame_index": ("an integer", pa.types.is_integer),
    "image": ("binary", lambda t: pa.types.is_binary(t) or pa.types.is_large_binary(t)),
}


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


# ---- the manifest's schema: what readers rely on (other keys are kept, not checked) ----------

_COUNT = Annotated[int, Field(ge=0, le=10**10)]
_SIDE = Annotated[int, Field(ge=1, le=8192)]
Split = Literal["train", "val", "test"]


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)


class _ClipRecord(_Loose):
    id: Annotated[str, Field(min_length=1, max_length=400)]
    split: Split
    frames: _COUNT
    files: list[Annotated[str, Field(min_length=1, max_length=4096)]]


class _SplitRecord(_Loose):
    policy: Literal["clips", "time_blocks"]  # printed by data info: never free text
    seed: Annotated[int, Field(ge=0, lt=2**63)]  # ingest's --seed


class _ManifestSchema(_Loose):
    size: Annotated[list[_SIDE], Field(min_length=2, max_length=2)]
    encoding: Literal["raw", "png", "jpeg"]
    frames: _COUNT
    splits: dict[Split, _COUNT]
    clips: list[_ClipRecord]
    sources: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    split: _SplitRecord
    bytes: _COUNT | None = None

    @model_validator(mode="after")
    def _consistent(self) -> _ManifestSchema:
        total = sum(c.frames for c in self.clips)
        if total != self.frames:
            raise PydanticCustomError(
                "arch",
                f"is {self.frames} but the clips hold {total} frames",
                {"field": "frames"},
            )
        for split in SPLITS:
            held = sum(c.frames for c in self.clips if c.split == split)
            if self.splits.get(split, 0) != held:
                raise PydanticCustomError(
                    "arch",
                    f"says {self.splits.get(split, 0)} but its clips hold {held} frames",
                    {"field": f"splits.{split}"},
                )
        seen: set[str] = set()
        for clip in self.clips:
            if clip.id in seen:
                dup = clip.id
                raise PydanticCustomError("arch", f"repeat the id {dup!r}", {"field": "clips"})
            seen.add(clip.id)
        return self


_MANIFEST_FIX = "re-run 'varnext ingest' to rewrite the dataset (never edit dataset.json)"
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


def _check_files(root: Path, schema: _ManifestSchema, where: str) -> None:
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
                raise UserError(what, where, _MANIFEST_FIX)
            path = root / file
            st = path_stat(path, f"{name}: {file!r}", _MANIFEST_FIX)
            if st is None:
                raise UserError(f"{name}: {file!r} is missing", where, _MANIFEST_FIX)
            if not stat.S_ISREG(st.st_mode):
                what = f"{name}: {file!r} is {kind_of(st.st_mode)}"
                raise UserError(what, where, _MANIFEST_FIX)
            if not path.resolve().is_relative_to(root):  # a link leading out of the dataset
                what = f"{name}: {file!r} is a link to a file outside the dataset"
                raise UserError(what, where, _MANIFEST_FIX)
            try:
                footer = pq.read_metadata(path)
                columns = footer.schema.to_arrow_schema()
            except (OSError, pa.ArrowException, ValueError) as err:
                what = f"{name}: {file!r} is not a readable Parquet file ({err})"
                raise UserError(what, where, _MANIFEST_FIX) from None
            _check_columns(columns, f"{name}: {file!r}", where)
            _check_frame_key(footer, schema, f"{name}: {file!r}", where)
            rows += footer.num_rows
        if rows != clip.frames:
            what = f"clips[{n}].frames: is {clip.frames} but its files hold {rows} rows"
            raise UserError(what, where, _MANIFEST_FIX)


def _check_keys(root: Path, schema: _ManifestSchema, where: str) -> None:
    """Every clip file's ``clip_id`` is its clip's id, and the clip's ``frame_index`` values,
    file after file, are 0 .. frames-1: what readers look frames up by (two small columns are
    read). Each file's first image decodes as the manifest's encoding and size (a file of
    another dataset, an edited ``encoding``), read alone: the other images are not read."""
    for n, clip in enumerate(schema.clips):
        indices = []
        for file in clip.files:
            try:
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
                raise UserError(what, where, _MANIFEST_FIX)
            indices.append(keys.column("frame_index").to_numpy(zero_copy_only=False))
        found = np.concatenate(indices) if indices else np.empty(0, np.int64)
        if not np.array_equal(found, np.arange(clip.frames)):
            what = f"clips[{n}] ({clip.id!r}): its frame_index values are not 0..{clip.frames - 1}"
            raise UserError(what, where, _MANIFEST_FIX)


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
        raise UserError(what, where, _MANIFEST_FIX)


def _check_columns(schema: pa.Schema, file: str, where: str) -> None:
    """A clip file holds every column readers select (:data:`COLUMNS`), of a type they read."""
    for column, (want, readable) in COLUMNS.items():
        index = schema.get_field_index(column)
        if index < 0:
            raise UserError(f"{file} has no column {column!r}", where, _MANIFEST_FIX)
        if not readable(schema.field(index).type):
            got = schema.field(index).type
            what = f"{file}: column {column!r} is {got}, not {want}"
            raise UserError(what, where, _MANIFEST_FIX)


def validate_manifest(data: Any, where: str) -> _ManifestSchema:
    """Checks a decoded ``dataset.json`` against what readers rely on (UserError naming the key)."""
    try:
        return _ManifestSchema.model_validate(data)
    except ValidationError as err:
        problems = problems_from_validation(err, {(): _ManifestSchema})
        what = list_problems("invalid manifest", problems)
        raise UserError(what, where, _MANIFEST_FIX) from None


@dataclass(frozen=True)
class Manifest:
    """The parsed ``dataset.json`` of a frame dataset."""

    root: Path
    data: dict[str, Any]

    @property
    def size(self) -> tuple[int, int]:
        """(W, H) of every frame."""
        return tuple(self.data["size"])  # type: ignore[return-value]

    @property
    def encoding(self) -> str:
        return self.data["encoding"]

    def clips(self, split: str | None = None) -> list[dict]:
        """The clip records, optionally of one split."""
        return [c for c in self.data["clips"] if split is None or c["split"] == split]

    def frames(self, split: str) -> int:
        """The split's frames (``splits`` may leave out a split that has none: validated to
        add up with the clips when loaded)."""
        return int(self.data["splits"].get(split, 0))

    def files(self, split: str) -> list[str]:
        """Absolute paths of the split's Parquet files."""
        return [str(self.root / f) for c in self.clips(split) for f in c["files"]]


def load_manifest(
    path: str | Path, *, check_files: bool = True, check_keys: bool = False
) -> Manifest:
    """Reads a dataset's manifest, with a UserError for anything that is not a dataset.

    The manifest is read bounded (64 MiB), validated key by key (types, counts that add up)
    and, with ``check_files``, its Parquet files are checked to exist inside the dataset and to
    hold as many rows as it says (their footers only); with ``check_keys`` (once per command,
    before Ray: ``data info``, the training checks) their clip ids and frame indices are read
    and compared with the manifest's clips too.
    """
    fix = "pass a directory written by 'varnext ingest'"
    st = path_stat(path, "dataset", fix)
    if st is None or not stat.S_ISDIR(st.st_mode):
        what = "dataset not found" if st is None else f"dataset is {kind_of(st.st_mode)}"
        what += ", not a directory" if st is not None else ""
        raise UserError(what, str(path), fix)
    try:
        root = Path(path).resolve(strict=True)
    except (OSError, RuntimeError) as err:
        raise UserError(f"dataset path does not resolve ({err})", str(path), fix) from None
    file = root / MANIFEST
    if path_stat(file, "manifest", fix) is None and not os.path.islink(file):
        raise UserError(
            f"not a frame dataset (no {MANIFEST})",
            str(path),
            "pass a directory written by 'varnext ingest' (an interrupted ingest leaves none)",
        )
    try:
        data = read_json(file, what="manifest", limit=MANIFEST_LIMIT, fix=_MANIFEST_FIX)
    except UserError as err:
        raise UserError(f"unreadable manifest: {err.what}", str(file), _MANIFEST_FIX) from None
    version = data.get("format_version") if isinstance(data, dict) else None
    if type(version) is not int or version != FORMAT_VERSION:  # not `true`, which == 1
        raise UserError(
            f"unsupported dataset format {str(version)[:40]!r}"
            if isinstance(data, dict)
            else "manifest is not a JSON object",
            str(file),
            f"re-ingest with this version (format {FORMAT_VERSION})",
        )
    schema = validate_manifest(data, str(file))
    if check_files or check_keys:
        _check_files(root, schema, str(file))
    if check_keys:
        _check_keys(root, schema, str(file))
    return Manifest(root, data)


def triplet_index(manifest: Manifest, split: str, stride: int = 1) -> list[tuple[str, int]]:
    """Every (clip_id, t) whose frames t, t+s, t+2s lie in one clip of the split."""
    return sequence_index(manifest, split, stride, length=3)


def sequence_index(
    manifest: Manifest, split: str, stride: int = 1, length: int = 3
) -> list[tuple[str, int]]:
    """Every (clip_id, t) whose frames t, t+s, ..., t+(length-1)s lie in one clip of the split."""
    if stride < 1:
        raise UserError(f"triplet stride must be >= 1 (got {stride})", "stride", "use 1 or more")
    reach = (length - 1) * stride
    clips = manifest.clips(split)
    return [(clip["id"], t) for clip in clips for t in range(clip["frames"] - reach)]


def sequence_count(manifest: Manifest, split: str, stride: int = 1, length: int = 3) -> int:
    """``len(sequence_index(...))`` without building the list."""
    if stride < 1:
        raise UserError(f"triplet stride must be >= 1 (got {stride})", "stride", "use 1 or more")
    reach = (length - 1) * stride
    return sum(max(0, clip["frames"] - reach) for clip in manifest.clips(split))


def info(manifest: Manifest, stride: int = 1) -> dict[str, Any]:
    """A summary for ``varnext data info``: frames, clips, splits, size, skipped and more."""
    data = manifest.data
    return {
        "path": str(manifest.root),
        "frames": data["frames"],
        "clips": len(data["clips"]),
        "splits": {s: manifest.frames(s) for s in SPLITS},
        "clips_per_split": {s: len(manifest.clips(s)) for s in SPLITS},
        "triplets": {s: sequence_count(manifest, s, stride) for s in SPLITS},
        "stride": stride,
        "size": list(manifest.size),
        "encoding": manifest.encoding,
        "sources": len(data["sources"]),
        "skipped": len(data["skipped"]),
        "skipped_inputs": data["skipped"],
        "split_policy": data["split"]["policy"],
        "seed": data["split"]["seed"],
        "bytes": data.get("bytes"),
    }


def _decode_batch(
    batch: dict[str, np.ndarray], encoding: str, size: tuple[int, int], clip_numbers: dict[str, int]
) -> dict[str, np.ndarray]:
    return {
        "image": decode_images(list(batch["image"]), encoding, size),
        "clip": np.array([clip_numbers[c] for c in batch["clip_id"]], np.int32),
        "frame_index": batch["frame_index"],
    }


PARQUET_V1 = True  # read_parquet's datasource (benchmarks/data_path.py switches it to compare)


def read_parquet(files: list[str]) -> ray.data.Dataset:
    """``ray.data.read_parquet`` through Ray Data's V1 Parquet datasource (:data:`PARQUET_V1`).

    Measured side by side (benchmarks/data_path.py, variants; docs/data.md): the V1 reader
    delivers 1.4-3.9x the frames/s of Ray 2.60's default V2 one on these datasets (a few large
    binary cells per row), e.g. 500 vs 231 (jpeg, 640x360) and 1,760 vs 508 (raw, 160x90).
    The setting is read when the plan is built, so it is switched for this call only.

    One read task per file (ingest writes at most 1,024 frames per file), never Ray Data's
    default of splitting each file's output into more blocks than there are files: a split
    read cannot fuse with the map that decodes its frames (``frames_dataset``), and the two
    operators then pass every frame through the object store between them. Measured at
    160x90 raw, 8,000 frames, 2 CPUs: 1,840 frames/s split and unfused, 6,500 with one task
    per file, fused (benchmarks/data_path.py; docs/data.md).

    A UserError raised while a frame is decoded (a damaged shard) reaches the caller as itself
    (``raise_original_map_exception``), not as Ray Data's ``UserCodeException`` whose text
    alone holds it: the CLI then prints its one line, exit 2, not "unexpected error".
    """
    import ray.data

    context = ray.data.DataContext.get_current()
    context.raise_original_map_exception = True
    default = context.use_datasource_v2
    context.use_datasource_v2 = not PARQUET_V1
    try:
        return ray.data.read_parquet(files, override_num_blocks=len(files))
    finally:
        context.use_datasource_v2 = default


def frames_dataset(path: str | Path, split: str, block_rows: int | None = None) -> ray.data.Dataset:
    """A Ray Dataset of the split's frames: ``image`` uint8 (H, W, 3), ``clip``, ``frame_index``.

    ``clip`` is the clip's position in the manifest's ``clips`` list (numeric, so every column
    converts to a tensor in ``iter_torch_batches``).

    Rows come clip by clip in time order, in blocks of up to a file's frames (the read and the
    decoding run as one fused Ray task per file), or of ``block_rows`` frames when given (a
    streaming repartition, fused into the same task). Shuffle with ``randomize_block_order()``
    or ``random_shuffle()`` for training: blocks are what the first one moves, so training asks
    for small ones (:data:`~varnext_ray.train_data.TRAIN_BLOCK_ROWS`); every block costs time
    in the object store (measured at 160x90 raw, 2 CPUs: 8,300 frames/s in blocks of a file,
    4,000 in blocks of 64). Works with the ``streaming_split`` Ray Train applies.
    """

    manifest = load_manifest(path)
    files = manifest.files(split)
    if not files:
        raise UserError(
            f"the dataset has no {split!r} frames",
            str(path),
            "re-ingest with a larger --val/--test fraction or more footage",
        )
    ds = read_parquet(files).select_columns(["clip_id", "frame_index", "image"])
    clip_numbers = {c["id"]: i for i, c in enumerate(manifest.clips())}
    frames = ds.map_batches(
        _decode_batch,
        fn_kwargs={
            "encoding": manifest.encoding,
            "size": manifest.size,
            "clip_numbers": clip_numbers,
        },
        batch_format="numpy",
        batch_size=None,  # whole read blocks: a batch size keeps Ray Data from fusing the read
    )
    if block_rows is not None:
        frames = frames.repartition(target_num_rows_per_block=block_rows)
    return frames


class _SequenceReader:
    """Reads the frames of sequence ranges from a split's Parquet files (a few ranges per Ray
    task: :func:`_ranges_per_task`)."""

    def __init__(self, manifest: Manifest, stride: int, length: int) -> None:
        self.manifest = manifest
        self.stride = stride
        self.length = length
        self.files = [[str(manifest.root / f) for f in c["files"]] for c in manifest.clips()]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        s, reach = self.stride, (self.length - 1) * self.stride
        keys = sequence_keys(self.length)
        out: dict[str, list] = {k: [] for k in (*keys, "clip", "t")}
        for clip, start, stop in zip(batch["clip"], batch["start"], batch["stop"], strict=True):
            table = (
                pq.ParquetDataset(
                    self.files[int(clip)],
                    filters=[
                        ("frame_index", ">=", int(start)),
                        ("frame_index", "<", int(stop) + reach),
                    ],
                )
                .read(columns=["frame_index", "image"])
                .sort_by("frame_index")
            )
            frames = decode_images(
                table.column("image").to_pylist(), self.manifest.encoding, self.manifest.size
            )
            n = int(stop) - int(start)
            for i, key in enumerate(keys):
                out[key].append(frames[i * s : i * s + n])
            out["clip"].extend([int(clip)] * n)
            out["t"].extend(range(int(start), int(stop)))
        return {
            k: np.concatenate(v) if k.startswith("x") else np.asarray(v) for k, v in out.items()
        }


def sequence_keys(length: int) -> tuple[str, ...]:
    """Column names of a sequence's frames: ``x1`` .. ``x{length}``."""
    return tuple(f"x{i}" for i in range(1, length + 1))


def triplets_dataset(
    path: str | Path, split: str = "val", stride: int = 1, limit: int | None = None, chunk: int = 32
) -> ray.data.Dataset:
    """A Ray Dataset of (t, t+s, t+2s) frame triplets that never cross a clip boundary.

    Columns: ``x1``, ``x2``, ``x3`` uint8 (H, W, 3), ``clip`` (index in the manifest), ``t``.
    ``limit`` keeps an evenly spaced subset of at most that many triplets.
    """
    return sequences_dataset(path, split, stride, length=3, limit=limit, chunk=chunk)


def sequences_dataset(
    path: str | Path,
    split: str = "val",
    stride: int = 1,
    length: int = 3,
    limit: int | None = None,
    chunk: int = 32,
) -> ray.data.Dataset:
    """A Ray Dataset of frames t, t+s, ..., t+(length-1)s that never cross a clip boundary.

    Columns: ``x1`` .. ``x{length}`` uint8 (H, W, 3), ``clip`` (index in the manifest), ``t``.
    ``limit`` keeps an evenly spaced subset of at most that many sequences. Multi-step
    rollouts are scored on these (length = horizons + 2).
    """
    import ray.data

    manifest = load_manifest(path)
    index = sequence_index(manifest, split, stride, length)
    if not index:
        what = "triplets" if length == 3 else f"sequences of {length} frames"
        raise UserError(
            f"the {split!r} split has no {what} of stride {stride}",
            str(path),
            f"use a smaller stride, or re-ingest so {split!r} clips hold more than "
            f"{(length - 1) * stride} frames",
        )
    if limit is not None and len(index) > limit:
        keep = np.linspace(0, len(index) - 1, limit).round().astype(int)
        index = [index[i] for i in keep]
    numbers = {c["id"]: i for i, c in enumerate(manifest.clips())}
    ranges = _ranges(index, chunk)
    items = ray.data.from_items([{"clip": numbers[c], "start": a, "stop": b} for c, a, b in ranges])
    reader = _SequenceReader(manifest, stride, length)
    return items.map_batches(
        reader, batch_size=_ranges_per_task(ranges, chunk), batch_format="numpy"
    )


def _ranges_per_task(ranges: list[tuple[str, int, int]], chunk: int) -> int:
    """How many ranges one reading task takes: about ``chunk`` sequences' worth on average.

    Dense anchors make ranges of ``chunk`` sequences (one per task); a ``limit`` spreads its
    anchors out, one sequence per range, and a task per range then cost more than the read
    (128 validation triplets at 64x36: 2.2 s in 128 tasks, 0.7 s in 16).
    """
    sequences = sum(stop - start for _, start, stop in ranges)
    return max(1, round(chunk * len(ranges) / max(sequences, 1)))


def _ranges(index: list[tuple[str, int]], chunk: int) -> list[tuple[str, int, int]]:
    """Groups consecutive anchors of one clip into [start, stop) ranges of at most ``chunk``."""
    ranges: list[tuple[str, int, int]] = []
    for clip_id, t in index:
        if ranges and ranges[-1][0] == clip_id and ranges[-1][2] == t and t - ranges[-1][1] < chunk:
            ranges[-1] = (clip_id, ranges[-1][1], t + 1)
        else:
            ranges.append((clip_id, t, t + 1))
    return ranges


def to_model_input(images: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) in [0, 1] on ``device``, channels_last.

    The copy to the device moves uint8 (a quarter of float32's bytes); the conversion runs there.
    """
    x = images.to(device, non_blocking=True)  # (B, H, W, 3) uint8
    return x.permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, H, W), channels_last strides
