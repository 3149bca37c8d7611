"""Reading a frame dataset as Ray Datasets of frames, triplets and sequences.

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

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from varnext_ray.errors import UserError
from varnext_ray.frame_codec import decode_image_column
from varnext_ray.manifest import Manifest, load_manifest, sequence_index

if TYPE_CHECKING:
    import ray.data
    import torch


def _decode_batch(
    batch: pa.Table, encoding: str, size: tuple[int, int], clip_ids: list[str]
) -> dict[str, np.ndarray]:
    """A read block (Arrow, as Parquet gave it) to decoded frames; ``clip`` is the clip id's
    position in ``clip_ids``. Arrow in, not NumPy: the NumPy form of a binary column is an
    array of Python ``bytes``, a copy of every frame (decode_image_column)."""
    clip = pc.index_in(batch.column("clip_id"), value_set=pa.array(clip_ids, pa.string()))
    if clip.null_count:
        unknown = batch.column("clip_id").filter(pc.is_null(clip))[0]
        raise UserError(
            f"a stored frame's clip {unknown} is not one of dataset.json's clips",
            "dataset clip_id column",
            "re-run 'varnext ingest': the Parquet files do not match dataset.json",
        )
    return {
        "image": decode_image_column(batch.column("image"), encoding, size),
        "clip": clip.to_numpy(zero_copy_only=False).astype(np.int32),
        "frame_index": batch.column("frame_index").to_numpy(),
    }


# Decoded bytes per decoding task of a JPEG or PNG split (:func:`decode_rows`): 72 frames of
# 640x360, 1,165 of 160x90 (more than a file holds, so those stay one fused task per file).
DECODE_BYTES = 48 << 20
PARQUET_V1 = True  # read_parquet's datasource (benchmarks/data_path.py switches it to compare)


def read_parquet(files: list[str], *, split: bool = False) -> ray.data.Dataset:
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
    per file, fused (benchmarks/data_path.py; docs/data.md). With ``split``, Ray Data's
    default instead: more blocks than files, for a map whose work per frame is worth the
    object store's round trip (``frames_dataset`` decoding JPEG or PNG).

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
        return ray.data.read_parquet(files, override_num_blocks=None if split else len(files))
    finally:
        context.use_datasource_v2 = default


def frames_dataset(path: str | Path, split: str, block_rows: int | None = None) -> ray.data.Dataset:
    """A Ray Dataset of the split's frames: ``image`` uint8 (H, W, 3), ``clip``, ``frame_index``.

    ``clip`` is the clip's position in the manifest's ``clips`` list (numeric, so every column
    converts to a tensor in ``iter_torch_batches``).

    Rows come clip by clip in time order, in blocks of up to a file's frames (the read and the
    decoding run as one fused Ray task per file), of :func:`decode_rows` frames (large JPEG or
    PNG frames, whose decoding is spread over more tasks than files), or of ``block_rows``
    frames when given (a streaming repartition, fused into the decoding task). Shuffle with
    ``randomize_block_order()`` or ``random_shuffle()`` for training: blocks are what the first
    one moves, so training asks for small ones (:data:`~varnext_ray.train_data.TRAIN_BLOCK_ROWS`);
    every block costs time in the object store (measured at 160x90 raw, 2 CPUs: 8,300 frames/s
    in blocks of a file, 4,000 in blocks of 64). Works with the ``streaming_split`` Ray Train
    applies.
    """

    manifest = load_manifest(path)
    files = manifest.files(split)
    if not files:
        raise UserError(
            f"the dataset has no {split!r} frames",
            str(path),
            "re-ingest with a larger --val/--test fraction or more footage",
        )
    rows = decode_rows(manifest, split)
    ds = read_parquet(files, split=rows is not None)
    ds = ds.select_columns(["clip_id", "frame_index", "image"])
    frames = ds.map_batches(
        _decode_batch,
        fn_kwargs={
            "encoding": manifest.encoding,
            "size": manifest.size,
            "clip_ids": [c["id"] for c in manifest.clips()],
        },
        batch_format="pyarrow",
        # None: whole read blocks, so the read fuses with the decoding (a batch size would keep
        # them apart); else `rows` frames per decoding task (decode_rows)
        batch_size=rows,
    )
    if block_rows is not None:
        frames = frames.repartition(target_num_rows_per_block=block_rows)
    return frames


def decode_rows(manifest: Manifest, split: str) -> int | None:
    """Frames per decoding task of ``split``: None for one fused task per file (raw frames, or
    small JPEG/PNG ones), else :data:`DECODE_BYTES` of decoded frames.

    Decoding a JPEG or PNG frame costs time in proportion to its pixels (a 640x360 JPEG about
    2 ms here), and one task per file leaves the CPUs idle beside a dataset of few files; a
    split read brings the encoded bytes through the object store (a tenth of raw ones) to
    tasks of DECODE_BYTES each. Measured (benchmarks/data_path.py, C=2 streaming, two runs
    each, docs/data.md): 640x360 JPEG 0.66-0.68x of the one-process read fused, 0.85-0.92x in
    tasks of 64 frames; 160x90 JPEG 0.29-0.30x fused, 0.20-0.23x in tasks of 64 frames, where
    a task's own cost outweighs its decoding. Raw frames decode by a copy: always fused.
    """
    if manifest.encoding == "raw":
        return None
    rows = max(1, DECODE_BYTES // (math.prod(manifest.size) * 3))
    per_file = max((-(-c["frames"] // len(c["files"])) for c in manifest.clips(split)), default=0)
    return rows if rows < per_file else None


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
            frames = decode_image_column(
                table.column("image"), self.manifest.encoding, self.manifest.size
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
