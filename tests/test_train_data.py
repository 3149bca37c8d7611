"""The datasets of a training run, prepared once (a sweep's trials share them)."""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path

import pytest

from varnext_ray.dataset import frames_dataset
from varnext_ray.manifest import load_manifest, triplet_index
from varnext_ray.settings import TrainSettings
from varnext_ray.train_data import (
    DataKey,
    datasets_to_split,
    prepare_run_data,
    run_datasets,
    steps_per_pass,
    train_part,
)
from varnext_ray.train_loop import train_prefetch_batches
from varnext_ray.worker_entry import LoopConfig


def test_steps_per_pass_follows_the_equal_split() -> None:
    assert steps_per_pass(101, batch_size=8, workers=2) == math.ceil(50 / 8)
    assert steps_per_pass(101, batch_size=8, workers=1) == math.ceil(101 / 8)
    assert steps_per_pass(101, batch_size=10**6, workers=1) == 1
    assert steps_per_pass(1, batch_size=8, workers=2) == 1  # never a budget of 0


@pytest.fixture(scope="module")
def prepared(ray_local, dataset_dir: Path):
    return prepare_run_data(dataset_dir, TrainSettings(rollout_steps=2), triplets=False)


def test_frames_are_read_once_into_the_object_store(prepared, dataset_dir: Path) -> None:
    from ray.data.dataset import MaterializedDataset

    manifest = load_manifest(dataset_dir)
    assert prepared.train_rows == manifest.data["splits"]["train"]
    for ds in (prepared.train, prepared.val, prepared.rollout):
        assert isinstance(ds, MaterializedDataset)  # a tiny dataset always fits
    assert prepared.train.count() == prepared.train_rows
    assert prepared.val.count() == len(triplet_index(manifest, "val", 1))
    assert prepared.horizons == 2 and prepared.background.shape == (36, 64, 3)
    # materialised data is cut per rank or read whole by every rank: no split coordinator
    assert prepared.train_materialised and prepared.eval_materialised
    assert datasets_to_split(prepared) == []
    streaming = replace(prepared, val=frames_dataset(dataset_dir, "val"))
    assert datasets_to_split(streaming) == ["val", "rollout"]
    streaming = replace(streaming, train=frames_dataset(dataset_dir, "train"))
    assert datasets_to_split(streaming) == ["train", "val", "rollout"]


def _rows(dataset) -> list[tuple[int, int]]:
    """(clip, frame_index) of every row, in the dataset's order."""
    batch = dataset.take_batch(dataset.count(), batch_format="numpy")
    return list(zip(batch["clip"].tolist(), batch["frame_index"].tolist(), strict=True))


def test_a_run_takes_whole_passes_in_a_seeded_order(prepared) -> None:
    rows = prepared.train_rows
    three = run_datasets(prepared, passes=3, seed=1, workers=1)
    assert set(three) == {train_part(0), "val", "rollout"}
    assert _rows(three[train_part(0)]) and three[train_part(0)].count() == 3 * rows

    def order(seed: int) -> list[tuple[int, int]]:
        return _rows(run_datasets(prepared, 1, seed, workers=1)[train_part(0)])

    assert order(1) == order(1) and sorted(order(1)) == sorted(order(2))
    assert prepared.train.num_blocks() > 1  # the seed decides the order of the blocks
    assert len({tuple(order(seed)) for seed in range(6)}) > 1


def test_materialised_rows_are_cut_into_one_equal_part_per_worker(prepared) -> None:
    rows, workers = prepared.train_rows, 3
    datasets = run_datasets(prepared, passes=2, seed=0, workers=workers)
    parts = [_rows(datasets[train_part(rank)]) for rank in range(workers)]
    assert set(datasets) == {*map(train_part, range(workers)), "val", "rollout"}
    # as a streaming split: floor(rows / workers) rows each, disjoint; 2 passes of each
    assert [len(p) for p in parts] == [2 * (rows // workers)] * workers
    firsts = [set(p) for p in parts]
    assert all(len(f) == rows // workers for f in firsts)
    assert len(set().union(*firsts)) == workers * (rows // workers)
    streaming = replace(prepared, train=prepared.train.map_batches(lambda b: b))
    assert not streaming.train_materialised
    assert set(run_datasets(streaming, 1, 0, workers)) == {"train", "val", "rollout"}
    assert streaming.cut(workers).parts == ()  # streaming rows are split by Ray Train


def test_several_passes_over_a_part_are_read_without_prefetcher_errors(prepared) -> None:
    """Copies of a materialised part share its blocks; a block smaller than a batch put one
    block of two passes in the prefetcher's window, and Ray Data logged a traceback per window
    ("Wait requires a list of unique ray_waitables") from runs that then succeeded."""
    passes, settings = 3, TrainSettings()
    part = run_datasets(prepared, passes=passes, seed=0, workers=2)[train_part(0)]
    blocks = [m.num_rows for bundle in part.iter_internal_ref_bundles() for m in bundle.metadata]
    assert min(blocks) < settings.batch_size  # the case that logged them
    loop = LoopConfig(
        arch={}, settings=settings, on_triplets=False, rollout_steps=0,
        passes_per_epoch=passes, train_parts=True,
    )  # fmt: skip
    errors: list[str] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = lambda record: errors.append(record.getMessage())  # type: ignore[method-assign]
    ray_data = logging.getLogger("ray.data")  # Ray's own handlers; it does not propagate
    ray_data.addHandler(handler)
    try:
        rows = sum(
            len(batch["frame_index"])
            for batch in part.iter_torch_batches(
                batch_size=settings.batch_size,
                prefetch_batches=train_prefetch_batches(loop),
                local_shuffle_buffer_size=settings.shuffle_buffer,
            )
        )
    finally:
        ray_data.removeHandler(handler)
    assert rows == passes * (prepared.train_rows // 2)
    assert not errors


def test_parts_cut_once_are_what_each_run_reads(prepared) -> None:
    """A sweep cuts the training rows once (RunData.cut); its runs read those very parts, and
    a run with another number of workers cuts its own."""
    cut = prepared.cut(2)
    assert len(cut.parts) == 2 and prepared.parts == ()
    assert sorted(_rows(cut.parts[0])) != sorted(_rows(cut.parts[1]))
    # swapped, the parts differ from what cutting again would give: a run must read these
    swapped = replace(cut, parts=cut.parts[::-1])
    datasets = run_datasets(swapped, passes=1, seed=0, workers=2)
    for rank, part in enumerate(swapped.parts):
        assert sorted(_rows(datasets[train_part(rank)])) == sorted(_rows(part))
    three = run_datasets(cut, passes=1, seed=0, workers=3)
    assert [three[train_part(r)].count() for r in range(3)] == [prepared.train_rows // 3] * 3


def test_the_key_says_which_runs_can_share_it(prepared, dataset_dir: Path) -> None:
    settings = TrainSettings(rollout_steps=2)
    assert prepared.key == DataKey.of(dataset_dir, replace(settings, lr=0.5, batch_size=3), False)
    assert prepared.key != DataKey.of(dataset_dir, settings, True)  # triplets
    assert prepared.key != DataKey.of(dataset_dir, replace(settings, stride=2), False)


def test_triplet_training_counts_triplets(ray_local, dataset_dir: Path) -> None:
    settings = TrainSettings(stride=2, rollout_steps=0)
    data = prepare_run_data(dataset_dir, settings, triplets=True)
    manifest = load_manifest(dataset_dir)
    assert data.train_rows == len(triplet_index(manifest, "train", 2)) == data.train.count()
    assert data.rollout is None and data.horizons == 0
    assert {"x1", "x2", "x3"} <= set(data.train.schema().names)


def test_a_damaged_page_is_one_line_naming_its_file(
    ray_local, dataset_dir: Path, tmp_path: Path
) -> None:
    """A footer that reads, a page of images that does not: found only when the split is
    read; it was an 'unexpected RayTaskError(OSError)'."""
    import shutil

    import pyarrow.parquet as pq

    from varnext_ray.errors import UserError

    copy = tmp_path / "ds"
    shutil.copytree(dataset_dir, copy)
    file = load_manifest(copy).files("train")[-1]
    meta = pq.ParquetFile(file).metadata
    image = meta.schema.to_arrow_schema().get_field_index("image")
    chunk = meta.row_group(meta.num_row_groups - 1).column(image)
    start = chunk.dictionary_page_offset or chunk.data_page_offset  # the chunk's first page
    data = bytearray(Path(file).read_bytes())
    for i in range(start, start + min(64, chunk.total_compressed_size)):
        data[i] ^= 0x5A  # the header of the first page of the last images
    Path(file).write_bytes(bytes(data))
    load_manifest(copy, check_keys=True)  # footers and keys still read
    with pytest.raises(UserError, match="a Parquet file of the 'train' split does not read") as e:
        prepare_run_data(copy, TrainSettings(rollout_steps=2), triplets=False)
    assert e.value.where == file


BN_TO_1X1 = {  # batch norm on every layer, the last on a 1x1 map
    "input": {"channels": 3, "height": 8, "width": 8},
    "encoder": {
        "conv": [{"out_channels": 4, "kernel_size": 3, "stride": 2, "padding": 1, "norm": "batch"}]
        * 3
    },
    "latent": {"kind": "spatial", "channels": 2},
}


def test_a_last_batch_of_one_frame_is_left_out_where_batch_norm_needs_two(ray_local) -> None:
    """5 frames in batches of 2 end in a batch of 1, where batch norm on a 1x1 map sees one
    value per channel: PyTorch's "Expected more than 1 value per channel when training" ended
    the run (a traceback twice, exit 1). With a batch size of 1 it is refused before Ray."""
    import numpy as np
    import ray.data
    import torch

    from varnext_ray.arch import parse_arch
    from varnext_ray.errors import UserError
    from varnext_ray.model import build_vae
    from varnext_ray.train import check_dataset
    from varnext_ray.train_loop import train_epoch

    arch = parse_arch(BN_TO_1X1, "bn")
    frames = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    shard = ray.data.from_numpy(frames).rename_columns({"data": "image"})
    settings = TrainSettings(batch_size=2, shuffle_buffer=0, rollout_steps=0)
    loop = LoopConfig(arch=arch.to_dict(), settings=settings, on_triplets=False, rollout_steps=0)
    model = build_vae(arch)
    optimizer = torch.optim.AdamW(model.parameters())
    out = train_epoch(model, optimizer, shard, loop=loop, epoch=0, device=torch.device("cpu"))
    assert (out["train_frames"], out["train_steps"]) == (4, 2)
    with pytest.raises(UserError, match=r"encoder.conv\[2\]: batch norm on a 1x1 map sees one"):
        check_dataset(Path("unused"), replace(settings, batch_size=1), 1, arch)
