"""Videos as the tester made them with PyAV: frames numbered by their place in the file after an
undecodable stretch, the main video stream read (not a cover or a thumbnail track), named
sources opened before any is decoded, animated images as holes in a folder of stills, and
FFmpeg's own reason for a header it refuses.

Every frame's blue channel is 5 x its index in the file, so a frame says its own number.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from varnext_ray import ingest as ingest_module
from varnext_ray.errors import UserError
from varnext_ray.frame_decode import GAP, Skipped, decode_source
from varnext_ray.ingest import IngestOptions, ingest
from varnext_ray.sources import Source, discover_sources


def _picture(i: int, w: int = 64, h: int = 36) -> np.ndarray:
    """(H, W, 3): a red/green gradient, blue 5 x ``i``."""
    y, x = np.mgrid[0:h, 0:w]
    blue = np.full((h, w), 5 * i)
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), blue], axis=2).astype(np.uint8)


def _video(
    path: Path,
    frames: int,
    *,
    codec: str = "mjpeg",
    fmt: str = "avi",
    zeroed: range = range(0),
    pts: Callable[[int], int] | None = None,
    xor: bool = False,
    size: tuple[int, int] = (64, 36),
) -> Path:
    """A 64x36 video (timestamps ``pts(i)`` ms, where given) whose packets ``zeroed`` (in file
    order) hold only zero bytes after the first four (an H.264 packet's NAL length: a packet of
    zeros is left out by the mp4 muxer), or with ``xor`` every third byte from the ninth
    garbled; ``size`` (W, H) for another size."""
    pix = {"mjpeg": "yuvj444p", "libx264": "yuv420p"}[codec]
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=30)
        (stream.width, stream.height), stream.pix_fmt = size, pix
        if codec == "libx264":
            stream.options = {"bf": "0", "g": "30"}
        muxed = 0

        def mux(packets: list) -> None:
            nonlocal muxed
            for packet in packets:
                if muxed in zeroed:
                    data = bytearray(bytes(packet)[:4] + bytes(packet.size - 4))
                    if xor:  # as the tester's mkcorrupt.py garbles a packet
                        data = bytearray(bytes(packet))
                        data[8::3] = bytes(b ^ 0x5A for b in data[8::3])
                    bad = av.Packet(bytes(data))
                    bad.pts, bad.dts, bad.time_base = packet.pts, packet.dts, packet.time_base
                    bad.is_keyframe = packet.is_keyframe
                    bad.stream, packet = stream, bad
                if pts is not None:  # as a remux writes them: any timestamps go
                    packet.pts = packet.dts = pts(muxed)
                    packet.time_base = Fraction(1, 1000)
                container.mux(packet)
                muxed += 1

        for i in range(frames):
            picture = _picture(i, *size)
            mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        mux(stream.encode())
    return path


def _decoded(path: Path) -> list[int | None]:
    """decode_source's frame numbers (None for GAP), each checked against its blue channel."""
    numbers: list[int | None] = []
    for item in decode_source(Source("video", path), Skipped()):
        if item is GAP:
            numbers.append(None)
            continue
        number, rgb = item
        assert round(float(rgb[..., 2].mean()) / 5) == number, "the frame is not its number"
        numbers.append(number)
    return numbers


@pytest.mark.parametrize(
    ("name", "codec", "fmt", "pts"),
    [
        ("gap.avi", "mjpeg", "avi", None),
        ("gap.mp4", "libx264", "mp4", None),  # the frames after a lost one may go unsaid too
        ("vfr.mkv", "mjpeg", "matroska", lambda i: 10 * i * i),  # variable frame rate
    ],
)
def test_frames_after_an_undecodable_stretch_keep_their_place(
    tmp_path: Path, name: str, codec: str, fmt: str, pts: Callable[[int], int] | None
) -> None:
    """Frames were counted as they decoded: after packets 10-14 were lost, frame 15 was
    numbered 10 (wrong ``source_frame``, ``--every`` phase and messages)."""
    video = _video(tmp_path / name, 40, codec=codec, fmt=fmt, zeroed=range(10, 15), pts=pts)
    numbers = _decoded(video)
    assert numbers[:10] == list(range(10)) and None in numbers
    after = [n for n in numbers[numbers.index(None) :] if n is not None]
    assert after and after[-1] == 39 and after == list(range(40 - len(after), 40))


def test_every_keeps_its_phase_after_a_gap(tmp_path: Path) -> None:
    """``--every 2`` kept frames 15, 17, ... (numbered 10, 12, ...) after a 5-frame gap."""
    video = _video(tmp_path / "gap.avi", 40, zeroed=range(10, 15))
    opts = IngestOptions(size=(64, 36), every=2, val=0, test=0, guard=0)
    manifest = ingest([video], tmp_path / "ds", opts)
    assert [c["source_frames"] for c in manifest["clips"]] == [[0, 8], [16, 38]]
    (item,) = manifest["skipped"]
    assert "undecodable stretch near frame 10" in item["reason"]


def test_numbers_without_a_loss_ignore_timestamps(tmp_path: Path) -> None:
    """Timestamps that repeat are numbered in decoding order, as before."""
    video = _video(tmp_path / "same.mkv", 12, fmt="matroska", pts=lambda i: i // 3)
    assert _decoded(video) == list(range(12))


def _two_streams(path: Path, fmt: str, first: tuple[int, int], cover: bool) -> Path:
    """Stream 0: a ``first``-sized MJPEG stream (one attached picture with ``cover``, else 30
    frames); stream 1: the 30-frame 128x72 video."""
    with av.open(str(path), "w", format=fmt) as container:
        small = container.add_stream("mjpeg", rate=30)
        small.width, small.height, small.pix_fmt = *first, "yuvj420p"
        if cover:
            small.disposition = av.stream.Disposition.attached_pic
        main = container.add_stream("mjpeg", rate=30)
        main.width, main.height, main.pix_fmt = 128, 72, "yuvj420p"
        for _ in range(1 if cover else 30):
            picture = np.full((first[1], first[0], 3), 200, np.uint8)
            container.mux(small.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        container.mux(small.encode())
        for i in range(30):
            frame = av.VideoFrame.from_ndarray(_picture(i, 128, 72), format="rgb24")
            container.mux(main.encode(frame))
        container.mux(main.encode())
    return path


@pytest.mark.parametrize(
    ("name", "fmt", "first", "cover"),
    [
        ("cover.mkv", "matroska", (64, 64), True),  # Matroska drops the disposition
        ("cover.mp4", "mp4", (64, 64), True),
        ("thumbs.mkv", "matroska", (32, 32), False),
    ],
)
def test_the_main_video_stream_is_read_not_the_first(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    name: str,
    fmt: str,
    first: tuple[int, int],
    cover: bool,
) -> None:
    """Only stream 0 was read: a cover picture made the file one frame ("no clip keeps 3
    frames"), a thumbnail track was ingested silently instead of the footage."""
    video = _two_streams(tmp_path / name, fmt, first, cover)
    with caplog.at_level(logging.INFO):
        frames = [item for item in decode_source(Source("video", video), Skipped()) if item]
    assert len(frames) == 30 and all(rgb.shape == (72, 128, 3) for _, rgb in frames)
    assert [n for n, _ in frames] == list(range(30))
    said = [r.getMessage() for r in caplog.records if "2 video streams: reading" in r.getMessage()]
    assert len(said) == 1 and said[0].split(": ")[1].split(", ")[0].endswith("(128x72 mjpeg)")


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=8000)
        samples = np.zeros((1, 1024), np.float32)
        for _ in range(4):
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate = 8000
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


@pytest.mark.parametrize("bad", ["audio", "one_pixel", "huge_y4m"])
def test_named_sources_are_opened_before_any_is_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    """A named source that can never give a frame was found only after every source before it
    was decoded; a 1x1 image's error named ``--size``, not the file."""
    good = _video(tmp_path / "good.avi", 10)
    if bad == "audio":
        path, match = _audio_only(tmp_path / "audio.mp4"), "no video stream"
    elif bad == "one_pixel":
        path, match = tmp_path / "one.png", "would enlarge the 1x1 centre crop"
        Image.new("RGB", (1, 1)).save(path)
    else:
        path, match = tmp_path / "big.y4m", "Picture size 30000x30000 is invalid"
        path.write_bytes(b"YUV4MPEG2 W30000 H30000 F30:1 C420jpeg\nFRAME\n" + bytes(64))

    def never(*args: object) -> None:
        raise AssertionError("a source was decoded before every named one was opened")

    monkeypatch.setattr(ingest_module, "decode_source", never)
    with pytest.raises(UserError, match=match) as caught:
        ingest([good, path], tmp_path / "ds", IngestOptions(size=(64, 36)))
    assert caught.value.where == str(path)
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("header", [b"W30000 H30000", b"W-5 H10"])
def test_a_y4m_header_ffmpeg_refuses_says_why(tmp_path: Path, header: bytes) -> None:
    """The reason was "[Errno 16] Device or resource busy"; FFmpeg's own message says more."""
    path = tmp_path / "bad.y4m"
    path.write_bytes(b"YUV4MPEG2 " + header + b" F30:1\nFRAME\n" + bytes(64))
    with pytest.raises(
        UserError, match=r"cannot open as a video \(Picture size \d+x\d+ is invalid"
    ):
        list(decode_source(Source("video", path), Skipped()))


def test_an_animated_image_among_stills_cuts_their_clip(tmp_path: Path) -> None:
    """frame_4.png, an APNG, was read as its own clip and the stills ran across its place."""
    folder = tmp_path / "holes"
    folder.mkdir()
    for i in range(1, 9):
        picture = Image.fromarray(_picture(i))
        if i == 4:
            picture.save(folder / "frame_4.png", save_all=True, append_images=[picture] * 3)
        else:
            picture.save(folder / f"frame_{i}.png")
    found, _ = discover_sources([folder])
    images, apng = found
    assert apng.kind == "video" and apng.path == folder / "frame_4.png"
    items = list(decode_source(images, Skipped()))
    assert [item if item is GAP else item[0] for item in items] == [0, 1, 2, GAP, 4, 5, 6, 7]


def test_frames_dropped_without_a_word_after_a_lost_keyframe_are_counted(tmp_path: Path) -> None:
    """A lost keyframe is one failed packet; FFmpeg then drops the frames that refer to it
    without an error. They were not counted: the first good frame was numbered 1."""
    video = _video(
        tmp_path / "badstart.mp4",
        40,
        codec="libx264",
        fmt="mp4",
        zeroed=range(1),
        xor=True,
        size=(128, 72),
    )
    numbers = [n for n in _decoded(video) if n is not None]
    assert numbers[0] > 1 and numbers == list(range(40 - len(numbers), 40))
