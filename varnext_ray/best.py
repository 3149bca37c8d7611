"""Find the best run of an experiment in MLflow and pull its checkpoint.

Best run: among the runs of an experiment tagged ``varnext.kind`` = ``train`` or ``trial``
(never the ``sweep`` parent, which holds no model) that are not FAILED, have a finite
``best_<metric>`` and a ``checkpoint/`` artifact, the one with the best value in the metric's
direction (:data:`varnext_ray.objectives.OBJECTIVES`). ``best_<metric>`` is the best value so
far, so the latest logged value ranks the run by its best epoch, the one whose checkpoint was
uploaded.

Example:
    >>> path = download_best(None, "smoke", "runs/best", "extrap_psnr_motion")
"""

from __future__ import annotations

import errno
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

from varnext_ray import objectives, tracking, tracking_errors
from varnext_ray.artifacts import (
    ARTIFACT_FIX,
    ArtifactStoreError,
    RunArtifacts,
    check_out_of_store,
    error_line,
)
from varnext_ray.atomic_write import staged_dir
from varnext_ray.errors import UserError
from varnext_ray.output_checks import check_new_dir, normal_new_dir
from varnext_ray.safe_io import CONFIG_LIMIT, os_reason, size_text

log = logging.getLogger(__name__)

RUN_FILE = "run.json"  # written beside the checkpoint's files by download_best
KIND_TAG, KINDS = "varnext.kind", ("train", "trial")
# errors of writing the download here, not of reading the store
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}
FULL_BYTES = 1024 * 1024  # less free than this after a failed download: the disk filled up


# ---- the best run -----------------------------------------------------------------------------


def _has_checkpoint(artifacts: RunArtifacts) -> bool:
    """Whether the run holds a ``checkpoint/`` artifact with its meta.json."""
    return any(f.path.endswith("meta.json") for f in artifacts.list("checkpoint"))


class NoRunQualifies(UserError):
    """No run of the experiment (or sweep) has the metric and a checkpoint."""


def find_best_run(
    uri: str | None,
    experiment: str,
    metric: str = objectives.DEFAULT_OBJECTIVE,
    *,
    sweep: str | None = None,
) -> dict[str, Any]:
    """The best train/trial run of ``experiment`` by ``best_<metric>`` that holds a checkpoint.

    Better runs without a checkpoint are skipped, and named in one warning line.

    Args:
        uri: Tracking URI; None means ``MLFLOW_TRACKING_URI`` or ``./mlflow.db``.
        experiment: The MLflow experiment (``--experiment`` of train and sweep).
        metric: An objective of :data:`~varnext_ray.objectives.OBJECTIVES` (``best_`` optional).
        sweep: Only the trials of this sweep (its parent run's id).

    Returns:
        ``run_id``, ``run_name``, ``status``, ``kind``, ``metric`` (``best_<name>``), ``value``,
        ``experiment``, ``tracking_uri`` and ``artifact_uri``.

    Raises:
        UserError: Unknown metric, unknown or deleted experiment, unreachable store, a run's
            artifact store failing (:class:`~varnext_ray.artifacts.ArtifactStoreError`);
            :class:`NoRunQualifies` if no run qualifies.
    """
    direction = objectives.direction(metric)
    key = f"best_{metric.removeprefix('best_')}"
    uri, client = tracking.open_store(uri)
    exp = tracking.existing_experiment(client, experiment, uri)
    order = f"metrics.{key} {'DESC' if direction == 'max' else 'ASC'}"
    seen, logged, skipped = 0, set(), []
    runs = "attributes.status != 'FAILED'"
    if sweep is not None:
        runs += f" and tags.mlflow.parentRunId = '{sweep}'"
    for run in tracking.search_all_runs(
        client, exp.experiment_id, filter_string=runs, order_by=order, page_size=500
    ):
        seen += 1
        logged |= {m for m in run.data.metrics if m.startswith("best_")}
        value = run.data.metrics.get(key)
        kind = run.data.tags.get(KIND_TAG)
        if not tracking.usable_metric(value) or kind not in KINDS:
            continue
        if not _has_checkpoint(RunArtifacts.of(client, run)):
            skipped.append(f"{run.info.run_name} ({run.info.run_id}, {key} {value:.4f})")
            continue
        if skipped:
            _warn_skipped(skipped, str(run.info.run_name))
        if run.info.status == "RUNNING":
            log.warning(
                "%s (%s) is still RUNNING: its checkpoint is its best so far and may be "
                "replaced; run best again when its run has ended",
                run.info.run_name,
                run.info.run_id,
            )
        return {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "status": run.info.status,
            "kind": kind,
            "metric": key,
            "value": value,
            "experiment": experiment,
            "tracking_uri": uri,
            "artifact_uri": run.info.artifact_uri,
        }
    hint = f"runs log {', '.join(sorted(logged))}" if logged else "no run logged a best_ metric"
    raise NoRunQualifies(
        f"no train/trial run with {key} and a checkpoint artifact ({seen} searched, FAILED "
        "ones skipped)",
        f"experiment {experiment!r}" + (f", sweep {sweep}" if sweep else ""),
        f"pick another --metric ({hint}) or train one with --objective {key[5:]}",
    )


def _warn_skipped(skipped: list[str], picked: str) -> None:
    """One warning line naming the better runs passed over for holding no checkpoint (the
    CLI's log format escapes control characters in run names)."""
    shown = "; ".join(skipped[:3]) + (f"; and {len(skipped) - 3} more" if len(skipped) > 3 else "")
    log.warning(
        "%s %s no checkpoint/ artifact with its meta.json (never uploaded, or removed from "
        "the artifact store): skipped for %s",
        shown,
        "holds" if len(skipped) == 1 else "hold",
        picked,
    )


def _download_listed(artifacts: RunArtifacts, local: Path) -> None:
    """The run's ``checkpoint/`` artifact into ``local``: meta.json first, then the files it
    lists and nothing else (a stray file beside them stays in the store), each sha256-checked."""
    from varnext_ray.checkpoint import ARCH, LISTED_FILE_LIMIT, META
    from varnext_ray.checkpoint_load import file_limits
    from varnext_ray.checkpoint_read import read_arch, read_meta, verify_files

    artifacts.download(f"checkpoint/{META}", local)
    listed = read_meta(local)["files"]
    if RUN_FILE in listed:  # best's own record would replace it, and the checkpoint break
        raise RecordClash(
            f"the checkpoint lists a file named {RUN_FILE} (meta.json), the name best writes "
            "the run's details to beside the checkpoint's files",
            f"checkpoint/{META}",
            f"save the checkpoint again without an extra file named {RUN_FILE} and re-log it, "
            "or pick another run (--metric)",
        )
    stored = {Path(f.path).name: f.file_size for f in artifacts.list("checkpoint")}
    missing = sorted(set(listed) - set(stored))
    if missing:
        what = "checkpoint file is missing (meta.json lists it)"
        raise UserError(what, str(local / missing[0]), "re-log the whole checkpoint directory")
    # Every file is checked against what the loader would read of it before it is fetched:
    # arch.json first (it sets the weights' sizes), then the rest.
    limits = file_limits(read_arch(_fetch(artifacts, local, ARCH, stored, {})))
    need, free = sum(stored[name] or 0 for name in listed), shutil.disk_usage(local).free
    if need > free:
        raise NoRoom(f"the checkpoint needs {size_text(need)}; {size_text(free)} are free there")
    for name in listed:
        if name != ARCH:
            _fetch(artifacts, local, name, stored, limits, LISTED_FILE_LIMIT)
    verify_files(local)


def _fetch(
    artifacts: RunArtifacts,
    local: Path,
    name: str,
    stored: dict[str, int | None],
    limits: dict[str, int],
    default: int | None = None,
) -> Path:
    """Downloads ``checkpoint/<name>`` into ``local`` unless the store says it is larger than
    ``limits[name]`` (arch.json: :data:`~varnext_ray.safe_io.CONFIG_LIMIT`); returns ``local``."""
    limit = limits.get(name, default if default is not None else CONFIG_LIMIT)
    size = stored.get(name) or 0
    if size > limit:
        raise UserError(
            f"{size_text(size)}, more than a checkpoint of its architecture holds "
            f"({size_text(limit)}): it was altered",
            name,
            "re-log the checkpoint the run saved, or pick another run (--metric)",
        )
    artifacts.download(f"checkpoint/{name}", local)
    return local


class RecordClash(UserError):
    """The checkpoint lists a file named :data:`RUN_FILE`: nothing is fetched or written."""


class NoRoom(Exception):
    """The download does not fit where ``--out`` is (not a fault of the run or its store)."""


def write_failure(err: Exception, staging: Path) -> str | None:
    """Why writing a download into ``staging`` failed, if it was the local disk (None if
    not): MLflow reports a failed local write as "Failed to download artifacts", with no
    cause attached."""
    if isinstance(err, NoRoom):
        return str(err)
    if isinstance(err, OSError) and err.errno in WRITE_ERRNOS:
        return os_reason(err)
    try:
        free = shutil.disk_usage(staging).free
    except OSError:
        return None
    return f"the disk is full: {size_text(free)} free" if free < FULL_BYTES else None


def download_best(
    uri: str | None,
    experiment: str,
    out: str | Path,
    metric: str = objectives.DEFAULT_OBJECTIVE,
) -> Path:
    """Downloads the best run's checkpoint into ``out``, checks it loads, writes ``run.json``.

    The files go to a staging folder beside ``out`` first and are renamed into place once the
    checkpoint loads (:func:`~varnext_ray.atomic_write.staged_dir`), so ``out`` never holds half a
    download.

    Returns:
        ``out``, a checkpoint directory for :func:`~varnext_ray.checkpoint_load.load_checkpoint`
        plus ``run.json`` (run id and name, metric, value, tracking URI, experiment).

    Raises:
        UserError: ``out`` is not a new or empty folder that can be written (checked before
            the search), see :func:`find_best_run`, the download fails or does not load, or
            the checkpoint lists a file named ``run.json`` (refused, not overwritten).
    """
    from varnext_ray.frame_decode import warnings_after_success

    out = normal_new_dir(out, "--out")
    check_new_dir(out, "--out")
    # a warning (a better run skipped, MLflow's retries) is shown only if the download succeeds
    with warnings_after_success(log, logging.getLogger("urllib3.connectionpool")):
        run = find_best_run(uri, experiment, metric)
        check_out_of_store(out, "--out", run["tracking_uri"], [run["artifact_uri"], *_where(run)])
        artifacts = RunArtifacts(
            tracking.client(run["tracking_uri"]), run["run_id"], run["artifact_uri"]
        )
        with staged_dir(out, "--out") as staging:
            _download(artifacts, staging, run, out)
    return out


def _download(artifacts: RunArtifacts, staging: Path, run: dict[str, Any], out: Path) -> None:
    """The checkpoint of ``run`` into ``staging`` (renamed to ``out`` later), loaded once, with
    ``run.json``; a failure says whether the local disk, the artifact store or the checkpoint
    itself is to blame."""
    from varnext_ray.checkpoint_load import load_checkpoint  # imports torch

    where = f"run {run['run_id']}, artifact checkpoint/"
    try:
        _download_listed(artifacts, staging)
        _warn_if_another_value(load_checkpoint(staging).meta, run)
        (staging / RUN_FILE).write_text(json.dumps(run, indent=2) + "\n")
    except (ArtifactStoreError, OSError, NoRoom) as err:
        cause = err.__cause__ if isinstance(err, ArtifactStoreError) else err
        why = write_failure(cause if isinstance(cause, Exception) else err, staging)
        if why is not None:
            fix = "free space there, or choose another --out"
            raise UserError(f"cannot write the download ({why})", str(out), fix) from None
        if isinstance(err, ArtifactStoreError):
            raise
        what = f"download failed ({error_line(err)})"
        raise UserError(what, where, ARTIFACT_FIX) from None
    except RecordClash as err:  # the checkpoint may load: it is no damage of it
        raise UserError(err.what, where, err.fix) from None
    except UserError as err:
        file = Path(err.where).name if err.where.startswith(str(staging)) else err.where
        what = f"the run's checkpoint does not load: {file}: {err.what}"
        raise UserError(what, where, "pick another run (--metric) or retrain it") from None


def _where(run: dict[str, Any]) -> list[str | None]:
    """The artifact location of the experiment of ``run`` (a result of :func:`find_best_run`)."""
    fix = "check --tracking-uri (or MLFLOW_TRACKING_URI) and that the store is up"
    uri = run["tracking_uri"]
    with tracking_errors.store_failures(uri, "while looking up the experiment", fix):
        found = tracking.client(uri).get_experiment_by_name(run["experiment"])
    return [found.artifact_location if found is not None else None]


def _warn_if_another_value(meta: dict[str, Any], run: dict[str, Any]) -> None:
    """A warning when the checkpoint's own best (``extra.best``, of the objective it was
    trained for) is not the run's ``best_<metric>``: the checkpoint is then not the one this
    run saved last (its artifact location points at another run's, or its upload was cut)."""
    extra = meta.get("extra") or {}
    saved = extra.get("best")
    if extra.get("objective") != run["metric"].removeprefix("best_"):
        return  # ranked by another metric than the one the checkpoint was kept for
    if not tracking.usable_metric(saved) or math.isclose(saved, run["value"], rel_tol=1e-6):
        return
    log.warning(
        "%s (%s) logged %s %.4f but its checkpoint's meta.json says %.4f: the checkpoint may "
        "be another run's (check the run's artifact location, %s) or an older one",
        run["run_name"],
        run["run_id"],
        run["metric"],
        run["value"],
        saved,
        run["artifact_uri"],
    )
