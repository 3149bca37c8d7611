"""Faults survived on a local loopback Ray: a killed Train worker, a trial whose loss turns NaN.

See docs/reliability.md for the whole table of what survives what and which test shows it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest

from tests.conftest import REPO
from varnext_ray.arch import load_arch
from varnext_ray.cluster import Resources
from varnext_ray.search_space import load_space
from varnext_ray.settings import TrainSettings
from varnext_ray.sweep import SweepOptions, run_sweep
from varnext_ray.train import train

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SMOKE = REPO / "configs" / "smoke_64x36.json"
SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of registered checkpoints


def _popen(argv: list[str], cwd: Path, env: dict[str, str]) -> Any:
    """The CLI in its own process with SIGINT at its default, as a terminal starts it: a
    runner started in the background (``cmd &`` without job control) ignores SIGINT, and its
    children inherit that, so Ctrl-C would never reach them."""
    import subprocess

    def default_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    return subprocess.Popen(
        argv, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint
    )


@contextlib.contextmanager
def _reaped(proc: Any) -> Iterator[Any]:
    """``proc`` killed with every process under it (its own Ray node) if the test fails, so a
    run that ignored its signal cannot go on loading the machine for the tests after it."""
    import psutil

    try:
        yield proc
    finally:
        if proc.poll() is None:
            family = psutil.Process(proc.pid).children(recursive=True)
            for one in [psutil.Process(proc.pid), *family]:
                with contextlib.suppress(psutil.Error):
                    one.kill()
            proc.wait()


def _wait(what: str, check: Any, deadline: float, alive: threading.Thread | None = None) -> Any:
    """Polls ``check()`` until it returns something truthy; fails at the deadline."""
    while True:
        value = check()
        if value:
            return value
        if alive is not None and not alive.is_alive():
            pytest.fail(f"training ended before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not there yet, or being written
        return None


def _registered_epoch(run_dir: Path) -> int:
    """The epoch of the latest checkpoint Ray Train has registered (0: none yet)."""
    snapshot = _read_json(run_dir / SNAPSHOT) or {}
    latest = snapshot.get("latest_checkpoint_result") or {}
    return int(latest.get("metrics", {}).get("epoch", 0))


def _train_workers(ray: Any, state: str | None = None) -> list[Any]:
    """RayTrainWorker actors of this test's Ray (by its GCS address, never another local Ray)."""
    from ray.util.state import list_actors

    filters = [("class_name", "=", "RayTrainWorker")]
    if state:
        filters.append(("state", "=", state))
    address = ray.get_runtime_context().gcs_address
    return list_actors(
        address=address, filters=filters, limit=10_000, raise_on_missing_output=False
    )


def test_a_killed_train_worker_is_restarted_from_the_last_checkpoint(
    ray_local, dataset_dir: Path, tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = tmp_path / "ray" / "killed"
    workers_before = {a.actor_id for a in _train_workers(ray_local)}
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = train(
                arch=load_arch(SMOKE),
                data=dataset_dir,
                settings=TrainSettings(epochs=3, batch_size=8, val_triplets=24),
                resources=Resources(workers=2),
                experiment="faults",
                tracking_uri=uri,
                storage=tmp_path / "ray",
                name="killed",
            )
        except BaseException as err:  # re-raised in the test's thread below
            outcome["error"] = err

    thread = threading.Thread(target=run, name="train", daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    record = _wait(
        "the MLflow run record", lambda: _read_json(run_dir / "varnext_run.json"), deadline, thread
    )
    run_id = record["run_id"]
    client = mlflow.MlflowClient(uri)
    _wait("epoch 1 in MLflow", lambda: client.get_metric_history(run_id, "epoch"), deadline, thread)
    # Kill once epoch 1's checkpoint is registered, so the restart has a checkpoint to resume.
    registered = _wait("epoch 1's checkpoint", lambda: _registered_epoch(run_dir), deadline, thread)
    alive = _wait("a live RayTrainWorker", lambda: _train_workers(ray_local, "ALIVE"), deadline)
    assert registered < 3, "training finished before a worker could be killed"
    victim = alive[0].pid
    os.kill(victim, signal.SIGKILL)  # mid-epoch `registered + 1`

    thread.join(timeout=400)
    assert not thread.is_alive(), "train() did not return after the worker was killed"
    if "error" in outcome:
        raise outcome["error"]
    result = outcome["result"]
    assert result.metrics["epoch"] == 3 and result.run_id == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    history = sorted(client.get_metric_history(run_id, "epoch"), key=lambda m: m.timestamp)
    steps = [m.step for m in history]
    assert set(steps) == {1, 2, 3} and steps[-1] == 3, steps
    # Resumed from the checkpoint of epoch `registered`: no epoch up to it was trained twice
    # (only the epoch that was running when the worker died may appear twice).
    for step in range(1, registered + 1):
        assert steps.count(step) == 1, (step, steps)
    new_workers = {a.actor_id for a in _train_workers(ray_local)} - workers_before
    assert len(new_workers) >= 4, "no new worker group was started after the kill"


def _sweep_space(tmp_path: Path) -> Path:
    path = tmp_path / "nan.json"
    path.write_text(json.dumps({"name": "nan", "base": str(SMOKE), "lr": [1e30, 0.005]}))
    return path


def test_a_nan_trial_fails_alone_and_the_sweep_goes_on(
    ray_local, dataset_dir: Path, tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    space, base = load_space(_sweep_space(tmp_path))
    outcome = run_sweep(
        space=space,
        base=base,
        data=dataset_dir,
        # Seed 0: Optuna's TPE (multivariate, 2 random start-up trials) samples lr 0.005, 1e30,
        # then 0.005 (checked below through the MLflow params).
        options=SweepOptions(
            samples=3,
            scheduler="fifo",
            seed=0,
            workers_per_trial=2,
            train=TrainSettings(epochs=1, batch_size=8, val_triplets=24),
        ),
        experiment="nan-sweep",
        tracking_uri=uri,
        storage=tmp_path / "ray",
    )
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("nan-sweep")
    trials = [
        r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get("varnext.kind") == "trial"
    ]
    lrs = sorted(float(r.data.params["point.lr"]) for r in trials)
    assert len(trials) == 3 and lrs[0] == 0.005 and lrs[-1] == 1e30, lrs
    failed = [r for r in outcome.rows if r["error"]]
    assert failed and all("non-finite loss" in r["error"] for r in failed), outcome.rows
    assert outcome.best is not None and outcome.best["objective"] is not None
    by_status = {
        status: [r for r in trials if r.info.status == status] for status in ("FAILED", "FINISHED")
    }
    assert len(by_status["FAILED"]) == len(failed)
    assert all(float(r.data.params["point.lr"]) == 1e30 for r in by_status["FAILED"])
    assert all("non-finite" in r.data.tags["failure_reason"] for r in by_status["FAILED"])
    assert by_status["FINISHED"] and all(
        r.data.metrics["epoch"] == 1 for r in by_status["FINISHED"]
    )
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED" and "best_extrap_psnr_motion" in parent.data.metrics


def test_a_tracking_server_lost_mid_sweep_stops_it_in_one_line_and_resume_finishes_it(
    dataset_dir: Path, tmp_path: Path
) -> None:
    """The real CLI, its own local Ray, a real ``mlflow server`` stopped once the first trial's
    run is open: the sweep ends with one ``error:`` line (exit 2, not "unexpected TuneError"
    after 300 lines of tracebacks), and with the server back, ``--resume`` finishes every trial
    in the same runs."""
    import subprocess
    import sys

    from tests.conftest import running_mlflow_server
    from tests.ports import free_port

    store, port = tmp_path / "store", free_port()
    store.mkdir()
    argv = [sys.executable, "-m", "varnext_ray.cli", "sweep", "--space"]
    argv += [str(REPO / "search_spaces" / "smoke.json"), "--data", str(dataset_dir)]
    argv += ["--samples", "2", "--epochs", "1", "--steps", "10", "--scheduler", "fifo"]
    argv += ["--storage", str(tmp_path / "ray"), "--experiment", "lost"]
    argv += ["--tracking-uri", f"http://127.0.0.1:{port}"]
    # MLflow retries a refused request for minutes by default; once is enough to know.
    env = os.environ | {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    env.pop("RAY_ADDRESS", None)  # its own Ray, which the MLflow variables reach
    with running_mlflow_server(store, port):
        sweep = subprocess.Popen(
            argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        _wait(
            "the first trial's run",
            lambda: sweep.poll() is not None or any((tmp_path / "ray").rglob("trial-*/*run.json")),
            time.monotonic() + 300,
        )
    _, err = sweep.communicate(timeout=300)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert sweep.returncode == 2, err[-3000:]
    assert len(errors) == 1 and "the MLflow store failed as trial" in errors[0], errors
    assert "--resume" in errors[0]  # (Ray's own logs before it may say "died unexpectedly")
    with running_mlflow_server(store, port) as uri:
        resumed = subprocess.run(
            [*argv, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
        )
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        client = mlflow.MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("lost").experiment_id])
    kinds = {
        kind: [r for r in runs if r.data.tags.get("varnext.kind") == kind]
        for kind in ("sweep", "trial")
    }
    assert len(kinds["sweep"]) == 1 and len(kinds["trial"]) == 2, [r.info.run_name for r in runs]
    assert all(r.info.status == "FINISHED" for r in runs), [
        (r.info.run_name, r.info.status) for r in runs
    ]


@pytest.mark.parametrize(
    ("signum", "code", "said", "reason"),
    [
        (signal.SIGTERM, 143, "terminated (SIGTERM)", "terminated (SIGTERM)"),
        (signal.SIGINT, 130, "interrupted (keyboard)", "interrupted"),
    ],
)
def test_a_signal_during_training_ends_it_in_one_line_with_its_run_killed(
    dataset_dir: Path, tmp_path: Path, signum: int, code: int, said: str, reason: str
) -> None:
    """The real CLI in its own process, signalled while its worker group trains. SIGTERM gave
    Ray's C++ stack dump and exit 134 (Ray's handler replaced the CLI's, and a Python handler's
    exception other than KeyboardInterrupt cannot end a ray.get); Ctrl-C gave exit 1 without a
    word (Ray Train aborts the run, then ray.get raises SystemExit). Both left the MLflow run
    RUNNING."""
    import sys

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = [sys.executable, "-m", "varnext_ray.cli", "train", "--config", str(SMOKE)]
    argv += ["--data", str(dataset_dir), "--epochs", "2", "--steps", "100000"]
    argv += ["--storage", str(tmp_path / "ray"), "--name", "stop", "--tracking-uri", uri]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own Ray
    proc = _popen(argv, tmp_path, env)
    with _reaped(proc):
        _wait(
            "the worker group",
            lambda: proc.poll() is not None or (tmp_path / "mlflow.db").exists(),
            time.monotonic() + 120,
        )
        time.sleep(15)  # past ray.init, the dataset and the worker group's start: inside fit()
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert proc.returncode == code, err[-3000:]
    assert len(errors) == 1 and errors[0].startswith(f"error: {said}: MLflow run "), errors
    assert "is KILLED" in errors[0] and "continues it" in errors[0]
    run = mlflow.MlflowClient(uri).search_runs(
        [mlflow.MlflowClient(uri).get_experiment_by_name("varnext").experiment_id]
    )[0]
    assert run.info.status == "KILLED" and run.data.tags["failure_reason"] == reason
    assert "***" not in err  # no C++ stack dump


def test_a_run_stopped_by_a_signal_logs_nothing_after_it_is_closed(
    dataset_dir: Path, tmp_path: Path
) -> None:
    """After the driver's "is KILLED" line its Train worker went on: the next epoch was
    printed, logged into the closed run (after its end time) and checkpointed, and resuming
    logged that epoch twice. The workers are stopped before the run is closed."""
    import subprocess
    import sys

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = [sys.executable, "-m", "varnext_ray.cli", "train", "--config", str(SMOKE)]
    argv += ["--data", str(dataset_dir), "--epochs", "400", "--steps", "4000", "--workers", "1"]
    argv += ["--rollout-steps", "0", "--batch-size", "8", "--val-triplets", "4"]
    argv += ["--storage", str(tmp_path / "ray")]
    argv += ["--name", "stop", "--tracking-uri", uri]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own Ray
    log = tmp_path / "out.log"
    with open(log, "w") as out:  # the workers' epoch lines and the driver's, in their order
        proc = subprocess.Popen(
            argv, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, text=True
        )
    with _reaped(proc):
        _wait(
            "the first epoch",
            lambda: proc.poll() is not None or "epoch 1/" in log.read_text(),
            time.monotonic() + 300,
        )
        assert proc.poll() is None, log.read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    lines = log.read_text().splitlines()
    said = [n for n, line in enumerate(lines) if line.startswith("error: terminated")]
    assert proc.returncode == 143 and len(said) == 1, lines[-20:]
    assert not any("epoch " in line for line in lines[said[0] + 1 :]), lines[said[0] :]
    client = mlflow.MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("varnext").experiment_id])[0]
    logged = [m.timestamp for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert run.info.status == "KILLED" and max(logged) <= run.info.end_time


@pytest.mark.parametrize(
    ("signum", "code", "said"),
    [(signal.SIGINT, 130, "interrupted (keyboard)"), (signal.SIGTERM, 143, "terminated (SIGTERM)")],
)
def test_a_signal_during_a_sweep_ends_it_in_one_line_with_its_runs_killed(
    dataset_dir: Path, tmp_path: Path, signum: int, code: int, said: str
) -> None:
    """Ctrl-C: Tune stops, saves its state and returns, and the sweep went on to close its
    runs FINISHED, print a summary and exit 0 as if it had ended. SIGTERM ended it without
    closing its runs. Now both say how to continue and leave the runs KILLED."""
    import sys

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    argv = [sys.executable, "-m", "varnext_ray.cli", "sweep", "--space"]
    argv += [str(REPO / "search_spaces" / "smoke.json"), "--data", str(dataset_dir)]
    argv += ["--samples", "3", "--epochs", "2", "--steps", "100000", "--scheduler", "fifo"]
    argv += ["--storage", str(tmp_path / "ray"), "--experiment", "stop", "--tracking-uri", uri]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own Ray
    proc = _popen(argv, tmp_path, env)
    with _reaped(proc):
        _wait(
            "the first trial's run",
            lambda: proc.poll() is not None or any((tmp_path / "ray").rglob("trial-*/*run.json")),
            time.monotonic() + 300,
        )
        time.sleep(10)  # the trial's worker group is training
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=180)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert proc.returncode == code, err[-3000:]
    assert len(errors) == 1 and errors[0].startswith(f"error: {said}: the sweep's MLflow run")
    assert "--resume continues it" in errors[0]
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("stop").experiment_id])
    kinds = sorted({r.data.tags.get("varnext.kind") for r in runs})
    assert kinds == ["sweep", "trial"], kinds
    assert all(r.info.status == "KILLED" for r in runs), [
        (r.info.run_name, r.info.status) for r in runs
    ]
