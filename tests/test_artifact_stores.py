"""A run whose artifact store fails: best and report end in one line naming the run and its
artifact URI, write nothing, and MLflow's and boto's retries stay bounded.

Real SQLite stores whose runs' ``artifact_uri`` is edited to stores that fail here: an unknown
scheme, ``mlflow-artifacts:`` without a server, S3 without credentials or with an endpoint on
a closed port of 127.0.0.1, FTP and HDFS on a closed port, GCS without its client library, and
a relative path (which MLflow would use under the current folder).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import smoke_checkpoint
from tests.ports import free_port
from varnext_ray import tracking
from varnext_ray.artifacts import ARTIFACT_RETRIES, ArtifactStoreError, RunArtifacts
from varnext_ray.cli import main
from varnext_ray.media import save_png

EXP = "stores"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sweep run and one trial run holding a checkpoint and a strip; returns its folder."""
    root = tmp_path_factory.mktemp("artifact_stores")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracking.client(uri).create_experiment(EXP, artifact_location=str(root / "artifacts"))
    sweep = tracking.start_run(uri, EXP, run_name="sweep", tags={"varnext.kind": "sweep"})
    trial = tracking.start_run(
        uri, EXP, run_name="trial", tags={"varnext.kind": "trial"}, parent_run_id=sweep
    )
    tracking.log_metrics(uri, trial, {"best_extrap_psnr_motion": 10.0}, step=1)
    tracking.log_artifact(uri, trial, smoke_checkpoint(root, "ckpt", 0), "checkpoint")
    strip = save_png(np.zeros((36, 64, 3), np.uint8), root / "strip_epoch_001.png")
    tracking.log_artifact(uri, trial, strip, "strips")
    tracking.end_run(uri, trial)
    tracking.end_run(uri, sweep)
    return root


def _copy_with(store: Path, tmp: Path, artifact_uri: str, kind: str | None = None) -> str:
    """A copy of the store in ``tmp`` whose runs (of ``kind``, else all) keep their artifacts
    at ``artifact_uri``; its tracking URI."""
    db = tmp / "mlflow.db"
    shutil.copy(store / "mlflow.db", db)
    with sqlite3.connect(db) as conn:
        ids = [r[0] for r in conn.execute("SELECT run_uuid FROM runs")]
        if kind is not None:
            query = "SELECT run_uuid FROM tags WHERE key = 'varnext.kind' AND value = ?"
            ids = [r[0] for r in conn.execute(query, (kind,))]
        conn.executemany("UPDATE runs SET artifact_uri = ? WHERE run_uuid = ?", [
            (artifact_uri, run_id) for run_id in ids
        ])  # fmt: skip
    return f"sqlite:///{db}"


@pytest.fixture
def no_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AWS credentials from anywhere, and no request to an instance metadata service."""
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)


def _s3_endpoint(monkeypatch: pytest.MonkeyPatch, port: int) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", f"http://127.0.0.1:{port}")


HAS_GCS = importlib.util.find_spec("google.cloud.storage") is not None
# id: (artifact URI, set-up of the environment, what the line names)
STORES: dict[str, tuple[str, Any, str]] = {
    "unknown-scheme": ("zzz://x/y", None, "MlflowException"),
    "mlflow-artifacts-without-a-server": ("mlflow-artifacts:/x/y", None, "MlflowException"),
    "s3-without-credentials": ("s3://bucket/x", None, "NoCredentialsError"),
    "s3-endpoint-closed": ("s3://bucket/x", _s3_endpoint, "EndpointConnectionError"),
    "ftp-closed": ("ftp://127.0.0.1:{port}/x", None, "ConnectionRefusedError"),
    "hdfs-closed": ("hdfs://127.0.0.1:{port}/x", None, "Error"),  # no JVM, or refused
    "http-closed": ("http://127.0.0.1:{port}/api/2.0/mlflow-artifacts/artifacts/x", None, "API"),
    "relative-path": ("relative/path", None, "the run's artifact location is a relative path"),
    "empty": ("", None, "the run's artifact location is a relative path"),
}
if not HAS_GCS:
    STORES["gcs-without-its-library"] = ("gs://b/x", None, "ImportError")


def _snapshot(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*"))


@pytest.mark.parametrize("command", ["best", "report"])
@pytest.mark.parametrize("case", list(STORES), ids=list(STORES))
def test_a_run_whose_artifact_store_fails_is_one_line_and_nothing_is_written(
    store: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    no_aws: None,
    command: str,
    case: str,
) -> None:
    artifact_uri, setup, named = STORES[case]
    port = free_port()
    artifact_uri = artifact_uri.format(port=port)
    if setup is not None:
        setup(monkeypatch, port)
    uri = _copy_with(store, tmp_path, artifact_uri)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # a relative artifact location would be written here
    out = ["--out", "b"] if command == "best" else ["--out", "r.html"]
    code = main([command, "--experiment", EXP, "--tracking-uri", uri, *out])
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert named in lines[0] and f"artifacts at {artifact_uri or '(none)'})" in lines[0]
    assert _snapshot(work) == []


def test_a_trial_whose_store_fails_is_shown_without_its_images(
    store: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The sweep's own store answers: the page is written, the trial's strip named in a
    warning (ftplib's ConnectionRefusedError was ``unexpected``, exit 1)."""
    uri = _copy_with(store, tmp_path, f"ftp://127.0.0.1:{free_port()}/x", kind="trial")
    out = tmp_path / "r.html"
    code = main(["report", "--experiment", EXP, "--tracking-uri", uri, "--out", str(out)])
    assert code == 0 and out.is_file(), capsys.readouterr().err
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2 and all("ConnectionRefusedError" in w for w in warnings), warnings


class _Client:
    """An ``MlflowClient`` stand-in that records the environment each call saw."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str | None]] = []

    def list_artifacts(self, run_id: str, path: str | None) -> list:
        self.seen.append({k: os.environ.get(k) for k in ARTIFACT_RETRIES})
        return []


def test_mlflow_and_boto_retries_are_bounded_during_a_call_unless_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in ARTIFACT_RETRIES:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "7")  # the user's own choice is kept
    client = _Client()
    RunArtifacts(client, "r1", "s3://bucket/x").list("checkpoint")
    assert client.seen == [ARTIFACT_RETRIES | {"AWS_MAX_ATTEMPTS": "7"}]
    assert os.environ["AWS_MAX_ATTEMPTS"] == "7"
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # removed after the call


@pytest.mark.timeout(120)  # MLflow's own default: 7 retries over about 4 minutes
def test_an_http_artifact_store_on_a_closed_port_is_retried_once(
    store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    artifact_uri = f"http://127.0.0.1:{free_port()}/api/2.0/mlflow-artifacts/artifacts/x"
    client = tracking.client(_copy_with(store, tmp_path, artifact_uri))
    (run,) = client.search_runs(
        [client.get_experiment_by_name(EXP).experiment_id], "tags.`varnext.kind` = 'trial'"
    )
    artifacts = RunArtifacts.of(client, run)
    with pytest.raises(ArtifactStoreError, match="artifact store failed while listing"):
        artifacts.list("checkpoint")
    retries = [r for r in caplog.records if r.getMessage().startswith("Retrying")]
    assert len(retries) == int(ARTIFACT_RETRIES["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
