"""The MLflow tracking module against a real SQLite store: URIs, runs, records, searches."""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from varnext_ray import run_records, tracking, tracking_errors
from varnext_ray.errors import UserError


@pytest.fixture
def uri(tmp_path: Path) -> str:
    return tracking.resolve_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_uri_is_absolute_from_flag_env_or_working_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_tracking_uri() == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert tracking.resolve_tracking_uri("sqlite:///sub/x.db") == (
        f"sqlite:///{tmp_path.resolve() / 'sub' / 'x.db'}"
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.resolve_tracking_uri() == "http://127.0.0.1:5000"
    assert tracking.resolve_tracking_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"


def test_unreachable_server_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"MLflow tracking server unreachable.*mlflow server"):
        tracking.check_reachable("http://127.0.0.1:1", timeout_s=1.0)


def test_missing_sqlite_store_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no MLflow database at this path"):
        tracking.open_store(f"sqlite:///{tmp_path / 'absent.db'}")


def test_flatten_names_nested_keys_with_dots() -> None:
    flat = tracking.flatten({"arch": {"conv": [{"k": 3}, {"k": 5}], "linear": []}, "lr": 0.1})
    assert flat == {"arch.conv.0.k": 3, "arch.conv.1.k": 5, "arch.linear": "[]", "lr": 0.1}


def test_run_lifecycle_logs_finite_metrics_and_the_failure_reason(uri: str) -> None:
    parent = tracking.start_run(uri, "exp", run_name="parent", tags={"varnext.kind": "sweep"})
    run_id = tracking.start_run(
        uri, "exp", run_name="child", params={"a": 1, "long": "x" * 7000}, parent_run_id=parent
    )
    tracking.log_metrics(uri, run_id, {"ok": 1.5, "nan": math.nan, "flag": True}, step=3)
    tracking.end_run(uri, run_id, "FAILED", "boom")
    run = tracking.client(uri).get_run(run_id)
    assert run.data.params["a"] == "1" and len(run.data.params["long"]) == 6000
    assert run.data.metrics == {"ok": 1.5}  # NaN and booleans are not metrics
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert (run.info.status, run.data.tags["failure_reason"]) == ("FAILED", "boom")


def test_the_same_directory_continues_the_same_run(uri: str, tmp_path: Path) -> None:
    run_dir = tmp_path / "ray" / "train-1"
    first = tracking.run_for_directory(uri, "exp", run_dir, "train-1", {"p": 1})
    tracking.end_run(uri, first, "KILLED")
    again = tracking.run_for_directory(uri, "exp", run_dir, "train-1", {"p": 1})
    assert again == first and run_records.read_record(run_dir) == first
    assert tracking.client(uri).get_run(first).info.status == "RUNNING"
    other = tmp_path / "elsewhere.db"
    moved = tracking.run_for_directory(f"sqlite:///{other}", "exp", run_dir, "train-1", {})
    assert moved != first  # the recorded run is not in this store: a new run


def test_search_all_runs_reads_every_page_in_order(uri: str) -> None:
    for i in range(5):
        run_id = tracking.start_run(uri, "many", run_name=f"r{i}")
        tracking.log_metrics(uri, run_id, {"score": float(i)}, step=0)
        tracking.end_run(uri, run_id, "FAILED" if i == 2 else "FINISHED")
    store = tracking.client(uri)
    exp = store.get_experiment_by_name("many").experiment_id
    runs = tracking.search_all_runs(
        store,
        exp,
        filter_string="attributes.status != 'FAILED'",
        order_by="metrics.score DESC",
        page_size=2,  # three pages
    )
    assert [r.info.run_name for r in runs] == ["r4", "r3", "r1", "r0"]
    assert len(list(tracking.search_all_runs(store, exp, page_size=1))) == 5


@pytest.mark.parametrize(
    ("make_uri", "message"),
    [
        (lambda d: "foo://bar", "unsupported MLflow tracking URI: scheme 'foo'"),
        (lambda d: f"file://{d}/mlruns", "unsupported MLflow tracking URI: scheme 'file'"),
        (lambda d: str(d / "mlruns"), "no scheme"),
        (lambda d: "sqlite://", "absolute path"),
        (lambda d: f"sqlite:///{d}", "not a regular file"),
        (lambda d: f"sqlite:///{d}/missing/dir/mlflow.db", "folder of the MLflow database"),
        (lambda d: f"sqlite:///{d}/notes.txt", "not a SQLite database"),
        (lambda d: "http://127.0.0.1:notaport", "bad port"),
        (lambda d: "http:///x", "no host"),
    ],
)
def test_a_tracking_uri_mlflow_cannot_use_is_refused_before_anything_is_written(
    tmp_path: Path, make_uri: Any, message: str
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes, not a database\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(UserError, match=message):
        tracking.check_reachable(tracking.resolve_tracking_uri(make_uri(tmp_path)))
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert notes.read_text() == "my notes, not a database\n"


def test_a_new_or_existing_sqlite_store_is_accepted(uri: str) -> None:
    tracking.check_reachable(uri)  # a new file in an existing folder
    tracking.experiment_id(uri, "e")  # creates the database
    tracking.check_reachable(uri)  # an existing SQLite file


@pytest.mark.parametrize(
    "text", ["not json", '{"run": 1}', '{"run_id": 5}', '{"run_id": "../x"}', "[" * 100_000]
)
def test_a_damaged_run_record_is_a_user_error(tmp_path: Path, text: str) -> None:
    (tmp_path / run_records.RUN_FILE).write_text(text)
    with pytest.raises(UserError, match="the run record is damaged"):
        run_records.read_record(tmp_path)
    run_records.write_record(tmp_path, {"run_id": "0123abcd", "tracking_uri": "sqlite:////x.db"})
    assert run_records.read_record(tmp_path) == "0123abcd"


def test_a_sqlite_stores_artifacts_live_beside_its_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not in ``./mlruns`` of whichever folder the first command ran in (MLflow's default),
    where two stores' experiment 1 would share one folder."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    runs = {}
    for store in ("a", "b"):
        uri = f"sqlite:///{tmp_path / store / 'mlflow.db'}"
        (tmp_path / store).mkdir()
        runs[store] = tracking.start_run(uri, "sweep-1", run_name="r")
        note = tmp_path / f"{store}.txt"
        note.write_text(store)
        tracking.log_artifact(uri, runs[store], note, "notes")
        found = tmp_path / store / tracking.ARTIFACTS_DIR / "sweep-1" / runs[store]
        assert (found / "artifacts" / "notes" / f"{store}.txt").read_text() == store
        strange = tracking.experiment_id(uri, "a/b ../c")
        location = tracking.client(uri).get_experiment(strange).artifact_location
        assert Path(location).parent == tmp_path / store / tracking.ARTIFACTS_DIR
    assert list(elsewhere.iterdir()) == []


# ---- a deleted experiment (hostile pass 5) ----------------------------------------------------


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` with its size and mtime."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
    }


@pytest.fixture
def deleted(uri: str) -> tuple[str, str]:
    """A store whose experiment ``gone`` (one run) was deleted: (uri, its id)."""
    tracking.start_run(uri, "gone", run_name="r", tags={"varnext.kind": "train"})
    client = tracking.client(uri)
    experiment_id = client.get_experiment_by_name("gone").experiment_id
    client.delete_experiment(experiment_id)
    return uri, experiment_id


def test_a_deleted_experiment_is_refused_saying_how_to_restore_it(
    deleted: tuple[str, str], tmp_path: Path
) -> None:
    """MLflow still finds a deleted experiment by name: runs were refused in it after Ray
    started (exit 1), and best and report searched it as if it were empty."""
    uri, experiment_id = deleted
    before = _snapshot(tmp_path)
    restore = rf"mlflow experiments restore --experiment-id {experiment_id}\b"
    with pytest.raises(UserError, match=rf"experiment 'gone' was deleted .*{restore}"):
        tracking.check_experiment(uri, "gone")  # train and sweep, before Ray
    assert _snapshot(tmp_path) == before
    with pytest.raises(UserError, match="was deleted"):
        tracking.existing_experiment(tracking.client(uri), "gone", uri)  # best, report
    with pytest.raises(UserError, match="was deleted"):
        tracking.experiment_id(uri, "gone")  # a run's start, if deleted after the check
    tracking.check_experiment(uri, "another")  # a new name is fine


@pytest.mark.parametrize("made", ["missing", "empty"])
def test_checking_the_experiment_of_a_store_not_made_yet_creates_nothing(
    tmp_path: Path, made: str
) -> None:
    if made == "empty":
        (tmp_path / "mlflow.db").touch()
    before = _snapshot(tmp_path)
    tracking.check_experiment(f"sqlite:///{tmp_path / 'mlflow.db'}", "smoke")
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("command", ["best", "report"])
def test_best_and_report_on_a_deleted_experiment_say_it_was_deleted(
    deleted: tuple[str, str], tmp_path: Path, command: str, capsys: pytest.CaptureFixture
) -> None:
    from varnext_ray.cli import main

    uri, _ = deleted
    out = tmp_path / ("o" if command == "best" else "o.html")
    before = _snapshot(tmp_path)
    assert main([command, "--experiment", "gone", "--tracking-uri", uri, "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "experiment 'gone' was deleted" in lines[0], lines[0]
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_train_and_sweep_into_a_deleted_experiment_are_refused_before_ray(
    deleted: tuple[str, str],
    dataset_dir: Path,
    tmp_path: Path,
    command: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    import ray

    from tests.conftest import REPO
    from varnext_ray.cli import main

    def no_ray(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ray, "init", no_ray)
    uri, _ = deleted
    if command == "train":
        argv = ["train", "--config", str(REPO / "configs" / "smoke_64x36.json")]
    else:
        argv = ["sweep", "--space", str(REPO / "search_spaces" / "smoke.json")]
    argv += ["--data", str(dataset_dir), "--experiment", "gone", "--tracking-uri", uri]
    argv += ["--storage", str(tmp_path / "storage"), "--address", "127.0.0.1:1"]
    before = _snapshot(tmp_path)
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "experiment 'gone' was deleted" in lines[0], lines
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("command", ["best", "report", "predict"])
def test_a_store_path_that_cannot_be_probed_is_one_line(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A file name over 255 bytes: Python 3.11's ``Path.is_file`` raises OSError for it
    (``unexpected OSError``, exit 1)."""
    from varnext_ray.cli import main

    uri = f"sqlite:///{tmp_path / ('a' * 300 + '.db')}"
    with pytest.raises(UserError, match=r"cannot read the MLflow database \(File name too long"):
        tracking.open_store(uri)
    argv = {
        "best": ["best", "--experiment", "x", "--out", str(tmp_path / "b")],
        "report": ["report", "--experiment", "x", "--out", str(tmp_path / "r.html")],
        "predict": ["predict", "--model", "models:/x@champion", "--out", str(tmp_path / "p.png"),
                    str(tmp_path / "a.png"), str(tmp_path / "b.png")],
    }[command]  # fmt: skip
    code = main([*argv, "--tracking-uri", uri])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot read the MLflow database" in err[0], err
    assert list(tmp_path.iterdir()) == []


def test_a_failed_report_removes_the_folders_it_made(tmp_path: Path) -> None:
    """``--out sub/<300 bytes>.html``: the folder ``sub`` was made and left behind."""
    from varnext_ray.report import write_report

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.client(uri).create_experiment("s", artifact_location=str(tmp_path / "artifacts"))
    run = tracking.start_run(uri, "s", run_name="sweep", tags={"varnext.kind": "sweep"})
    tracking.end_run(uri, run)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(UserError, match="File name too long"):
        write_report(uri, "s", out=tmp_path / "sub" / "deeper" / ("a" * 300 + ".html"))
    assert not (tmp_path / "sub").exists()
    assert [p for p in sorted(tmp_path.rglob("*")) if "artifacts" not in p.parts] == [
        p for p in before if "artifacts" not in p.parts
    ]


# ---- text that is not UTF-8 in a SQLite store (hostile pass 12) -------------------------------

UNDECODABLE = {
    "run name": "UPDATE runs SET name = CAST(X'74726961ff' AS TEXT) WHERE run_uuid = ?",
    "param value": "UPDATE params SET value = CAST(X'30ff' AS TEXT) WHERE run_uuid = ?",
}


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def mlflow_db_log() -> Iterator[list[logging.LogRecord]]:
    """What MLflow's database module logs (its own handler printed it, tracebacks and all)."""
    logger, handler = logging.getLogger("mlflow.store.db.utils"), _Records()
    logger.addHandler(handler)
    yield handler.records
    logger.removeHandler(handler)


@pytest.mark.parametrize("edit", sorted(UNDECODABLE))
@pytest.mark.parametrize("command", ["best", "report"])
def test_text_that_is_not_utf8_in_the_store_is_one_line_naming_the_run(
    uri: str,
    tmp_path: Path,
    command: str,
    edit: str,
    capsys: pytest.CaptureFixture,
    mlflow_db_log: list[logging.LogRecord],
) -> None:
    """A run name or param edited into bytes that are not UTF-8: MLflow logged two tracebacks,
    then best said "another process may hold it" and report "check that the server is up"."""
    from varnext_ray.cli import main

    run = tracking.start_run(
        uri, "e", run_name="trial", params={"lr": 0.1}, tags={"varnext.kind": "train"}
    )
    tracking.log_metrics(uri, run, {"best_extrap_psnr_motion": 1.0}, step=0)
    tracking.end_run(uri, run)
    with sqlite3.connect(uri[len("sqlite:///") :]) as db:
        db.execute(UNDECODABLE[edit], (run,))
    out = tmp_path / ("o" if command == "best" else "o.html")
    before = _snapshot(tmp_path)
    capsys.readouterr()
    assert main([command, "--experiment", "e", "--tracking-uri", uri, "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    table = "runs.name" if edit == "run name" else "params.value"
    said = f"error: the MLflow store holds text that is not UTF-8 ({table} of run {run}: "
    assert lines[0].startswith(said) and f"({uri}): rewrite that value as UTF-8" in lines[0]
    assert "another process" not in lines[0] and "server" not in lines[0], lines[0]
    assert not [r for r in mlflow_db_log if r.exc_info], mlflow_db_log
    assert _snapshot(tmp_path) == before


def test_mlflow_logs_a_database_error_varnext_does_not_explain(
    uri: str, mlflow_db_log: list[logging.LogRecord]
) -> None:
    """Only errors varnext turns into one line are kept from MLflow's log; a bug still shows."""
    import sqlite3 as driver

    from sqlalchemy.exc import OperationalError

    tracking.client(uri)  # installs the filter
    logger = logging.getLogger("mlflow.store.db.utils")
    undecodable = driver.OperationalError("Could not decode to UTF-8 column 'name' with text 'x'")
    for orig in (undecodable, driver.OperationalError("database is locked"), KeyError("bug")):
        try:
            raise OperationalError("SELECT 1", {}, orig)
        except OperationalError:
            logger.exception("SQLAlchemy database error. The following exception is caught.")
    assert [r.exc_info[1].orig for r in mlflow_db_log if r.exc_info] == [orig]
    assert tracking_errors.undecodable_text(OperationalError("q", {}, undecodable)) == ("name", "x")
    assert tracking_errors.database_failure(OperationalError("q", {}, undecodable)) is None
