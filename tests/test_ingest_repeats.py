"""What a folder's search reads once or not at all, through the real CLI: names with
non-decimal digits, one file reached twice (a hard link, a symlink, named again), and the
leftover staging folders of a killed ``synth`` or ``ingest``."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from varnext_ray.atomic_write import hidden_name
from varnext_ray.cli import main
from varnext_ray.sources import discover_sources, natural_key
from varnext_ray.synth import write_synthetic

REPEAT = "already read (a symlink, hard link or repeat)"


def _clip(folder: Path, fmt: str = "png", frames: int = 12, seed: int = 0) -> Path:
    """One 64x36 synthetic clip without a camera bump in ``folder``; returns its path."""
    write_synthetic(
        folder, clips=1, frames=frames, size=(64, 36), seed=seed, fmt=fmt, bump_probability=0.0
    )
    (folder / "synth.json").unlink()
    return folder / ("clip_000" if fmt == "png" else "clip_000.mp4")


def _ingest(sources: list[Path], out: Path, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    argv = ["ingest", *map(str, sources), "--out", str(out), "--size", "32x18"]
    code = main([*argv, "--val", "0", "--test", "0"])
    stdout, stderr = capsys.readouterr()
    return code, stdout, stderr


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The warning lines the command logged (pytest's log capture holds them, not stderr)."""
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _manifest(out: Path) -> dict:
    return json.loads((out / "dataset.json").read_text())


def _source_frames(out: Path) -> list[list[int]]:
    """Each clip's ``source_frame`` column, clips in manifest order."""
    return [
        [n for f in clip["files"] for n in pq.read_table(out / f)["source_frame"].to_pylist()]
        for clip in _manifest(out)["clips"]
    ]


# 1. Names with digits ``int`` refuses


@pytest.mark.parametrize("name", ["①", "²", "1³", "frame_⑩"])
def test_a_non_decimal_digit_sorts_as_text(name: str) -> None:
    """``str.isdigit`` is true for ① and ², ``int`` refused them: a ValueError, exit 1."""
    names = [name, "frame_10", "frame_2", "٣"]  # ٣: an Arabic-Indic three, a decimal digit
    ordered = sorted((Path(n) for n in names), key=natural_key)
    assert [p.name for p in ordered].index("frame_2") < [p.name for p in ordered].index("frame_10")
    assert natural_key(Path("٣")) == ["", 3, ""]


def test_ingest_reads_a_folder_beside_names_of_non_decimal_digits(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "s"
    _clip(root)
    (root / "①").touch()
    (root / "²").mkdir()
    (root / "³").mkdir()
    _clip(root / "³" / "in")
    code, _, stderr = _ingest([root], tmp_path / "ds", capsys)
    assert code == 0, stderr
    manifest = _manifest(tmp_path / "ds")
    assert len(manifest["sources"]) == 2 and manifest["frames"] == 24
    assert {"path": str(root / "①"), "reason": "not a video or image"} in manifest["ignored"]


# 2. One file reached twice


def test_a_hard_linked_video_is_read_once(
    tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """Repeats were found by real path only: a hard link's frames went to train, val and test."""
    folder = tmp_path / "hl"
    folder.mkdir()
    shutil.copy(_clip(tmp_path / "made", fmt="mp4"), folder / "a.mp4")
    os.link(folder / "a.mp4", folder / "b.mp4")
    code, _, stderr = _ingest([folder], tmp_path / "ds", capsys)
    assert code == 0 and _warnings(caplog) == [], stderr
    manifest = _manifest(tmp_path / "ds")
    assert [s["path"] for s in manifest["sources"]] == [str((folder / "a.mp4").resolve())]
    assert manifest["frames"] == 12
    assert manifest["ignored"] == [{"path": str(folder / "b.mp4"), "reason": REPEAT}]


def test_a_hard_link_named_after_its_twin_is_named_twice(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    video = _clip(tmp_path / "in", fmt="mp4")
    twin = tmp_path / "twin.mp4"
    os.link(video, twin)
    code, _, stderr = _ingest([video, twin], tmp_path / "ds", capsys)
    assert code == 0, stderr
    manifest = _manifest(tmp_path / "ds")
    assert len(manifest["sources"]) == 1 and manifest["frames"] == 12
    assert manifest["ignored"] == [{"path": str(twin), "reason": "named twice (read once)"}]


# 3. A frame reached twice, or not at all, inside an image folder


def _frames_with_a_hole(tmp_path: Path, capsys: pytest.CaptureFixture, *named: Path) -> Path:
    """Ingests ``named`` (or the clip's folder); asserts frame_00006 (number 5) is a hole."""
    out = tmp_path / "ds"
    code, _, stderr = _ingest(list(named), out, capsys)
    assert code == 0, stderr
    frames = _source_frames(out)
    assert [0, 1, 2, 3, 4] in frames and [6, 7, 8, 9, 10, 11] in frames, frames
    return out


def test_a_symlinked_frame_leaves_a_hole_and_is_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The repeat was dropped without a cut: frame_00007 got number 5 and followed frame_00005."""
    folder = _clip(tmp_path / "s")
    (folder / "frame_00006.png").unlink()
    (folder / "frame_00006.png").symlink_to("frame_00005.png")
    out = _frames_with_a_hole(tmp_path, capsys, folder)
    link = folder / "frame_00006.png"
    assert _manifest(out)["ignored"] == [{"path": str(link), "reason": REPEAT}]


def test_a_frame_named_before_its_folder_leaves_a_hole_there(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = _clip(tmp_path / "s")
    frame = folder / "frame_00006.png"
    out = _frames_with_a_hole(tmp_path, capsys, frame, folder)
    manifest = _manifest(out)
    assert manifest["ignored"] == [{"path": str(frame), "reason": REPEAT}]
    assert manifest["frames"] == 12  # the named frame once, the folder's other 11


def test_a_dangling_symlink_among_frames_leaves_a_hole(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = _clip(tmp_path / "s")
    (folder / "frame_00006.png").unlink()
    (folder / "frame_00006.png").symlink_to("gone.png")
    out = _frames_with_a_hole(tmp_path, capsys, folder)
    (entry,) = _manifest(out)["ignored"]
    assert entry["path"] == str(folder / "frame_00006.png")
    assert entry["reason"].startswith("cannot read (")


def test_frames_reached_twice_keep_their_numbers_in_discovery(tmp_path: Path) -> None:
    folder = _clip(tmp_path / "s", frames=6)
    (folder / "frame_00003.png").unlink()
    (folder / "frame_00003.png").symlink_to("frame_00002.png")
    (source,), ignored = discover_sources([folder])
    assert [p.name for p in source.files] == [f"frame_0000{i}.png" for i in range(1, 7)]
    assert source.holes == frozenset({folder / "frame_00003.png"})
    assert ignored == [{"path": str(folder / "frame_00003.png"), "reason": REPEAT}]


# 4. The leftovers of a killed synth or ingest


def test_a_killed_runs_staging_folder_is_left_out_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """It was read: a half-written clip of a killed ``synth`` became part of the dataset."""
    runs = tmp_path / "runs"
    _clip(runs / "good")
    partial = runs / hidden_name("syn", "partial-4242-0a1b2c")
    _clip(partial, frames=6, seed=1)  # a half-written synth: a clip that was being written
    tmp_video = runs / hidden_name("pred", "tmp-0a1b2c3d.mp4")  # a killed predict --video
    shutil.copy(_clip(tmp_path / "made", fmt="mp4", seed=2), tmp_video)
    code, _, stderr = _ingest([runs], tmp_path / "ds", capsys)
    assert code == 0, stderr
    manifest = _manifest(tmp_path / "ds")
    assert manifest["frames"] == 12 and len(manifest["sources"]) == 1
    assert [e["path"] for e in manifest["ignored"]] == [str(tmp_video), str(partial)]
    assert all(e["reason"].startswith("an interrupted varnext output") for e in manifest["ignored"])
    (line,) = _warnings(caplog)
    assert line.startswith("the search left out 2 interrupted varnext outputs (e.g. ")
    assert "delete them" in line


def test_a_folder_holding_only_a_killed_runs_staging_folder_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    runs = tmp_path / "runs"
    partial = runs / hidden_name("syn", "partial-4242-0a1b2c")
    _clip(partial)
    code, _, stderr = _ingest([runs], tmp_path / "ds", capsys)
    (line,) = stderr.strip().splitlines()
    assert code == 2 and line.startswith("error: no videos or images found in the folder"), line
    assert f"left out 1 interrupted varnext output (e.g. {partial}" in line
    assert not (tmp_path / "ds").exists()


def test_other_hidden_entries_are_searched_like_any_other(
    tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "s"
    _clip(root / ".footage")
    (root / ".notes").write_text("x")
    code, _, stderr = _ingest([root], tmp_path / "ds", capsys)
    assert code == 0 and _warnings(caplog) == [], stderr
    manifest = _manifest(tmp_path / "ds")
    assert manifest["frames"] == 12
    assert manifest["ignored"] == [{"path": str(root / ".notes"), "reason": "not a video or image"}]
