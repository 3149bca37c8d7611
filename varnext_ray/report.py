"""Sweep report: one self-contained HTML page for a sweep recorded in MLflow.

The sweep's parent run and its trial child runs come from one ``search_runs`` over the
experiment; the page (:mod:`varnext_ray.report_page`) shows a summary, the best trials, the
objective against each searched hyperparameter, latent size against ``extrap_skill`` and the
top trials' latest prediction strips (and rollout GIFs, where a trial logged them). Plots are
inline SVG and images ``data:`` URIs, so the page makes no request. It is logged to the
sweep's parent run as ``report/report.html`` once it is written beside ``--out``, and renamed
into place after: a store that refuses it leaves no page, and a page that cannot be written is
never logged.

Example:
    >>> path, artifact = write_report(None, "smoke", top=10, out=Path("report_smoke.html"))
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from varnext_ray import tracking
from varnext_ray.artifacts import ArtifactStoreError, RunArtifacts, check_out_of_store
from varnext_ray.atomic_write import parent_folders, staged_file
from varnext_ray.best import write_failure
from varnext_ray.errors import UserError
from varnext_ray.number_text import decimal_order
from varnext_ray.objectives import OBJECTIVES
from varnext_ray.output_checks import check_output_files
from varnext_ray.report_page import STRIPS, SweepReport, Trial, render_page
from varnext_ray.safe_io import os_reason
from varnext_ray.tracking_sqlite import database_file

log = logging.getLogger(__name__)

ARTIFACT_DIR, ARTIFACT_FILE = "report", "report.html"
PAGE_SUFFIXES = (".html", ".htm")  # of --out
# The sweep run's artifact store failed: the page is logged there.
SWEEP_FIX = (
    "check the artifact store is reachable from here (its credentials, its client library) "
    "and writable, or pass another --sweep"
)
TMP_FIX = "free space there, or set TMPDIR to another folder"
MAX_IMAGE_BYTES = 20 * 2**20  # larger images are named, not embedded
_PNG = re.compile(r"strip_epoch_([0-9]+)\.png$")
_GIF = re.compile(r"rollout_epoch_([0-9]+)\.gif$")
# where a point's name sits in the sweep's flattened ``space.*`` params
_SPACE_KEY = {name: f"encoder.{name}" for name in ("depth", "kernel_size", "stride")}


# ---- gather -----------------------------------------------------------------------------------


def _pick_sweep(runs: list[Any], experiment: str, sweep_id: str | None) -> Any:
    """The sweep parent run: ``sweep_id`` if given, else the latest one."""
    sweeps = sorted(
        (r for r in runs if r.data.tags.get("varnext.kind") == "sweep"),
        key=lambda r: r.info.start_time or 0,
        reverse=True,
    )
    if sweep_id is not None:
        found = [r for r in sweeps if r.info.run_id == sweep_id]
        if found:
            return found[0]
        known = ", ".join(f"{r.info.run_id} ({r.info.run_name})" for r in sweeps[:5])
        raise UserError(
            f"run {sweep_id!r} is not a sweep of experiment {experiment!r}",
            "--sweep",
            f"pass one of: {known}, or leave --sweep out for the latest"
            if known
            else "leave --sweep out (this experiment holds no sweep)",
        )
    if not sweeps:
        raise UserError(
            f"experiment {experiment!r} holds no sweep ({len(runs)} runs, none tagged "
            "varnext.kind=sweep)",
            "--experiment",
            "pass the experiment a `varnext sweep` logged to, or run one",
        )
    return sweeps[0]


def _refuse_deleted_sweep(
    client: Any, experiment_id: str, experiment: str, sweep_id: str | None
) -> None:
    """Where no sweep run is found, a deleted one is named with how to restore it: the
    search sees active runs only, so "holds no sweep" hid that one was deleted."""
    from mlflow.entities import ViewType

    try:
        deleted = client.search_runs(
            [experiment_id],
            filter_string="tags.`varnext.kind` = 'sweep'",
            run_view_type=ViewType.DELETED_ONLY,
            max_results=50,
        )
    except Exception:  # a help to the message only: the caller's refusal stands
        return
    found = [r for r in deleted if sweep_id in (None, r.info.run_id)]
    if not found:
        return
    run = found[0]
    raise UserError(
        f"the sweep run {run.info.run_id} ({run.info.run_name}) of experiment {experiment!r} "
        "was deleted",
        "--sweep" if sweep_id else "--experiment",
        f"restore it (mlflow runs restore --run-id {run.info.run_id}, with the same tracking "
        "URI), or pass another sweep",
    )


def _number(text: str) -> Any:
    """A param's value as an int or float where it is one, else the text."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def _point(params: dict[str, str]) -> dict[str, Any]:
    """The sampled point from ``point.*`` params; a list (``linear``) comes back as ``[a, b]``."""
    point: dict[str, Any] = {}
    lists: dict[str, dict[str, str]] = {}
    for key, text in params.items():
        if key.startswith("point."):
            name, _, index = key.removeprefix("point.").partition(".")
            if index:
                lists.setdefault(name, {})[index] = text
            else:
                point[name] = _number(text)
    for name, items in lists.items():
        order = sorted(
            items, key=lambda i: (not _index(i), decimal_order(i) if _index(i) else (0, ""), i)
        )
        point[name] = "[" + ", ".join(items[i] for i in order) + "]"
    return point


def _scale(space: dict[str, str], name: str) -> str:
    """``log``/``linear`` for a range, ``choices`` for a list, ``""`` if the space is unknown."""
    key = "space." + (
        "encoder.channels" if name.startswith("channels_") else _SPACE_KEY.get(name, name)
    )
    if f"{key}.low" in space:
        return "log" if space.get(f"{key}.log") == "True" else "linear"
    return "choices" if any(k == key or k.startswith(f"{key}.") for k in space) else ""


def _objective(params: dict[str, str], trials: list[Any]) -> tuple[str, str]:
    """The sweep's objective and direction, from its ``space.*`` params."""
    objective = params.get("space.objective")
    if objective is None:  # not a varnext sweep's params: the metric its trials kept best_ of
        kept = {m for t in trials for m in t.data.metrics if m.startswith("best_")}
        objective = min(kept)[5:] if kept else "extrap_psnr"
    mode = params.get("space.mode")
    return objective, mode if mode in ("max", "min") else OBJECTIVES.get(objective, "max")


def _int(text: str | None) -> int | None:
    value = _number(text) if text is not None else None
    return value if isinstance(value, int) else None


def _trial(run: Any, objective: str) -> Trial:
    status = run.info.status
    if status == "FINISHED" and run.data.tags.get("varnext.stopped_early") == "true":
        status = "stopped early"
    value = run.data.metrics.get(f"best_{objective}", run.data.metrics.get(objective))
    return Trial(
        run_id=run.info.run_id,
        name=run.info.run_name or run.info.run_id,
        status=status.lower(),
        metrics={k: v for k, v in run.data.metrics.items() if tracking.usable_metric(v)},
        point=_point(run.data.params),
        objective=value if tracking.usable_metric(value) else None,
        latent_dim=_int(run.data.params.get("arch.latent_dim")),
        params=_int(run.data.params.get("arch_params")),
        failure=run.data.tags.get("failure_reason", ""),
        artifact_uri=run.info.artifact_uri or "",
    )


def gather(uri: str | None, experiment: str, sweep_id: str | None = None) -> SweepReport:
    """The sweep (``sweep_id``, else the experiment's latest) and its trials, best first.

    Raises:
        UserError: The store is unreachable, or the experiment or the sweep is unknown.
    """
    from mlflow.exceptions import MlflowException

    uri, client = tracking.open_store(uri, writes=True)  # the page is logged to the sweep
    try:
        exp = tracking.existing_experiment(client, experiment, uri)
        # a run whose status is NULL (a store edited by hand) makes MLflow's search fail: SQL's
        # NULL matches no LIKE, so it is left out, as `best` leaves it out (status != 'FAILED')
        runs = list(
            tracking.search_all_runs(
                client, exp.experiment_id, filter_string="attributes.status LIKE '%'"
            )
        )
    except MlflowException as err:
        served = uri.startswith(("http://", "https://"))
        raise UserError(
            f"the tracking store {'did not answer' if served else 'failed'} "
            f"({str(err).splitlines()[0][:200]})",
            uri,
            "check --tracking-uri (or MLFLOW_TRACKING_URI)"
            + (" and that the server is up" if served else ""),
        ) from None
    try:
        parent = _pick_sweep(runs, experiment, sweep_id)
    except UserError:
        _refuse_deleted_sweep(client, exp.experiment_id, experiment, sweep_id)
        raise
    children = [
        r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
        and r.data.tags.get("varnext.kind") == "trial"
    ]
    params = parent.data.params
    objective, direction = _objective(params, children)
    trials = sorted(
        (_trial(r, objective) for r in sorted(children, key=lambda r: r.info.start_time or 0)),
        key=lambda t: (
            t.objective is None,
            (-1 if direction == "max" else 1) * (t.objective or 0.0),
        ),
    )
    names = {name for t in trials for name in t.point}
    return SweepReport(
        experiment=experiment,
        run_id=parent.info.run_id,
        name=parent.info.run_name or parent.info.run_id,
        started=utc_time(parent.info.start_time),
        objective=objective,
        direction=direction,
        scales={name: _scale(params, name) for name in names},
        trials=trials,
        tracking_uri=uri,
        artifact_uri=parent.info.artifact_uri or "",
        artifact_location=exp.artifact_location or "",
    )


def utc_time(ms: int | None) -> str:
    """An MLflow time (milliseconds since 1970) as ``YYYY-MM-DD HH:MM UTC``; ``unknown`` when
    missing or out of the calendar's range (a store edited by hand: 2**62 is year 146 million,
    which ``datetime`` refuses)."""
    try:
        when = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)  # type: ignore[operator]
    except (TypeError, ValueError, OverflowError, OSError):
        return "unknown"
    return when.strftime("%Y-%m-%d %H:%M UTC")


def _latest(artifacts: RunArtifacts, folder: str, pattern: re.Pattern) -> Any | None:
    """The listing (``FileInfo``: path, file_size) of the highest-epoch file in ``folder``
    whose name matches ``pattern``."""
    found = [
        (decimal_order(m[1]), f.path, f)
        for f in artifacts.list(folder)
        if not f.is_dir and (m := pattern.search(f.path))
    ]
    return max(found, key=lambda item: item[:2])[2] if found else None


def _over_bytes(size: int | None) -> str | None:
    return (
        f"is over {MAX_IMAGE_BYTES} bytes" if size is not None and size > MAX_IMAGE_BYTES else None
    )


def _image_problem(data: bytes, fmt: str) -> str | None:
    """Why ``data`` is not embedded as a ``fmt`` (PNG, GIF) image: over
    :data:`~varnext_ray.sources.MAX_PIXELS` pixels (a browser would decode them all), or not
    such an image. Reads the header only, never the pixels."""
    from PIL import Image

    from varnext_ray.image_read import MAX_PIXELS

    over = f"is over the limit of {MAX_PIXELS:,} pixels"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[fmt]) as image:
                width, height = image.size
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        return over  # over Pillow's own limit, which is higher
    except Exception:  # Pillow raises many types for a file it cannot read
        return f"is not a {fmt} image"
    return (
        f"is {width}x{height}: {over.removeprefix('is ')}" if width * height > MAX_PIXELS else None
    )


def _image(artifacts: RunArtifacts, info: Any, fmt: str, tmp: str) -> bytes | None:
    """The bytes of the image ``info`` lists, or None (with a warning) when it is not
    embedded: a file over :data:`MAX_IMAGE_BYTES` (by the store's listing, so never
    downloaded), over the pixel limit, or not a ``fmt`` image."""
    why = _over_bytes(info.file_size)
    if why is None:
        local = artifacts.download(info.path, tmp)
        with open(local, "rb") as file:  # a size the listing did not give is checked here
            data = file.read(MAX_IMAGE_BYTES + 1)
        local.unlink()
        why = _over_bytes(len(data)) or _image_problem(data, fmt)
    if why is not None:
        log.warning("%s of run %s %s: not embedded", info.path, artifacts.run_id, why)
        return None
    return data


def add_images(report: SweepReport, count: int = STRIPS) -> None:
    """Embeds the latest strip (and rollout GIF, if logged) of the top ``count`` trials; a
    trial whose images cannot be fetched is shown without them, with a warning."""
    client = tracking.client(report.tracking_uri)
    ranked = [t for t in report.trials if t.objective is not None][:count]
    with _scratch() as tmp:
        for trial in ranked:
            artifacts = RunArtifacts(client, trial.run_id, trial.artifact_uri)
            for folder, pattern, fmt in (("strips", _PNG, "PNG"), ("rollouts", _GIF, "GIF")):
                try:
                    info = _latest(artifacts, folder, pattern)
                    data = info and _image(artifacts, info, fmt, tmp)
                except (ArtifactStoreError, OSError) as err:
                    log.warning(
                        "could not fetch %s of run %s: %s", folder, trial.run_id, _why(err, tmp)
                    )
                    continue
                if data:
                    uri = (
                        f"data:image/{fmt.lower()};base64,{base64.b64encode(data).decode('ascii')}"
                    )
                    trial.images.append((info.path, uri))


def _why(err: Exception, tmp: str) -> str:
    """What a failed fetch says: the local disk where that is the cause (MLflow reports a
    failed local write as the store's failure), else the error."""
    cause = err.__cause__ if isinstance(err, ArtifactStoreError) else err
    local = write_failure(cause if isinstance(cause, Exception) else err, Path(tmp))
    if local is None:
        return str(err)
    return f"cannot write it to {tmp} ({local}): {TMP_FIX}"


# ---- write ------------------------------------------------------------------------------------


def default_out(experiment: str) -> Path:
    """``report_<experiment>.html`` in the working directory (unsafe characters as ``_``)."""
    return Path(f"report_{re.sub(r'[^A-Za-z0-9_.-]', '_', experiment)}.html")


def check_out(out: Path, uri: str, *, overwrite: bool = False) -> None:
    """A UserError unless ``out`` can be written without destroying anything (the MLflow
    database it reads included); an existing page is replaced only with ``overwrite``.

    The page must be named ``.html`` (or ``.htm``): ``--out ds/dataset.json --overwrite`` is a
    slip, not a wish to replace a manifest with a web page.
    """
    store = database_file(uri)
    check_output_files([out], flag="--out", overwrite=overwrite, protected=[store] if store else [])
    if out.suffix.lower() not in PAGE_SUFFIXES:
        got = f"{out.suffix!r}" if out.suffix else "no suffix"
        raise UserError(
            f"--out must name an HTML page (got {got})",
            str(out),
            "name the page with .html or .htm, e.g. --out report_sweep.html",
        )


def write_report(
    uri: str | None,
    experiment: str,
    *,
    sweep_id: str | None = None,
    top: int = 10,
    out: Path | None = None,
    overwrite: bool = False,
) -> tuple[Path, str]:
    """Builds the page of a sweep, writes it to ``out`` and logs it to the sweep's parent run.

    Args:
        uri: Tracking URI; None means ``MLFLOW_TRACKING_URI`` or ``./mlflow.db``.
        experiment: The MLflow experiment the sweep logged to.
        sweep_id: The sweep's parent run id; None means the experiment's latest sweep.
        top: Rows of the best trials table.
        out: The HTML file; None means :func:`default_out`.
        overwrite: Replace an existing ``out`` (never the MLflow database).

    Returns:
        The local path and the artifact's URI (``<parent run artifacts>/report/report.html``).
    """
    from varnext_ray.frame_decode import warnings_after_success

    if top < 1:
        raise UserError(f"--top must be >= 1 (got {top})", "--top", "pass a positive integer")
    out = out if out is not None else default_out(experiment)
    check_out(out, tracking.resolve_tracking_uri(uri), overwrite=overwrite)
    # warnings (a trial's images not fetched, MLflow's retries) only if the page is written
    with warnings_after_success(log, logging.getLogger("urllib3.connectionpool")):
        report = gather(uri, experiment, sweep_id)
        # the page is logged into the store: an --out among its files would be refused only
        # after that (it exists by then), or would change a run's artifacts
        where = [report.artifact_location, report.artifact_uri]
        check_out_of_store(
            out, "--out", report.tracking_uri, where + [t.artifact_uri for t in report.trials]
        )
        client = tracking.client(report.tracking_uri)
        sweep = RunArtifacts(client, report.run_id, report.artifact_uri, SWEEP_FIX)
        sweep.list()  # its store answers, before any trial's images are fetched
        add_images(report)
        # a path in the page that is no UTF-8 (a surrogate-escaped byte) is written "\udcff"
        page = render_page(report, top=top).encode("utf-8", errors="backslashreplace")
        # the page is written beside --out first and renamed into place only once the store
        # took it: a local failure changes nothing in the store, a store failure leaves no page
        # (without --overwrite, a page that appeared since check_out, another report's, is kept)
        with parent_folders(out), staged_file(out, page, overwrite=overwrite, flag="--out"):
            _log_page(sweep, page)
    return out, f"{sweep.uri.rstrip('/')}/{ARTIFACT_DIR}/{ARTIFACT_FILE}"


def _log_page(sweep: RunArtifacts, page: bytes) -> None:
    """Logs the page to the sweep's run as ``report/report.html``: called once the local page
    is written but before it is renamed into place, so that a store that refuses it leaves no
    page behind (an error, exit 2), and a page that cannot be written is never logged."""
    with _scratch() as tmp:
        copy = Path(tmp) / ARTIFACT_FILE
        try:
            copy.write_bytes(page)
        except OSError as err:
            what = f"cannot write the page's copy for the sweep run ({os_reason(err)})"
            raise UserError(what, tmp, TMP_FIX) from None
        sweep.log(copy, ARTIFACT_DIR)


@contextlib.contextmanager
def _scratch() -> Iterator[str]:
    """A temporary folder (in TMPDIR), removed after; a UserError if it cannot be made."""
    try:
        tmp = tempfile.mkdtemp(prefix="varnext-report-")
    except OSError as err:
        what = f"cannot make a temporary folder ({os_reason(err)})"
        raise UserError(what, tempfile.gettempdir(), TMP_FIX) from None
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _index(text: str) -> bool:
    """Whether a param name's part is a list index: ASCII digits (``isdigit`` is true for
    "²", which ``int`` refuses)."""
    return text.isascii() and text.isdigit()
