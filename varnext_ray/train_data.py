"""The datasets a training run reads, prepared once.

``varnext train`` prepares its own; a sweep prepares one :class:`RunData` before its first
trial and every trial shares it through the object store, so no trial re-reads or re-decodes
the frames, nor recomputes the background (issue #18: reading the dataset in each trial's
driver was the largest fixed cost of a short trial). What differs between trials (the batch
size, hence the passes per epoch, and the shuffle seed) is applied per run by
:func:`run_datasets`, lazily, on the shared blocks.

Each split is materialised when its decoded frames fit in a quarter of the object store;
otherwise it stays a streaming read (Ray Data then re-reads it every epoch).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from varnext_ray import console
from varnext_ray.background import training_background
from varnext_ray.cluster import object_store_fits
from varnext_ray.dataset import frames_dataset, sequences_dataset, triplets_dataset
from varnext_ray.errors import UserError
from varnext_ray.manifest import Manifest, load_manifest, sequence_index, triplet_index
from varnext_ray.manifest_files import DAMAGED_FIX, damaged_file
from varnext_ray.settings import TrainSettings

log = logging.getLogger(__name__)

# Frames per block of the training split. Training shuffles the order of its blocks and then
# rows within a 256-frame buffer (TrainSettings.shuffle_buffer), so a block is the unit that
# moves: blocks of a whole file (up to 1,024 consecutive frames of one clip) would fill the
# buffer, and so each batch, with seconds of one clip. 64 keeps 4+ blocks, usually of other
# clips and times, in the buffer (blocks held 64-110 frames before the read was fused).
TRAIN_BLOCK_ROWS = 64


@dataclass(frozen=True)
class DataKey:
    """The settings a :class:`RunData` was prepared for; a run with other ones prepares anew."""

    path: str  # the dataset directory, absolute
    stride: int
    triplets: bool  # training reads triplets (linearity term) instead of frames
    val_triplets: int
    rollout_steps: int
    rollout_sequences: int

    @classmethod
    def of(cls, data: Path | str, settings: TrainSettings, triplets: bool) -> DataKey:
        return cls(
            path=str(Path(data).resolve()),
            stride=settings.stride,
            triplets=triplets,
            val_triplets=settings.val_triplets,
            rollout_steps=settings.rollout_steps,
            rollout_sequences=settings.rollout_sequences,
        )


@dataclass(frozen=True)
class RunData:
    """Ray Datasets (materialised where they fit) and the training background of one dataset."""

    key: DataKey
    train: Any  # frames, or (x1, x2, x3) triplets when key.triplets
    train_rows: int  # rows of ``train``: what one pass over the split holds
    val: Any  # validation triplets
    rollout: Any | None  # validation sequences of horizons + 2 frames; None: no rollouts
    horizons: int
    background: np.ndarray  # uint8 (H, W, 3)
    parts: tuple[Any, ...] = ()  # ``train`` cut into equal parts, one per worker (:meth:`cut`)

    def cut(self, workers: int) -> RunData:
        """This data with its materialised training rows cut into ``workers`` equal parts
        (``Dataset.split(equal=True)``, which slices blocks in Ray tasks). A sweep cuts once
        for all its trials, so no trial starts task workers to cut them again;
        :func:`run_datasets` uses the parts when it has as many workers."""
        if not self.train_materialised:
            return self
        return replace(self, parts=tuple(self.train.split(workers, equal=True)))

    @property
    def train_materialised(self) -> bool:
        """Whether the training rows are in the object store: then each run cuts them into one
        part per worker (:func:`run_datasets`) rather than streaming-splitting them."""
        from ray.data.dataset import MaterializedDataset

        return isinstance(self.train, MaterializedDataset)

    @property
    def eval_materialised(self) -> bool:
        """Whether the validation (and rollout) datasets are in the object store: then every
        rank reads them whole rather than through a streaming split (LoopConfig.eval_split)."""
        from ray.data.dataset import MaterializedDataset

        evals = (self.val, self.rollout) if self.rollout is not None else (self.val,)
        return all(isinstance(ds, MaterializedDataset) for ds in evals)


def prepare_run_data(data: Path | str, settings: TrainSettings, *, triplets: bool) -> RunData:
    """Reads, decodes and (where it fits) materialises what a run with ``settings`` reads."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    console.quiet_ray_data()  # a sweep prepares before any trainer is built
    key = DataKey.of(data, settings, triplets)
    manifest = load_manifest(data)
    frame_bytes = math.prod(manifest.size) * 3
    if triplets:
        rows = len(triplet_index(manifest, "train", settings.stride))
        train = triplets_dataset(data, "train", stride=settings.stride)
    else:
        rows = manifest.frames("train")
        train = frames_dataset(data, "train", block_rows=TRAIN_BLOCK_ROWS)
    val_rows = min(settings.val_triplets, len(triplet_index(manifest, "val", settings.stride)))
    val = triplets_dataset(data, "val", stride=settings.stride, limit=settings.val_triplets)
    horizons = rollout_horizons(data, settings)
    rollout = None
    if horizons:
        rollout = sequences_dataset(
            data, "val", settings.stride, length=horizons + 2, limit=settings.rollout_sequences
        )
    row_frames = 3 if triplets else 1
    if object_store_fits(rows * row_frames * frame_bytes):  # decode once, not every epoch
        train = _materialize(train, manifest, "train")
    if object_store_fits(val_rows * 3 * frame_bytes):
        val = _materialize(val, manifest, "val")
    if rollout is not None and object_store_fits(
        settings.rollout_sequences * (horizons + 2) * frame_bytes
    ):
        rollout = _materialize(rollout, manifest, "val")
    return RunData(
        key=key,
        train=train,
        train_rows=rows,
        val=val,
        rollout=rollout,
        horizons=horizons,
        background=training_background(data),
    )


def _materialize(ds: Any, manifest: Manifest, split: str) -> Any:
    """``ds.materialize()``, with a UserError naming the file when a Parquet file of the split
    does not read: its footer was checked before Ray (:func:`~varnext_ray.manifest.load_manifest`)
    but a damaged page is only found by reading it."""
    import pyarrow as pa
    from ray.exceptions import RayTaskError

    try:
        return ds.materialize()
    except RayTaskError as err:
        cause = getattr(err, "cause", None)
        if not isinstance(cause, (OSError, pa.ArrowException)):
            raise
        reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:200]
        raise UserError(
            f"a Parquet file of the {split!r} split does not read ({reason})",
            damaged_file(manifest, split) or str(manifest.root),
            DAMAGED_FIX,
        ) from None


def datasets_to_split(prepared: RunData) -> list[str]:
    """The datasets Ray Train streaming-splits across the workers: the training rows unless
    they are materialised (then :func:`run_datasets` cuts them), the evaluation ones unless
    they are materialised (see :attr:`RunData.eval_materialised`)."""
    evals = ["val", "rollout"] if prepared.rollout is not None else ["val"]
    train = [] if prepared.train_materialised else ["train"]
    return train + ([] if prepared.eval_materialised else evals)


def train_part(rank: int) -> str:
    """The name of rank ``rank``'s part of materialised training rows among a run's datasets."""
    return f"train_{rank}"


def run_datasets(prepared: RunData, passes: int, seed: int, workers: int) -> dict[str, Any]:
    """The datasets of one run: ``passes`` whole passes over the training rows per epoch in one
    stream (every worker iterates its share once, in lockstep), in a seeded block order.

    Materialised training rows are cut here into ``workers`` equal parts, ``train_0``,
    ``train_1``, ... (``Dataset.split(equal=True)``: the same floor(rows / workers) rows per
    worker as a streaming split), and rank r reads ``train_r``; parts cut before
    (:meth:`RunData.cut`, a sweep's) are reused. A streaming split would start a
    SplitCoordinator actor per run and serve every batch through it; for data already in the
    object store that is a process start on every trial's critical path (issue #18).
    Streaming rows stay one ``train`` dataset that Ray Train streaming-splits
    (:func:`datasets_to_split`).
    """
    if prepared.train_materialised:
        parts = prepared.parts
        if len(parts) != workers:
            parts = prepared.train.split(workers, equal=True)
        datasets = {
            train_part(rank): _passes(part, passes).randomize_block_order(seed=seed + rank)
            for rank, part in enumerate(parts)
        }
    else:
        datasets = {"train": _passes(prepared.train, passes).randomize_block_order(seed=seed)}
    datasets["val"] = prepared.val
    if prepared.rollout is not None:
        datasets["rollout"] = prepared.rollout
    return datasets


def _passes(train: Any, passes: int) -> Any:
    """``passes`` whole passes over ``train`` as one dataset."""
    return train.union(*[train] * (passes - 1)) if passes > 1 else train


def steps_per_pass(rows: int, batch_size: int, workers: int) -> int:
    """Optimizer steps of one pass over ``rows`` training rows: ceil(rows per worker / batch).

    ``streaming_split`` gives every worker floor(rows / workers) rows (frames, or triplets when
    training reads triplets); the last batch of a pass may be partial.
    """
    return max(1, math.ceil((rows // max(1, workers)) / batch_size))


def rollout_horizons(data: Path | str, settings: TrainSettings) -> int:
    """The rollout horizon K to score: ``settings.rollout_steps``, shortened to fit the clips.

    The validation clips must hold K + 2 frames s apart; with shorter clips K shrinks (to 0,
    no rollout metrics, when not even one step fits), with a warning.
    """
    manifest = load_manifest(data)
    for horizons in range(settings.rollout_steps, 0, -1):
        if sequence_index(manifest, "val", settings.stride, horizons + 2):
            if horizons < settings.rollout_steps:
                log.warning(
                    "validation clips are too short for %d rollout steps; scoring %d",
                    settings.rollout_steps,
                    horizons,
                )
            return horizons
    return 0
