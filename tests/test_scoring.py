"""Scoring a checkpoint on held-out triplets at several strides (the demo's answer)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from tests.conftest import smoke_checkpoint
from varnext_ray.manifest import load_manifest, triplet_index
from varnext_ray.scoring import score_checkpoint


def test_each_stride_is_scored_on_the_test_split_and_an_impossible_one_is_left_out(
    ray_local, dataset_dir: Path, tmp_path: Path
) -> None:
    ckpt = smoke_checkpoint(tmp_path, "ckpt", 0)
    scored = score_checkpoint(ckpt, dataset_dir, (1, 3, 10_000), batch_size=16)
    assert set(scored) == {"1", "3"}
    manifest = load_manifest(dataset_dir)
    for stride, m in scored.items():
        assert m["split"] == "test"
        assert m["triplets"] == len(triplet_index(manifest, "test", int(stride)))
        for key in ("extrap_psnr", "latent_copy_psnr", "oracle_psnr", "background_psnr"):
            assert math.isfinite(m[key]), key
    assert scored["1"]["copy_last_psnr"] > scored["3"]["copy_last_psnr"]  # farther apart


def test_the_checkpoints_own_background_is_the_baseline(
    ray_local, dataset_dir: Path, tmp_path: Path
) -> None:
    grey = np.full((36, 64, 3), 128, np.uint8)
    with_grey = smoke_checkpoint(tmp_path, "grey", 0, background=grey)
    plain = smoke_checkpoint(tmp_path, "plain", 0)  # the same weights, no background
    own = score_checkpoint(with_grey, dataset_dir, (1,))["1"]["background_psnr"]
    median = score_checkpoint(plain, dataset_dir, (1,))["1"]["background_psnr"]
    assert own < median - 1.0  # a flat grey frame is a far worse "nothing moves" than the median
