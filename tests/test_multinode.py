"""Sweeps on a real three-node Ray cluster on one machine, and a sweep that loses a node.

The cluster (tests/multinode.py) is a head and two worker nodes, each a separate
``ray start`` process group on 127.0.0.1 with token auth. Ray Train/Tune storage is one
directory that every node reads and writes (it stands in for S3 or NFS), and MLflow is a real
``mlflow server`` over HTTP, as on a cluster.

Logical CPUs are chosen so that where things land is forced, not left to chance: the head has
2, each worker node 3, and each Train worker holds 1.5 (``--cpus-per-worker``). A trial's two
workers (PACK) then fit on one worker node only, never on the head (2 < 3) nor on the node of
the trial's driver (3 - 0.1 < 3). After a worker node is lost, the remaining 5 CPUs still hold
the driver, the restarted workers and one CPU for Ray Data, wherever the driver is.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest

from tests.conftest import REPO
from tests.mlflow_gate import EpochGate
from tests.multinode import LocalCluster, Placements, local_cluster, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SPACE = REPO / "search_spaces" / "smoke.json"
HEAD_CPUS, WORKER_CPUS, CPUS_PER_WORKER = 2, (3, 3), 1.5
EPOCHS = 2
LOST_SAMPLES = 1  # the node-loss sweep: one trial (time); its loss is what is checked
LOOPBACK = ("127.0.0.1", "[::ffff:127.0.0.1]")
SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of registered checkpoints


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """One three-node cluster for this module (the node-loss test runs last: it kills one)."""
    # This module runs last (conftest.py orders it so) and shuts the session's in-process Ray
    # down first: in full runs the session's local instance lost its GCS around the time
    # this 3-node cluster stopped (cause not found), and its driver, pytest itself, then
    # exits about 60 s later. No test after this module needs the session's Ray.
    import ray

    if ray.is_initialized():
        ray.shutdown()
    with local_cluster(head_cpus=HEAD_CPUS, worker_cpus=WORKER_CPUS) as running:
        yield running


def _sweep_args(data: Path, storage: Path, uri: str, experiment: str, samples: int) -> list[str]:
    """``varnext sweep`` of the smoke space: tiny trials, a fixed number of epochs."""
    return [
        "sweep",
        "--space",
        str(SPACE),
        "--data",
        str(data),
        "--samples",
        str(samples),
        "--epochs",
        str(EPOCHS),
        "--workers-per-trial",
        "2",
        "--cpus-per-worker",
        str(CPUS_PER_WORKER),
        "--scheduler",
        "fifo",  # every trial runs every epoch
        "--batch-size",
        "8",
        "--val-triplets",
        "24",
        "--experiment",
        experiment,
        "--tracking-uri",
        uri,
        "--storage",
        str(storage),
    ]


def _check_mlflow(uri: str, experiment: str, samples: int) -> list[Any]:
    """One FINISHED parent run and ``samples`` FINISHED child runs, every epoch logged once."""
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [r for r in runs if r.data.tags.get("varnext.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("varnext.kind") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED", parents
    assert "best_extrap_psnr_motion" in parents[0].data.metrics
    trial_ids = [r.data.tags["varnext.trial_id"] for r in children]
    assert len(trial_ids) == len(set(trial_ids)) == samples, trial_ids  # no duplicate runs
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.info.status == "FINISHED", (run.info.run_id, run.info.status)
        for key in ("epoch", "val_loss", "extrap_psnr"):
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
            assert steps == list(range(1, EPOCHS + 1)), (run.data.tags["varnext.trial_id"], key)
    return children


def _submit(client: Any, entrypoint: str) -> str | None:
    """Submits the job, or None while the head's job agent is not yet registered."""
    try:
        return client.submit_job(entrypoint=entrypoint, submission_id=f"mn-{uuid.uuid4().hex[:8]}")
    except RuntimeError as err:
        if "No available agent" in str(err):
            return None
        raise


def _final_status(client: Any, job: str) -> Any:
    """The job's status once it has ended, else None."""
    status = client.get_job_status(job)
    return status if status.is_terminal() else None


def test_a_sweep_job_runs_trials_and_workers_on_different_nodes(
    cluster: LocalCluster, mlflow_server: str, dataset_dir: Path, tmp_path: Path
) -> None:
    """A 2-trial sweep job: each trial's workers run on another node than its driver."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    experiment = f"multinode-{uuid.uuid4().hex[:6]}"
    storage = tmp_path / "shared"  # one path that every node reads and writes
    args = _sweep_args(dataset_dir, storage, mlflow_server, experiment, samples=2)
    # As `ray job submit --address http://127.0.0.1:<dashboard> -- varnext sweep ...`: the
    # entrypoint runs on the head and finds the cluster through RAY_ADDRESS, set by Ray.
    jobs = JobSubmissionClient(cluster.dashboard)
    placements = Placements(cluster)
    placements.start()
    try:
        entrypoint = shlex.join(["varnext", *args])
        job = wait_for("the head's job agent", lambda: _submit(jobs, entrypoint), 60, 2)
        status = wait_for("the sweep job to end", lambda: _final_status(jobs, job), 480, 2)
    finally:
        placements.stop()
    logs = jobs.get_job_logs(job)
    assert status == JobStatus.SUCCEEDED, f"job {job}: {status}\n{logs[-6000:]}\n{cluster.logs()}"

    if shutil.which("ss"):  # every port on loopback, none on the machine's network address
        ports = cluster.listening()
        assert ports and all(p.rsplit(":", 1)[0] in LOOPBACK for p in ports), ports
    trials = placements.trials()
    print(f"\nplacements (trial driver actor: nodes): {json.dumps(trials, default=sorted)}")
    assert len(trials) == 2, trials
    for seen in trials.values():
        (driver,) = seen["driver"]
        assert seen["controller"] == {driver}  # Train V2 pins its controller to the driver
        (workers,) = seen["workers"]  # PACK: both workers on one node ...
        assert workers != driver and workers != "head"  # ... not the driver's, not the head
    _check_mlflow(mlflow_server, experiment, samples=2)
    # Every trial's Train run, checkpoints included, is in the one shared storage path.
    trial_dirs = list((storage / f"sweep-{experiment}-smoke" / "trials").glob("trial-*"))
    assert len(trial_dirs) == 2 and all((d / SNAPSHOT).is_file() for d in trial_dirs)


def _registered_epoch(trials_dir: Path) -> tuple[Path, int] | None:
    """(Train run directory, epoch) of a trial whose latest checkpoint Ray has registered."""
    for snapshot in trials_dir.glob(f"trial-*/{SNAPSHOT}"):
        try:
            latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result") or {}
        except (OSError, json.JSONDecodeError):  # being written
            continue
        epoch = int(latest.get("metrics", {}).get("epoch", 0))
        if epoch:
            return snapshot.parent, epoch
    return None


def test_losing_a_worker_node_mid_trial_restarts_its_workers_elsewhere(
    cluster: LocalCluster, mlflow_server: str, dataset_dir: Path, tmp_path: Path
) -> None:
    """The node holding a trial's Train workers dies mid-epoch; the trial and sweep finish.

    The sweep logs to MLflow through an :class:`EpochGate`, which holds rank 0's epoch-2
    metrics: epoch 2 has run but is neither logged nor checkpointed when the node is killed,
    however fast the epoch is (the Train controller registers checkpoints only every 2 s).
    """
    experiment = f"multinode-lost-{uuid.uuid4().hex[:6]}"
    storage = tmp_path / "shared"
    log_path = tmp_path / "sweep.log"
    placements = Placements(cluster)
    with EpochGate(mlflow_server, step=2) as gate:
        args = _sweep_args(dataset_dir, storage, gate.uri, experiment, samples=LOST_SAMPLES)
        # As `varnext sweep ... --address 127.0.0.1:<GCS port>` from a shell on the head.
        cmd = [sys.executable, "-m", "varnext_ray.cli", *args, "--address", cluster.address]
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, env=cluster.env, stdout=log, stderr=subprocess.STDOUT)
        placements.start()
        try:
            trials_dir = storage / f"sweep-{experiment}-smoke" / "trials"
            _lose_a_node_and_recover(cluster, placements, proc, trials_dir, gate, mlflow_server)
            proc.wait(timeout=480)
        except BaseException:
            print(log_path.read_text(errors="replace")[-6000:])  # shown with the failure
            raise
        finally:
            placements.stop()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    sweep_log = log_path.read_text(errors="replace")
    assert proc.returncode == 0, f"{sweep_log[-6000:]}\n{cluster.logs()}"
    _check_mlflow(mlflow_server, experiment, samples=LOST_SAMPLES)


def _lose_a_node_and_recover(
    cluster: LocalCluster,
    placements: Placements,
    proc: subprocess.Popen,
    trials_dir: Path,
    gate: EpochGate,
    uri: str,
) -> None:
    """Kills the node of the trial's workers in epoch 2, after epoch 1's checkpoint; times it."""

    def running(value: Any) -> Any:
        if proc.poll() is not None:
            raise AssertionError(f"the sweep ended early ({proc.returncode})")
        return value

    alive = wait_for(
        "the first trial's two Train workers", lambda: running(_both_workers(placements)), 300, 1
    )
    victims = {n for c, _, n in alive if c == "RayTrainWorker"}
    assert len(victims) == 1, f"the two Train workers are not on one node (PACK): {alive}"
    (victim,) = victims
    drivers = {n for c, _, n in alive if c in ("ImplicitFunc", "TrainController")}
    assert victim != "head" and victim not in drivers, alive
    first_workers = {a for c, a, _ in alive if c == "RayTrainWorker"}
    run_dir, _ = wait_for(
        "epoch 1's checkpoint", lambda: running(_registered_epoch(trials_dir)), 300, 0.2
    )
    wait_for("rank 0 at its epoch-2 metrics", lambda: running(gate.held.is_set()), 300, 0.2)
    _, epoch = _registered_epoch(trials_dir) or (None, 0)
    assert epoch == 1, f"registered epoch {epoch} while epoch 2 was held"
    cluster.kill(victim)  # the node's raylet, agents and both Train workers, in epoch 2
    killed = time.monotonic()
    gate.open()  # drops the dead rank 0's request; the restarted one's goes through
    run_id = json.loads((run_dir / "varnext_run.json").read_text())["run_id"]
    client = mlflow.MlflowClient(uri)
    logged = [m.step for m in client.get_metric_history(run_id, "epoch")]
    assert epoch + 1 not in logged, f"the kill came after epoch {epoch + 1} was logged: {logged}"
    dead_at = None

    def next_epoch_reported() -> bool:
        nonlocal dead_at
        alive = cluster.alive_nodes()  # {} while the dashboard does not answer
        if dead_at is None and alive and victim not in alive:
            dead_at = time.monotonic() - killed
        steps = [m.step for m in client.get_metric_history(run_id, "epoch")]
        return running(epoch + 1 in steps)

    wait_for(f"epoch {epoch + 1} after losing {victim}", next_epoch_reported, 300, 0.5)
    recovered = time.monotonic() - killed
    restarted = placements.workers_after(killed)
    new_workers = {a: n for a, n in restarted.items() if a not in first_workers}
    print(
        f"\nlost node {victim} (the first trial's workers; driver on {sorted(drivers)}) after "
        f"epoch {epoch}: Ray marked it dead after {dead_at or float('nan'):.1f} s; epoch "
        f"{epoch + 1} was reported {recovered:.1f} s after the kill, by workers on "
        f"{sorted(set(new_workers.values()))}"
    )
    assert len(new_workers) >= 2 and victim not in new_workers.values(), restarted


def _both_workers(placements: Placements) -> list[tuple[str, str, str]] | None:
    """The live actors, once exactly one trial driver and its two Train workers are alive."""
    try:
        alive = placements.alive()
    except Exception:  # the dashboard is busy: ask again
        return None
    drivers = [a for c, a, _ in alive if c == "ImplicitFunc"]
    workers = [a for c, a, _ in alive if c == "RayTrainWorker"]
    return alive if len(drivers) == 1 and len(workers) == 2 else None


def test_a_trial_whose_driver_node_was_lost_is_failed_in_mlflow(tmp_path: Path) -> None:
    """What losing a trial driver's node leaves behind, closed by the sweep: FAILED, not FINISHED.

    With ``ray.tune.FailureConfig(max_failures=0)`` (sweep.py) Tune does not retry a trial whose
    driver died with its node; the driver never closed its MLflow run. Seen on this cluster:
    the trial is ERROR with "RPC error: Socket closed" and its run was left RUNNING at epoch 1.
    """
    from varnext_ray import tracking
    from varnext_ray.sweep_results import close_trial_runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = tracking.start_run(uri, "lost-driver", run_name="sweep", params={})
    runs = {}
    for trial_id in ("lost", "done"):
        tags = {"varnext.trial_id": trial_id, "mlflow.parentRunId": parent}
        runs[trial_id] = tracking.start_run(
            uri, "lost-driver", run_name=trial_id, params={}, tags=tags
        )
        tracking.log_metrics(uri, runs[trial_id], {"epoch": 1}, step=1)
    error = "RPC error: Socket closed rpc_code: 14."
    close_trial_runs(uri, "lost-driver", parent, {"lost": error, "done": None}, epochs=2)
    client = mlflow.MlflowClient(uri)
    lost, done = (client.get_run(runs[t]) for t in ("lost", "done"))
    assert lost.info.status == "FAILED" and lost.data.tags["failure_reason"] == error
    assert "varnext.stopped_early" not in lost.data.tags
    assert done.info.status == "FINISHED" and done.data.tags["varnext.stopped_early"] == "true"
