"""predict writes a set of files (the output, rollout frames ``<stem>_kN.png``): all or none.

A full disk is a real tmpfs (mounting needs root, as CI has; skipped otherwise); the
checkpoint, the frames and the video are real. Also: a trailing slash on --out, and paths that
hold a newline in what predict prints.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_media import _tree, tmpfs
from tests.test_output_inputs import _refused
from tests.test_output_inputs import inputs as shared_inputs
from varnext_ray.checkpoint import Checkpoint
from varnext_ray.checkpoint_load import load_checkpoint
from varnext_ray.cli import main
from varnext_ray.errors import UserError
from varnext_ray.predict import (
    frame_lines,
    predict_image_files,
    predict_video,
    seen_part,
    video_lines,
)

inputs = shared_inputs  # the fixture: two PNG frames, a 12-frame mp4 and a checkpoint


@pytest.fixture(scope="module")
def ckpt(inputs: dict[str, Path]) -> Checkpoint:
    return load_checkpoint(inputs["ckpt"])


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs with 12 KiB left: a few small PNGs fit, a 1000-frame rollout not."""
    yield from tmpfs(tmp_path / "tiny", 64, 12)


# ---- a full disk: nothing of the set is kept, nothing old is lost ------------------------------


def test_a_rollout_that_fills_the_disk_leaves_no_frame_and_no_folder(
    inputs: dict[str, Path], full_disk: Path, capsys: pytest.CaptureFixture
) -> None:
    before = _tree(full_disk)
    out = full_disk / "sub" / "p.png"
    argv = ["predict", "--checkpoint", inputs["ckpt"], "--out", out, "--steps", "1000"]
    line = _refused([*argv, inputs["a"], inputs["b"]], capsys, "No space left on device")
    assert f"({full_disk}/sub/p_k" in line  # the frame that did not fit, not a staging path
    assert _tree(full_disk) == before  # no p_k1.png..., no sub/, no staging folder


def test_a_full_disk_with_overwrite_keeps_every_old_frame(
    inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """--overwrite of a rollout that no longer fits: the old frames stay, none is mixed in."""
    for disk in tmpfs(tmp_path / "tiny", 64, 24):  # the old frames, and room for 3 new ones
        for k in (1, 2, 3):
            (disk / f"p_k{k}.png").write_bytes(f"old frame {k}".encode())
        before = _tree(disk)
        argv = ["predict", "--checkpoint", inputs["ckpt"], "--out", disk / "p.png"]
        argv += ["--steps", "1000", "--overwrite", inputs["a"], inputs["b"]]
        _refused(argv, capsys, "No space left on device")
        assert _tree(disk) == before


@pytest.mark.parametrize(
    ("name", "steps"),
    [
        ("v/p.mp4", 30),  # the video fits, its rollout does not
        ("p.gif", 1),  # the GIF itself does not fit (was an OSError, exit 1)
        ("p.mp4", 1),  # nor the mp4 (PyAV's error)
    ],
)
def test_a_video_prediction_on_a_full_disk_leaves_nothing(
    inputs: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    name: str,
    steps: int,
) -> None:
    room = 30 if steps > 1 else 2  # KiB left: the side-by-side mp4 is about 10 KiB
    for disk in tmpfs(tmp_path / "tiny", 64, room):
        before = _tree(disk)
        argv = ["predict", "--checkpoint", inputs["ckpt"], "--video", inputs["video"]]
        argv += ["--out", disk / name, "--steps", str(steps)]
        _refused(argv, capsys, "No space left on device")
        assert _tree(disk) == before


def test_the_whole_set_appears_when_it_fits(
    inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "new" / "v.mp4"
    argv = ["predict", "--checkpoint", inputs["ckpt"], "--video", inputs["video"]]
    assert main([str(a) for a in [*argv, "--out", out, "--steps", "3"]]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "v.mp4",
        "v_k1.png",
        "v_k2.png",
        "v_k3.png",
    ]


# ---- --out with a trailing slash names a folder -------------------------------------------------


@pytest.mark.parametrize("tail", ["/", "/."])
def test_an_out_ending_in_a_slash_is_refused(
    ckpt: Checkpoint, inputs: dict[str, Path], tmp_path: Path, tail: str
) -> None:
    for out, call in (
        ("x.png", lambda o: predict_image_files(ckpt, inputs["a"], inputs["b"], o, 1)),
        ("v.mp4", lambda o: predict_video(ckpt, inputs["video"], o)),
    ):
        with pytest.raises(UserError, match=r"names a folder .*: name the file, e\.g\. .*/pred"):
            call(str(tmp_path / out) + tail)
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_an_out_ending_in_a_slash(
    inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["predict", "--checkpoint", inputs["ckpt"], "--out", f"{tmp_path}/x.png/"]
    _refused([*argv, inputs["a"], inputs["b"]], capsys, "names a folder")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("out", ["nx/../q.png", "a/b/../../q.png", "a/b/../q.png"])
def test_a_path_through_a_new_folder_and_back_leaves_no_empty_folder(
    inputs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    out: str,
) -> None:
    """``nx/../q.png`` needs ``nx`` while the kernel resolves it, but the file lands beside it:
    the folders made only for that are gone afterwards (``nx`` was left behind, empty)."""
    monkeypatch.chdir(tmp_path)
    argv = ["predict", "--checkpoint", inputs["ckpt"], "--out", out, inputs["a"], inputs["b"]]
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert written == (["a", "a/q.png"] if out == "a/b/../q.png" else ["q.png"])


_PEAK = """
import resource, sys
from varnext_ray.cli import main
code = main(sys.argv[1:])
print(code, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux
"""


def _peak_mib(argv: list[str | Path]) -> float:
    """The peak resident memory of the CLI run in a process of its own, MiB."""
    done = subprocess.run(
        [sys.executable, "-c", _PEAK, *map(str, argv)], capture_output=True, text=True, check=True
    )
    code, kib = done.stdout.split()[-2:]
    assert code == "0", done.stderr
    return int(kib) / 1024


@pytest.mark.slow
def test_a_long_rollout_of_large_frames_is_written_as_it_is_decoded(
    inputs: dict[str, Path], tmp_path: Path
) -> None:
    """Every frame of a rollout was built before the first was written: 100 steps of 8192x8192
    frames were a MemoryError. Frames of 2048x1152 (7 MiB each) at 60 steps would hold 400 MiB
    more than one step does; decoded and written a few at a time, the peak stays near it."""
    frames = []
    for name in ("a", "b"):
        big = Image.open(inputs[name]).resize((2048, 1152), Image.Resampling.BILINEAR)
        big.save(tmp_path / f"{name}.png")
        frames.append(tmp_path / f"{name}.png")
    base = ["predict", "--checkpoint", inputs["ckpt"], *frames]
    one = _peak_mib([*base, "--out", tmp_path / "one" / "p.png", "--steps", "1"])
    many = _peak_mib([*base, "--out", tmp_path / "many" / "p.png", "--steps", "60"])
    assert len(list((tmp_path / "many").iterdir())) == 60
    assert many - one < 150, f"peak {many:.0f} MiB at 60 steps vs {one:.0f} MiB at 1"


def test_a_gif_too_large_to_hold_is_refused_and_leaves_nothing(
    inputs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """A GIF is built in memory whole: 240 frames of 1080p side by side were a MemoryError.
    The bound is lowered here to what 5 of the 12-frame clip's 128x36 frames pass."""
    import varnext_ray.predict as predict_module

    monkeypatch.setattr(predict_module, "GIF_MAX_BYTES", 4 * 128 * 36 * 3)
    out = tmp_path / "new" / "v.gif"
    argv = ["predict", "--checkpoint", inputs["ckpt"], "--video", inputs["video"], "--out", out]
    line = _refused(argv, capsys, "a GIF is built whole")
    assert "128x36 frames after 5 of them" in line and ".mp4" in line
    assert list(tmp_path.iterdir()) == []


# ---- what predict prints: one line per path, whatever the path holds ---------------------------

FORGED = "w\nerror: fake.png"


def test_printed_lines_escape_paths_holding_a_newline() -> None:
    lines = frame_lines([Path(f"o/{FORGED}")], Path(FORGED), "b.png")
    shown = r"w\nerror: fake.png"
    assert lines == [f"wrote o/{shown}: frame t+2s predicted from {shown} (t) and b.png (t+s)"]
    summary = {
        "video": f"{FORGED}.mp4",
        "frames": 3,
        "size": [128, 36],
        "extrap_psnr": 1.0,
        "copy_last_psnr": 2.0,
        "rollout": [f"{FORGED}_k1.png"],
    }
    lines = video_lines(summary)
    assert len(lines) == 2 and not any("\n" in line for line in lines)
    assert all(r"w\nerror: fake" in line for line in lines)


def test_a_warning_naming_a_path_is_one_line(
    ckpt: Checkpoint, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="varnext_ray.predict"):
        seen_part(ckpt, np.zeros((96, 96, 3), np.uint8), f"{FORGED}.mp4")
    [record] = caplog.records
    assert "\n" not in record.getMessage() and r"w\nerror: fake.png.mp4: " in record.getMessage()


def test_cli_prints_a_forged_frame_name_escaped(
    inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    frame = tmp_path / FORGED
    frame.write_bytes(inputs["a"].read_bytes())
    out = tmp_path / "nl\nx.png"
    assert (
        main(
            [
                str(a)
                for a in [
                    "predict",
                    "--checkpoint",
                    inputs["ckpt"],
                    "--out",
                    out,
                    frame,
                    inputs["b"],
                ]
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert printed.count("\n") == 1 and "\nerror:" not in printed, printed


def test_frames_too_small_for_the_model_are_named_by_their_files(
    ckpt: Checkpoint, tmp_path: Path
) -> None:
    """The refusal of 1x1 frames named "frame_a", not the files given."""
    from PIL import Image

    from varnext_ray.predict import predict_image_files

    frames = [tmp_path / "tiny_a.png", tmp_path / "tiny_b.png"]
    for frame in frames:
        Image.new("RGB", (1, 1)).save(frame)
    with pytest.raises(UserError, match="too small for this") as refused:
        predict_image_files(ckpt, *frames, tmp_path / "p.png", 1)
    assert refused.value.where == f"{frames[0]}, {frames[1]}"
    assert not (tmp_path / "p.png").exists()


def _large_video(path: Path, side: int, frames: int) -> Path:
    """A real H.264 video of ``frames`` square frames of ``side`` pixels: a bar moving right."""
    from varnext_ray.media import write_video

    def frame(i: int) -> np.ndarray:
        image = np.full((side, side, 3), 40, np.uint8)
        image[side // 3 : side // 2, 16 * i : 16 * i + side // 8] = 220
        return image

    write_video(path, (frame(i) for i in range(frames)))
    return path


def test_video_frames_are_taken_in_chunks_of_bounded_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks were 32 frames whatever their size: with each frame's crop, frame as shown and
    prediction held beside it, a 65 KB video of 4096x4096 frames peaked at 5.5 GB."""
    import varnext_ray.predict as predict
    from varnext_ray.sources import Source

    video = _large_video(tmp_path / "v.mp4", 512, 20)
    monkeypatch.setattr(predict, "_CHUNK_BYTES", 3 * 512 * 512 * 3)  # three frames' bytes
    counts = {"frames": 0, "gaps": 0, "longest": 0, "sizes": []}
    chunks = [item for item in predict._chunks(Source("video", video), counts) if item]
    assert [len(chunk) for _, chunk in chunks] == [3] * 6 + [2]
    assert [first for first, _ in chunks] == list(range(0, 20, 3))


def test_running_out_of_memory_is_one_line_not_a_bug_report(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A command whose inputs need more memory than it may take (a video of 4096x4096 frames
    under a memory limit) ended in "unexpected MemoryError ... this is a bug" (exit 1). Here a
    real MemoryError: NumPy asked for 2**62 bytes."""
    import argparse

    from varnext_ray import cli
    from varnext_ray.errors import GuardedStdout

    def run(_: argparse.Namespace) -> int:
        np.empty(2**62, np.uint8)
        return 0

    args = argparse.Namespace(command="predict", run=run)
    assert cli._run(args, GuardedStdout(sys.stdout)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: out of memory (varnext predict): ")
    assert "this is a bug" not in lines[0]


def test_predict_with_no_model_says_neither_was_given(
    inputs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It said "(not both)" when none was given."""
    argv = ["predict", "--out", str(tmp_path / "p.png"), str(inputs["a"]), str(inputs["b"])]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: need one model (got neither) (--checkpoint, --model): "), err
