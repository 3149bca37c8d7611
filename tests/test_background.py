"""The background baseline: the median of the training frames; its round trip in a checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tests.conftest import REPO, smoke_checkpoint
from varnext_ray.arch import ArchConfig, load_arch
from varnext_ray.background import (
    BACKGROUND_FILE,
    _frame_picks,
    as_tensor,
    load_background,
    png_bytes,
    training_background,
)
from varnext_ray.checkpoint import save_checkpoint
from varnext_ray.checkpoint_read import read_meta
from varnext_ray.errors import UserError
from varnext_ray.frame_codec import decode_images
from varnext_ray.manifest import load_manifest


def _all_training_frames(data: Path) -> np.ndarray:
    manifest = load_manifest(data)
    return decode_images(
        pq.ParquetDataset(manifest.files("train")).read().column("image").to_pylist(),
        manifest.encoding,
        manifest.size,
    )  # (N, H, W, 3)


def test_picks_are_evenly_spaced_over_the_clips_and_capped() -> None:
    assert _frame_picks([3, 2], 10) == [[0, 1, 2], [0, 1]]  # fewer frames than the cap: all
    picks = _frame_picks([100, 100], 5)  # positions 0, 50, 100, 149, 199 (rounded)
    assert picks == [[0, 50], [0, 49, 99]]


def test_median_of_every_training_frame_when_under_the_cap(dataset_dir: Path) -> None:
    bg = training_background(dataset_dir)
    frames = _all_training_frames(dataset_dir)
    assert bg.dtype == np.uint8 and bg.shape == frames.shape[1:] == (36, 64, 3)
    np.testing.assert_array_equal(bg, np.median(frames, axis=0).round().astype(np.uint8))
    few = training_background(dataset_dir, limit=7)  # a sample still looks like the scene
    assert np.abs(few.astype(int) - bg.astype(int)).mean() < 20
    tensor = as_tensor(bg)
    assert tensor.shape == (3, 36, 64) and float(tensor.max()) <= 1.0


def test_a_split_without_frames_is_a_user_error(dataset_dir: Path) -> None:
    with pytest.raises(UserError, match="has no 'nope' frames"):
        training_background(dataset_dir, split="nope")


def test_checkpoint_keeps_the_background_listed_and_checked(tmp_path: Path) -> None:
    bg = np.random.default_rng(0).integers(0, 256, (36, 64, 3), dtype=np.uint8)
    plain = smoke_checkpoint(tmp_path, "plain", 0)
    assert load_background(plain) is None  # saved without one
    ckpt = save_checkpoint(
        tmp_path / "with",
        model=torch.nn.Module(),  # any module: weights are not what this test reads
        arch_cfg=_smoke_cfg(),
        epoch=1,
        metrics={},
        files={BACKGROUND_FILE: png_bytes(bg)},
    )
    assert BACKGROUND_FILE in read_meta(ckpt)["files"]
    np.testing.assert_array_equal(load_background(ckpt), bg)
    (ckpt / BACKGROUND_FILE).write_bytes(png_bytes(255 - bg))
    with pytest.raises(UserError, match="file was altered"):
        load_background(ckpt)
    with pytest.raises(ValueError, match="reserved or not plain"):
        save_checkpoint(
            tmp_path / "bad", model=torch.nn.Module(), arch_cfg=_smoke_cfg(), epoch=1,
            metrics={}, files={"meta.json": b"{}"},
        )  # fmt: skip


def _smoke_cfg() -> ArchConfig:
    return load_arch(REPO / "configs" / "smoke_64x36.json")
