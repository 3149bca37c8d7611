"""``varnext demo --workdir`` on folders it must not write in: one line, exit 2, before Ray.

The work directory must be new, empty, or a demo's own that stopped before its sweep (its
``synth/synth.json`` records the demo's clips). Each case runs the real entry point in-process
with ``connect_ray`` replaced by a refusal that names itself, so a check that came after Ray
would show as that line; the test's folder must be left exactly as it was.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from varnext_ray import cluster, demo
from varnext_ray.cli import main
from varnext_ray.errors import UserError

RAY = "Ray would start here"


@pytest.fixture(autouse=True)
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(address: str | None = None) -> None:
        raise UserError(RAY, "connect_ray", "every check before Ray passed")

    monkeypatch.setattr(cluster, "connect_ray", refuse)


def _snapshot(folder: Path) -> dict[str, tuple[int, int] | None]:
    """Every path below ``folder``, with the size and mtime of each file (a folder's mtime
    changes when the writability check makes and removes a temporary folder in it)."""
    return {
        str(p.relative_to(folder)): None if p.is_dir() else (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


def _run(capsys: pytest.CaptureFixture[str], workdir: str | Path, root: Path) -> str:
    """The demo's one stderr line; nothing under ``root`` changed."""
    before = _snapshot(root)
    assert main(["demo", "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert _snapshot(root) == before
    return err


def _refused(capsys: pytest.CaptureFixture[str], workdir: str | Path, root: Path) -> str:
    err = _run(capsys, workdir, root)
    assert RAY not in err, err  # refused before Ray
    fix = err.rsplit("): ", 1)[1]
    assert "--workdir" in fix, err
    assert not any(flag in err for flag in ("--tracking-uri", "--out", "--overwrite")), err
    return err


def _demo_synth(workdir: Path, *, size: tuple[int, int] = (128, 72), clips: int = 16) -> Path:
    """A ``synth/`` as the demo writes it first (only its synth.json matters here)."""
    (workdir / "synth").mkdir(parents=True)
    record = {"seed": 0, "size": list(size), "fps": 25, "format": "mp4", "clips": [{}] * clips}
    (workdir / "synth" / "synth.json").write_text(json.dumps(record))
    return workdir


def _foreign_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")


def _checkpoint_folder(tmp_path: Path) -> Path:
    work = tmp_path / "ckpt"
    work.mkdir()
    (work / "model.safetensors").write_bytes(b"\0" * 64)
    (work / "meta.json").write_text("{}")
    return work


def _runs_of_the_docs(tmp_path: Path) -> Path:
    """runs/ as docs/data.md and the train defaults fill it: synth (other settings), ray/."""
    work = _demo_synth(tmp_path / "runs", size=(320, 180), clips=4)
    (work / "dataset").mkdir()
    (work / "ray" / "sweep-x-smoke").mkdir(parents=True)
    return work


def _only_a_database(tmp_path: Path) -> Path:
    work = tmp_path / "here"
    work.mkdir()
    _foreign_sqlite(work / "mlflow.db")
    return work


@pytest.mark.parametrize(
    ("make", "held"),
    [
        (_checkpoint_folder, "meta.json, model.safetensors"),
        (_runs_of_the_docs, "dataset, ray, synth"),
        (_only_a_database, "mlflow.db"),
    ],
)
def test_a_folder_that_is_not_a_demos_is_refused_untouched(
    make: Callable[[Path], Path], held: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = make(tmp_path)
    err = _refused(capsys, work, tmp_path)
    assert f"not a demo's work directory (it holds {held})" in err, err
    assert "a demo already ran" not in err and "remove this one" not in err, err


def test_the_current_folder_is_checked_like_any(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    work = _only_a_database(tmp_path)
    monkeypatch.chdir(work)
    assert "it holds mlflow.db" in _refused(capsys, ".", tmp_path)


def test_an_existing_strip_is_refused_and_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = _demo_synth(tmp_path / "w")
    (work / demo.STRIP).write_bytes(b"mine")
    err = _refused(capsys, work, tmp_path)
    assert "the output file already exists" in err and demo.STRIP in err, err


def test_a_best_folder_with_files_is_refused_before_the_sweep(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = _demo_synth(tmp_path / "w")
    (work / "best").mkdir()
    (work / "best" / "model.safetensors").write_bytes(b"mine")
    err = _refused(capsys, work, tmp_path)
    assert "output already exists and is not empty" in err and "best" in err, err


def test_a_sqlite_file_that_is_no_mlflow_store_is_refused_before_any_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = _demo_synth(tmp_path / "w")
    _foreign_sqlite(work / "mlflow.db")
    err = _refused(capsys, work, tmp_path)  # nothing made: no dataset/, no ray/
    assert "this SQLite database is not an MLflow store (its tables: notes)" in err, err
    assert "remove mlflow.db from" in err, err


def test_a_damaged_dataset_is_refused_before_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = _demo_synth(tmp_path / "w")
    (work / "dataset").mkdir()
    (work / "dataset" / "dataset.json").write_text("{")
    assert "remove dataset from" in _refused(capsys, work, tmp_path)


@pytest.mark.parametrize(
    ("where", "match"),
    [
        ("/proc/varnext-demo", "cannot write in /proc"),
        ("{tmp}/a?b", "takes no ?options"),  # the folder's path is part of the SQLite URI
    ],
)
def test_a_folder_that_cannot_be_made_is_refused_before_ray(
    where: str, match: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _refused(capsys, where.format(tmp=tmp_path), tmp_path)
    assert match in err, err
    assert not Path("/proc/varnext-demo").exists()


def test_a_demo_that_already_ran_is_still_named_as_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = _demo_synth(tmp_path / "w")
    (work / "ray").mkdir()
    assert "a demo that was stopped before it ended" in _run(capsys, work, tmp_path)
    (work / "best").mkdir()
    assert "a demo already ran in this work directory" in _run(capsys, work, tmp_path)


def test_new_empty_and_a_stopped_demos_folders_pass_every_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dataset_dir: Path
) -> None:
    (tmp_path / "empty").mkdir()
    stopped = _demo_synth(tmp_path / "stopped")  # stopped in its ingest: data kept, reused
    shutil.copytree(dataset_dir, stopped / "dataset")
    (stopped / ".dataset.partial-1-abcdef").mkdir()  # left by a kill -9
    (stopped / "best").mkdir()  # empty: a new output may go there
    for work in (tmp_path / "new" / "demo", tmp_path / "empty", stopped):
        assert RAY in _run(capsys, work, tmp_path)  # checked up to Ray, nothing written
