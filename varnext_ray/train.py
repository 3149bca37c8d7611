"""Distributed training on Ray Train: the TorchTrainer builder and the ``varnext train`` driver.

:func:`build_trainer` wires a :class:`~ray.train.torch.TorchTrainer` from a JSON architecture,
a frame dataset and settings; ``varnext train`` and every sweep trial call it. Checkpoints go to
``<storage>/<name>/``: the best by the objective and the latest are kept, and running the same
command again (same storage and name) resumes from the latest, continuing the same MLflow run.

Example:
    >>> outcome = train(arch=load_arch("configs/smoke_64x36.json"), data=Path("runs/dataset"),
    ...                 settings=TrainSettings(epochs=2), resources=Resources(workers=2),
    ...                 experiment="smoke", tracking_uri=None, storage=Path("runs/ray"),
    ...                 name="smoke")
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from varnext_ray import (
    console,
    mlflow_extras,
    run_lock,
    run_records,
    tracking,
    tracking_errors,
)
from varnext_ray.arch import ArchConfig
from varnext_ray.arch_shapes import batch_norm_on_one_value
from varnext_ray.cluster import Resources, check_resources, cluster_cpus, stop_ray_work
from varnext_ray.errors import (
    Interrupted,
    Terminated,
    UserError,
    failure_summary,
    terminated,
)
from varnext_ray.frame_codec import FRAME_CHANNELS
from varnext_ray.manifest import load_manifest, triplet_index
from varnext_ray.safe_io import os_reason
from varnext_ray.settings import TrainSettings, check_name
from varnext_ray.train_data import (
    DataKey,
    RunData,
    datasets_to_split,
    prepare_run_data,
    run_datasets,
    steps_per_pass,
)
from varnext_ray.worker_entry import LoopConfig, train_loop_per_worker

log = logging.getLogger(__name__)


@dataclass
class TrainOutcome:
    """What a finished ``varnext train`` produced."""

    run_id: str
    metrics: dict[str, float]
    best_checkpoint: str | None
    path: str


def check_batch_norm_batch(arch: ArchConfig, settings: TrainSettings) -> None:
    """A UserError when ``arch`` has a batch norm on a 1x1 map and ``settings`` train it on
    batches of one frame (PyTorch refuses such a batch norm in training, mid-run)."""
    one_value = batch_norm_on_one_value(arch)
    if one_value and settings.batch_size == 1 and not settings.trains_on_triplets(arch):
        raise UserError(
            f"{one_value}: batch norm on a 1x1 map sees one value per channel in a batch of one "
            "frame, which PyTorch cannot normalise in training",
            "--batch-size",
            "pass --batch-size 2 or more",
        )


def check_dataset(
    data: Path, settings: TrainSettings, workers: int = 1, arch: ArchConfig | None = None
) -> None:
    """A clear error before training when the dataset cannot train or validate."""
    on_triplets = settings.trains_on_triplets(arch) if arch else settings.train_on == "triplets"
    if arch is not None:
        check_batch_norm_batch(arch, settings)
    manifest = load_manifest(data, check_keys=True)
    if arch is not None:
        check_frame_size(manifest.size, arch.input.shape, data)
    if on_triplets and len(triplet_index(manifest, "train", settings.stride)) < workers:
        raise UserError(
            f"training on triplets (loss.linearity_weight > 0 or --train-on triplets) needs at "
            f"least {workers} training triplets of stride {settings.stride}",
            str(data),
            "lower --stride or the number of workers, re-ingest longer clips, or set "
            "loss.linearity_weight to 0",
        )
    if manifest.frames("train") < workers:
        raise UserError(
            f"the dataset has {manifest.frames('train')} training frames for {workers} workers",
            str(data),
            "use fewer workers, or re-ingest more footage or with smaller --val/--test fractions",
        )
    triplets = len(triplet_index(manifest, "val", settings.stride))
    if triplets < workers:
        raise UserError(
            f"the dataset has {triplets} validation triplets of stride "
            f"{settings.stride} for {workers} workers",
            str(data),
            f"use fewer workers (each scores its own share), lower --stride, or re-ingest "
            f"with --val > 0 (val clips need more than {2 * settings.stride} frames)",
        )


def check_frame_size(size: tuple[int, int], input_shape: tuple[int, ...], data: Path) -> None:
    """The dataset's frames (W, H), RGB, must be the architecture's input (C, H, W)."""
    width, height = size
    want_c, want_h, want_w = input_shape
    if want_c != FRAME_CHANNELS:
        raise UserError(
            f"the dataset's frames have {FRAME_CHANNELS} channels (RGB) but the architecture "
            f"reads {want_c} (input.channels)",
            str(data),
            f"set input.channels to {FRAME_CHANNELS} in the architecture",
        )
    if (width, height) != (want_w, want_h):
        raise UserError(
            f"the dataset's frames are {width}x{height} but the architecture reads "
            f"{want_w}x{want_h}",
            str(data),
            f"re-ingest with --size {want_w}x{want_h}, or use an architecture whose input is "
            f'{{"width": {width}, "height": {height}}}',
        )


ARCH_FILE = "varnext_arch.json"  # beside the run's Ray state: the digest of its architecture
# Ray Train's record, in a run's directory, of the checkpoints it registered
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"


def arch_digest(arch: ArchConfig) -> str:
    """sha256 of the normalised architecture (``to_dict()``, keys sorted), not of its file."""
    return hashlib.sha256(json.dumps(arch.to_dict(), sort_keys=True).encode()).hexdigest()


def run_dir(storage: Path | str, name: str) -> str:
    """``<storage>/<name>``: where Ray Train keeps the run (a local storage resolved)."""
    storage = Path(storage).resolve() if "://" not in str(storage) else storage
    return f"{storage}/{name}"


def check_run_folder(storage: Path | str, name: str) -> None:
    """Refuses a ``--name`` whose folder under a local ``--storage`` exists and is not a run
    (before Ray): a file, or a folder that holds something else (the dataset itself, a
    checkpoint, anyone's files), which the run's lock, records and checkpoints would be
    written among. New and empty folders, and the folders of earlier runs, pass.
    """
    directory = run_dir(storage, name)
    if "://" in directory or not os.path.lexists(directory):
        return
    fix = "pass another --name (the folder of a run holds its varnext_run.json)"
    try:
        entries = {entry.name: entry.is_dir() for entry in os.scandir(directory)}
    except NotADirectoryError:
        raise UserError(
            f"--name {name!r} names a file in --storage, not a run's folder", directory, fix
        ) from None
    except OSError as err:
        raise UserError(f"cannot read the folder ({os_reason(err)})", directory, fix) from None
    entries.pop(run_lock.LOCK_FILE, None)  # left by a run killed before it wrote anything
    ours = {run_records.RUN_FILE, ARCH_FILE, SNAPSHOT_FILE}
    if (
        not entries
        or ours & entries.keys()
        or any(is_dir and re.fullmatch(r"epoch_\d+", entry) for entry, is_dir in entries.items())
    ):
        return
    held = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
    raise UserError(
        f"--name {name!r} names a folder in --storage that is not a varnext run (it holds "
        f"{held}): the run would write its lock, records and checkpoints among them",
        directory,
        fix,
    )


def check_same_arch(storage: Path | str, name: str, arch: ArchConfig) -> None:
    """Refuses to resume a run trained with another architecture, or from a latest checkpoint
    that does not read (before Ray and MLflow: the workers would fail on it, and the run turn
    FAILED).

    The run's :data:`ARCH_FILE` holds its digest; a run from before it existed is compared by
    its checkpoints' ``arch.json``. A new run (no such directory) passes.
    """
    directory = run_dir(storage, name)
    record = run_records.read_json_record(directory, ARCH_FILE)
    if record is not None:
        same = record.get("sha256") == arch_digest(arch)
    else:
        same = all(stored == arch.to_dict() for stored in _checkpoint_archs(directory))
    if not same:
        raise UserError(
            f"a run named {name!r} in {directory.rsplit('/', 1)[0]} holds another architecture",
            "--name",
            "pass another --name, or the config it was trained with to continue it",
        )
    _check_latest_checkpoint(directory)


def _latest_checkpoint(directory: str) -> str | None:
    """The name (``epoch_NNNN``) of the checkpoint a local run resumes from: the latest Ray
    Train registered in its snapshot. None for a remote run, or without a readable snapshot.
    A folder Ray never registered (an upload cut short, or anything else named ``epoch_*``)
    is never it."""
    from varnext_ray.safe_io import read_json

    snapshot = Path(directory) / SNAPSHOT_FILE
    if "://" in directory or not snapshot.is_file():
        return None
    try:
        record = read_json(snapshot, what=SNAPSHOT_FILE, limit=64 * 2**20, allow_nan=True)
        name = record["latest_checkpoint_result"]["checkpoint_dir_name"]
    except (UserError, KeyError, TypeError):  # Ray's own file: Ray says what it makes of it
        return None
    return name if isinstance(name, str) and re.fullmatch(r"epoch_\d+", name) else None


def _check_latest_checkpoint(directory: str) -> dict[str, Any] | None:
    """The meta.json of the checkpoint a local run resumes from (:func:`_latest_checkpoint`),
    checked to read with its file hashes; None for a new or remote run."""
    from varnext_ray.checkpoint_read import read_meta

    name = _latest_checkpoint(directory)
    if name is None:
        return None
    try:
        return read_meta(Path(directory) / name)
    except UserError as err:
        raise UserError(
            f"the run's latest checkpoint does not read ({err.what})",
            err.where,
            "put the checkpoint back (it is the one the run resumes from), or pass another "
            "--name for a new run; removing the run's folder trains it anew and loses its "
            "other checkpoints",
        ) from None


def check_same_objective(storage: Path | str, name: str, objective: str) -> None:
    """Refuses to resume a run with another ``--objective``: its best value so far (PSNR in
    dB, say) was carried over and compared with the new metric (SSIM, about 0.5), so no
    epoch ever became the new best and its best checkpoint stayed the old objective's."""
    directory = run_dir(storage, name)
    meta = _check_latest_checkpoint(directory)
    theirs = ((meta or {}).get("extra") or {}).get("objective")
    if isinstance(theirs, str) and theirs != objective:
        raise UserError(
            f"a run named {name!r} in {directory.rsplit('/', 1)[0]} was trained for the "
            f"objective {theirs!r}, not {objective!r}",
            "--objective",
            f"pass --objective {theirs} to continue it, or another --name for a new run",
        )


def check_same_experiment(
    storage: Path | str, name: str, experiment: str, tracking_uri: str, epochs: int
) -> None:
    """Before Ray: refuses to continue a run of another MLflow experiment under this name (it
    would go on logging there, and ``--experiment`` would stay empty), and says when the run
    has no epoch left to train.

    Raises:
        UserError: ``<storage>/<name>`` records an MLflow run of this tracking store that
            belongs to another experiment.
    """
    directory = run_dir(storage, name)
    record = run_records.read_json_record(directory, run_records.RUN_FILE)
    if record is not None and record.get("tracking_uri") == tracking_uri:
        run_id = run_records.read_record(directory)
        theirs = tracking.experiment_of_run(tracking_uri, run_id) if run_id else None
        if theirs is not None and theirs != experiment:
            raise UserError(
                f"a run named {name!r} in {directory.rsplit('/', 1)[0]} is MLflow run {run_id} "
                f"of experiment {theirs!r}, not {experiment!r}",
                "--experiment",
                f"pass --experiment {theirs} to continue it, or another --name to start a new "
                f"run in {experiment!r}",
            )
    done = _epochs_done(directory)
    if done >= epochs:
        log.warning(
            "the run named %r already trained %d epochs (--epochs %d): nothing is left to "
            "train; pass a larger --epochs to train it on, or another --name for a new run",
            name,
            done,
            epochs,
        )


def _epochs_done(directory: str) -> int:
    """The epochs a run has trained: its resume checkpoint's number (:func:`_latest_checkpoint`);
    where Ray's snapshot cannot be read here (remote storage), the highest ``epoch_NNNN`` folder."""
    latest = _latest_checkpoint(directory)
    if latest is not None:
        return int(latest[6:])
    folders = [int(d[6:]) for d in _subdirs(directory) if re.fullmatch(r"epoch_\d+", d)]
    return max(folders, default=0)


def _subdirs(directory: str) -> list[str]:
    """The names of a run directory's folders (checkpoints are ``epoch_NNNN``); none if it
    cannot be read."""
    import pyarrow.fs

    fs, path = run_records.storage_path(directory)
    try:
        entries = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    except OSError:
        return []
    return [e.base_name for e in entries if e.type == pyarrow.fs.FileType.Directory]


_NO_BOUNDS = {"max_params": math.inf, "max_activation_bytes": math.inf}  # compare, not judge


def _checkpoint_archs(directory: str) -> list[dict[str, Any]]:
    """The normalised architectures of the checkpoints in a run directory (unreadable ones are
    skipped: resuming reports them)."""
    from varnext_ray.arch import parse_arch

    archs = []
    for base_name in _subdirs(directory):
        try:
            where = f"{directory}/{base_name}"  # keeps a storage URI's scheme
            stored = run_records.read_json_record(where, "arch.json")
            if stored is not None:
                archs.append(parse_arch(stored, where, **_NO_BOUNDS).to_dict())
        except (UserError, OSError):
            continue
    return archs


def build_trainer(
    *,
    arch: ArchConfig,
    data: Path,
    settings: TrainSettings,
    resources: Resources,
    storage: Path | str,
    name: str,
    tracking_run: tracking.TrackingRun | None = None,
    callbacks: list[Any] | None = None,
    max_failures: int = 1,
    prepared: RunData | None = None,
) -> Any:
    """The TorchTrainer for one training run (``varnext train`` and each sweep trial).

    Args:
        arch: The validated architecture.
        data: The frame dataset directory.
        settings: Training settings.
        resources: Workers and what each holds.
        storage: Ray Train storage (a local absolute path or a URI such as s3://...).
        name: The run's name; the same storage and name resume from the latest checkpoint.
        tracking_run: The MLflow run that rank 0 logs to.
        callbacks: Ray Train UserCallbacks (a sweep passes Tune's TuneReportCallback).
        max_failures: Worker-group restarts from the last checkpoint after a crash.
        prepared: Datasets prepared before (a sweep's, shared by its trials); prepared here
            when None or made for other settings.
    """
    import ray
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    ray.data.DataContext.get_current().enable_progress_bars = False
    console.quiet_ray_data()
    cpus = resources.cpus(cluster_cpus())
    check_resources(resources, cpus)
    triplets = settings.trains_on_triplets(arch)
    if prepared is None or prepared.key != DataKey.of(data, settings, triplets):
        prepared = prepare_run_data(data, settings, triplets=triplets)
    passes = settings.passes_per_epoch(
        steps_per_pass(prepared.train_rows, settings.batch_size, resources.workers)
    )
    datasets = run_datasets(prepared, passes, settings.seed, resources.workers)
    loop = LoopConfig(
        arch=arch.to_dict(),
        settings=settings,
        on_triplets=triplets,
        rollout_steps=prepared.horizons,
        tracking=tracking_run,
        background=prepared.background,
        passes_per_epoch=passes,
        eval_split=not prepared.eval_materialised,
        train_parts=prepared.train_materialised,
    )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"loop": loop},  # Ray Train takes a dict; its one value is typed
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.workers,
            use_gpu=resources.gpus_per_worker > 0,
            resources_per_worker=resources.per_worker(cpus),
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=datasets_to_split(prepared)),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(storage),
            callbacks=callbacks or [],
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1,
                checkpoint_score_attribute=settings.objective,
                checkpoint_score_order=settings.mode,
            ),
            failure_config=ray.train.FailureConfig(
                max_failures=max_failures, controller_failure_limit=3
            ),
            logging_config=console.train_logging_config(),  # ray.train INFO only with -v
        ),
    )


def best_checkpoint(result: Any, objective: str, mode: str) -> tuple[Any, dict] | None:
    """The (Checkpoint, metrics) of ``result`` best by the objective, or None."""
    scored = [
        (c, m)
        for c, m in (result.best_checkpoints or [])
        if isinstance(m.get(objective), int | float) and math.isfinite(m[objective])
    ]
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda cm: cm[1][objective])


def train(
    *,
    arch: ArchConfig,
    data: Path,
    settings: TrainSettings,
    resources: Resources,
    experiment: str,
    tracking_uri: str | None,
    storage: Path | str,
    name: str,
) -> TrainOutcome:
    """``varnext train``: one architecture, trained with DDP on Ray, recorded in one MLflow run.

    A local run folder (``<storage>/<name>``) is held (:func:`run_lock.held`) from before its
    records are read until the run ends, so a second process of the same run is refused at
    once; a storage URI (``s3://``, ``gs://``) cannot be locked and is not.

    Raises:
        UserError: Another varnext process trains the same run, or an input is refused.
    """
    import ray.train

    from varnext_ray.output_checks import check_not_inside
    from varnext_ray.storage_checks import local_storage

    started = time.perf_counter()
    check_name(name, "--name")
    check_run_folder(storage, name)
    settings.check()
    check_dataset(data, settings, resources.workers, arch)
    uri = tracking.resolve_tracking_uri(tracking_uri)
    tracking.check_reachable(uri)
    storage = local_storage(storage)  # file:///...: a local folder, locked and checked as one
    check_not_inside(storage, "--storage", data, "the dataset (--data)")
    storage = Path(storage).resolve() if "://" not in str(storage) else storage
    # one process at a time: a second one of this run trained it anew into the same folder
    fix = "wait for it to end, or pass another --name"
    with run_lock.held(run_dir(storage, name), what=f"the run named {name!r}", fix=fix):
        check_resources(resources, resources.cpus(cluster_cpus()))
        check_same_arch(storage, name, arch)
        params = tracking.flatten(
            {
                "arch": arch.to_dict(),
                "train": asdict(settings),
                "workers": resources.workers,
                "gpus_per_worker": resources.gpus_per_worker,
                "data": str(Path(data).resolve()),
            }
        )
        run_id = tracking.run_for_directory(
            uri, experiment, f"{storage}/{name}", name, params, tags={"varnext.kind": "train"}
        )
        try:
            run_records.write_record(f"{storage}/{name}", {"sha256": arch_digest(arch)}, ARCH_FILE)
            tracking.log_dict(uri, run_id, arch.to_dict(), "arch/arch.json")
            mlflow_extras.log_dataset_inputs(uri, run_id, data)
            trainer = build_trainer(
                arch=arch,
                data=data,
                settings=settings,
                resources=resources,
                storage=storage,
                name=name,
                tracking_run=tracking.TrackingRun(uri, run_id),
            )
            result, overhead = timed_fit(trainer, started)
        except ray.train.TrainingFailedError as err:
            reason = failure_summary(err)
            with tracking_errors.store_failures(uri, "as the run ended", STORE_FIX):
                tracking.end_run(uri, run_id, "FAILED", reason)
            raise TrainingFailed(reason, run_id) from None
        except (KeyboardInterrupt, SystemExit):
            # Ctrl-C: Ray Train's own handler aborts the run gracefully, then Ray's get() raises
            # SystemExit(1); SIGTERM: a KeyboardInterrupt (errors.Terminated). The run was stopped.
            how = "terminated (SIGTERM)" if terminated() else "interrupted"
            stop_ray_work()  # the workers stop before the run is closed, not after
            with contextlib.suppress(Exception):  # a store that is gone must not hide the signal
                tracking.end_run(uri, run_id, "KILLED", how)
            hint = f"MLflow run {run_id} is KILLED; {RESUME_HINT}"
            raise (Terminated(hint) if terminated() else Interrupted(hint)) from None
        except Exception as err:  # the data (a damaged frame), the storage: never left RUNNING
            with contextlib.suppress(Exception):
                tracking.end_run(uri, run_id, "FAILED", failure_summary(err))
            raise
        with tracking_errors.store_failures(uri, "as the run ended", STORE_FIX):
            tracking.log_metrics(uri, run_id, overhead, step=0)
            best = best_checkpoint(result, settings.objective, settings.mode)
            tracking.end_run(uri, run_id, "FINISHED")
        return TrainOutcome(
            run_id=run_id,
            metrics=dict(result.metrics or {}),
            best_checkpoint=best[0].path if best else None,
            path=str(result.path),
        )


def timed_fit(trainer: Any, started: float) -> tuple[Any, dict[str, float]]:
    """``trainer.fit()``'s result and :func:`overhead_metrics` of the run that began at
    ``started`` (``time.perf_counter()``)."""
    fit_started = time.perf_counter()
    result = trainer.fit()
    done = time.perf_counter()
    overhead = overhead_metrics(
        total_s=done - started,
        setup_s=fit_started - started,
        fit_s=done - fit_started,
        last=dict(result.metrics or {}),
    )
    return result, overhead


def overhead_metrics(
    *, total_s: float, setup_s: float, fit_s: float, last: dict[str, Any]
) -> dict[str, float]:
    """Where a run's wall time went outside its epochs, in seconds (``overhead_*``, logged to
    the run's MLflow run; docs/training.md).

    Args:
        total_s: The whole run, from the command's (or trial's) start to ``fit()`` returning.
        setup_s: Before ``fit()``: MLflow run, datasets, the trainer.
        fit_s: ``fit()`` itself.
        last: The last epoch's report (cumulative ``epochs_seconds`` and ``loop_seconds``).
    """
    epochs = float(last.get("epochs_seconds", math.nan))
    loop = float(last.get("loop_seconds", math.nan))
    return {
        "overhead_seconds": total_s - epochs,  # everything but the epochs
        "overhead_setup_seconds": setup_s,
        "overhead_workers_seconds": fit_s - loop,  # controller, worker group, teardown
        "overhead_loop_seconds": loop - epochs,  # model build, checkpoints and reports
    }


RESUME_HINT = "the same varnext train command (same --storage and --name) continues it"
STORE_FIX = f"bring the store back; {RESUME_HINT} from the last checkpoint"


class TrainingFailed(RuntimeError):
    """A training run failed (its MLflow run is marked FAILED with the reason)."""

    def __init__(self, reason: str, run_id: str) -> None:
        self.reason = reason
        self.run_id = run_id
        super().__init__(f"training failed: {reason} (MLflow run {run_id})")
