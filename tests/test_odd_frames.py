"""Odd frame inputs through the real CLI: files with no video stream, animated images, EXIF
orientation and one frame stored in two formats."""

from __future__ import annotations

import io
import json
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.conftest import smoke_checkpoint
from varnext_ray.cli import main
from varnext_ray.frame_codec import decode_images
from varnext_ray.image_read import read_image
from varnext_ray.media import write_video
from varnext_ray.sources import discover_sources

ORIENTATION = 0x0112  # the EXIF tag


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return smoke_checkpoint(tmp_path_factory.mktemp("odd"), "ckpt", 0)


def _run(argv: list[str | Path], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _ingest(folder: Path, out: Path, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    argv = ["ingest", folder, "--out", out, "--size", "64x36", "--val", "0", "--test", "0"]
    return _run(argv, capsys)


def _one_error(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _audio_only(path: Path) -> Path:
    """An mp4 holding one AAC stream and no video stream."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=44100)
        for _ in range(8):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate = 44100
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _no_frames(path: Path, codec: str) -> Path:
    """A video written with a video stream and 0 frames (mp4 then keeps no stream at all)."""
    container = av.open(str(path), "w")
    stream = container.add_stream(codec, rate=30)
    stream.width, stream.height, stream.pix_fmt = 96, 54, "yuv420p"
    container.start_encoding()
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def _ball(i: int, size: tuple[int, int] = (96, 54)) -> np.ndarray:
    """(H, W, 3) uint8: a white square moving right by 8 px a frame over a grey background."""
    w, h = size
    frame = np.full((h, w, 3), 40, np.uint8)
    frame[h // 3 : h // 3 + 14, 8 * i : 8 * i + 14] = 255
    return frame


def _sideways(path: Path) -> Path:
    """A JPEG stored 36 wide x 64 tall, red along its stored top edge, EXIF Orientation=6
    (rotate 90 degrees clockwise to view): upright it is 64x36 with the red band on the right."""
    stored = np.full((64, 36, 3), 30, np.uint8)
    stored[:10, :, 0] = 250
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[ORIENTATION] = 6
    image.save(path, exif=exif, quality=95)
    return path


def _sideways_video(path: Path, frames: int = 6) -> Path:
    """An mp4 stored 36 wide x 64 tall, red along its stored top edge, whose display matrix
    says to turn it 90 degrees clockwise (as a phone filming upright stores it): upright it is
    64x36 with the red band on the right."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 36, 64, "yuv420p"
        stream.set_display_rotation(-90)  # counter-clockwise degrees: -90 is a clockwise turn
        for _ in range(frames):
            stored = np.full((64, 36, 3), 30, np.uint8)
            stored[:10, :, 0] = 250
            frame = av.VideoFrame.from_ndarray(stored, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# ---- files with no video stream, or no frames -------------------------------------------------


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: _audio_only(p / "audio_only.mp4"), "no video stream: the file holds only audio"),
        (lambda p: _no_frames(p / "empty.mp4", "libx264"), "no streams at all, so no frames"),
        (lambda p: _no_frames(p / "empty.avi", "mpeg4"), "the video has no frames"),
    ],
    ids=["audio-only", "0-frame-mp4", "0-frame-avi"],
)
def test_predict_a_video_without_frames_is_one_clear_error(
    make, expected: str, ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    video = make(tmp_path)
    code, _, err = _run(
        ["predict", "--checkpoint", ckpt, "--video", video, "--out", tmp_path / "x.mp4"], capsys
    )
    line = _one_error(code, err)
    assert expected in line and "longer video" not in line and "warning" not in err
    assert not list(tmp_path.glob("x*"))


def test_predict_a_too_short_video_says_how_many_frames_it_has(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    video = tmp_path / "two.mp4"
    write_video(video, iter([_ball(0), _ball(1)]))
    code, _, err = _run(
        ["predict", "--checkpoint", ckpt, "--video", video, "--out", tmp_path / "x.mp4"], capsys
    )
    line = _one_error(code, err)
    assert "no triplet" in line and "the video has 2" in line and "pass a longer video" in line


def test_ingest_a_named_file_with_no_video_stream_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    audio = _audio_only(tmp_path / "audio_only.mp4")
    code, _, err = _run(["ingest", audio, "--out", tmp_path / "ds"], capsys)
    assert "no video stream: the file holds only audio" in _one_error(code, err)
    assert not (tmp_path / "ds").exists()


# ---- files that are no footage of their own: lists, playlists, text -------------------------


def _footage_and_others(folder: Path) -> dict[str, Path]:
    """One real clip, and files FFmpeg opens by their content: a concat list naming the clip
    50 times, an HLS playlist of it, and a text file (FFmpeg's tty demuxer draws text)."""
    folder.mkdir()
    write_video(folder / "real.ts", (_ball(i) for i in range(12)))  # MPEG-TS: HLS segments
    lines = "file real.ts\n" * 50
    others = {
        "concat": (folder / "list.mp4", "ffconcat version 1.0\n" + lines),
        "hls": (
            folder / "cam.m3u8",
            "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nreal.ts\n#EXT-X-ENDLIST\n",
        ),
        "text": (folder / "notes.nfo", "Notes about the footage of the overpass camera.\n" * 400),
    }
    for path, text in others.values():
        path.write_text(text)
    return {kind: path for kind, (path, _) in others.items()}


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("concat", "a list or playlist (FFmpeg reads it as Virtual concatenation script)"),
        ("hls", "a list or playlist (FFmpeg reads it as Apple HTTP Live Streaming)"),
        ("text", "a text file (FFmpeg reads it as"),
    ],
)
def test_a_list_a_playlist_or_a_text_file_is_not_read_as_footage(
    kind: str, expected: str, ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A concat list naming one clip 50 times was ingested as 50 clips (the same frames in
    train, val and test); a text file became 152 frames of text-mode art; both exit 0."""
    named = _footage_and_others(tmp_path / "src")[kind]
    code, _, err = _run(["ingest", named, "--out", tmp_path / "ds"], capsys)
    assert expected in _one_error(code, err)
    out = tmp_path / "pred.mp4"
    code, _, err = _run(["predict", "--checkpoint", ckpt, "--video", named, "--out", out], capsys)
    assert expected in _one_error(code, err)
    assert not (tmp_path / "ds").exists() and not out.exists()


def test_a_folder_with_a_list_of_its_clip_reads_the_clip_once(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _footage_and_others(tmp_path / "src")
    code, _, err = _ingest(tmp_path / "src", tmp_path / "ds", capsys)
    assert code == 0, err
    manifest = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    used = [Path(s["path"]).name for s in manifest["sources"] if s["frames_used"]]
    assert used == ["real.ts"] and manifest["frames"] == 12, manifest["sources"]
    (skipped,) = manifest["skipped"]
    assert Path(skipped["path"]).name == "list.mp4", skipped
    assert skipped["reason"].startswith("a list or playlist"), skipped


# ---- animated images ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("motion.gif", "GIF"), ("motion.png", "GIF"), ("motion.png", "PNG")],
    ids=["gif", "gif-named-png", "apng"],
)
def test_an_animated_image_in_a_folder_is_a_clip(
    name: str, fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    pictures = [Image.fromarray(_ball(i)) for i in range(10)]
    pictures[0].save(
        folder / name, format=fmt, save_all=True, append_images=pictures[1:], duration=100, loop=0
    )
    code, out, err = _ingest(folder, tmp_path / "ds", capsys)
    assert code == 0 and "wrote 10 frames in 1 clips" in out, err
    manifest = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    [source] = manifest["sources"]
    assert source["kind"] == "video" and source["frames_decoded"] == 10
    assert manifest["skipped"] == []


def test_an_animated_image_beside_frames_is_its_own_source_and_a_still_gif_is_a_frame(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(_ball(i)).save(folder / f"frame_{i}.png")
    Image.fromarray(_ball(3)).save(folder / "frame_3.png", format="GIF")  # one frame: a still
    pictures = [Image.fromarray(_ball(i)) for i in range(4)]
    pictures[0].save(folder / "zoom.png", format="PNG", save_all=True, append_images=pictures[1:])
    sources, _ = discover_sources([folder])
    assert [(s.kind, s.path.name, len(s.files)) for s in sources] == [
        ("images", "frames", 5),  # the animation keeps its place among the stills, as a hole
        ("video", "zoom.png", 0),
    ]
    assert sources[0].animated == {folder / "zoom.png"}


def test_predict_refuses_an_animation_given_as_a_frame(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Its first frame was read silently, while ingest reads the same file as a clip."""
    pictures = [Image.fromarray(_ball(i)) for i in range(4)]
    anim = tmp_path / "anim.png"
    pictures[0].save(anim, format="PNG", save_all=True, append_images=pictures[1:])
    still = tmp_path / "still.png"
    pictures[1].save(still)
    argv = ["predict", "--checkpoint", ckpt, "--out", tmp_path / "p.png", anim, still]
    line = _one_error(*_run(argv, capsys)[::2])
    assert "is an animation of several frames" in line and str(anim) in line
    assert "--video" in line and not (tmp_path / "p.png").exists()


@pytest.mark.parametrize(
    ("name", "fmt"), [("pages.tif", "TIFF"), ("anim.webp", "WEBP")], ids=["tiff", "webp"]
)
def test_predict_refuses_an_image_of_several_frames(
    name: str, fmt: str, ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A multi-page TIFF or an animated WebP was read as its first frame, without a word."""
    pictures = [Image.fromarray(_ball(i)) for i in range(3)]
    many = tmp_path / name
    pictures[0].save(many, format=fmt, save_all=True, append_images=pictures[1:])
    still = tmp_path / "still.png"
    pictures[1].save(still)
    argv = ["predict", "--checkpoint", ckpt, "--out", tmp_path / "p.png", still, many]
    line = _one_error(*_run(argv, capsys)[::2])
    assert "the image holds 3 frames" in line and str(many) in line
    assert not (tmp_path / "p.png").exists()


def test_a_jpeg_with_a_second_picture_is_its_first(tmp_path: Path) -> None:
    """An MPO (a phone's JPEG with a preview appended) has two frames, but is one picture."""
    first, second = Image.fromarray(_ball(0)), Image.fromarray(_ball(5))
    first.save(tmp_path / "photo.jpg", format="MPO", save_all=True, append_images=[second])
    with Image.open(tmp_path / "photo.jpg") as opened:
        assert opened.format == "MPO" and opened.n_frames == 2
    read = read_image(tmp_path / "photo.jpg").astype(float)
    assert np.abs(read - np.asarray(first)).mean() < 2 < np.abs(read - np.asarray(second)).mean()


def test_predict_video_plays_at_the_main_streams_rate(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The frame rate came from stream 0 (here a 5 fps thumbnail track), the frames from the
    main stream (25 fps), so the prediction played five times too slowly."""
    video = tmp_path / "thumbs.mkv"
    with av.open(str(video), "w", format="matroska") as container:
        thumbs = container.add_stream("mjpeg", rate=5)
        thumbs.width, thumbs.height, thumbs.pix_fmt = 32, 18, "yuvj420p"
        main_stream = container.add_stream("mjpeg", rate=25)
        main_stream.width, main_stream.height, main_stream.pix_fmt = 96, 54, "yuvj420p"
        for stream, count in ((thumbs, 3), (main_stream, 12)):
            for i in range(count):
                picture = _ball(i, (stream.width, stream.height))
                container.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
            container.mux(stream.encode())
    out = tmp_path / "pred.mp4"
    code, _, err = _run(["predict", "--checkpoint", ckpt, "--video", video, "--out", out], capsys)
    assert code == 0, err
    with av.open(str(out)) as written:
        assert written.streams.video[0].average_rate == 25
        assert written.streams.video[0].frames == 10  # triplets of the 12 main frames


# ---- EXIF orientation -----------------------------------------------------------------------


def test_exif_orientation_is_applied_when_an_image_is_read(tmp_path: Path) -> None:
    frame = read_image(_sideways(tmp_path / "side.jpg"))
    assert frame.shape == (36, 64, 3)
    assert frame[:, -8:, 0].mean() > 200 and frame[:, :20, 0].mean() < 60  # red on the right


def test_predict_reads_sideways_jpegs_upright(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    a, b = _sideways(tmp_path / "a.jpg"), _sideways(tmp_path / "b.jpg")
    code, _, err = _run(
        ["predict", "--checkpoint", ckpt, "--out", tmp_path / "p.png", a, b], capsys
    )
    assert code == 0, err
    with Image.open(tmp_path / "p.png") as predicted:
        assert predicted.size == (64, 36)  # the upright size, not the stored 36x64


def test_ingest_reads_sideways_jpegs_upright(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        _sideways(folder / f"img_{i}.jpg")
    code, _, err = _ingest(folder, tmp_path / "ds", capsys)
    assert code == 0, err
    manifest = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    table = pq.read_table(tmp_path / "ds" / manifest["clips"][0]["files"][0])
    frames = decode_images(table.column("image").to_pylist(), "raw", (64, 36))  # (3, 36, 64, 3)
    assert frames.shape == (3, 36, 64, 3)
    assert frames[:, :, -8:, 0].mean() > 200 and frames[:, :, :20, 0].mean() < 60


# ---- one frame in two formats ---------------------------------------------------------------


def test_one_frame_in_two_formats_is_read_once_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(_ball(i)).save(folder / f"f{i:03d}.jpg", quality=95)
        Image.fromarray(_ball(i)).save(folder / f"f{i:03d}.png")
    code, out, err = _ingest(folder, tmp_path / "ds", capsys)
    assert code == 0 and "wrote 4 frames in 1 clips" in out, err
    manifest = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert [Path(s["path"]).name for s in manifest["skipped"]] == [
        f"f{i:03d}.jpg" for i in range(4)
    ]
    assert all("f0" in s["reason"] and "png used" in s["reason"] for s in manifest["skipped"])
    assert manifest["clips"][0]["source_frames"] == [0, 3]
    assert "f000.jpg" in caplog.text and "one frame stored twice" in caplog.text


def test_a_video_is_read_as_its_display_matrix_turns_it(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "phone"
    folder.mkdir()
    _sideways_video(folder / "upright.mp4")
    code, _, err = _ingest(folder, tmp_path / "ds", capsys)
    assert code == 0, err
    manifest = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    table = pq.read_table(tmp_path / "ds" / manifest["clips"][0]["files"][0])
    frames = decode_images(table.column("image").to_pylist(), "raw", (64, 36))
    assert frames.shape == (6, 36, 64, 3)  # the stored 36x64, turned: not stretched
    assert frames[:, :, -8:, 0].mean() > 200 and frames[:, :, :20, 0].mean() < 60


# ---- formats Pillow would hand to other programs ----------------------------------------------


def test_a_postscript_file_named_png_is_not_handed_to_ghostscript(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Pillow identifies a file by its content: an EPS named frame.png reached its EPS plugin,
    which runs Ghostscript where one is installed ("Unable to locate Ghostscript" here)."""
    eps = tmp_path / "frame.png"
    eps.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 36\nshowpage\n")
    Image.fromarray(_ball(1)).save(tmp_path / "b.png")
    out = tmp_path / "pred.png"
    code, _, err = _run(
        ["predict", "--checkpoint", ckpt, "--out", out, eps, tmp_path / "b.png"], capsys
    )
    line = _one_error(code, err)
    assert "cannot identify image file" in line and "Ghostscript" not in line, line
    assert not out.exists()


def test_a_stored_frame_of_another_format_than_the_datasets_is_refused() -> None:
    """Stored frames decoded in whatever format their bytes were (a PNG in a JPEG dataset)."""
    from varnext_ray.errors import UserError

    frame = _ball(0)
    png = io.BytesIO()
    Image.fromarray(frame).save(png, format="PNG")
    assert (decode_images([png.getvalue()], "png", (96, 54))[0] == frame).all()
    with pytest.raises(UserError, match="a stored frame does not decode"):
        decode_images([png.getvalue()], "jpeg", (96, 54))
