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

import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

from varnext_ray import objectives, tracking
from varnext_ray.errors import UserError

RUN_FILE = "run.json"  # written beside the checkpoint's files by download_best
KIND_TAG, KINDS = "varnext.kind", ("train", "trial")


# ---- the best run -----------------------------------------------------------------------------


def _has_checkpoint(client: Any, run_id: str) -> bool:
    """Whether the run holds a ``checkpoint/`` artifact with its meta.json."""
    return any(f.path.endswith("meta.json") for f in client.list_artifacts(run_id, "checkpoint"))


def find_best_run(
    uri: str | None, experiment: str, metric: str = objectives.DEFAULT_OBJECTIVE
) -> dict[str, Any]:
    """The best train/trial run of ``experiment`` by ``best_<metric>`` that holds a checkpoint.

    Args:
        uri: Tracking URI; None means ``MLFLOW_TRACKING_URI`` or ``./mlflow.db``.
        experiment: The MLflow experiment (``--experiment`` of train and sweep).
        metric: An objective of :data:`~varnext_ray.objectives.OBJECTIVES` (``best_`` optional).

    Returns:
        ``run_id``, ``run_name``, ``status``, ``kind``, ``metric`` (``best_<name>``), ``value``,
        ``experiment`` and ``tracking_uri``.

    Raises:
        UserError: Unknown metric or experiment, unreachable store, or no run qualifies.
    """
    direction = objectives.direction(metric)
    key = f"best_{metric.removeprefix('best_')}"
    uri, client = tracking.open_store(uri)
    exp = tracking.existing_experiment(client, experiment, uri)
    order = f"metrics.{key} {'DESC' if direction == 'max' else 'ASC'}"
    seen, logged = 0, set()
    not_failed = "attributes.status != 'FAILED'"
    runs = tracking.search_all_runs(
        client, exp.experiment_id, filter_string=not_failed, order_by=order, page_size=500
    )
    for run in runs:
        seen += 1
        logged |= {m for m in run.data.metrics if m.startswith("best_")}
        value = run.data.metrics.get(key)
        kind = run.data.tags.get(KIND_TAG)
        if value is None or not math.isfinite(value) or kind not in KINDS:
            continue
        if _has_checkpoint(client, run.info.run_id):
            return {
                "run_id": run.info.run_id,
                "run_name": run.info.run_name,
                "status": run.info.status,
                "kind": kind,
                "metric": key,
                "value": value,
                "experiment": experiment,
                "tracking_uri": uri,
            }
    hint = f"runs log {', '.join(sorted(logged))}" if logged else "no run logged a best_ metric"
    raise UserError(
        f"no train/trial run with {key} and a checkpoint artifact ({seen} searched, FAILED "
        "ones skipped)",
        f"experiment {experiment!r}",
        f"pick another --metric ({hint}) or train one with --objective {key[5:]}",
    )


def _check_empty_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(
            "output exists and is not an empty directory",
            str(out),
            "pass a new --out directory so nothing is overwritten",
        )


def _download_listed(client: Any, run_id: str, tmp: Path) -> Path:
    """The run's ``checkpoint/`` artifact in ``tmp``: meta.json first, then the files it lists
    and nothing else (a stray file beside them stays in the store), each sha256-checked."""
    from varnext_ray.checkpoint import META, read_meta, verify_files

    local = tmp / "checkpoint"
    local.mkdir()
    client.download_artifacts(run_id, f"checkpoint/{META}", str(local))
    listed = read_meta(local)["files"]
    stored = {Path(f.path).name for f in client.list_artifacts(run_id, "checkpoint")}
    missing = sorted(set(listed) - stored)
    if missing:
        what = "checkpoint file is missing (meta.json lists it)"
        raise UserError(what, str(local / missing[0]), "re-log the whole checkpoint directory")
    for name in listed:
        client.download_artifacts(run_id, f"checkpoint/{name}", str(local))
    verify_files(local)
    return local


def download_best(
    uri: str | None,
    experiment: str,
    out: str | Path,
    metric: str = objectives.DEFAULT_OBJECTIVE,
) -> Path:
    """Downloads the best run's checkpoint into ``out``, checks it loads, writes ``run.json``.

    The files go to a temporary directory beside ``out`` first and are renamed into place once
    the checkpoint loads, so ``out`` never holds half a download.

    Returns:
        ``out``, a checkpoint directory for :func:`~varnext_ray.checkpoint.load_checkpoint`
        plus ``run.json`` (run id and name, metric, value, tracking URI, experiment).

    Raises:
        UserError: ``out`` is not new or empty, see :func:`find_best_run`, or the download
            fails or does not load.
    """
    from mlflow.exceptions import MlflowException

    from varnext_ray.checkpoint import load_checkpoint  # imports torch

    out = Path(out)
    _check_empty_dir(out)
    run = find_best_run(uri, experiment, metric)
    where = f"run {run['run_id']}, artifact checkpoint/"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        local = _download_listed(tracking.client(run["tracking_uri"]), run["run_id"], tmp)
        load_checkpoint(local)
        (local / RUN_FILE).write_text(json.dumps(run, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        local.rename(out)
    except MlflowException as err:
        what = f"download failed ({str(err).splitlines()[0][:200]})"
        raise UserError(what, where, "check the artifact store is reachable") from None
    except UserError as err:
        file = Path(err.where).name if err.where.startswith(str(tmp)) else err.where
        what = f"the run's checkpoint does not load: {file}: {err.what}"
        raise UserError(what, where, "pick another run (--metric) or retrain it") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
