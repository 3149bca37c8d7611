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

import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from varnext_ray import tracking
from varnext_ray.arch import ArchConfig
from varnext_ray.dataset import (
    frames_dataset,
    load_manifest,
    sequence_index,
    sequences_dataset,
    triplet_index,
    triplets_dataset,
)
from varnext_ray.errors import UserError
from varnext_ray.train_loop import train_loop_per_worker

log = logging.getLogger(__name__)

OBJECTIVES = {  # metric -> the direction that is better
    "extrap_psnr": "max",
    "extrap_ssim": "max",
    "extrap_skill": "max",
    "extrap_mse": "min",
    "extrap_psnr_motion": "max",
    "oracle_psnr": "max",
    "val_loss": "min",
    "latent_linearity": "min",
}


@dataclass(frozen=True)
class TrainSettings:
    """Training hyperparameters (the architecture JSON holds the model and its loss)."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    stride: int = 1  # triplet stride s: frames t, t+s, t+2s
    val_triplets: int = 512  # at most this many validation triplets, evenly spaced
    shuffle_buffer: int = 256  # local shuffle buffer of training frames (0: off)
    seed: int = 0
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    compile: bool = False  # torch.compile the model
    objective: str = "extrap_psnr"
    torch_threads: int = 1
    rollout_steps: int = 4  # score extrapolations 1..K steps ahead each epoch (0: off)
    rollout_sequences: int = 64  # at most this many validation sequences for the rollouts
    train_on: str = "auto"  # "frames", "triplets", or auto: triplets when loss.linearity > 0

    def trains_on_triplets(self, arch: ArchConfig) -> bool:
        """Whether training reads (t, t+s, t+2s) triplets rather than single frames."""
        if self.train_on == "auto":
            return arch.loss.linearity > 0
        return self.train_on == "triplets"

    @property
    def mode(self) -> str:
        return OBJECTIVES[self.objective]

    def check(self) -> None:
        """Raises a UserError for the first out-of-range setting."""
        for name in ("epochs", "batch_size", "stride", "val_triplets"):
            if getattr(self, name) < 1:
                raise UserError(
                    f"{name} must be >= 1 (got {getattr(self, name)})",
                    f"--{name.replace('_', '-')}",
                    "pass a positive integer",
                )
        if self.rollout_steps < 0:
            raise UserError(
                f"rollout steps must be >= 0 (got {self.rollout_steps})",
                "--rollout-steps",
                "pass 0 to turn rollouts off, or a number of steps",
            )
        if self.train_on not in ("auto", "frames", "triplets"):
            raise UserError(
                f"unknown training input {self.train_on!r}",
                "--train-on",
                "use auto, frames or triplets",
            )
        if not self.lr > 0:
            raise UserError(f"learning rate must be > 0 (got {self.lr})", "--lr", "e.g. 1e-3")
        if self.objective not in OBJECTIVES:
            raise UserError(
                f"unknown objective metric {self.objective!r}",
                "objective",
                f"use one of {', '.join(sorted(OBJECTIVES))}",
            )


@dataclass(frozen=True)
class Resources:
    """Workers per run and what each holds. ``cpus_per_worker=None`` picks a share (below)."""

    workers: int = 2
    gpus_per_worker: float = 0.0
    cpus_per_worker: float | None = None

    def cpus(self, cluster_cpus: float) -> float:
        """CPUs per worker: as given, or 1 with GPUs, or a share leaving 1 CPU for Ray Data."""
        if self.cpus_per_worker is not None:
            return self.cpus_per_worker
        if self.gpus_per_worker > 0:
            return 1.0
        return round(max(0.1, min(1.0, (cluster_cpus - 1) / self.workers)), 2)


@dataclass
class TrainOutcome:
    """What a finished ``varnext train`` produced."""

    run_id: str
    metrics: dict[str, float]
    best_checkpoint: str | None
    path: str


def check_dataset(
    data: Path, settings: TrainSettings, workers: int = 1, arch: ArchConfig | None = None
) -> None:
    """A clear error before training when the dataset cannot train or validate."""
    manifest = load_manifest(data)
    on_triplets = settings.trains_on_triplets(arch) if arch else settings.train_on == "triplets"
    if on_triplets and len(triplet_index(manifest, "train", settings.stride)) < workers:
        raise UserError(
            f"training on triplets (loss.linearity > 0 or --train-on triplets) needs at least "
            f"{workers} training triplets of stride {settings.stride}",
            str(data),
            "lower --stride, re-ingest longer clips, or set loss.linearity to 0",
        )
    if manifest.data["splits"]["train"] < workers:
        raise UserError(
            f"the dataset has {manifest.data['splits']['train']} training frames "
            f"for {workers} workers",
            str(data),
            "re-ingest more footage or with smaller --val/--test fractions",
        )
    triplets = len(triplet_index(manifest, "val", settings.stride))
    if triplets < workers:
        raise UserError(
            f"the dataset has {triplets} validation triplets of stride "
            f"{settings.stride} for {workers} workers",
            str(data),
            f"re-ingest with --val > 0 (val clips need more than "
            f"{2 * settings.stride} frames) or lower --stride",
        )


def check_resources(resources: Resources, cpus_per_worker: float) -> None:
    """A clear error within seconds when the cluster can never place the workers."""
    import ray

    total = ray.cluster_resources()
    need_gpu = resources.workers * resources.gpus_per_worker
    if need_gpu > total.get("GPU", 0) + 1e-9 and not _autoscaling():
        raise UserError(
            f"{resources.workers} workers x {resources.gpus_per_worker} GPU need "
            f"{need_gpu:g} GPUs; the cluster has {total.get('GPU', 0):g}",
            "--workers/--gpus-per-worker",
            "ask for fewer, or add GPU nodes",
        )
    need_cpu = resources.workers * cpus_per_worker
    if need_cpu > total.get("CPU", 0) + 1e-9 and not _autoscaling():
        raise UserError(
            f"{resources.workers} workers x {cpus_per_worker:g} CPU need "
            f"{need_cpu:g} CPUs; the cluster has {total.get('CPU', 0):g}",
            "--workers",
            "ask for fewer workers or pass a smaller --cpus-per-worker",
        )


def _autoscaling() -> bool:
    """True on a cluster started by the launcher, whose nodes may still be coming."""
    return bool(os.environ.get("VARNEXT_AUTOSCALING"))


def build_trainer(
    *,
    arch: ArchConfig,
    data: Path,
    settings: TrainSettings,
    resources: Resources,
    storage: Path | str,
    name: str,
    tracking_run: dict[str, str] | None = None,
    callbacks: list[Any] | None = None,
    max_failures: int = 1,
) -> Any:
    """The TorchTrainer for one training run (``varnext train`` and each sweep trial).

    Args:
        arch: The validated architecture.
        data: The frame dataset directory.
        settings: Training settings.
        resources: Workers and what each holds.
        storage: Ray Train storage (a local absolute path or a URI such as s3://...).
        name: The run's name; the same storage and name resume from the latest checkpoint.
        tracking_run: ``{"uri", "run_id"}`` of the MLflow run that rank 0 logs to.
        callbacks: Ray Train UserCallbacks (a sweep passes Tune's TuneReportCallback).
        max_failures: Worker-group restarts from the last checkpoint after a crash.
    """
    import ray
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    ray.data.DataContext.get_current().enable_progress_bars = False
    cpus = resources.cpus(ray.cluster_resources().get("CPU", 1))
    check_resources(resources, cpus)
    triplets = settings.trains_on_triplets(arch)
    train_frames = (
        triplets_dataset(data, "train", stride=settings.stride)
        if triplets
        else frames_dataset(data, "train")
    )
    if _fits_in_object_store(data, copies=3 if triplets else 1):  # decode once, not every epoch
        train_frames = train_frames.materialize()
    worker_resources = {"CPU": cpus} | (
        {"GPU": resources.gpus_per_worker} if resources.gpus_per_worker else {}
    )
    datasets = {
        "train": train_frames.randomize_block_order(seed=settings.seed),
        "val": triplets_dataset(data, "val", stride=settings.stride, limit=settings.val_triplets),
    }
    horizons = _rollout_horizons(data, settings)
    if horizons:
        datasets["rollout"] = sequences_dataset(
            data, "val", settings.stride, length=horizons + 2, limit=settings.rollout_sequences
        )
    config = {
        "arch": arch.to_dict(),
        "settings": asdict(settings)
        | {"mode": settings.mode, "train_on": "triplets" if triplets else "frames"}
        | {"rollout_steps": horizons},
        "tracking": tracking_run,
    }
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.workers,
            use_gpu=resources.gpus_per_worker > 0,
            resources_per_worker=worker_resources,
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=list(datasets)),
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
        ),
    )


def _rollout_horizons(data: Path, settings: TrainSettings) -> int:
    """The rollout horizon K to score: ``settings.rollout_steps``, shortened to fit the clips.

    The validation clips must hold K + 2 frames s apart; with shorter clips K shrinks (to 0,
    no rollout metrics, when not even one step fits), with a warning.
    """
    manifest = load_manifest(data)
    for horizons in range(settings.rollout_steps, 0, -1):
        if sequence_index(manifest, "val", settings.stride, horizons + 2):
            if horizons < settings.rollout_steps:
                log.warning(
                    "validation clips are too short for %d rollout steps; scoring %d",
                    settings.rollout_steps,
                    horizons,
                )
            return horizons
    return 0


def _fits_in_object_store(data: Path, share: float = 0.25, copies: int = 1) -> bool:
    """Whether the decoded training frames (``copies`` times) take at most ``share`` of the
    object store.

    Then the training dataset is materialised once: Ray Data otherwise re-reads and decodes
    the split every epoch (benchmarks/train_overhead.py measured that as the main gap between
    Ray Train and a plain loop).
    """
    import ray

    manifest = load_manifest(data)
    width, height = manifest.size
    needed = manifest.data["splits"]["train"] * width * height * 3 * copies
    return needed <= share * ray.cluster_resources().get("object_store_memory", 0)


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


def connect_ray(address: str | None = None, num_cpus: float | None = None) -> None:
    """Connects to ``address`` or ``RAY_ADDRESS``; with neither, starts a local Ray on loopback.

    The local instance keeps the dashboard on (Train frees finished workers' placement groups
    through it) and binds to 127.0.0.1. Every worker of the job gets ``RAY_ADDRESS`` set to this
    cluster's GCS address: Train's PlacementGroupCleaner looks the cluster up by that, and
    without it fails ("Found multiple active Ray instances") whenever another Ray runs on the
    same machine, leaving finished trials' workers reserved and the next trial waiting forever.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        env = {"RAY_ADDRESS": address} if _is_gcs_address(address) else {}
        ray.init(address=address, log_to_driver=True, runtime_env={"env_vars": env})
        return
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    port = _free_port()
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)  # read by the local node that ray.init starts
    try:
        ray.init(
            address="local",  # a new instance, never one that `ray start` left recorded in /tmp
            num_cpus=num_cpus,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            log_to_driver=True,
            runtime_env={"env_vars": {"RAY_ADDRESS": f"127.0.0.1:{port}"}},
        )
    finally:
        del os.environ["RAY_GCS_SERVER_PORT"]


def _is_gcs_address(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit() and "://" not in address


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    """``varnext train``: one architecture, trained with DDP on Ray, recorded in one MLflow run."""
    import ray
    import ray.train

    settings.check()
    check_dataset(data, settings, resources.workers, arch)
    uri = tracking.resolve_tracking_uri(tracking_uri)
    tracking.check_reachable(uri)
    storage = Path(storage).resolve() if "://" not in str(storage) else storage
    check_resources(resources, resources.cpus(ray.cluster_resources().get("CPU", 1)))
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
    tracking.log_dict(uri, run_id, arch.to_dict(), "arch/arch.json")
    trainer = build_trainer(
        arch=arch,
        data=data,
        settings=settings,
        resources=resources,
        storage=storage,
        name=name,
        tracking_run={"uri": uri, "run_id": run_id},
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as err:
        reason = _failure_reason(err)
        tracking.end_run(uri, run_id, "FAILED", reason)
        raise TrainingFailed(reason, run_id) from None
    best = best_checkpoint(result, settings.objective, settings.mode)
    tracking.end_run(uri, run_id, "FINISHED")
    return TrainOutcome(
        run_id=run_id,
        metrics=dict(result.metrics or {}),
        best_checkpoint=best[0].path if best else None,
        path=str(result.path),
    )


class TrainingFailed(RuntimeError):
    """A training run failed (its MLflow run is marked FAILED with the reason)."""

    def __init__(self, reason: str, run_id: str) -> None:
        self.reason = reason
        self.run_id = run_id
        super().__init__(f"training failed: {reason} (MLflow run {run_id})")


def _failure_reason(err: BaseException) -> str:
    """The innermost useful line of a Ray Train failure (e.g. the worker's exception)."""
    text = str(err)
    for line in reversed(text.splitlines()):
        if "Error:" in line or "Error(" in line:
            return line.strip()[:500]
    return text.strip().splitlines()[-1][:500] if text.strip() else type(err).__name__
