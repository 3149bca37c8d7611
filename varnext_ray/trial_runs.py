"""Each sweep trial's MLflow run, opened and closed in the sweep's driver.

A trial's own process would import MLflow and start its store (about 1.6 s in a fresh process
on 2 cores, issue #18) only to open a run at its start and close it at its end. The sweep's
driver has both warm, so a Tune callback does that work there, as Ray's own
``MLflowLoggerCallback`` does. Tune calls ``on_trial_start`` before it asks the trial's actor to
run the trial, so the run exists, and its id is recorded in the trial's directory beside Ray
Train's state (:func:`tracking.run_for_directory`), before the trial reads it; a restored trial
finds its record and continues its run.

The trial writes its outcome to the same directory (:func:`write_outcome`): finished, with
where its time went outside its epochs, or failed, with the reason. ``on_trial_complete`` and
``on_trial_error`` log it and close the run. A trial that leaves no outcome (the scheduler
stopped it, or its process died) is closed when the sweep ends by
:func:`~varnext_ray.sweep_results.close_trial_runs`.

The store failing in a callback (a server that stopped answering) is a one-line UserError
(:data:`STORE_FIX`): Tune stops the sweep with it, and ``varnext sweep --resume`` continues.
"""

from __future__ import annotations

from typing import Any

import pyarrow.fs
from ray.tune import Callback

from varnext_ray import mlflow_extras, run_records, tracking, tracking_errors
from varnext_ray.arch import count_params, parse_arch
from varnext_ray.errors import UserError
from varnext_ray.search_space import point_to_arch

OUTCOME_FILE = "varnext_trial.json"  # written by the trial, read by the driver
STORE_FIX = (
    "bring the store back, then run the same varnext sweep command with --resume "
    "(finished trials are kept)"
)


def trial_name(trial_id: str) -> str:
    """A trial's Train run name: deterministic, so a restored trial resumes its run."""
    return f"trial-{trial_id}"


def trials_dir(storage: str, sweep_name: str) -> str:
    """Where a sweep's trials keep their Train runs (a local path or a storage URI)."""
    return f"{storage}/{sweep_name}/trials"


def write_outcome(
    run_dir: str, status: str, reason: str | None = None, overhead: dict[str, float] | None = None
) -> None:
    """Called by the trial as it ends: ``FINISHED`` with its overhead metrics, or ``FAILED``
    with the reason."""
    record = {"status": status, "reason": reason, "overhead": overhead or {}}
    run_records.write_record(run_dir, record, OUTCOME_FILE)


class TrialRuns(Callback):
    """Opens each trial's MLflow child run when Tune starts the trial; closes it with the
    outcome the trial wrote.

    Args:
        uri: The tracking URI.
        experiment: The MLflow experiment.
        parent_run_id: The sweep's parent run.
        trials: :func:`trials_dir` of the sweep.
        base: The space's base architecture JSON.
        data: The frame dataset (logged as the run's inputs).
    """

    def __init__(
        self,
        *,
        uri: str,
        experiment: str,
        parent_run_id: str,
        trials: str,
        base: dict[str, Any],
        data: str,
    ) -> None:
        self.uri = uri
        self.experiment = experiment
        self.parent_run_id = parent_run_id
        self.trials = trials
        self.base = base
        self.data = data

    def _run_dir(self, trial: Any) -> str:
        return f"{self.trials}/{trial_name(trial.trial_id)}"

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        with tracking_errors.store_failures(
            self.uri, f"as trial {trial.trial_id} started", STORE_FIX
        ):
            self._open(trial)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        with tracking_errors.store_failures(
            self.uri, f"as trial {trial.trial_id} ended", STORE_FIX
        ):
            self._close(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        with tracking_errors.store_failures(
            self.uri, f"as trial {trial.trial_id} ended", STORE_FIX
        ):
            self._close(trial)

    def _open(self, trial: Any) -> None:
        """The trial's run (a restored trial continues its own), with its point, architecture
        and dataset; an outcome left by an earlier attempt is removed."""
        run_dir = self._run_dir(trial)
        fs, path = run_records.storage_path(run_dir)
        if fs.get_file_info(f"{path}/{OUTCOME_FILE}").type == pyarrow.fs.FileType.File:
            fs.delete_file(f"{path}/{OUTCOME_FILE}")
        point = dict(trial.config)
        arch_dict = point_to_arch(self.base, point)
        run_id = tracking.run_for_directory(
            self.uri,
            self.experiment,
            run_dir,
            trial_name(trial.trial_id),
            tracking.flatten({"point": point, "arch": arch_dict}),
            tags={
                "varnext.kind": "trial",
                "varnext.trial_id": trial.trial_id,
                "mlflow.parentRunId": self.parent_run_id,
            },
        )
        tracking.log_dict(self.uri, run_id, arch_dict, "arch/arch.json")
        mlflow_extras.log_dataset_inputs(self.uri, run_id, self.data)
        try:
            arch = parse_arch(arch_dict, f"trial {trial.trial_id}")
        except UserError:
            return  # the trial fails with this message, which closes the run
        tracking.log_params(self.uri, run_id, {"arch_params": count_params(arch)})

    def _close(self, trial: Any) -> None:
        """Logs the outcome the trial wrote and ends its run; without one, leaves the run to
        the sweep's end."""
        run_dir = self._run_dir(trial)
        outcome = run_records.read_json_record(run_dir, OUTCOME_FILE)
        run_id = run_records.read_record(run_dir)
        if outcome is None or run_id is None:
            return
        if outcome.get("overhead"):
            tracking.log_metrics(self.uri, run_id, outcome["overhead"], step=0)
        status = "FINISHED" if outcome.get("status") == "FINISHED" else "FAILED"
        reason = outcome.get("reason")
        tracking.end_run(self.uri, run_id, status, str(reason) if reason else None)
