"""Writing pictures and videos: PNGs, PNG folders, GIFs and mp4s read back."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from varnext_ray.media import FPS, save_gif, save_png, write_png_folder, write_video


def _frames(n: int, height: int = 18, width: int = 32) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(n)]


def test_png_round_trips_and_refuses_non_uint8(tmp_path: Path) -> None:
    picture = _frames(1)[0]
    path = save_png(picture, tmp_path / "sub" / "strip.png")
    assert np.array_equal(np.asarray(Image.open(path)), picture)
    with pytest.raises(ValueError, match=r"uint8 \(H, W, 3\)"):
        save_png(picture.astype(np.float32), tmp_path / "bad.png")


def test_png_folder_uses_ffmpeg_dump_names(tmp_path: Path) -> None:
    assert write_png_folder(tmp_path / "clip", iter(_frames(3))) == 3
    assert sorted(p.name for p in (tmp_path / "clip").iterdir()) == [
        "frame_00001.png",
        "frame_00002.png",
        "frame_00003.png",
    ]


def test_gif_scales_small_pictures_up_to_min_width(tmp_path: Path) -> None:
    path = save_gif(_frames(4), tmp_path / "r" / "rollout.gif", min_width=128)
    with Image.open(path) as gif:
        assert gif.n_frames == 4 and gif.size == (128, 72)  # 32 px wide -> x4
    plain = save_gif(_frames(2), tmp_path / "plain.gif", frame_ms=50)
    with Image.open(plain) as gif:
        assert gif.size == (32, 18) and gif.info["duration"] == 50


def test_video_has_every_frame_at_its_rate(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    assert write_video(path, iter(_frames(5, 36, 64))) == 5
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (64, 36)
        assert stream.average_rate == FPS
        assert sum(1 for _ in container.decode(stream)) == 5
