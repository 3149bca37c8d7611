"""MLflow, through one small module: runs are addressed by id with an ``MlflowClient``.

Nothing here touches MLflow's global "active run" state, so the same calls work from the CLI
process, a Tune trial driver and a Train worker (rank 0 only, by convention of the callers).

Tracking URI: ``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else
``sqlite:///<absolute path>/mlflow.db`` in the working directory (absolute, because a Ray job's
working directory is a temporary folder).

Artifacts of a SQLite store's experiments live beside its database, in ``mlartifacts/<name>``
(see :func:`artifact_location`); a server's experiments where the server keeps them.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from varnext_ray.errors import UserError, failure_summary
from varnext_ray.run_records import read_record, write_record
from varnext_ray.tracking_errors import quiet_reported_store_errors, readable_text, store_failures
from varnext_ray.tracking_sqlite import store_exists
from varnext_ray.tracking_uri import check_reachable

log = logging.getLogger(__name__)

ARTIFACTS_DIR = "mlartifacts"  # beside a SQLite store: its experiments' artifacts


@dataclass(frozen=True)
class TrackingRun:
    """The MLflow run a training run logs to (rank 0 or a trial driver)."""

    uri: str
    run_id: str


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI to use (see the module docstring); always absolute.

    Raises:
        UserError: A database store (a relative one, or the default, included) while the
            current folder cannot be named: MLflow's SQLAlchemy store resolves its artifact
            root against it on opening, and crashed where it was deleted.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri and uri.split(":", 1)[0].split("+", 1)[0] not in _DATABASES:
        return uri  # a server (or a store MLflow opens its own way): no current folder needed
    here = _current_folder(uri or "./mlflow.db (the default)")
    if not uri:
        return f"sqlite:///{here / 'mlflow.db'}"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return f"sqlite:///{(here / uri[len('sqlite:///') :]).resolve()}"
    return uri


_DATABASES = frozenset({"sqlite", "postgresql", "mysql", "mssql"})  # MLflow's SQLAlchemy stores


def _current_folder(where: str) -> Path:
    """The current folder, symlinks resolved; a UserError if it cannot be named (deleted, or
    too deep for ``getcwd``)."""
    try:
        return Path.cwd().resolve()
    except OSError as err:
        raise UserError(
            f"the current folder is unusable ({err.strerror or type(err).__name__}): MLflow "
            "opens a database store only from a folder that exists",
            where,
            "cd to an existing folder",
        ) from None


# Tracking stores MLflow 3 takes, besides a server: SQLAlchemy databases (sqlite on this machine).
def client(uri: str) -> Any:
    """An ``MlflowClient`` for ``uri``.

    A process's first client of a store opens it, and creates a new SQLite store: that is
    done under :func:`run_lock.creating_store`, as two processes creating one store at once
    broke each other's schema migrations.
    """
    from mlflow import MlflowClient

    from varnext_ray import run_lock

    quiet_reported_store_errors()
    with run_lock.creating_store(uri):
        return MlflowClient(tracking_uri=uri)


def open_store(uri: str | None, *, writes: bool = False) -> tuple[str, Any]:
    """The resolved tracking URI of an existing store, checked (:func:`check_reachable`; one
    the command ``writes`` to must be writable), and a client for it."""
    uri = resolve_tracking_uri(uri)
    check_reachable(uri, existing=True, writes=writes)
    return uri, client(uri)


def usable_metric(value: object) -> bool:
    """Whether a metric read back from MLflow is a real number: not NaN, and not infinite,
    which MLflow's SQL stores keep as the largest float (so ``inf`` reads as 1.797e308). A
    value of another type (a string or bytes that SQLite keeps in a REAL column edited by
    hand) is none."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    return math.isfinite(value) and abs(value) < sys.float_info.max


def search_all_runs(
    store: Any,
    experiment_id: str,
    *,
    filter_string: str = "",
    order_by: str | None = None,
    page_size: int = 1000,
) -> Iterator[Any]:
    """Every run of the experiment matching ``filter_string``, page by page, in ``order_by``."""
    token = None
    while True:
        with readable_text(getattr(store, "tracking_uri", "the MLflow tracking store")):
            page = store.search_runs(
                [experiment_id],
                filter_string=filter_string,
                order_by=[order_by] if order_by else None,
                max_results=page_size,
                page_token=token,
            )
        yield from page
        token = page.token
        if not token:
            return


def active(experiment: Any, uri: str) -> Any:
    """``experiment`` (an MLflow ``Experiment``), unless it was deleted: MLflow still finds a
    deleted experiment by name, refuses runs in it and searches none of its runs."""
    if experiment.lifecycle_stage == "deleted":
        raise UserError(
            f"the MLflow experiment {experiment.name!r} was deleted "
            f"(id {experiment.experiment_id})",
            uri,
            f"restore it (MLFLOW_TRACKING_URI={uri} mlflow experiments restore --experiment-id "
            f"{experiment.experiment_id}), or pass another --experiment (MLflow keeps a deleted "
            "experiment's name until `mlflow gc` removes it)",
        )
    return experiment


def existing_experiment(store: Any, name: str, uri: str) -> Any:
    """The experiment called ``name``; a UserError listing the experiments that exist, or
    saying that it was deleted."""
    fix = "check --tracking-uri (or MLFLOW_TRACKING_URI)" + (
        " and that the server is up" if uri.startswith(("http://", "https://")) else ""
    )
    with readable_text(uri), store_failures(uri, "while looking up the experiment", fix):
        found = store.get_experiment_by_name(name)
        if found is not None:
            return active(found, uri)
        names = sorted(e.name for e in store.search_experiments())
    raise UserError(
        f"no experiment named {name!r}",
        uri,
        f"pass --experiment with one of: {', '.join(names) or '(none: nothing was logged yet)'}",
    )


def artifact_location(uri: str, name: str) -> str | None:
    """Where a new experiment of ``uri`` keeps its artifacts: for a SQLite store, a folder
    beside the database named after the experiment (a random name if the experiment's is no
    plain folder name); None (the store's own default) for a server or another database.

    MLflow's default for a SQLite store is ``./mlruns`` of whichever process creates the
    experiment: a workdir's store would keep its checkpoints elsewhere, and two stores made
    from the same folder would share one (their experiment ids both start at 1).
    """
    from varnext_ray.tracking_sqlite import database_file

    database = database_file(uri)
    if database is None:
        return None
    plain = re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}", name)
    return str(database.parent / ARTIFACTS_DIR / (name if plain else uuid.uuid4().hex))


def experiment_of_run(uri: str, run_id: str) -> str | None:
    """The name of the experiment that MLflow run ``run_id`` belongs to; None when the store
    holds no such run (or its experiment was deleted)."""
    from mlflow.exceptions import MlflowException

    c = client(uri)
    try:
        return c.get_experiment(c.get_run(run_id).info.experiment_id).name
    except MlflowException:
        return None


def check_experiment(uri: str, name: str) -> None:
    """Before Ray: a UserError if the store (checked by :func:`check_reachable`) holds the
    experiment ``name`` and it was deleted (:func:`active`). A store not made yet is not
    opened: opening it would create it."""
    if not store_exists(uri):
        return
    fix = "check --tracking-uri (or MLFLOW_TRACKING_URI) and that the store is up"
    with store_failures(uri, "while looking up the experiment", fix):
        found = client(uri).get_experiment_by_name(name)
    if found is not None:
        active(found, uri)


def experiment_id(uri: str, name: str) -> str:
    """The id of experiment ``name``, created if it does not exist; tagged
    ``mlflow.experimentKind = custom_model_development`` unless it has a kind already.

    Raises:
        UserError: The experiment was deleted (:func:`active`), or MLflow refuses the name.
    """
    from varnext_ray.mlflow_extras import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

    c = client(uri)
    found = c.get_experiment_by_name(name)
    if found is not None:
        active(found, uri)
        if EXPERIMENT_KIND_TAG not in (found.tags or {}):  # made before the convention
            c.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return found.experiment_id
    try:
        return c.create_experiment(
            name,
            artifact_location=artifact_location(uri, name),
            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
        )
    except Exception as err:  # created concurrently by another trial, or refused
        found = c.get_experiment_by_name(name)
        if found is None:
            raise UserError(
                f"MLflow could not create the experiment {name[:60]!r} "
                f"({failure_summary(err, 200)})",
                uri,
                "pass a short plain --experiment name such as smoke",
            ) from None
        return active(found, uri).experiment_id


def start_run(
    uri: str,
    experiment: str,
    *,
    run_name: str,
    params: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
) -> str:
    """Creates a run (nested under ``parent_run_id`` if given), logs params; returns its id."""
    c = client(uri)
    all_tags = dict(tags or {})
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = c.create_run(experiment_id(uri, experiment), run_name=run_name, tags=all_tags)
    if params:
        log_params(uri, run.info.run_id, params)
    return run.info.run_id


def log_params(uri: str, run_id: str, params: dict[str, Any]) -> None:
    """Logs params (values stringified, MLflow's 6000-character limit respected)."""
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    c = client(uri)
    for start in range(0, len(items), 100):  # MLflow's batch limit
        c.log_batch(run_id, params=items[start : start + 100])


def log_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int) -> None:
    """Logs the finite numeric metrics of one step."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [
        Metric(k, float(v), now, step)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    ]
    client(uri).log_batch(run_id, metrics=items)


def log_artifact(uri: str, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
    """Uploads a file or a directory's contents under ``artifact_path``."""
    c = client(uri)
    if Path(path).is_dir():
        c.log_artifacts(run_id, str(path), artifact_path)
    else:
        c.log_artifact(run_id, str(path), artifact_path)


def set_tags(uri: str, run_id: str, tags: dict[str, str]) -> None:
    """Sets tags on a run."""
    c = client(uri)
    for key, value in tags.items():
        c.set_tag(run_id, key, value)


def end_run(uri: str, run_id: str, status: str = "FINISHED", reason: str | None = None) -> None:
    """Ends a run as FINISHED, FAILED or KILLED; a reason goes in the ``failure_reason`` tag."""
    c = client(uri)
    if reason:
        c.set_tag(run_id, "failure_reason", reason[:5000])
    c.set_terminated(run_id, status=status)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Flattens nested dicts/lists into ``a.b.0.c`` keys (MLflow allows no brackets in names)."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out |= flatten(value, f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(data, list | tuple):
        out = {}
        for i, value in enumerate(data):
            out |= flatten(value, f"{prefix}.{i}")
        return out or {prefix: "[]"}
    return {prefix: data}


def log_dict(uri: str, run_id: str, data: dict[str, Any], artifact_file: str) -> None:
    """Logs a dict as a JSON artifact."""
    client(uri).log_dict(run_id, data, artifact_file)


def run_for_directory(
    uri: str,
    experiment: str,
    run_dir: str | Path,
    name: str,
    params: dict[str, Any],
    tags: dict[str, str] | None = None,
) -> str:
    """The MLflow run recorded in ``run_dir`` (a resumed run continues it), else a new one.

    The record (``varnext_run.json``) sits beside Ray Train's own state for the run, on the
    same storage (a local path or a URI such as ``s3://bucket/runs``, through pyarrow's file
    systems), so the same storage and name give the same MLflow run from any node, and a
    resumed sweep never duplicates runs.
    """
    run_id = read_record(run_dir)
    if run_id:
        try:
            client(uri).update_run(run_id, status="RUNNING")
            log.info("continuing MLflow run %s", run_id)
            return run_id
        except Exception:  # the run is gone (another tracking store): start a new one
            log.warning("MLflow run %s not found at %s: starting a new run", run_id, uri)
    run_id = start_run(uri, experiment, run_name=name, params=params, tags=tags)
    write_record(run_dir, {"run_id": run_id, "tracking_uri": uri})
    return run_id
