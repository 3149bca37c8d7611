"""Outputs and inputs whatever the path and the environment: names as long as a file name may
be, a current folder too deep to be named absolutely or deleted, an output folder that cannot
be replaced, names under a non-UTF-8 locale, entries a folder's search cannot read, and what
shortened every clip. Each case crashed, refused a good path or blamed the wrong thing."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from varnext_ray import atomic_write, ingest, output_checks, tracking
from varnext_ray.atomic_write import NAME_MAX, hidden_name, staged_dir, write_atomic
from varnext_ray.cli import main
from varnext_ray.errors import UserError
from varnext_ray.ingest import IngestOptions
from varnext_ray.manifest import load_manifest
from varnext_ray.sources import describe_ignored, discover_sources, unexpected_ignored

SIZE = (32, 18)


def _frames(folder: Path, count: int = 8) -> Path:
    """``count`` PNG frames of a horizontal gradient moving one pixel a frame (no scene cut at
    the default settings)."""
    folder.mkdir(parents=True)
    ramp = np.tile(np.linspace(0, 255, SIZE[0], dtype=np.uint8), (SIZE[1], 1))
    for i in range(count):
        picture = np.stack([np.roll(ramp, i, axis=1)] * 3, axis=-1)
        Image.fromarray(picture).save(folder / f"frame_{i:03d}.png")
    return folder


def _one_error_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), (code, err)
    return err[0]


# ---- 3. names as long as a file name may be ---------------------------------------------------


@pytest.mark.parametrize("name", ["n" * 250 + ".json", "é" * 125 + ".json", "x" * 255])
def test_hidden_names_fit_name_max_and_keep_characters_whole(name: str) -> None:
    hidden = hidden_name(name, "partial-4194304-abcdef")
    assert hidden.startswith(".") and hidden.endswith(".partial-4194304-abcdef")
    assert len(hidden.encode()) <= NAME_MAX  # encode() fails on half a character


def test_outputs_named_up_to_name_max_are_written(tmp_path: Path) -> None:
    """Their temporary siblings were over 255 bytes: "cannot write (File name too long)"."""
    for name in ("f" * 250 + ".json", "é" * 127 + "x"):  # 255 bytes: the longest legal name
        write_atomic(tmp_path / name, b"{}", overwrite=False)
        with staged_dir(tmp_path / f"d{name[1:]}", "--out") as tmp:
            (tmp / "done").write_text("x")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 4 and not any(n.startswith(".") for n in names)  # nothing left over


# ---- 1. report: the store changes only if the page is written, and the other way round ------


@pytest.fixture(scope="module")
def sweep_store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A store holding one sweep of two finished trials (see tests/test_report.py)."""
    from tests.conftest import REPO
    from tests.test_report import EXP, SPACE, TRIALS, _sweep
    from varnext_ray.search_space import load_space

    tmp = tmp_path_factory.mktemp("paths_store")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    tracking.client(uri).create_experiment(EXP, artifact_location=str(tmp / EXP))
    (tmp / "space.json").write_text(
        json.dumps(SPACE | {"base": str(REPO / "configs" / "smoke_64x36.json")})
    )
    space = load_space(tmp / "space.json")[0].model_dump(mode="json", warnings=False)
    trials = {name: TRIALS[name] for name in ("trial-a", "trial-b")}
    sweep = _sweep(uri, "sweep-paths", space, trials, tmp)
    return {"uri": uri, "parent": sweep["parent"], "experiment": EXP}


def _logged_page(store: dict[str, str], tmp: Path) -> str:
    client = tracking.client(store["uri"])
    return Path(
        client.download_artifacts(store["parent"], "report/report.html", str(tmp))
    ).read_text()


def test_a_report_that_cannot_be_written_leaves_the_store_as_it_was(
    sweep_store: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page was logged into the store before the local write, which then failed (exit 2):
    a failed command had replaced the sweep's report.html."""
    from varnext_ray import report

    uri, experiment = sweep_store["uri"], sweep_store["experiment"]
    report.write_report(uri, experiment, top=1, out=tmp_path / "first.html")
    logged = _logged_page(sweep_store, tmp_path / "a")
    assert logged == (tmp_path / "first.html").read_text()

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(atomic_write.os, "fsync", full_disk)
        with pytest.raises(UserError, match=r"cannot write \(No space left on device\)"):
            report.write_report(uri, experiment, top=2, out=tmp_path / "second.html")
    assert _logged_page(sweep_store, tmp_path / "b") == logged  # the store is unchanged
    assert not (tmp_path / "second.html").exists()

    def store_refuses(*args: Any) -> None:
        raise UserError("the store refused it", "sweep", "fix the store")

    with monkeypatch.context() as patch:  # and a store failure leaves no local page
        patch.setattr(report, "_log_page", store_refuses)
        with pytest.raises(UserError, match="the store refused it"):
            report.write_report(uri, experiment, top=2, out=tmp_path / "third.html")
    assert sorted(p.name for p in tmp_path.glob("*.html")) == ["first.html"]  # no temp either
    long = tmp_path / ("n" * 240 + ".html")  # a legal name: its temporary sibling fits too
    report.write_report(uri, experiment, top=2, out=long)
    assert _logged_page(sweep_store, tmp_path / "c") == long.read_text() != logged


# ---- 2. a current folder deeper than PATH_MAX allows absolute names for -----------------------


@pytest.fixture
def deep_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The current folder, ~3,800 bytes deep: an output's absolute path is over PATH_MAX."""
    deep = tmp_path.joinpath(*["d" * 250] * (3800 // 251))
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    return deep


def test_relative_outputs_below_a_deep_current_folder_are_written(
    deep_cwd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """predict and report crashed ("unexpected OSError: File name too long") checking the
    absolute path; synth, ingest and best refused the output. The kernel takes each relative
    path below (its absolute form is over PATH_MAX)."""
    below = Path("a" * 200, "b" * 200)
    output_checks.check_output_files([below / "pred.png", Path("pred.mp4")], flag="--out")
    output_checks.check_new_dir(below / "ds", "--out")
    with atomic_write.parent_folders(below / "page.html") as page:
        write_atomic(page, b"<p>")
    argv = ["synth", str(below / "clips"), "--clips", "1", "--frames", "3", "--size", "64x36"]
    assert main(argv) == 0, capsys.readouterr().err
    assert Path(below, "page.html").read_bytes() == b"<p>"
    assert json.loads(Path(below, "clips", "synth.json").read_text())["clips"]


# ---- 5. a deleted current folder --------------------------------------------------------------


@pytest.fixture
def deleted_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    yield tmp_path


def test_absolute_outputs_need_no_current_folder(
    deleted_cwd: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """synth, ingest and best refused absolute outputs: "the current folder is unusable"."""
    source = _frames(deleted_cwd / "frames")
    argv = ["synth", str(deleted_cwd / "clips"), "--clips", "1", "--frames", "3"]
    assert main([*argv, "--size", "64x36"]) == 0, capsys.readouterr().err
    with staged_dir(deleted_cwd / "best", "--out") as tmp:
        (tmp / "run.json").write_text("{}")
    output_checks.check_output_files([deleted_cwd / "pred.png"], flag="--out")
    argv = ["ingest", str(source), "--out", str(deleted_cwd / "ds"), "--size", "32x18"]
    assert main(argv) == 0, capsys.readouterr().err
    assert (deleted_cwd / "ds" / "dataset.json").is_file()


def test_relative_paths_without_a_current_folder_are_one_clear_line(
    deleted_cwd: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ingest --out rel crashed (FileNotFoundError in out.absolute()), as did report with the
    default store (Path.cwd())."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    source = _frames(deleted_cwd / "frames")
    line = _one_error_line(["ingest", str(source), "--out", "rel", "--size", "32x18"], capsys)
    assert "the current folder was deleted" in line and "pass an absolute --out" in line
    line = _one_error_line(["report", "--experiment", "x"], capsys)
    assert "the current folder is unusable" in line and "./mlflow.db" in line
    with pytest.raises(UserError, match="the current folder is unusable"):
        tracking.resolve_tracking_uri("sqlite:///rel.db")
    assert sorted(p.name for p in deleted_cwd.iterdir()) == ["frames"]


# ---- 4. an empty output folder that cannot be replaced ----------------------------------------


@contextlib.contextmanager
def _immutable(folder: Path) -> Iterator[None]:
    if shutil.which("chattr") is None or os.geteuid() != 0:
        pytest.skip("chattr +i needs the chattr tool and root")
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
        pytest.skip(f"this filesystem has no immutable flag ({folder})")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_an_empty_output_that_cannot_be_replaced_is_refused_before_the_work(
    tmp_path: Path,
) -> None:
    """It was refused after all the work, as "output appeared while writing"."""
    (tmp_path / "empty").mkdir()
    worked = []
    with (
        _immutable(tmp_path / "empty"),
        pytest.raises(UserError) as refused,
        staged_dir(tmp_path / "empty", "OUT_DIR"),
    ):
        worked.append(True)
    assert not worked and "appeared" not in str(refused.value)
    assert "the empty OUT_DIR is immutable (chattr +i)" in str(refused.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_a_failed_rename_over_an_empty_output_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any failed rename with the target present read "output appeared while writing"."""
    (tmp_path / "empty").mkdir()

    def refused(src: Any, dst: Any) -> None:
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(atomic_write.os, "rename", refused)
    with pytest.raises(UserError) as failed, staged_dir(tmp_path / "empty", "--out") as tmp:
        (tmp / "done").write_text("x")
    assert failed.value.what == "cannot replace the empty output folder (Operation not permitted)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


# ---- 6, 7. names that are UTF-8 on disk, and names that are not -------------------------------

# How Python holds "é" read under a non-UTF-8 locale (LC_ALL=C PYTHONUTF8=0): two escaped
# bytes. The kernel gets the same bytes back (here too); pyarrow cannot take the text.
E_ESCAPED = "\udcc3\udca9"


def test_a_utf8_out_named_in_escaped_bytes_is_ingested(tmp_path: Path) -> None:
    """Under LC_ALL=C, a UTF-8 --out was refused as "not UTF-8 text" (its text was encoded,
    not its bytes)."""
    source = _frames(tmp_path / "frames")
    out = tmp_path / E_ESCAPED / "ds"
    ingest.ingest([source], out, IngestOptions(size=SIZE, val=0, test=0))
    assert (tmp_path / "é" / "ds" / "dataset.json").is_file()  # the same bytes on disk
    with pytest.raises(UserError, match="not UTF-8 text"):
        ingest.ingest([source], tmp_path / "\udcff" / "ds", IngestOptions(size=SIZE))


def test_a_dataset_whose_path_pyarrow_cannot_take_is_not_called_damaged(tmp_path: Path) -> None:
    """data info said "is not a readable Parquet file ('utf-8' codec can't encode ...)" of a
    good dataset below a non-UTF-8 folder: Ray Data could not train on it either."""
    good = tmp_path / "ds"
    ingest.ingest([_frames(tmp_path / "frames")], good, IngestOptions(size=SIZE, val=0, test=0))
    for folder, expected in (
        ("dsx\udcff", "the dataset's path is not UTF-8 text"),
        (E_ESCAPED, "non-UTF-8 locale"),
    ):
        (tmp_path / folder).mkdir()
        shutil.copytree(good, tmp_path / folder / "ds")
        with pytest.raises(UserError, match=expected) as refused:
            load_manifest(tmp_path / folder / "ds", check_keys=True)
        assert "Parquet" not in str(refused.value)
    load_manifest(good, check_keys=True)


# ---- 8. entries a search cannot read ----------------------------------------------------------


def test_fifos_sockets_devices_and_folders_named_as_videos_are_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """They were left out silently (only a dangling link was warned about)."""
    folder = _frames(tmp_path / "src")
    os.mkfifo(folder / "f.mp4")
    (folder / "z.mp4").symlink_to("/dev/zero")
    (folder / "dir.mp4").mkdir()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(folder / "s.mp4"))
        _, ignored = discover_sources([folder])
    lost = unexpected_ignored(ignored)
    assert sorted(Path(e["path"]).name for e in lost) == ["dir.mp4", "f.mp4", "s.mp4", "z.mp4"]
    assert describe_ignored(lost).startswith("4 entries not regular files (e.g. ")
    with caplog.at_level("WARNING"):
        ingest._warn_left_out(ignored)
    assert [r.getMessage().count("entries not regular files") for r in caplog.records] == [1]


# ---- 9. what shortened the clips --------------------------------------------------------------


def test_cuts_at_every_frame_name_the_cut_options(tmp_path: Path) -> None:
    """It said "pass longer footage" of footage cut at every frame by --cut-threshold 1e-9."""
    source = _frames(tmp_path / "frames")
    opts = IngestOptions(size=SIZE, cut_threshold=1e-9)
    with pytest.raises(UserError) as refused:
        ingest.ingest([source], tmp_path / "ds", opts)
    assert "the longest keeps 1 with 7 scene cuts detected" in refused.value.what
    assert "a higher --cut-threshold or --cut-ratio (got 1e-09 and 4" in refused.value.fix
    ingest.ingest([source], tmp_path / "ds", IngestOptions(size=SIZE, val=0, test=0))
