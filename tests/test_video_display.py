"""Videos read as players show them, through the real CLI: display matrices with mirrors and
transposes, non-square pixels, a stream FFmpeg cannot decode (an animated WebP), and the choice
among two video streams when one of them holds no frame.

Every video is written here with PyAV (lossless where frames are compared), as a camera or an
editor would leave it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.conftest import REPO, smoke_checkpoint
from varnext_ray.cli import main
from varnext_ray.frame_codec import decode_images

ONE = 0x10000  # 1.0 in a display matrix (16.16 fixed point)


def _run(argv: list[str | Path], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _ingest(video: Path, out: Path, size: str, capsys: pytest.CaptureFixture) -> np.ndarray:
    """The frames ``ingest`` stores for ``video`` at ``size``: (N, H, W, 3) uint8."""
    argv = ["ingest", video, "--out", out, "--size", size, "--val", "0", "--test", "0"]
    code, _, err = _run(argv, capsys)
    assert code == 0, err
    manifest = json.loads((out / "dataset.json").read_text())
    table = pq.read_table(out / manifest["clips"][0]["files"][0])
    w, h = (int(side) for side in size.split("x"))
    return decode_images(table.column("image").to_pylist(), "raw", (w, h))


def _asymmetric() -> np.ndarray:
    """(36, 64, 3) uint8 that no turn or mirror maps onto itself: a red block top left, a
    green band along the bottom, a blue band on the right."""
    picture = np.full((36, 64, 3), 30, np.uint8)
    picture[:10, :20, 0] = 250
    picture[-8:, :, 1] = 200
    picture[:, -6:, 2] = 220
    return picture


def _matrix_video(path: Path, matrix: tuple[int, int, int, int]) -> Path:
    """A lossless 64x36 mp4 of 6 :func:`_asymmetric` frames whose track header holds the
    display matrix with 2x2 part ``matrix`` (a, b, c, d), FFmpeg's layout."""
    a, b, c, d = matrix
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 64, 36, "yuv444p"
        stream.options = {"crf": "0"}
        stream.set_display_matrix((a, b, 0, c, d, 0, 0, 0, 0x40000000))
        for _ in range(6):
            frame = av.VideoFrame.from_ndarray(_asymmetric(), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


# (2x2 matrix, --size, how a player shows the stored frame), as ffplay shows each.
MATRICES: dict[str, tuple[tuple[int, int, int, int], str, Callable[[np.ndarray], np.ndarray]]] = {
    "hflip": ((-ONE, 0, 0, ONE), "64x36", lambda f: f[:, ::-1]),  # a selfie camera
    "vflip": ((ONE, 0, 0, -ONE), "64x36", lambda f: f[::-1]),
    "half-turn": ((-ONE, 0, 0, -ONE), "64x36", lambda f: f[::-1, ::-1]),
    "transpose": ((0, ONE, ONE, 0), "36x64", lambda f: f.transpose(1, 0, 2)),
    "anti-transpose": ((0, -ONE, -ONE, 0), "36x64", lambda f: f[::-1, ::-1].transpose(1, 0, 2)),
    "clockwise": ((0, ONE, -ONE, 0), "36x64", lambda f: np.rot90(f, -1)),
    "counter-clockwise": ((0, -ONE, ONE, 0), "36x64", lambda f: np.rot90(f, 1)),
    "zero": ((0, 0, 0, 0), "64x36", lambda f: f),  # degenerate: FFmpeg leaves it unapplied
}


@pytest.mark.parametrize("name", list(MATRICES))
def test_a_display_matrix_is_applied_as_players_apply_it(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Only the matrix's rotation angle was read: a mirrored selfie video (-180 degrees) was
    stored upside down, a vertical mirror not at all, a transpose as a plain turn and an
    all-zero matrix (-2147483648 degrees) as a 270 degree turn."""
    matrix, size, shown = MATRICES[name]
    video = _matrix_video(tmp_path / f"{name}.mp4", matrix)
    frames = _ingest(video, tmp_path / "ds", size, capsys).astype(int)
    expected = np.ascontiguousarray(shown(_asymmetric())).astype(int)
    assert frames.shape == (6, *expected.shape)
    assert np.abs(frames - expected).mean() < 2


def _anamorphic(path: Path) -> Path:
    """A lossless mkv stored 32x36 with pixels twice as wide as tall (SAR 2:1), so shown
    64x36; each frame holds a disc of diameter 28 that is round as shown."""
    y, x = np.mgrid[0:36, 0:32]
    disc = (4 * x + 2 - 64) ** 2 + (2 * y + 1 - 36) ** 2 <= 28**2  # half-pixel units; x counts 2
    picture = np.full((36, 32, 3), 20, np.uint8)
    picture[disc] = 230
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 32, 36, "yuv444p"
        stream.codec_context.sample_aspect_ratio = Fraction(2, 1)
        stream.options = {"crf": "0"}
        for _ in range(6):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        container.mux(stream.encode())
    return path


def _blob(frame: np.ndarray) -> tuple[int, int]:
    """(W, H) of the bright pixels' bounding box."""
    ys, xs = np.nonzero(frame[..., 0] > 128)
    return int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def test_non_square_pixels_are_read_at_the_display_aspect_ratio(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The stored 32x36 frames were fitted as if their pixels were square: the disc was
    stretched to 28x36 and half of what a player shows was cropped away."""
    frames = _ingest(_anamorphic(tmp_path / "ana.mkv"), tmp_path / "ds", "64x36", capsys)
    assert frames.shape == (6, 36, 64, 3)
    w, h = _blob(frames[0])
    assert abs(w - 28) <= 1 and abs(h - 28) <= 1, (w, h)


def test_predict_reads_non_square_pixels_at_the_display_aspect_ratio(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """predict --video read the 64x36-shown video as 32x36 frames: it warned of a centre crop
    and showed a 32x18 strip of each frame."""
    ckpt = smoke_checkpoint(tmp_path, "ckpt", 0)  # a 64x36 model
    out = tmp_path / "pred.mp4"
    argv = ["predict", "--checkpoint", ckpt, "--video", _anamorphic(tmp_path / "ana.mkv")]
    code, _, err = _run([*argv, "--out", out], capsys)
    assert code == 0, err
    assert "aspect ratio" not in err
    with av.open(str(out)) as written:
        frame = next(written.decode(video=0)).to_ndarray(format="rgb24")
    assert frame.shape == (36, 128, 3)  # [truth | prediction], each 64x36
    w, h = _blob(frame[:, :64])
    assert abs(w - 28) <= 2 and abs(h - 28) <= 2, (w, h)


def _animated_webp(path: Path) -> Path:
    pictures = [Image.fromarray(np.full((36, 64, 3), 40 * i, np.uint8)) for i in range(4)]
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=40, lossless=True)
    return path


@pytest.mark.parametrize("command", ["ingest", "predict"])
def test_an_animated_webp_is_refused_as_not_decodable(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """FFmpeg reads an animated WebP as a 0x0 stream it cannot decode: the error was that a
    0x0 frame keeps no pixels at --size 32x18, with a fix (--size 8x8) that gave it again."""
    webp = _animated_webp(tmp_path / "anim.webp")
    if command == "ingest":
        argv = ["ingest", webp, "--out", tmp_path / "ds", "--size", "32x18"]
    else:
        ckpt = smoke_checkpoint(tmp_path, "ckpt", 0)
        argv = ["predict", "--checkpoint", ckpt, "--video", webp, "--out", tmp_path / "p.mp4"]
    line = _one_error(*_run(argv, capsys)[::2])
    assert "cannot decode" in line and "0x0" in line and str(webp) in line
    assert "PNG frames" in line and "--size" not in line
    assert not (tmp_path / "ds").exists() and not (tmp_path / "p.mp4").exists()


def _two_streams(path: Path, second: str) -> Path:
    """An mkv of two mpeg4 streams: 0, 64x36 with 24 frames; 1, 128x72 with no packet
    (``second`` "empty") or with 24 packets of zero bytes ("undecodable": none decodes)."""
    with av.open(str(path), "w") as container:
        small = container.add_stream("mpeg4", rate=24)
        small.width, small.height, small.pix_fmt = 64, 36, "yuv420p"
        large = container.add_stream("mpeg4", rate=24)
        large.width, large.height, large.pix_fmt = 128, 72, "yuv420p"
        for i in range(24):
            picture = np.full((36, 64, 3), 10 * i, np.uint8)
            container.mux(small.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
            if second == "undecodable":
                big = av.VideoFrame.from_ndarray(np.zeros((72, 128, 3), np.uint8), format="rgb24")
                container.mux([_zeroed(p, large) for p in large.encode(big)])
        container.mux(small.encode())
        container.mux(large.encode())
    return path


def _zeroed(packet: av.Packet, stream: av.stream.Stream) -> av.Packet:
    """``packet`` with its bytes all zero: stored, timed and indexed, but no frame decodes."""
    zeroed = av.Packet(bytes(packet.size))
    zeroed.pts, zeroed.dts, zeroed.time_base = packet.pts, packet.dts, packet.time_base
    zeroed.is_keyframe, zeroed.stream = packet.is_keyframe, stream
    return zeroed


def _ingest_process(video: Path, out: Path) -> subprocess.CompletedProcess:
    """``varnext ingest`` in a process of its own: its standard error as a user sees it (in
    this process pytest's log capture stands in for the console's handler)."""
    cmd = [sys.executable, "-m", "varnext_ray.cli", "ingest", str(video), "--out", str(out)]
    cmd += ["--size", "32x18", "--val", "0", "--test", "0"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def test_a_stream_with_frames_is_read_over_a_larger_empty_one(tmp_path: Path) -> None:
    """The empty 128x72 stream was chosen for its size: "no decodable frame", after an info
    line saying it was read."""
    done = _ingest_process(_two_streams(tmp_path / "two.mkv", "empty"), tmp_path / "ds")
    assert done.returncode == 0 and "wrote 24 frames" in done.stdout, done.stderr
    said = "reading stream 0 (64x36 mpeg4), passing over stream 1 (128x72 mpeg4)"
    assert done.stderr.startswith("info: ") and said in done.stderr


def test_the_stream_choice_is_not_said_before_an_error(tmp_path: Path) -> None:
    """The info line naming the stream read was printed before the error line: two lines."""
    done = _ingest_process(_two_streams(tmp_path / "two.mkv", "undecodable"), tmp_path / "ds")
    assert "no decodable frame" in _one_error(done.returncode, done.stderr)
