"""Sweeps: Ray Tune + Optuna over JSON-generated architectures, one MLflow child run per trial.

Each Tune trial is a small driver function that turns its sampled point into a full
architecture JSON, validates it (an invalid point ends that trial, with the message recorded in
its MLflow run, never the sweep), and trains it with the same
:func:`~varnext_ray.train.build_trainer` as ``varnext train``. The sweep is an MLflow parent
run; trials are nested child runs, opened and closed in the sweep's driver by a Tune callback
(:mod:`~varnext_ray.trial_runs`), so a trial's own process never starts MLflow. Both are
recorded beside Ray's state under ``<storage>/<sweep name>`` so ``--resume``
(``Tuner.restore``) continues the same runs.

Example:
    >>> space, base = load_space("search_spaces/smoke.json")
    >>> outcome = run_sweep(space=space, base=base, data=Path("runs/dataset"),
    ...                     options=SweepOptions(samples=4), experiment="smoke",
    ...                     tracking_uri=None, storage=Path("runs/ray"))
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, NoReturn

from varnext_ray import console, run_lock, run_records, tracking, tracking_errors
from varnext_ray.arch import parse_arch
from varnext_ray.cluster import Resources, cluster_cpus, stop_ray_work
from varnext_ray.errors import (
    Interrupted,
    Terminated,
    UserError,
    failure_summary,
    terminated,
    user_error_in,
)
from varnext_ray.output_checks import check_not_inside
from varnext_ray.safe_io import read_bounded
from varnext_ray.search_space import (
    SAMPLED_POINTS,
    DefineByRun,
    SearchSpace,
    draw_failures,
    point_to_arch,
)
from varnext_ray.settings import TrainSettings
from varnext_ray.storage_checks import check_trusted_storage, local_storage
from varnext_ray.sweep_results import SweepOutcome, close_trial_runs, summarise
from varnext_ray.train import build_trainer, check_batch_norm_batch, check_dataset, timed_fit
from varnext_ray.train_data import RunData, prepare_run_data
from varnext_ray.trial_runs import STORE_FIX, TrialRuns, trial_name, trials_dir, write_outcome

log = logging.getLogger(__name__)

SWEEP_FILE = "varnext_sweep.json"  # the parent MLflow run of a sweep, beside Tune's state
DRIVER_CPUS = 0.1  # each trial's driver only waits on its Train run
MAX_SAMPLES = 10_000  # trials of one sweep: Tune keeps each one's state in memory and on disk
# The recorded options ``varnext sweep`` has a flag for (tests/test_sweep.py checks each one);
# the others are varnext's own defaults, which differ only between versions of varnext.
_SWEEP_FLAGS = frozenset(
    {
        *("batch_size", "concurrency", "cpus_per_worker", "epochs", "gpus_per_worker"),
        *("rollout_steps", "samples", "scheduler", "search", "seed", "steps", "train_on"),
        *("val_triplets", "workers_per_trial"),
    }
)


@dataclass(frozen=True)
class SweepOptions:
    """How a sweep runs (the space says what it searches).

    ``train`` holds every trial's training settings (a point may override ``lr`` and
    ``batch_size``); None means the defaults with the space's epochs and 256 validation
    triplets. Its ``objective`` is always the space's.
    """

    samples: int = 8
    workers_per_trial: int = 2
    gpus_per_worker: float = 0.0
    cpus_per_worker: float | None = None
    concurrency: int = 1
    scheduler: str = "asha"  # or "fifo"
    search: str = "tpe"  # Optuna's sampler: "tpe" or "random"
    seed: int = 0  # the sampler's seed (and the training seed when ``train`` is None)
    train: TrainSettings | None = None
    share_data: bool = True  # read the dataset once for all trials (False: each trial reads it)

    def settings(self, space: SearchSpace) -> TrainSettings:
        """Every trial's training settings, before a point's overrides."""
        base = self.train or TrainSettings(epochs=space.epochs, val_triplets=256, seed=self.seed)
        return replace(base, objective=space.objective)

    def params(self, space: SearchSpace) -> dict[str, Any]:
        """The sweep's options and its trials' settings, as one nested dict (MLflow params,
        and the record ``--resume`` is checked against)."""
        sweep = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "train"}
        return sweep | asdict(self.settings(space))

    def resources(self, cluster_cpus: float) -> Resources:
        """Each trial's workers, sharing the cluster's CPUs with the other running trials."""
        per_trial = Resources(self.workers_per_trial, self.gpus_per_worker, self.cpus_per_worker)
        cpus = per_trial.cpus(cluster_cpus, runs=self.concurrency, driver_cpus=DRIVER_CPUS)
        return replace(per_trial, cpus_per_worker=cpus)

    def check(self) -> None:
        """Raises a UserError for the first bad option."""
        for name in ("samples", "workers_per_trial", "concurrency"):
            if getattr(self, name) < 1:
                raise UserError(
                    f"--{name.replace('_', '-')} must be >= 1 (got {getattr(self, name)})",
                    f"--{name.replace('_', '-')}",
                    "pass a positive integer",
                )
        if self.samples > MAX_SAMPLES:  # each trial keeps a Tune folder and an MLflow run
            raise UserError(
                f"--samples must be <= {MAX_SAMPLES:,} (got {self.samples:,})",
                "--samples",
                f"pass at most {MAX_SAMPLES:,}",
            )
        if self.scheduler not in ("asha", "fifo"):
            raise UserError(
                f"unknown scheduler {self.scheduler!r}", "--scheduler", "use asha or fifo"
            )
        if self.search not in ("tpe", "random"):
            raise UserError(f"unknown search {self.search!r}", "--search", "use tpe or random")


@dataclass(frozen=True)
class SweepConstants:
    """What every trial of a sweep shares (passed to each trial's driver)."""

    name: str  # the sweep's name: Tune's directory under ``storage``
    storage: str
    experiment: str
    parent: tracking.TrackingRun  # the sweep's MLflow parent run
    base: dict[str, Any]  # the space's base architecture JSON
    data: str  # the frame dataset, absolute
    settings: TrainSettings
    resources: Resources
    prepared: RunData | None = None  # read once before the first trial, shared by all


def check_batch_of_one(space: SearchSpace, base: dict[str, Any], settings: TrainSettings) -> None:
    """Refuses a batch size of one frame (``--batch-size 1``, or a space whose only batch
    size is 1) where every point drawn from ``space`` has a batch norm on a 1x1 map
    (:func:`~varnext_ray.train.check_batch_norm_batch`): each trial would fail. Where only
    some points have one, those trials fail alone, before their workers start."""
    sizes = space.batch_size or [settings.batch_size]
    if set(sizes) != {1}:
        return
    one = replace(settings, batch_size=1)
    failures = draw_failures(space, base, lambda arch: check_batch_norm_batch(arch, one))
    refused = [err for err in failures if err.where == "--batch-size"]  # not invalid points
    if refused:
        raise UserError(
            f"none of {SAMPLED_POINTS} points drawn from the space can train on batches of one "
            f"frame (the first: {refused[0].what})",
            "--batch-size",
            "pass --batch-size 2 or more",
        )


def sweep_trial(config: dict[str, Any], sweep: SweepConstants) -> None:
    """One Tune trial: sampled point -> validated architecture -> a Ray Train run.

    Args:
        config: The point Optuna sampled (``depth``, ``channels_0``, ``lr``, ...).
        sweep: The sweep's constants.
    """
    import ray.train
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    started = time.perf_counter()
    point = dict(config)
    trial_id = ray.tune.get_context().get_trial_id()
    name = trial_name(trial_id)
    trials = trials_dir(sweep.storage, sweep.name)
    run_dir = f"{trials}/{name}"
    run_id = run_records.read_record(run_dir)  # opened by the driver's TrialRuns callback
    if run_id is None:  # a sweep begun by a varnext whose trials opened their own runs
        raise UserError(
            "no MLflow run was opened for this trial by the sweep's driver",
            run_dir,
            "a sweep started by an older varnext cannot start new trials when resumed: "
            "start a new sweep (another --experiment or --storage)",
        )
    overrides = {
        k: cast(point[k]) for k, cast in (("lr", float), ("batch_size", int)) if k in point
    }
    settings = replace(sweep.settings, **overrides)
    try:  # a point no check before the sweep could refuse fails its own trial, before Train
        arch = parse_arch(point_to_arch(sweep.base, point), f"trial {trial_id}")
        check_batch_norm_batch(arch, settings)
    except UserError as err:
        write_outcome(run_dir, "FAILED", reason=str(err))
        raise
    trainer = build_trainer(
        arch=arch,
        data=Path(sweep.data),
        settings=settings,
        resources=sweep.resources,
        storage=trials,
        name=name,
        tracking_run=tracking.TrackingRun(sweep.parent.uri, run_id),
        callbacks=[TuneReportCallback()],
        prepared=sweep.prepared,
    )
    try:
        _, overhead = timed_fit(trainer, started)
    except ray.train.TrainingFailedError as err:
        write_outcome(run_dir, "FAILED", reason=failure_summary(err))
        raise
    write_outcome(run_dir, "FINISHED", overhead=overhead)


def _parent_run(
    uri: str,
    experiment: str,
    sweep_dir: str,
    name: str,
    params: dict,
    resume: bool,
    started_with: dict[str, Any],
) -> str:
    """The sweep's MLflow parent run: the recorded one on --resume, else a new one, recorded
    beside Tune's state with what the sweep was started with (:func:`check_resume_matches`)."""
    run_id = run_records.read_record(sweep_dir, SWEEP_FILE) if resume else None
    if run_id:
        tracking.client(uri).update_run(run_id, status="RUNNING")
        return run_id
    run_id = tracking.start_run(
        uri, experiment, run_name=name, params=params, tags={"varnext.kind": "sweep"}
    )
    run_records.write_record(sweep_dir, {"run_id": run_id, **started_with}, SWEEP_FILE)
    return run_id


def started_with(
    space: SearchSpace, base: dict[str, Any], options: SweepOptions, data: Path | str, uri: str
) -> dict[str, Any]:
    """What a sweep is started with and ``--resume`` must be given again: Tune restores its own
    searcher, scheduler and sample count, so a resume with other values would silently run
    the old ones (or, with another ``--samples``, look like a sweep cut short)."""
    space_json = json.dumps(
        {"space": space.model_dump(mode="json", warnings=False), "base": base}, sort_keys=True
    )
    return {
        "tracking_uri": uri,
        "data": str(Path(data).resolve()),
        "space_sha256": hashlib.sha256(space_json.encode()).hexdigest(),
        "options": {k: str(v) for k, v in tracking.flatten(options.params(space)).items()},
    }


def check_resume_matches(path: str, now: dict[str, Any]) -> None:
    """Refuses ``--resume`` with a tracking URI, dataset, search space or sweep option other
    than the sweep's first command (:func:`started_with`); a sweep recorded by an older
    varnext (no such record) is not checked."""
    record = run_records.read_json_record(path, SWEEP_FILE) or {}
    if "options" not in record:
        return
    changed = [
        f"{flag} {now[key]} (was {record.get(key)})"
        for key, flag in (("tracking_uri", "--tracking-uri"), ("data", "--data"))
        if record.get(key) != now[key]
    ]
    if record.get("space_sha256") != now["space_sha256"]:
        changed.append("--space (the search space or its base architecture changed)")
    then, current = record["options"], now["options"]
    changed += [
        f"{_option_name(key)} {current.get(key)} (was {then.get(key)})"
        for key in sorted(set(then) | set(current))
        if then.get(key) != current.get(key)
    ]
    if changed:
        raise UserError(
            "--resume continues a sweep with the options it was started with, and "
            + (f"{len(changed)} differ: " if len(changed) > 1 else "this one differs: ")
            + "; ".join(changed[:5])
            + (f"; and {len(changed) - 5} more" if len(changed) > 5 else ""),
            path,
            "repeat the first command's options with --resume, or start a new sweep "
            "(another --experiment or --storage)",
        )


def _option_name(key: str) -> str:
    """How a recorded option is named to the user: its flag where ``varnext sweep`` has one."""
    flag = f"--{key.replace('_', '-')}"
    return flag if key in _SWEEP_FLAGS else f"the setting {key}"


def make_searcher(space: SearchSpace, base: dict[str, Any], options: SweepOptions) -> Any:
    """Tune's OptunaSearch over the space: seeded multivariate TPE, or seeded random search."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    if not console.is_verbose():  # "A new study created in memory with name: optuna"
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    if options.search == "random":
        sampler = optuna.samplers.RandomSampler(seed=options.seed)
    else:
        startup = min(10, max(2, options.samples // 2))
        sampler = optuna.samplers.TPESampler(
            seed=options.seed, multivariate=True, n_startup_trials=startup
        )
    return OptunaSearch(
        space=DefineByRun(space, base),
        metric=space.objective,
        mode=space.direction,
        sampler=sampler,
    )


def make_scheduler(options: SweepOptions, epochs: int) -> Any:
    """ASHA (grace 1 epoch, halving) or FIFO; trials report once per epoch."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    # max_t one past the last epoch: a trial that reaches it ends by itself (closing its MLflow
    # run) rather than being stopped by the scheduler at its final report.
    if options.scheduler == "asha":
        return ASHAScheduler(max_t=epochs + 1, grace_period=1, reduction_factor=2)
    return FIFOScheduler()


def _tuner(
    space: SearchSpace, options: SweepOptions, constants: SweepConstants, path: str, resume: bool
) -> Any:
    """A new Tuner, or the restored one for ``--resume``."""
    import ray.tune

    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(sweep_trial, sweep=constants), {"CPU": DRIVER_CPUS}
    )
    trainable._progress_metrics = console.progress_metrics(space.objective)  # Tune's result box
    if resume:
        return ray.tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False)
    return ray.tune.Tuner(
        trainable,
        tune_config=ray.tune.TuneConfig(
            search_alg=make_searcher(space, constants.base, options),
            scheduler=make_scheduler(options, constants.settings.epochs),
            num_samples=options.samples,
            max_concurrent_trials=options.concurrency,
            **(
                {"metric": space.objective, "mode": space.direction}
                if options.scheduler == "asha"
                else {}
            ),
        ),
        run_config=ray.tune.RunConfig(
            name=constants.name,
            storage_path=constants.storage,
            failure_config=ray.tune.FailureConfig(max_failures=0),
            verbose=1,
            # restored with the Tuner on --resume: same store, experiment and parent run
            callbacks=[
                TrialRuns(
                    uri=constants.parent.uri,
                    experiment=constants.experiment,
                    parent_run_id=constants.parent.run_id,
                    trials=trials_dir(constants.storage, constants.name),
                    base=constants.base,
                    data=constants.data,
                )
            ],
        ),
    )


def check_resumable(path: str) -> None:
    """Refuses ``--resume`` of a sweep folder that holds no Tune state to restore, or a local
    one whose state is cut short: Tune would fail unpickling ``tuner.pkl`` after Ray started,
    or throw away an unreadable ``experiment_state-*.json`` and start the sweep over."""
    import pickletools

    import ray.tune

    if not ray.tune.Tuner.can_restore(path):
        raise UserError(
            "no sweep to resume", str(path), "run the same command without --resume to start it"
        )
    if "://" in path:
        return
    folder = Path(path)
    fix = "restore the sweep folder from a backup, or start a new sweep (another --experiment "
    fix += "or --storage)"
    states = sorted(folder.glob("experiment_state-*.json"))
    for file, check in [
        (folder / "tuner.pkl", lambda data: all(pickletools.genops(data))),  # never executed
        *[(state, json.loads) for state in states[-1:]],  # the one Tune restores
    ]:
        # a named pipe would block the read, /dev/zero or a huge file would fill the memory
        data = read_bounded(file, STATE_LIMIT, "the sweep's Tune state", fix)
        try:
            check(data)
        except (ValueError, UnicodeDecodeError, RecursionError) as err:
            raise UserError(
                f"the sweep's Tune state is damaged ({str(err).splitlines()[0][:120]})",
                str(file),
                fix,
            ) from None


STATE_LIMIT = 256 * 1024**2  # Tune's state of a sweep (its searcher, its trials), read whole


def check_new_sweep(path: str) -> None:
    """Refuses to start a sweep where one of the same experiment and space exists (a local
    folder that holds anything, a storage URI that exists): ``--resume`` continues it."""
    if _exists(path) if "://" in path else run_lock.occupied(path):
        raise UserError(
            "a sweep of this experiment and space already exists",
            str(path),
            "pass --resume to continue it, or another --experiment or --storage",
        )


def sweep_path(storage: Path | str, experiment: str, space_name: str) -> str:
    """Where a sweep keeps Tune's state: ``<storage>/sweep-<experiment>-<space name>`` (a
    ``file://`` storage as its local folder)."""
    storage = local_storage(storage)
    storage = str(storage) if "://" in str(storage) else str(Path(storage).resolve())
    return f"{storage}/sweep-{experiment}-{space_name}"


def run_sweep(
    *,
    space: SearchSpace,
    base: dict[str, Any],
    data: Path,
    options: SweepOptions,
    experiment: str,
    tracking_uri: str | None,
    storage: Path | str,
    resume: bool = False,
) -> SweepOutcome:
    """``varnext sweep``: the whole sweep, its MLflow parent run, and a summary of its trials.

    A local sweep folder is held (:func:`run_lock.held`) from before the check that it is new
    until the sweep ends, so of two identical sweeps only one runs; a storage URI (``s3://``,
    ``gs://``) cannot be locked, and is only checked.

    Raises:
        UserError: The sweep exists (without ``resume``), another varnext process runs it, or
            an input is refused.
    """
    options.check()
    settings = options.settings(space)
    settings.check()
    check_dataset(data, settings, options.workers_per_trial)
    check_batch_of_one(space, base, settings)
    uri = tracking.resolve_tracking_uri(tracking_uri)
    tracking.check_reachable(uri)
    storage = local_storage(storage)  # file:///...: a local folder, locked and checked as one
    check_not_inside(storage, "--storage", data, "the dataset (--data)")
    storage = str(storage) if "://" in str(storage) else str(Path(storage).resolve())
    name = f"sweep-{experiment}-{space.name}"
    path = sweep_path(storage, experiment, space.name)
    # held before the check: two sweeps started at once both passed it, into one folder
    fix = "wait for it to end, or pass another --experiment or --storage"
    with run_lock.held(path, what=f"the sweep {name!r}", fix=fix):
        if not resume:
            check_new_sweep(path)
        first = started_with(space, base, options, data, uri)
        if resume:
            check_trusted_storage(path)
            check_resumable(path)  # before the parent run is made and the data prepared
            check_resume_matches(path, first)
        space_params = space.model_dump(mode="json", warnings=False)
        params = tracking.flatten({"space": space_params, "sweep": options.params(space)})
        parent = _parent_run(uri, experiment, path, name, params, resume, first)
        prepared = None
        if options.share_data:
            started = time.perf_counter()
            prepared = prepare_run_data(data, settings, triplets=_base_triplets(base, settings))
            prepared = prepared.cut(options.workers_per_trial)  # once, not in every trial
            seconds = time.perf_counter() - started
            tracking.log_metrics(uri, parent, {"data_prepare_seconds": seconds}, step=0)
        constants = SweepConstants(
            name=name,
            storage=storage,
            experiment=experiment,
            parent=tracking.TrackingRun(uri, parent),
            base=base,
            data=str(Path(data).resolve()),
            settings=settings,
            resources=options.resources(cluster_cpus()),
            prepared=prepared,
        )
        os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
        # Ctrl-C raises KeyboardInterrupt here, as SIGTERM does, rather than make Tune stop and
        # return as if the sweep had ended (its state is saved at every trial event either way).
        os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
        tuner = _tuner(space, options, constants, path, resume)
        try:
            results = tuner.fit()
        except KeyboardInterrupt:  # SIGTERM (errors.Terminated) inside Tune's loop
            _interrupted(uri, experiment, parent)
        except Exception as err:  # Tune stopped: a callback's UserError (the store failed) says why
            found = user_error_in(err)
            if found is None:
                raise
            raise found from None
        ended = results.num_terminated + results.num_errors
        if len(results) < options.samples or ended < len(results):
            _interrupted(uri, experiment, parent)  # stopped (SIGUSR1) with trials left to run
        with tracking_errors.store_failures(uri, "as the sweep ended", STORE_FIX):
            rows = summarise(results, space, base)
            errors = {r["trial_id"]: r["error"] for r in rows}
            close_trial_runs(uri, experiment, parent, errors, settings.epochs)
            best = next((r for r in rows if r["objective"] is not None), None)
            if best is not None:
                objective = {f"best_{space.objective}": best["objective"]}
                tracking.log_metrics(uri, parent, objective, step=0)
                tracking.set_tags(
                    uri,
                    parent,
                    {"best_trial_id": best["trial_id"], "best_run_id": best.get("run_id") or ""},
                )
                tracking.end_run(uri, parent, "FINISHED")
            else:
                tracking.end_run(uri, parent, "FAILED", no_trial_finished(rows))
        return SweepOutcome(parent_run_id=parent, path=path, rows=rows, best=best)


def no_trial_finished(rows: list[dict[str, Any]]) -> str:
    """Why a sweep has no best trial, in one line: how many trials failed, and the first
    failure's reason."""
    failed = [r for r in rows if r.get("error")]
    first = f" (the first: {str(failed[0]['error']).splitlines()[0][:300]})" if failed else ""
    return f"no trial finished: {len(failed)} of {len(rows)} failed{first}"


def _interrupted(uri: str, experiment: str, parent: str) -> NoReturn:
    """The sweep was stopped by a signal: its open MLflow runs become KILLED (``--resume``
    reopens them) and the CLI says how to continue (exit 130, or 143 for SIGTERM)."""
    stop_ray_work()  # the trials' workers stop before their runs are closed, not after
    with contextlib.suppress(Exception):  # a store that is gone must not hide the signal
        store = tracking.client(uri)
        experiment_id = store.get_experiment_by_name(experiment).experiment_id
        running = f"tags.mlflow.parentRunId = '{parent}' and attributes.status = 'RUNNING'"
        for run in tracking.search_all_runs(store, experiment_id, filter_string=running):
            tracking.end_run(uri, run.info.run_id, "KILLED", "the sweep was stopped")
        tracking.end_run(uri, parent, "KILLED", "stopped by a signal")
    hint = (
        f"the sweep's MLflow run {parent} and its open trials are KILLED; the same varnext "
        "sweep command with --resume continues it"
    )
    raise (Terminated(hint) if terminated() else Interrupted(hint)) from None


def _base_triplets(base: dict[str, Any], settings: TrainSettings) -> bool:
    """Whether trials of the base architecture read triplets: the data the sweep prepares. A
    trial whose sampled loss differs (a searched linearity weight) prepares its own."""
    try:
        return settings.trains_on_triplets(parse_arch(base, "the space's base architecture"))
    except UserError:  # a base that is only valid with a sampled point
        return settings.train_on == "triplets"


def _exists(path: str) -> bool:
    """Whether a sweep directory exists (a local path or a storage URI)."""
    import pyarrow.fs

    fs, inner = run_records.storage_path(path)
    return fs.get_file_info(inner).type != pyarrow.fs.FileType.NotFound
