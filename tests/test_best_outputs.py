"""varnext best: an --out inside the artifact store, and a checkpoint that is another run's."""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from pathlib import Path

import pytest

from tests.test_best import _store_with
from varnext_ray import tracking
from varnext_ray.cli import main

METRIC = "extrap_psnr"


def _with_best(value: float) -> object:
    """An edit of a checkpoint folder: its meta.json records ``value`` as its best, as
    training does (``extra.best`` of ``extra.objective``)."""

    def edit(checkpoint: Path) -> None:
        meta = json.loads((checkpoint / "meta.json").read_text())
        meta["extra"] |= {"best": value, "objective": METRIC}
        (checkpoint / "meta.json").write_text(json.dumps(meta))

    return edit


def _best(uri: str, experiment: str, out: Path, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    argv = ["best", "--experiment", experiment, "--tracking-uri", uri, "--out", str(out)]
    capsys.readouterr()  # MLflow's lines as it made the store
    code = main([*argv, "--metric", METRIC])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("where", ["checkpoint/dl", "new", "../../dl"])
def test_an_out_inside_the_artifact_store_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture, where: str
) -> None:
    """``best --out mlartifacts/demo/<run>/artifacts/checkpoint/dl`` wrote the download into
    the run's checkpoint artifact."""
    uri = _store_with(tmp_path, "inside", _with_best(10.0))
    (artifacts,) = (tmp_path / "artifacts").glob("*/artifacts")
    before = sorted((tmp_path / "artifacts").rglob("*"))
    out = artifacts / where
    code, err = _best(uri, "inside", out, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: --out lies inside the MLflow artifact store")
    assert sorted((tmp_path / "artifacts").rglob("*")) == before


def test_a_checkpoint_with_another_best_than_its_run_is_named_in_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """A run whose artifact URI was edited to another run's: best labelled that run's
    checkpoint with this run's id and value, without a word."""
    uri = _store_with(tmp_path, "swap", _with_best(10.0))
    code, err = _best(uri, "swap", tmp_path / "first", capsys)
    assert code == 0 and not [r for r in caplog.records if r.levelno >= logging.WARNING], err
    (only,) = tracking.client(uri).search_runs(
        [tracking.client(uri).get_experiment_by_name("swap").experiment_id]
    )
    other = tracking.start_run(uri, "swap", run_name="other", tags={"varnext.kind": "train"})
    tracking.log_metrics(uri, other, {f"best_{METRIC}": 12.0}, step=0)
    tracking.end_run(uri, other)
    with sqlite3.connect(uri[len("sqlite:///") :]) as db:
        db.execute(
            "update runs set artifact_uri = ? where run_uuid = ?", (only.info.artifact_uri, other)
        )
    code, _ = _best(uri, "swap", tmp_path / "second", capsys)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert code == 0 and warning.startswith(f"other ({other}) logged best_{METRIC} 12.0000 but")
    assert "its checkpoint's meta.json says 10.0000: the checkpoint may be another run's" in warning


def test_a_checkpoint_listing_a_run_json_is_refused_not_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A checkpoint whose meta.json lists its own ``run.json``: best wrote its record over it,
    and the download then failed its own sha256 check."""

    def add_run_json(checkpoint: Path) -> None:
        data = b'{"theirs": true}\n'
        (checkpoint / "run.json").write_bytes(data)
        meta = json.loads((checkpoint / "meta.json").read_text())
        meta["files"]["run.json"] = hashlib.sha256(data).hexdigest()
        (checkpoint / "meta.json").write_text(json.dumps(meta))

    uri = _store_with(tmp_path, "clash", add_run_json)
    before = sorted(tmp_path.rglob("*"))
    code, err = _best(uri, "clash", tmp_path / "best", capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: the checkpoint lists a file named run.json (meta.json)"), err
    assert "artifact checkpoint/): save the checkpoint again without" in err, err
    assert sorted(tmp_path.rglob("*")) == before
