"""What a folder's search leaves out, through the real CLI: folders too deep to be searched and
unreadable folders are said (an error that names them when nothing else is left, one warning
when the dataset is written without them), and a file named twice is read once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from varnext_ray.sources import MAX_DEPTH
from varnext_ray.synth import write_synthetic

REPO = Path(__file__).resolve().parent.parent


def _clip(folder: Path, fmt: str = "png", seed: int = 0) -> Path:
    """One 8-frame 64x36 synthetic clip (no camera bump) in ``folder``; returns its path."""
    write_synthetic(
        folder, clips=1, frames=8, size=(64, 36), seed=seed, fmt=fmt, bump_probability=0.0
    )
    (folder / "synth.json").unlink()
    return folder / ("clip_000" if fmt == "png" else "clip_000.mp4")


def _deep_clip(root: Path, levels: int = MAX_DEPTH + 2) -> Path:
    """A clip of PNG frames ``levels`` folders below ``root`` (the tester's ``deep2``)."""
    bottom = root.joinpath(*["a"] * levels)
    bottom.mkdir(parents=True)
    for frame in _clip(bottom / "_made").glob("*.png"):
        frame.rename(bottom / frame.name)
    shutil.rmtree(bottom / "_made")
    return bottom


def _unprivileged() -> list[str]:
    """A prefix that runs a command without the capabilities that read any folder: none for
    a normal user; for root, ``setpriv`` with every capability dropped (as the tester did)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a chmod 000 folder stays readable")
    return ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"]


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path/src/locked``: a folder of frames nobody may list (mode 000)."""
    folder = tmp_path / "src" / "locked"
    _clip(folder)
    folder.chmod(0)
    yield folder
    folder.chmod(0o755)


def _ingest(*sources: Path, out: Path, prefix: list[str] = ()) -> subprocess.CompletedProcess:
    cmd = [*prefix, sys.executable, "-m", "varnext_ray.cli", "ingest", *map(str, sources)]
    cmd += ["--out", str(out), "--size", "64x36", "--val", "0", "--test", "0"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def _one_line(done: subprocess.CompletedProcess, code: int, kind: str) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == code, done.stderr
    assert len(lines) == 1 and lines[0].startswith(f"{kind}: "), done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def _nothing_left(tmp_path: Path, out: Path) -> None:
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.partial-*"))


def test_a_folder_with_frames_only_too_deep_says_so(tmp_path: Path) -> None:
    """Before: `no videos or images found in the folder (deep2)`, the depth limit only in a
    manifest that was never written."""
    _deep_clip(tmp_path / "deep2")
    out = tmp_path / "ds"
    line = _one_line(_ingest(tmp_path / "deep2", out=out), 2, "error")
    assert "no videos or images found in the folder" in line
    assert f"left out 1 folder over {MAX_DEPTH} levels deep (e.g. {tmp_path / 'deep2'}/a/" in line
    assert "pass the deep folder itself" in line
    _nothing_left(tmp_path, out)


def test_a_deep_folder_beside_a_broken_video_is_named_in_the_error(tmp_path: Path) -> None:
    """The only video found does not open: the error still names the deep folder that held
    the frames (it said `no decodable frame in any source` and nothing more)."""
    source = tmp_path / "src"
    _deep_clip(source / "deep2")
    (source / "clip.mkv").write_bytes(b"")
    out = tmp_path / "ds"
    line = _one_line(_ingest(source, out=out), 2, "error")
    assert "no decodable frame in any source" in line
    assert f"the search left out 1 folder over {MAX_DEPTH} levels deep" in line
    _nothing_left(tmp_path, out)


def test_a_deep_folder_dropped_beside_a_clip_is_warned(tmp_path: Path) -> None:
    """Before: exit 0 and not a word; the deep frames were silently missing."""
    source = tmp_path / "src"
    _clip(source)
    _deep_clip(source / "deep2")
    (source / "notes.txt").write_text("not footage")  # expected: no warning for it
    out = tmp_path / "ds"
    done = _ingest(source, out=out)
    line = _one_line(done, 0, "warning")
    assert f"left out 1 folder over {MAX_DEPTH} levels deep" in line and "notes.txt" not in line
    assert "wrote 8 frames in 1 clips" in done.stdout
    ignored = json.loads((out / "dataset.json").read_text())["ignored"]
    reasons = {Path(entry["path"]).name: entry["reason"] for entry in ignored}
    assert reasons == {"a": f"deeper than {MAX_DEPTH} folders", "notes.txt": "not a video or image"}


def test_an_unreadable_folder_dropped_beside_a_clip_is_warned(locked: Path, tmp_path: Path) -> None:
    """Before: exit 0 and not a word."""
    _clip(tmp_path / "src" / "open", seed=1)
    out = tmp_path / "ds"
    done = _ingest(tmp_path / "src", out=out, prefix=_unprivileged())
    line = _one_line(done, 0, "warning")
    assert f"left out 1 unreadable folder (e.g. {locked}: cannot list (" in line
    assert "make the folders readable" in line
    ignored = json.loads((out / "dataset.json").read_text())["ignored"]
    assert [entry["path"] for entry in ignored] == [str(locked)]


def test_a_folder_whose_only_frames_are_unreadable_says_so(locked: Path, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    done = _ingest(tmp_path / "src", out=out, prefix=_unprivileged())
    line = _one_line(done, 2, "error")
    assert "no videos or images found in the folder" in line
    assert f"left out 1 unreadable folder (e.g. {locked}: cannot list (" in line
    _nothing_left(tmp_path, out)


def test_a_file_named_twice_is_read_once(tmp_path: Path) -> None:
    """docs/data.md said it was ingested twice; it is read once and the repeat is listed."""
    video = _clip(tmp_path / "in", fmt="mp4")
    out = tmp_path / "ds"
    done = _ingest(video, video, out=out)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    manifest = json.loads((out / "dataset.json").read_text())
    assert len(manifest["sources"]) == 1 and manifest["frames"] == 8
    assert manifest["ignored"] == [{"path": str(video), "reason": "named twice (read once)"}]


def test_a_broken_file_in_a_folder_is_skipped_once_and_its_name_cannot_forge_a_line(
    tmp_path: Path,
) -> None:
    """Its warning printed the name's newline raw (a second, forged ``error:`` line), and it
    was skipped twice: "cannot open as a video", then "no decodable frame"."""
    folder = tmp_path / "in"
    _clip(folder, fmt="mp4")
    broken = folder / "bad\nerror: forged.mp4"
    broken.write_bytes(b"not a video")
    out = tmp_path / "ds"
    done = _ingest(folder, out=out)
    assert done.returncode == 0, done.stderr
    assert not any(line.startswith("error:") for line in done.stderr.splitlines()), done.stderr
    assert "bad\\nerror: forged.mp4" in done.stderr
    assert "1 skipped" in done.stdout, done.stdout
    manifest = json.loads((out / "dataset.json").read_text())
    assert [item["path"] for item in manifest["skipped"]] == [str(broken)], manifest["skipped"]


def test_a_dataset_inside_a_folder_it_reads_is_refused(tmp_path: Path) -> None:
    """It was written among the sources, and a later ingest of the folder read it too."""
    folder = tmp_path / "in"
    _clip(folder, fmt="mp4")
    before = sorted(p.name for p in folder.rglob("*"))
    line = _one_line(_ingest(folder, out=folder / "ds"), 2, "error")
    assert "--out lies inside the source folder" in line, line
    assert sorted(p.name for p in folder.rglob("*")) == before
