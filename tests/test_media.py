"""Writing pictures and videos: PNGs, PNG folders, GIFs and mp4s read back; sets of files
that appear whole or not at all; full disks (a real tmpfs: mounting needs root, as CI has)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from varnext_ray.errors import UserError
from varnext_ray.media import (
    FPS,
    save_gif,
    save_png,
    staged_files,
    write_png_folder,
    write_video,
)


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


def test_a_gif_of_a_time_lapse_shows_each_frame_for_gifs_longest_delay(tmp_path: Path) -> None:
    """``predict --video`` of one frame every 700 s asked for 700,000 ms per GIF frame, over
    the format's 16-bit delay: "unexpected OverflowError" (exit 1)."""
    path = save_gif(_frames(2), tmp_path / "slow.gif", frame_ms=700_000)
    with Image.open(path) as gif:
        assert gif.n_frames == 2 and gif.info["duration"] == 655_350


def test_video_has_every_frame_at_its_rate(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    assert write_video(path, iter(_frames(5, 36, 64))) == 5
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (64, 36)
        assert stream.average_rate == FPS
        assert sum(1 for _ in container.decode(stream)) == 5


# ---- failures: a full disk, a failing source, a set that cannot be completed -------------------


def tmpfs(folder: Path, size_k: int, free_k: int) -> Iterator[Path]:
    """A real tmpfs of ``size_k`` KiB at ``folder`` with about ``free_k`` KiB left (a file
    ``fill`` takes the rest); skips the test where it cannot mount. Fails the test if a file
    was left open there (the unmount then finds it busy)."""
    folder.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_k}k", "tmpfs", str(folder)])
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (folder / "fill").write_bytes(b"\0" * (size_k - free_k) * 1024)
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)]).returncode != 0:
            subprocess.run(["umount", "--lazy", str(folder)], check=True)
            pytest.fail(f"a file on {folder} was left open")


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    yield from tmpfs(tmp_path / "tiny", 64, 2)


def test_a_video_or_gif_on_a_full_disk_is_one_clear_error_and_leaves_nothing(
    full_disk: Path,
) -> None:
    big = _frames(20, 72, 128)  # noise: no codec squeezes it into 2 KiB
    with pytest.raises(UserError, match=r"cannot write \(No space left on device\) \(clip\.mp4\)"):
        write_video(full_disk / "sub" / "clip.mp4", iter(big), where="clip.mp4")
    with pytest.raises(UserError, match=r"cannot write \(No space left on device\)"):
        save_gif(big, full_disk / "sub" / "roll.gif")
    assert [p.name for p in full_disk.iterdir()] == ["fill"]  # no temporary file, no sub/


def test_a_failing_source_leaves_the_old_video_and_keeps_its_own_error(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"the video from before")

    def frames() -> Iterator[np.ndarray]:
        yield from _frames(3, 36, 64)
        raise OSError("the camera went away")  # the source's error, not a write error

    with pytest.raises(OSError, match="the camera went away"):
        write_video(path, frames())
    assert path.read_bytes() == b"the video from before"
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def _set(folder: Path) -> list[Path]:
    return [folder / name for name in ("a.png", "b.png", "c.png")]


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>"
        for p in sorted(folder.rglob("*"))
    }


def test_a_set_whose_last_move_fails_puts_back_what_it_replaced(tmp_path: Path) -> None:
    """a.png replaced, b.png new, then c.png turns into a folder while writing: the set is
    taken back, a.png has its old content again and b.png is gone."""
    a, b, c = _set(tmp_path)
    a.write_bytes(b"old a")
    refused = pytest.raises(UserError, match=r"cannot write \(.*\) \(.*c\.png\)")
    with refused, staged_files([a, b, c], overwrite=True) as stage:
        for out in (a, b, c):
            stage(out).write_bytes(b"new")
        c.mkdir()
    assert _tree(tmp_path) == {"a.png": b"old a", "c.png": b"<dir>"}


def test_a_set_never_replaces_a_file_that_appeared_while_writing(tmp_path: Path) -> None:
    a, b, c = _set(tmp_path)
    with (
        pytest.raises(UserError, match=r"the output already exists \(.*b\.png\): pass --overwrite"),
        staged_files([a, b, c]) as stage,
    ):
        for out in (a, b, c):
            stage(out).write_bytes(b"new")
        b.write_bytes(b"someone else's")
    assert _tree(tmp_path) == {"b.png": b"someone else's"}


def test_a_failing_set_leaves_no_file_and_no_folder(tmp_path: Path) -> None:
    outs = [tmp_path / "new" / "deeper" / name for name in ("a.png", "b.png")]
    with pytest.raises(UserError, match="refused midway"), staged_files(outs) as stage:
        save_png(_frames(1)[0], stage(outs[0]))
        raise UserError("refused midway", "here", "nothing")
    assert list(tmp_path.iterdir()) == []
    with staged_files(outs) as stage:
        for out in outs:
            save_png(_frames(1)[0], stage(out), where=str(out))
    assert sorted(p.name for p in outs[0].parent.iterdir()) == ["a.png", "b.png"]
