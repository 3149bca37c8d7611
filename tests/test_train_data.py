"""The datasets of a training run, prepared once (a sweep's trials share them)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from varnext_ray.dataset import frames_dataset, load_manifest, triplet_index
from varnext_ray.settings import TrainSettings
from varnext_ray.train_data import (
    DataKey,
    datasets_to_split,
    prepare_run_data,
    run_datasets,
    steps_per_pass,
)


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
    # materialised evaluation data is read whole by every rank: no split coordinator for it
    assert prepared.eval_materialised and datasets_to_split(prepared) == ["train"]
    streaming = replace(prepared, val=frames_dataset(dataset_dir, "val"))
    assert datasets_to_split(streaming) == ["train", "val", "rollout"]


def test_a_run_takes_whole_passes_in_a_seeded_order(prepared) -> None:
    rows = prepared.train_rows
    three = run_datasets(prepared, passes=3, seed=1)
    assert three["train"].count() == 3 * rows
    assert set(three) == {"train", "val", "rollout"}

    def order(seed: int) -> list[tuple[int, int]]:
        batch = run_datasets(prepared, 1, seed)["train"].take_batch(rows, batch_format="numpy")
        return list(zip(batch["clip"].tolist(), batch["frame_index"].tolist(), strict=True))

    assert order(1) == order(1) and sorted(order(1)) == sorted(order(2))


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
