"""The sweep driver's callback that opens and closes each trial's MLflow run (real Tune Trial
objects, a real MLflow SQLite store; no Ray needed)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from ray.tune.experiment import Trial

from tests.conftest import REPO
from varnext_ray import run_records, tracking
from varnext_ray.search_space import load_space
from varnext_ray.trial_runs import OUTCOME_FILE, TrialRuns, trial_name, write_outcome


@pytest.fixture
def callback(tmp_path: Path, dataset_dir: Path) -> TrialRuns:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = tracking.start_run(uri, "sweep-exp", run_name="sweep", params={})
    _, base = load_space(REPO / "search_spaces" / "smoke.json")
    return TrialRuns(
        uri=uri,
        experiment="sweep-exp",
        parent_run_id=parent,
        trials=str(tmp_path / "trials"),
        base=base,
        data=str(dataset_dir),
    )


def _trial(trial_id: str, **point: object) -> Trial:
    return Trial("sweep_trial", config=dict(point), trial_id=trial_id, stub=True)


def _run(callback: TrialRuns, trial: Trial) -> mlflow.entities.Run:
    run_dir = f"{callback.trials}/{trial_name(trial.trial_id)}"
    return tracking.client(callback.uri).get_run(run_records.read_record(run_dir))


def test_a_started_trial_has_its_child_run_before_it_runs(callback: TrialRuns) -> None:
    trial = _trial("t1", depth=3, channels_0=16, lr=0.004)
    callback.on_trial_start(0, [trial], trial)
    run = _run(callback, trial)
    assert run.info.status == "RUNNING" and run.info.run_name == "trial-t1"
    tags = run.data.tags
    assert tags["mlflow.parentRunId"] == callback.parent_run_id
    assert (tags["varnext.kind"], tags["varnext.trial_id"]) == ("trial", "t1")
    params = run.data.params
    assert params["point.depth"] == "3" and params["point.lr"] == "0.004"
    assert params["arch.encoder.conv.0.out_channels"] == "16" and int(params["arch_params"]) > 0
    assert len(run.inputs.dataset_inputs) == 2  # train and val splits
    artifacts = tracking.client(callback.uri).list_artifacts(run.info.run_id, "arch")
    assert [a.path for a in artifacts] == ["arch/arch.json"]


def test_the_trials_outcome_closes_its_run(callback: TrialRuns) -> None:
    done, failed, stopped = _trial("done"), _trial("failed"), _trial("stopped")
    for trial in (done, failed, stopped):
        callback.on_trial_start(0, [], trial)
    overhead = {"overhead_seconds": 3.5, "overhead_setup_seconds": 0.1}
    write_outcome(f"{callback.trials}/trial-done", "FINISHED", overhead=overhead)
    write_outcome(f"{callback.trials}/trial-failed", "FAILED", reason="non-finite loss")
    callback.on_trial_complete(0, [], done)
    callback.on_trial_error(0, [], failed)
    callback.on_trial_complete(0, [], stopped)  # stopped by the scheduler: wrote nothing

    run = _run(callback, done)
    assert run.info.status == "FINISHED" and run.data.metrics == overhead
    assert "failure_reason" not in run.data.tags
    run = _run(callback, failed)
    assert run.info.status == "FAILED" and run.data.tags["failure_reason"] == "non-finite loss"
    assert _run(callback, stopped).info.status == "RUNNING"  # closed when the sweep ends


def test_a_restarted_trial_continues_its_run_without_its_old_outcome(
    callback: TrialRuns,
) -> None:
    trial = _trial("again", depth=2)
    callback.on_trial_start(0, [], trial)
    first = _run(callback, trial).info.run_id
    run_dir = Path(callback.trials) / "trial-again"
    write_outcome(str(run_dir), "FAILED", reason="its node was lost")
    callback.on_trial_error(0, [], trial)

    callback.on_trial_start(0, [], trial)  # restored and restarted
    assert not (run_dir / OUTCOME_FILE).exists()
    run = _run(callback, trial)
    assert run.info.run_id == first and run.info.status == "RUNNING"
    callback.on_trial_complete(0, [], trial)  # stopped this time: the old outcome is not used
    assert _run(callback, trial).info.status == "RUNNING"


def test_an_invalid_point_still_gets_a_run_for_its_failure(callback: TrialRuns) -> None:
    trial = _trial("bad", latent_channels=0)
    callback.on_trial_start(0, [], trial)  # does not raise: the trial reports the error
    run = _run(callback, trial)
    assert run.info.status == "RUNNING" and "arch_params" not in run.data.params
