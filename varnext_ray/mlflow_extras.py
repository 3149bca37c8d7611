"""MLflow conventions beyond params and metrics: experiment kind, dataset inputs, system metrics.

- Every experiment the project creates or logs to carries ``mlflow.experimentKind =
  custom_model_development`` (set when missing; a value already there is left alone), so the
  MLflow 3 UI opens it on "Training runs" rather than its GenAI view.
- Every train and trial run logs the frame dataset it reads as MLflow dataset inputs, one per
  split with the contexts ``training`` and ``validation`` (name, a digest of ``dataset.json``,
  the dataset's path as source, the Parquet columns as schema, frame counts as profile): the
  runs table's Dataset column then says what each run trained on.
- :func:`system_metrics` samples CPU, memory, disk, network and (with NVIDIA's NVML) GPU use
  into the run as ``system/*`` metrics with MLflow's own ``SystemMetricsMonitor``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
CONTEXTS = {"train": "training", "val": "validation"}  # split -> MLflow input context
SYSTEM_METRICS_INTERVAL_S = 10.0
_ARROW_TO_MLFLOW = {  # pyarrow type name prefix -> MLflow column type
    "int8": "integer",
    "int16": "integer",
    "int32": "integer",
    "int64": "long",
    "uint": "long",
    "float": "float",
    "double": "double",
    "bool": "boolean",
    "string": "string",
    "large_string": "string",
    "binary": "binary",
    "large_binary": "binary",
    "timestamp": "datetime",
}


def ensure_experiment_kind(client: Any, experiment_id: str) -> None:
    """Tags the experiment ``mlflow.experimentKind = custom_model_development`` unless it
    already has a kind (a user's own value is left alone)."""
    experiment = client.get_experiment(experiment_id)
    if EXPERIMENT_KIND_TAG not in (experiment.tags or {}):
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)


def ui_url(base: str, experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI page of an experiment (or one of its runs) in the training-runs view.

    MLflow 3.17's UI picks its GenAI or model-training view from a browser setting (default
    GenAI) or the ``workflowType`` URL parameter, not from the experiment's kind tag, so the
    links this project prints carry ``workflowType=machine_learning``.
    """
    page = f"{base.rstrip('/')}/#/experiments/{experiment_id}" + (
        f"/runs/{run_id}" if run_id else ""
    )
    return f"{page}?workflowType=machine_learning"


def manifest_digest(data: str | Path) -> str:
    """The first 32 hex digits of the sha256 of the dataset's ``dataset.json``."""
    from varnext_ray.manifest import MANIFEST

    return hashlib.sha256((Path(data) / MANIFEST).read_bytes()).hexdigest()[:32]


def _column_type(arrow_type: Any) -> str:
    name = str(arrow_type)
    for prefix, kind in _ARROW_TO_MLFLOW.items():
        if name.startswith(prefix):
            return kind
    return "string"


def frame_schema(files: list[str]) -> dict[str, Any]:
    """MLflow's column schema (``{"mlflow_colspec": [...]}``) of the dataset's Parquet files."""
    import pyarrow.parquet as pq

    if not files:
        return {"mlflow_colspec": []}
    schema = pq.read_schema(files[0])
    columns = [
        {"type": _column_type(field.type), "name": field.name, "required": not field.nullable}
        for field in schema
    ]
    return {"mlflow_colspec": columns}


def dataset_inputs(data: str | Path, splits: tuple[str, ...] = ("train", "val")) -> list[Any]:
    """One MLflow ``DatasetInput`` per split of the frame dataset at ``data``.

    Each is named ``<dataset dir>/<split>``, with the manifest's digest, the dataset's absolute
    path as a ``local`` source, the Parquet columns as schema, and a profile of the split's
    frames, clips and frame size; the input's context tag is ``training`` or ``validation``.
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag

    from varnext_ray.manifest import load_manifest

    manifest = load_manifest(data, check_files=False)
    root = manifest.root
    digest = manifest_digest(root)
    inputs = []
    for split in splits:
        profile = {
            "frames": manifest.frames(split),
            "clips": len(manifest.clips(split)),
            "size": list(manifest.size),
            "encoding": manifest.encoding,
            "split": split,
        }
        dataset = Dataset(
            name=f"{root.name}/{split}",
            digest=digest,
            source_type="local",
            source=json.dumps({"uri": str(root)}),
            schema=json.dumps(frame_schema(manifest.files(split))),
            profile=json.dumps(profile),
        )
        context = CONTEXTS.get(split, split)
        inputs.append(DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)]))
    return inputs


def log_dataset_inputs(uri: str, run_id: str, data: str | Path) -> None:
    """Logs the dataset's train and val splits as inputs of the run (see :func:`dataset_inputs`).

    A resumed run that already holds them is left as it is (MLflow would duplicate nothing,
    but the call is skipped).
    """
    from varnext_ray import tracking

    client = tracking.client(uri)
    logged = client.get_run(run_id).inputs
    have = {(d.dataset.name, d.dataset.digest) for d in (logged.dataset_inputs if logged else [])}
    todo = [d for d in dataset_inputs(data) if (d.dataset.name, d.dataset.digest) not in have]
    if todo:
        client.log_inputs(run_id, datasets=todo)


class SystemMetrics:
    """Samples system metrics into a run every ``interval_s`` seconds until :meth:`stop`.

    MLflow's ``SystemMetricsMonitor`` (CPU and memory through psutil, GPU through NVML where
    present) logs ``system/*`` metrics, continuing the step count of a resumed run. Its first
    sample lands only after one interval, so a run stopped sooner (a short trial, or one that
    ASHA ends right after an epoch's report, killing its workers) would have none:
    :meth:`ensure_logged`, called before each report, and :meth:`stop` log one sample
    themselves when the monitor has not yet. Failing to start (no psutil) only logs a
    warning: the run itself matters more.

    The monitor starts in a thread of its own: importing MLflow and opening its store take
    about 1.5 s in a fresh Train worker, which rank 0 would otherwise spend before its first
    step while the other ranks wait for it at the first all-reduce (issue #18).
    :meth:`ensure_logged` and :meth:`stop` wait for that start.
    """

    def __init__(self, uri: str, run_id: str, interval_s: float = SYSTEM_METRICS_INTERVAL_S):
        for name in ("mlflow.system_metrics", "mlflow.system_metrics.system_metrics_monitor"):
            logging.getLogger(name).setLevel(logging.WARNING)  # its start/stop notes
        self._monitor: Any = None
        self._first_step = 0
        self._starting = threading.Thread(
            target=self._start, args=(uri, run_id, interval_s), name="system-metrics", daemon=True
        )
        self._starting.start()

    def _start(self, uri: str, run_id: str, interval_s: float) -> None:
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(
                run_id, sampling_interval=interval_s, resume_logging=True, tracking_uri=uri
            )
            monitor.start()
        except Exception as err:  # psutil missing, store unreachable: train without them
            log.warning("system metrics are not logged: %s", err)
            return
        self._first_step = monitor._logging_step
        self._monitor = monitor

    def _started(self) -> Any:
        """The running monitor once its start is over, or None when it failed to start."""
        self._starting.join()
        return self._monitor

    def ensure_logged(self) -> None:
        """Logs one sample now (and flushes it) unless the monitor has logged one already."""
        monitor = self._started()
        if monitor is None or monitor._logging_step != self._first_step:
            return
        with contextlib.suppress(Exception):  # the run matters more than its system metrics
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()

    def stop(self) -> None:
        """Stops sampling; a run shorter than one interval still gets its one sample."""
        if self._started() is None:
            return
        with contextlib.suppress(Exception):
            self._monitor.finish()
        self.ensure_logged()
        self._monitor = None


@contextlib.contextmanager
def system_metrics(
    uri: str, run_id: str, interval_s: float = SYSTEM_METRICS_INTERVAL_S
) -> Iterator[SystemMetrics]:
    """:class:`SystemMetrics` for the duration of the block."""
    sampler = SystemMetrics(uri, run_id, interval_s)
    try:
        yield sampler
    finally:
        sampler.stop()


def start_system_metrics(run: Any, rank: int = 0) -> SystemMetrics | None:
    """:class:`SystemMetrics` for ``run`` (a ``TrackingRun``, or None: nothing) on rank 0 only.
    For loops that should not be re-indented under a ``with``: a loop that raises leaves the
    monitor to stop by itself once the run is no longer RUNNING."""
    if run is None or rank != 0:
        return None
    return SystemMetrics(run.uri, run.run_id)
