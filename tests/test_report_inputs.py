"""varnext report over hostile stores: oversized and decompression-bomb images, an --out
inside the artifact store, a run without a status, a full temporary disk.

Each test builds its own small MLflow SQLite store (a sweep run and two trials, each with a
strip PNG and a rollout GIF), then edits it as a hand (or a broken disk) could.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import nearly_full_tmpfs
from varnext_ray import tracking
from varnext_ray.artifacts import RunArtifacts
from varnext_ray.cli import main
from varnext_ray.media import save_png

EXP = "report-inputs"
OBJECTIVE = "best_extrap_psnr_motion"


def _trial(uri: str, parent: str, tmp: Path, name: str, value: float) -> str:
    run = tracking.start_run(
        uri, EXP, run_name=name, tags={"varnext.kind": "trial"}, parent_run_id=parent
    )
    tracking.log_metrics(uri, run, {OBJECTIVE: value}, step=1)
    (tmp / name).mkdir()
    strip = save_png(np.full((18, 64, 3), 200, np.uint8), tmp / name / "strip_epoch_001.png")
    tracking.log_artifact(uri, run, strip, "strips")
    gif = tmp / name / "rollout_epoch_001.gif"
    Image.new("RGB", (32, 18), (0, 80, 255)).save(gif)
    tracking.log_artifact(uri, run, gif, "rollouts")
    tracking.end_run(uri, run, "FINISHED")
    return run


@pytest.fixture
def store(tmp_path: Path) -> dict[str, Any]:
    """A sweep with trials ``a`` (the best) and ``b``; ``art`` is the artifact folder."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    art = tmp_path / "artifacts"
    tracking.client(uri).create_experiment(EXP, artifact_location=str(art))
    parent = tracking.start_run(uri, EXP, run_name="sweep", tags={"varnext.kind": "sweep"})
    runs = {n: _trial(uri, parent, tmp_path, n, v) for n, v in (("a", 21.0), ("b", 20.0))}
    tracking.end_run(uri, parent, "FINISHED")
    return {"uri": uri, "art": art, "parent": parent, "runs": runs, "tmp": tmp_path}


def _file(store: dict, run: str, path: str) -> Path:
    """A trial's artifact file in the store."""
    (found,) = store["art"].glob(f"{store['runs'][run]}/artifacts/{path}")
    return found


def _tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and its content's hash (sparse files by size)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.stat().st_size < 2**20
        else str(p.stat().st_size)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _report(store: dict, out: Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    argv = ["report", "--experiment", EXP, "--tracking-uri", store["uri"], "--out", str(out)]
    code = main(argv)
    return code, capsys.readouterr().err


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _images(page: Path) -> int:
    return page.read_text().count('<img src="data:image/')


def test_an_oversized_strip_is_left_out_before_it_is_downloaded(
    store: dict,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 15 GiB strip was copied in full into the temporary folder (30 s, 13 GB of /tmp)
    before its size was checked: the store's listing gives the size first."""
    os.truncate(_file(store, "a", "strips/strip_epoch_001.png"), 15 * 2**30)  # sparse
    fetched: list[str] = []
    download = RunArtifacts.download

    def only_small(self: RunArtifacts, path: str, dst: str | Path) -> Path:
        fetched.append(path)
        if self.run_id == store["runs"]["a"] and path.startswith("strips/"):
            raise AssertionError(f"{path} (15 GiB) was downloaded")  # rather than fill /tmp
        return download(self, path, dst)

    monkeypatch.setattr(RunArtifacts, "download", only_small)
    code, err = _report(store, tmp_path / "r.html", capsys)
    assert code == 0, err
    (warning,) = _warnings(caplog)
    assert warning == (
        f"strips/strip_epoch_001.png of run {store['runs']['a']} is over 20971520 bytes: "
        "not embedded"
    )
    assert _images(tmp_path / "r.html") == 3 and len(fetched) == 3  # the other three images


@pytest.mark.parametrize(
    ("folder", "fmt", "side"),
    [("strips", "PNG", 9000), ("strips", "PNG", 20000), ("rollouts", "GIF", 9000)],
)
def test_an_image_over_the_pixel_limit_is_left_out(
    store: dict,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
    folder: str,
    fmt: str,
    side: int,
) -> None:
    """A 30000x30000 PNG of 2.6 MB was embedded: a browser decodes 900 Mpx of it. 9000x9000 is
    over ingest's limit (8192x8192) and under Pillow's; 20000x20000 over both."""
    name = "strip_epoch_001.png" if fmt == "PNG" else "rollout_epoch_001.gif"
    stored = _file(store, "a", f"{folder}/{name}")
    Image.new("1" if fmt == "PNG" else "P", (side, side)).save(stored, fmt)
    code, err = _report(store, tmp_path / "r.html", capsys)
    assert code == 0, err
    (warning,) = _warnings(caplog)
    assert warning.startswith(f"{folder}/{name} of run {store['runs']['a']} is ")
    assert warning.endswith("over the limit of 67,108,864 pixels: not embedded")
    assert _images(tmp_path / "r.html") == 3


def _refused(store: dict, out: Path, capsys: pytest.CaptureFixture) -> str:
    before, db = _tree(store["art"]), Path(store["uri"][len("sqlite:///") :]).read_bytes()
    code, err = _report(store, out, capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert _tree(store["art"]) == before, "the store's artifacts changed"
    assert Path(store["uri"][len("sqlite:///") :]).read_bytes() == db
    return err


@pytest.mark.parametrize(
    "where",
    [
        "{parent}/artifacts/report/report.html",  # the page's own artifact path
        "{a}/artifacts/strips/page.html",
        "page.html",  # the experiment's artifact location
    ],
)
def test_an_out_inside_the_artifact_store_is_refused_before_anything_is_logged(
    store: dict, capsys: pytest.CaptureFixture, where: str
) -> None:
    """``--out`` naming the page's artifact path ended "output already exists", after the page
    had been logged into the sweep run there."""
    out = store["art"] / where.format(parent=store["parent"], a=store["runs"]["a"])
    err = _refused(store, out, capsys)
    assert "--out lies inside the MLflow artifact store" in err and str(out) in err
    assert not out.exists()


def test_a_run_without_a_status_is_left_out_as_best_leaves_it_out(
    store: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A NULL status made MLflow's search fail: "the tracking store did not answer (status
    cannot be None)", while best skips such a run."""
    with sqlite3.connect(store["uri"][len("sqlite:///") :]) as db:
        db.execute("update runs set status = NULL where run_uuid = ?", (store["runs"]["b"],))
    code, err = _report(store, tmp_path / "r.html", capsys)
    assert code == 0, err
    html = (tmp_path / "r.html").read_text()
    assert f'data-run-id="{store["runs"]["a"]}"' in html
    assert f'data-run-id="{store["runs"]["b"]}"' not in html


@pytest.fixture
def full_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The temporary folder on a nearly full tmpfs."""
    with nearly_full_tmpfs(tmp_path / "tiny") as mount:
        monkeypatch.setattr(tempfile, "tempdir", str(mount))
        yield mount


def _fill(mount: Path) -> None:
    """Leaves no byte free (the fixture's 8 KiB hold a strip of this store)."""
    with open(mount / "more", "wb", buffering=0) as file:
        try:
            while True:
                file.write(b"\0" * 4096)
        except OSError:
            pass


def test_a_full_temporary_disk_is_named_not_the_store(
    store: dict, full_tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A strip that did not fit in the temporary folder was "could not fetch ...: check the
    artifact store is reachable"."""
    from varnext_ray.report import add_images, gather

    report = gather(store["uri"], EXP)
    _fill(full_tmp)
    add_images(report)
    warnings = _warnings(caplog)
    assert warnings and all("(the disk is full: " in w for w in warnings), warnings
    assert not any("artifact store" in w for w in warnings)


def test_a_page_that_cannot_be_staged_for_the_store_is_one_line(
    store: dict, full_tmp: Path, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    """The page's copy logged to the sweep run is written to the temporary folder first: a
    full one ended in "unexpected OSError" (exit 1)."""
    _fill(full_tmp)
    err = _refused(store, tmp_path / "r.html", capsys)
    assert "cannot write the page's copy for the sweep run (No space left on device)" in err
    assert not (tmp_path / "r.html").exists()
