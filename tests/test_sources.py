"""Finding and decoding sources, and fitting frames to a size."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from varnext_ray.errors import UserError
from varnext_ray.frame_decode import GAP, Skipped, decode_source
from varnext_ray.frame_fit import fit_frame, parse_size
from varnext_ray.sources import discover_sources, natural_key


@pytest.mark.parametrize(("text", "size"), [("640x360", (640, 360)), ("160X90", (160, 90))])
def test_parse_size(text: str, size: tuple[int, int]) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["640", "640x", "x360", "640*360", "0x10", "-5x10", "9000x10"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(UserError, match=r"size must be WxH .*\(--size\): pass e.g."):
        parse_size(text)


def test_natural_order() -> None:
    names = ["frame_10.png", "frame_2.png", "frame_1.png", "Frame_3.png"]
    ordered = sorted((Path(n) for n in names), key=natural_key)
    assert [p.name for p in ordered] == [
        "frame_1.png",
        "frame_2.png",
        "Frame_3.png",
        "frame_10.png",
    ]


@pytest.mark.parametrize("names", [["1.png", "01.png"], ["f_7.jpg", "F_007.png"]])
def test_two_images_naming_the_same_frame_are_refused(tmp_path: Path, names: list[str]) -> None:
    """Both were read as consecutive frames, in the order the folder listed them."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, name in enumerate([*names, "2.png", "3.png"]):
        Image.new("RGB", (16, 9), (40 * i, 0, 0)).save(folder / name)
    with pytest.raises(UserError, match="two images name the same frame: ") as err:
        discover_sources([folder])
    assert set(names) <= set(err.value.what.replace(",", " ").split()), err.value.what
    assert err.value.where == str(folder)


def test_fit_frame_crops_to_aspect_then_resizes() -> None:
    frame = np.zeros((240, 320, 3), np.uint8)  # 4:3
    frame[:30] = 255  # a white band at the top, cropped away by a 16:9 target
    out = fit_frame(frame, (160, 90))
    assert out.shape == (90, 160, 3)
    assert out.max() == 0
    tall = fit_frame(np.zeros((100, 50, 3), np.uint8), (40, 40))
    assert tall.shape == (40, 40, 3)


def test_grayscale_and_rgba_become_rgb(tmp_path: Path) -> None:
    Image.new("L", (20, 10), 128).save(tmp_path / "frame_1.png")
    Image.new("RGBA", (20, 10), (10, 20, 30, 0)).save(tmp_path / "frame_2.png")
    Image.new("P", (20, 10), 3).save(tmp_path / "frame_3.png")
    (source,), _ = discover_sources([tmp_path])
    frames = list(decode_source(source, Skipped()))
    assert [f[1].shape for f in frames] == [(10, 20, 3)] * 3
    assert frames[1][1][0, 0].tolist() == [10, 20, 30]


def test_corrupt_image_is_skipped_and_cuts(tmp_path: Path, caplog) -> None:
    for i in range(1, 5):
        Image.new("RGB", (8, 8), (i, i, i)).save(tmp_path / f"frame_{i}.png")
    data = (tmp_path / "frame_3.png").read_bytes()
    (tmp_path / "frame_3.png").write_bytes(data[: len(data) // 2])  # truncated
    (source,), _ = discover_sources([tmp_path])
    skipped = Skipped()
    with caplog.at_level(logging.WARNING):
        items = list(decode_source(source, skipped))
    assert [None if it is GAP else it[0] for it in items] == [0, 1, None, 3]
    assert len(skipped.items) == 1 and skipped.items[0]["path"].endswith("frame_3.png")
    assert "frame_3.png" in caplog.text


def test_discovery_recurses_and_reports_missing(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "a" / "0001.jpg")
    (tmp_path / "b.mp4").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("hi")
    sources, ignored = discover_sources([tmp_path])
    assert [(s.kind, s.path.name, s.named) for s in sources] == [
        ("images", "a", False),
        ("video", "b.mp4", False),
    ]
    assert ignored[0]["path"].endswith("notes.txt")
    with pytest.raises(UserError, match="no such file or directory"):
        discover_sources([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no videos or images found"):
        discover_sources([tmp_path / "empty"])


def test_a_huge_file_that_is_no_video_is_given_up_on_while_opening(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Gigabytes of zeros named .gif were read to their end before FFmpeg gave up (about 3 s
    per GB here: a 50 GB file was a hang). The open is bounded; the bound is lowered here."""
    import os

    from varnext_ray import video

    monkeypatch.setattr(video, "OPEN_TIMEOUT_S", 0.3)
    zeros = tmp_path / "zeros.gif"
    zeros.touch()
    os.truncate(zeros, 8 * 2**30)  # sparse: nothing is written
    with pytest.raises(TimeoutError, match=r"no video stream found within 0.3 s"):
        video.open_video(zeros)
    real = Path(__file__).resolve().parents[2] / "shared" / "data" / "traffic_overpass.avi"
    if real.exists():  # a real video opens as before
        with video.open_video(real) as container:
            assert container.streams.video[0].codec_context.width == 320


def _clip_then(path: Path, fmt: str, codec: str, tail: str | None) -> Path:
    """A 20-frame clip in container ``fmt`` followed by 2 GB of (sparse) zeros or 50 MB of
    random bytes (``tail``): a valid header, then a rest that is no video."""
    import os

    import av

    with open(path, "wb") as file, av.open(file, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 36, "yuv420p"
        for i in range(20):
            frame = av.VideoFrame.from_ndarray(np.full((36, 64, 3), i * 10, np.uint8), "rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    if tail == "zeros":
        os.truncate(path, path.stat().st_size + 2 * 2**30)
    elif tail == "noise":
        with open(path, "ab") as file:
            file.write(np.random.default_rng(0).integers(0, 256, 50 * 2**20, np.uint8).tobytes())
    return path


@pytest.mark.parametrize(
    ("name", "fmt", "codec", "tail"),
    [
        ("zeros.avi", "avi", "mpeg4", "zeros"),  # one read runs long: PyAV's read timeout
        ("noise.ts", "mpegts", "libx264", "noise"),  # packets that never make a frame
    ],
)
def test_a_video_whose_rest_is_not_video_ends_after_a_stall(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, fmt: str, codec: str, tail: str
) -> None:
    """A valid header followed by gigabytes of zeros was read to its end (3-7 s per GB here:
    50 GB was a hang). Reading without a new frame for STALL_S ends the video, its frames
    read before kept; the bound is lowered here."""
    from varnext_ray import frame_decode, sources, video

    monkeypatch.setattr(video, "STALL_S", 0.3)
    video = _clip_then(tmp_path / name, fmt, codec, tail)
    skipped = frame_decode.Skipped()
    frames = [f for f in frame_decode.decode_source(sources.Source("video", video), skipped) if f]
    assert 10 <= len(frames) <= 20
    (item,) = skipped.items
    assert item["reason"].startswith(f"no frame in 0.3 s of reading after frame {len(frames)}: ")


@pytest.mark.parametrize("name", ["cam-12:30.mp4", "pipe:0.mp4", "data:x.mp4"])
def test_a_video_named_like_a_url_is_read_as_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """FFmpeg took "cam-12:30.mp4" for a URL of protocol "cam-12" ("Protocol not found", for a
    file that plays) and "pipe:0.mp4" for standard input, when named relative to the current
    folder (as on a command line)."""
    from varnext_ray import frame_decode, sources

    monkeypatch.chdir(tmp_path)
    video = _clip_then(Path(name), "mp4", "libx264", None)
    skipped = frame_decode.Skipped()
    frames = [f for f in frame_decode.decode_source(sources.Source("video", video), skipped) if f]
    assert len(frames) == 20 and skipped.items == []
