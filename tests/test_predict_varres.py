"""predict --video on a video whose frame size changes midway: real MPEG-TS parts of different
sizes joined end to end (as broadcast and HLS streams are), predicted through the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from tests.conftest import smoke_checkpoint

PARTS = [((64, 36), 10), ((320, 240), 10), ((16, 16), 10)]  # (W, H), frames: 64x36 is the model's


def _ts_part(path: Path, size: tuple[int, int], frames: int, seed: int) -> bytes:
    """An H.264 MPEG-TS clip of a smooth pattern drifting right, as bytes."""
    width, height = size
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height, width + frames, 3), dtype=np.uint8)
    with av.open(str(path), "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(frames):
            frame = np.ascontiguousarray(base[:, t : t + width])
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.read_bytes()


def _joined(folder: Path, parts: list[tuple[tuple[int, int], int]]) -> Path:
    """MPEG-TS parts concatenated byte for byte (``cat p1.ts p2.ts > joined.ts``)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = b"".join(
        _ts_part(folder / f"part{i}.ts", size, n, seed=i) for i, (size, n) in enumerate(parts)
    )
    joined = folder / "joined.ts"
    joined.write_bytes(data)
    return joined


def _sizes(path: Path) -> list[tuple[int, int]]:
    with av.open(str(path)) as container:
        return [(f.width, f.height) for f in container.decode(video=0)]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return smoke_checkpoint(tmp_path_factory.mktemp("varres"), "ckpt", 0)


def _varnext(*argv: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "varnext_ray.cli", *map(str, argv)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def test_a_video_whose_frame_size_changes_is_predicted_at_one_size(
    ckpt: Path, tmp_path: Path
) -> None:
    """64x36, then 320x240, then 16x16 frames in one file: exit 1 before (`operands could not
    be broadcast together with shapes (36,64,3) (180,320,3)`), with the empty folders of --out
    left behind. Now every part is predicted from its own centre crop, shown at the first
    frame's size, with triplets that never span two sizes, and one warning naming the frames."""
    video = _joined(tmp_path / "in", PARTS)
    assert list(dict.fromkeys(_sizes(video))) == [size for size, _ in PARTS]
    out = tmp_path / "p" / "nd5" / "x" / "o.mp4"
    done = _varnext("predict", "--checkpoint", ckpt, "--video", video, "--out", out, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    warnings = done.stderr.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("warning: "), done.stderr
    assert "(64x36, then 320x240 from frame 10, then 16x16 from frame 20)" in warnings[0]
    # 8 triplets per 10-frame part (none spans two parts), each [truth | prediction] at 64x36
    # (320x240 is shown as its 320x180 crop, 16x16 as its 16x9 crop, both at 64x36).
    assert "24 frames of 128x36 [truth | prediction]" in done.stdout
    assert _sizes(out) == [(128, 36)] * 24
    with Image.open(out.with_name("o_k1.png")) as image:
        assert image.size == (64, 36)
    assert sorted(p.name for p in out.parent.iterdir()) == ["o.mp4", "o_k1.png"]


def test_a_part_too_small_for_the_model_is_refused_naming_its_frame(
    ckpt: Path, tmp_path: Path
) -> None:
    """A 4x4 part (its 4x2 crop would be enlarged 18 times for the 64x36 model) after a good
    one: one error line naming the frame where the size changes and how to cut there, exit 2,
    and none of --out's folders left behind, although the first part's frames were being
    written when the refusal came."""
    video = _joined(tmp_path / "in", [((64, 36), 40), ((4, 4), 6)])
    before = sorted(tmp_path.rglob("*"))
    out = tmp_path / "p" / "nd5" / "x" / "o.mp4"
    done = _varnext("predict", "--checkpoint", ckpt, "--video", video, "--out", out, cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "the frame size changes to 4x4 at frame 40" in lines[0]
    assert "-frames:v 40" in lines[0] and "Traceback" not in done.stderr
    assert sorted(tmp_path.rglob("*")) == before  # no folder, no temporary file


def test_no_triplet_between_changes_of_size_says_so(ckpt: Path, tmp_path: Path) -> None:
    """Three 2-frame parts of different sizes hold 6 frames but no 3 of one size in a row."""
    video = _joined(tmp_path / "in", [((64, 36), 2), ((96, 54), 2), ((128, 72), 2)])
    out = tmp_path / "p" / "o.gif"
    done = _varnext("predict", "--checkpoint", ckpt, "--video", video, "--out", out, cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "the video has 6, at most 2 in a row between 2 changes of frame size" in lines[0]
    assert not (tmp_path / "p").exists()


def test_ingest_names_the_frame_from_which_a_video_is_too_small(tmp_path: Path) -> None:
    """The same joined video, ingested at a size its last part cannot reach: the refusal says
    from which frame, not only that --size is wrong."""
    video = _joined(tmp_path, [((64, 36), 10), ((8, 8), 6)])
    done = _varnext("ingest", video, "--out", tmp_path / "ds", "--size", "640x360", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "from frame 10 on" in lines[0] and str(video) in lines[0], lines
    assert "cut the video before frame 10" in lines[0]
    assert not (tmp_path / "ds").exists()
