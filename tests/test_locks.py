"""Two varnext processes at once: the same run, the same sweep, the same new SQLite store.

The other processes here are real ones: a holder of a run's lock is a Python process that took
it (and is killed with SIGKILL), and a store is created by processes released at one moment.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from varnext_ray import run_lock
from varnext_ray.arch import load_arch
from varnext_ray.cluster import Resources
from varnext_ray.errors import UserError
from varnext_ray.search_space import load_space
from varnext_ray.settings import TrainSettings
from varnext_ray.sweep import SWEEP_FILE, SweepOptions, run_sweep, sweep_path
from varnext_ray.tracking_sqlite import _mlflow_revisions
from varnext_ray.train import run_dir, train

ENV = os.environ | {"PYTHONPATH": str(REPO)}
TRAIN = TrainSettings(epochs=1, batch_size=8, val_triplets=24)

# Holds the folder argv[1] until its stdin closes (or it is killed).
HOLDER = """
import sys
from varnext_ray import run_lock
with run_lock.held(sys.argv[1], what="held", fix="-"):
    print("held", flush=True)
    sys.stdin.read()
"""


@contextlib.contextmanager
def holding(folder: Path) -> Iterator[subprocess.Popen]:
    """Another process holding ``folder`` while the block runs."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        assert proc.stdout.readline() == "held\n", "the holder did not take the lock"
        yield proc
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


def in_use(what: str, pid: int, folder: Path, fix: str) -> str:
    """The whole refusal line, as a pattern."""
    line = f"{what} is in use by another varnext process (pid {pid}) ({folder}): {fix}"
    return f"^{re.escape(line)}$"


def test_a_held_folder_is_refused_naming_its_holder_until_kill_9(tmp_path: Path) -> None:
    """A lock of a killed process is never stale: the kernel lets go of it."""
    folder = tmp_path / "runs" / "r3"
    with holding(folder) as holder:
        refused = pytest.raises(UserError, match=in_use("x", holder.pid, folder, "wait"))
        with refused, run_lock.held(folder, what="x", fix="wait"):
            pytest.fail("a held folder was taken")
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        assert (folder / run_lock.LOCK_FILE).is_file()  # left behind, held by nobody
        with run_lock.held(folder, what="x", fix="wait"):
            assert (folder / run_lock.LOCK_FILE).read_text() == f"{os.getpid()}\n"
    assert folder.is_dir() and not any(folder.iterdir())  # the holder made it: kept, emptied


def test_a_released_lock_leaves_only_what_the_run_wrote(tmp_path: Path) -> None:
    kept, gone = tmp_path / "a" / "kept", tmp_path / "b" / "gone"
    with run_lock.held(kept, what="x", fix="-"), run_lock.held(gone, what="x", fix="-"):
        (kept / "epoch_0001").mkdir()
        assert run_lock.occupied(kept) and not run_lock.occupied(gone)  # a lock file is nothing
    assert [p.name for p in kept.iterdir()] == ["epoch_0001"]
    assert not (tmp_path / "b").exists()  # made for the lock, and nothing written in it


def test_a_run_another_process_trains_is_refused_before_anything_is_written(
    dataset_dir: Path, tmp_path: Path
) -> None:
    """Two ``varnext train`` of one --storage and --name both trained from scratch into one
    folder, logging every epoch twice to one MLflow run."""
    storage, database = tmp_path / "ray", tmp_path / "mlflow.db"
    folder = Path(run_dir(storage, "r3"))
    with holding(folder) as holder:
        fix = "wait for it to end, or pass another --name"
        with pytest.raises(UserError, match=in_use("the run named 'r3'", holder.pid, folder, fix)):
            train(
                arch=load_arch(REPO / "configs" / "smoke_64x36.json"),
                data=dataset_dir,
                settings=TRAIN,
                resources=Resources(workers=1),
                experiment="locks",
                tracking_uri=f"sqlite:///{database}",
                storage=storage,
                name="r3",
            )
        assert [p.name for p in folder.iterdir()] == [run_lock.LOCK_FILE]  # the holder's
    assert not database.exists()  # no MLflow run was made


def _sweep(data: Path, tmp_path: Path) -> None:
    space, base = load_space(REPO / "search_spaces" / "smoke.json")
    run_sweep(
        space=space,
        base=base,
        data=data,
        options=SweepOptions(samples=1, workers_per_trial=1, train=TRAIN),
        experiment="e",
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        storage=tmp_path / "ray",
    )


def test_a_sweep_another_process_runs_is_refused_before_anything_is_written(
    dataset_dir: Path, tmp_path: Path
) -> None:
    """Two identical sweeps started at once both passed the check that the sweep is new (two
    parent runs, two Tune states in one folder): the folder is held before that check."""
    folder = Path(sweep_path(tmp_path / "ray", "e", "smoke"))
    with holding(folder) as holder:
        fix = "wait for it to end, or pass another --experiment or --storage"
        with pytest.raises(
            UserError, match=in_use("the sweep 'sweep-e-smoke'", holder.pid, folder, fix)
        ):
            _sweep(dataset_dir, tmp_path)
        assert [p.name for p in folder.iterdir()] == [run_lock.LOCK_FILE]
    assert not (tmp_path / "mlflow.db").exists()


def test_an_existing_sweep_is_refused_and_kept_as_it_was(dataset_dir: Path, tmp_path: Path) -> None:
    folder = Path(sweep_path(tmp_path / "ray", "e", "smoke"))
    folder.mkdir(parents=True)
    (folder / SWEEP_FILE).write_text('{"run_id": "abc"}\n')
    with pytest.raises(UserError, match=r"^a sweep of this experiment and space already exists \("):
        _sweep(dataset_dir, tmp_path)
    assert [p.name for p in folder.iterdir()] == [SWEEP_FILE]
    assert (folder / SWEEP_FILE).read_text() == '{"run_id": "abc"}\n'


# Opens the store argv[1] as a command does, once a line arrives on stdin.
OPENER = """
import sys
import mlflow
from varnext_ray import tracking
print("ready", flush=True)
sys.stdin.readline()
tracking.check_reachable(sys.argv[1])
print(tracking.experiment_id(sys.argv[1], "e"))
"""


def test_processes_creating_one_new_sqlite_store_at_once_all_succeed(tmp_path: Path) -> None:
    """MLflow's schema migrations of several processes on one new store broke each other's
    ("duplicate column name: step", alembic's "expected to match one row") and left the store
    at an old schema that every command then refused."""
    database = tmp_path / "mlflow.db"
    uri = f"sqlite:///{database}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER, uri],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        for _ in range(3)
    ]
    for proc in procs:  # all imported: released together, the race is on the store alone
        assert proc.stdout.readline() == "ready\n"
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    outcomes = [proc.communicate(timeout=240) for proc in procs]
    failures = [
        err[-600:] for proc, (_, err) in zip(procs, outcomes, strict=True) if proc.returncode
    ]
    assert failures == []
    assert len({out for out, _ in outcomes}) == 1  # one experiment, the same id for all
    with contextlib.closing(sqlite3.connect(database)) as conn:
        versions = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    assert versions == [(_mlflow_revisions()[0],)]
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith("mlflow.db")] == []
