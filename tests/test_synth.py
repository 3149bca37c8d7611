"""The synthetic fixed-camera scenes: deterministic, textured, moving, bumped."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from varnext_ray.errors import UserError
from varnext_ray.synth import write_synthetic


def _png_frames(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))])


def test_same_seed_same_pixels_other_seed_other_pixels(tmp_path: Path) -> None:
    a = write_synthetic(tmp_path / "a", clips=1, frames=6, size=(64, 36), seed=7, fmt="png")
    b = write_synthetic(tmp_path / "b", clips=1, frames=6, size=(64, 36), seed=7, fmt="png")
    c = write_synthetic(tmp_path / "c", clips=1, frames=6, size=(64, 36), seed=8, fmt="png")
    assert a == b and a != c
    frames_a = _png_frames(tmp_path / "a" / "clip_000")
    np.testing.assert_array_equal(frames_a, _png_frames(tmp_path / "b" / "clip_000"))
    assert not np.array_equal(frames_a, _png_frames(tmp_path / "c" / "clip_000"))


def test_scene_is_textured_noisy_and_moving(tmp_path: Path) -> None:
    write_synthetic(
        tmp_path / "s", clips=1, frames=30, size=(96, 54), seed=1, fmt="png", bump_probability=0.0
    )
    frames = _png_frames(tmp_path / "s" / "clip_000").astype(np.float32)  # (T, H, W, 3)
    assert frames.shape == (30, 54, 96, 3)
    # Textured background: strong local variation, not a flat colour.
    assert frames[0].std() > 15
    # Objects move: some pixels change a lot between the first and last frame ...
    changed = np.abs(frames[-1] - frames[0]).max(axis=-1) > 60
    assert 0.005 < changed.mean() < 0.6
    # ... and sensor noise makes even static pixels differ a little from frame to frame.
    assert 0 < np.median(np.abs(frames[1] - frames[0])) < 8


def test_mp4_decodes_and_records_bumps(tmp_path: Path) -> None:
    manifest = write_synthetic(
        tmp_path / "v", clips=3, frames=24, size=(64, 36), seed=2, bump_probability=1.0
    )
    assert json.loads((tmp_path / "v" / "synth.json").read_text()) == manifest
    for clip in manifest["clips"]:
        with av.open(str(tmp_path / "v" / clip["file"])) as container:
            assert sum(1 for _ in container.decode(video=0)) == 24
        assert len(clip["bumps"]) == 1 and 8 <= clip["bumps"][0] <= 16


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"size": (63, 36)}, "H.264 needs an even width"),
        ({"clips": 0}, "need at least 1 clip"),
        ({"fmt": "gif"}, "unknown format"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    args = {"clips": 1, "frames": 4, "size": (64, 36)} | kwargs
    with pytest.raises(UserError, match=match):
        write_synthetic(tmp_path / "x", **args)


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        write_synthetic(tmp_path, clips=1, frames=4, size=(64, 36))
    assert (tmp_path / "keep.txt").read_text() == "mine"
