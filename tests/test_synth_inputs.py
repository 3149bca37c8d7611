"""``varnext synth`` and ``varnext demo`` on bad input: one ``error:`` line, exit 2, nothing kept.

Each case runs the real entry point; the interruption cases run the CLI in a subprocess and
signal it while its first clip is being written.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from varnext_ray.cli import main
from varnext_ray.synth import MAX_SEED

SMALL = ["--clips", "1", "--frames", "3", "--size", "64x36"]


def _refused(capsys: pytest.CaptureFixture, argv: list[str], match: str) -> str:
    try:
        code = main(argv)
    except SystemExit as ended:  # refused by the parser itself (a number it cannot read)
        code = ended.code
    assert code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert match in err, err
    return err


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _out_cases(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "file").write_text("mine")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    return {
        "a file": tmp_path / "file",
        "under a file": tmp_path / "file" / "out",
        "a character device": Path("/dev/null"),
        "a FIFO": tmp_path / "fifo",
        "a dangling symlink": tmp_path / "dangling",
    }


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("a file", "output already exists (a file)"),
        ("under a file", "is a file, not a folder"),
        ("a character device", "output already exists (a character device)"),
        ("a FIFO", "output already exists (a named pipe"),
        ("a dangling symlink", "a symlink to nothing"),
    ],
)
def test_unusable_out_dir_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture, case: str, match: str
) -> None:
    out = _out_cases(tmp_path)[case]
    before = _listing(tmp_path)
    _refused(capsys, ["synth", str(out), *SMALL], match)
    assert _listing(tmp_path) == before
    assert (tmp_path / "file").read_text() == "mine"


def test_current_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _refused(capsys, ["synth", ".", *SMALL], "OUT_DIR is the current folder")
    assert _listing(tmp_path) == []


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--seed", "-1"], f"--seed must be in 0..{MAX_SEED} (got -1)"),
        (["--seed", str(MAX_SEED + 1)], "--seed must be in 0.."),
        (["--bump-probability", "nan"], "argument --bump-probability: nan is not a number"),
        (["--bump-probability", "2"], "in [0, 1] (got 2.0)"),
        (["--bump-probability", "-1"], "in [0, 1] (got -1.0)"),
        (["--bump-probability", "inf"], "--bump-probability: inf is not a finite number"),
        (["--clips", "100000000", "--frames", "100000000"], "at most 10000 clips of 100000 frames"),
        (["--frames", "2"], "need at least 1 clip of 3 frames"),
        (["--size", "8192x4608", "--format", "png"], "size must be WxH with each side 8..4096"),
        (["--clips", "1000", "--size", "4096x2304", "--format", "png"], "over the 20 GiB limit"),
        (["--size", "63x36"], "H.264 needs an even width"),
    ],
)
def test_bad_arguments_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], match: str
) -> None:
    _refused(capsys, ["synth", str(tmp_path / "s8"), *args], match)
    assert _listing(tmp_path) == []


def test_small_synth_still_works(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    existing = tmp_path / "empty"
    existing.mkdir()  # an existing empty folder is accepted (and filled)
    assert main(["synth", str(existing), *SMALL, "--seed", str(MAX_SEED)]) == 0
    assert capsys.readouterr().err == ""
    assert _listing(tmp_path) == ["empty", "empty/clip_000.mp4", "empty/synth.json"]


def _interrupt(tmp_path: Path, argv: list[str], staged: str, signum: int) -> None:
    """Runs the CLI in a process of its own, sends ``signum`` once ``staged`` (a glob under
    ``tmp_path``) exists, and checks the exit: 130 or 143, one ``error:`` line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "varnext_ray.cli", *argv],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(staged)):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, f"nothing matched {staged} within 60 s"
            time.sleep(0.05)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == (130 if signum == signal.SIGINT else 143), err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert "nothing half-written was kept" in err


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_synth_keeps_nothing(tmp_path: Path, signum: int) -> None:
    argv = ["synth", "out", "--clips", "2", "--frames", "2000", "--size", "320x180"]
    _interrupt(tmp_path, argv, ".out.partial-*/clip_000.mp4", signum)
    assert _listing(tmp_path) == []  # neither out/ nor its hidden staging folder


def test_demo_workdir_that_is_a_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "afile").write_text("mine")
    argv = ["demo", "--workdir", str(tmp_path / "afile")]
    _refused(capsys, argv, "--workdir is a file, not a folder")
    _refused(
        capsys, ["demo", "--workdir", str(tmp_path / "afile" / "d")], "is a file, not a folder"
    )
    assert _listing(tmp_path) == ["afile"]
    assert (tmp_path / "afile").read_text() == "mine"


def test_demo_wrong_address_writes_nothing(tmp_path: Path) -> None:
    # In a process of its own: in this one the test session's Ray may already be initialised,
    # and connect_ray would then join it whatever --address says.
    argv = ["demo", "--workdir", str(tmp_path / "d1"), "--address", "127.0.0.1:1"]
    proc = subprocess.run(
        [sys.executable, "-m", "varnext_ray.cli", *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "no Ray cluster answers there" in lines[0], proc.stderr
    assert _listing(tmp_path) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_ingest_keeps_nothing(tmp_path: Path, signum: int) -> None:
    from varnext_ray.synth import write_synthetic

    write_synthetic(tmp_path / "src", clips=2, frames=800, size=(320, 180), seed=0)
    argv = ["ingest", "src", "--out", "out", "--size", "160x90"]
    _interrupt(tmp_path, argv, ".out.partial-*/*", signum)
    assert [p.name for p in tmp_path.iterdir()] == ["src"]  # no out/, no staging folder


def test_a_full_disk_names_the_clip_in_out_dir_and_keeps_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The video writer's own error named the clip in synth's hidden staging folder."""
    from tests.test_media import tmpfs

    with contextlib.contextmanager(tmpfs)(tmp_path / "tiny", 64, 8) as disk:
        err = _refused(
            capsys,
            ["synth", str(disk / "s"), "--clips", "4", "--frames", "60", "--size", "320x180"],
            "No space left on device",
        )
        assert f"({disk / 's' / 'clip_000.mp4'})" in err, err
        assert sorted(p.name for p in disk.iterdir()) == ["fill"]
