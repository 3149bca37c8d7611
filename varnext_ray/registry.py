"""The best model as a registered MLflow model version, and checkpoints back from the registry.

:func:`register_run` logs a run's checkpoint as an MLflow *logged model* (MLflow 3) in pyfunc
format, from code (:mod:`varnext_ray.pyfunc_model`: the source of that file and of this package
go in the model, the checkpoint directory as its ``checkpoint`` artifact, and no pickle), links
it to the run it came from, registers it as a new version of a registered model with the
run's metrics, architecture and source as tags and description, and points the alias
``champion`` at it. ``mlflow.pyfunc.load_model("models:/NAME@champion")`` then predicts frames
for a user who never imports varnext_ray, and ``varnext predict --model models:/NAME@champion``
downloads the checkpoint from it (:func:`download_checkpoint`).

Example:
    >>> version = register_best(None, "smoke", "vae", metric="extrap_psnr_motion")
    >>> download_checkpoint(None, "models:/vae@champion", "runs/champion")
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from varnext_ray import tracking, tracking_errors
from varnext_ray.artifacts import ARTIFACT_FIX, RunArtifacts, bounded_retries, error_line
from varnext_ray.errors import UserError, shorten
from varnext_ray.objectives import DEFAULT_OBJECTIVE
from varnext_ray.safe_io import read_bounded

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one line per file
ALIAS = "champion"
MLMODEL_LIMIT = 1 << 20  # bytes of a registered model's MLmodel file read (varnext's: ~1 KB)
NO_RUN_FIX = "pass the id of a run in this store (mlflow ui: the run's page)"
MODEL_NAME = "model"  # the logged model's name in its run
CODE_FILE = Path(__file__).with_name("pyfunc_model.py")
# what the logged model needs to load: exact versions of this environment (the project's pins)
REQUIREMENTS = ("mlflow", "torch", "safetensors", "numpy", "pillow", "pydantic", "av")
TAGGED_METRICS = (
    "extrap_psnr_motion",
    "extrap_psnr",
    "copy_last_psnr",
    "oracle_psnr",
    "extrap_skill",
    "extrap_ssim",
    "latent_linearity",
    "val_loss",
    "epoch",
)


def pip_requirements() -> list[str]:
    """``name==version`` of each package the model loads with, as installed here."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in REQUIREMENTS]


def signature() -> Any:
    """The model's signature: (2, H, W, 3) uint8 in, (K, H, W, 3) uint8 out, param ``steps``."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec, Schema, TensorSpec

    frames = TensorSpec(np.dtype(np.uint8), (2, -1, -1, 3))  # frames t and t+s
    predicted = TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))  # frames t+2s .. t+(K+1)s
    return ModelSignature(
        inputs=Schema([frames]),
        outputs=Schema([predicted]),
        params=ParamSchema([ParamSpec("steps", "long", 1)]),
    )


@contextlib.contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI set to ``uri`` for the block (``Model.log`` and
    ``models:/`` downloads read it), then restored exactly, with ``MLFLOW_TRACKING_URI``. The
    registry is the tracking store: an ``MLFLOW_REGISTRY_URI`` of the environment is set aside
    for the block (``models:/`` downloads read it, ``best --register`` does not; it made MLflow
    create its tables in whatever SQLite file it named)."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    old, old_env = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    old_registry = os.environ.pop("MLFLOW_REGISTRY_URI", None)  # the store is the registry
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(old)
        if old_env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = old_env
        if old_registry is not None:
            os.environ["MLFLOW_REGISTRY_URI"] = old_registry


def _client(uri: str) -> Any:
    """A client whose registry is the tracking store (never a globally set registry)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _description(run: Any, arch: dict[str, Any], metric: str | None) -> str:
    """A Markdown description of a model version: where it came from, how good it is."""
    lines = [
        f"VAE next-frame predictor from run `{run.info.run_name}` ({run.info.run_id}), "
        f"experiment {run.info.experiment_id}, kind `{run.data.tags.get('varnext.kind', '?')}`.",
        "",
        "Input: uint8 RGB array (2, H, W, 3) = frames t and t+s. Output: uint8 (K, H, W, 3), "
        "frames t+2s.. by latent linear extrapolation (param `steps` = K, default 1).",
        "",
    ]
    if metric:
        lines.append(f"Selected by `{metric}` = {run.data.metrics.get(metric)}.")
    shown = {k: run.data.metrics[k] for k in TAGGED_METRICS if k in run.data.metrics}
    lines += [f"- {k}: {v:.4g}" for k, v in shown.items()]
    lines += ["", "Architecture:", "```json", json.dumps(arch, indent=1)[:4000], "```"]
    return "\n".join(lines)


def register_checkpoint(
    uri: str,
    run_id: str,
    checkpoint: str | Path,
    name: str,
    *,
    metric: str | None = None,
    alias: str = ALIAS,
) -> dict[str, Any]:
    """Logs ``checkpoint`` as a pyfunc model of run ``run_id``, registers it under ``name`` and
    points ``alias`` at the new version.

    Args:
        uri: Tracking (and registry) URI.
        run_id: The train or trial run the checkpoint comes from (the model links to it).
        checkpoint: A checkpoint directory (:func:`~varnext_ray.checkpoint.save_checkpoint`).
        name: The registered model's name.
        metric: The metric the run was selected by (recorded in tags and description).
        alias: The alias to point at the new version.

    Returns:
        ``name``, ``version``, ``alias``, ``alias_version`` (the version ``alias`` points at
        once set: another if a registration of the same name set it meanwhile), ``model_uri``
        (``models:/NAME@ALIAS``, or ``models:/NAME/VERSION`` when the alias moved on),
        ``model_id``, ``run_id``.
    """
    import mlflow
    import numpy as np
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model

    from varnext_ray.checkpoint_load import load_checkpoint

    check_model_name(name, "name")
    ckpt = load_checkpoint(checkpoint)  # refuses a damaged checkpoint before anything is logged
    client = _client(uri)
    run = client.get_run(run_id)
    arch = ckpt.arch.to_dict()
    metrics = {k: run.data.metrics[k] for k in TAGGED_METRICS if k in run.data.metrics}
    if metric and metric in run.data.metrics:
        metrics[metric] = run.data.metrics[metric]
    tags = {
        "varnext.source_run_id": run_id,
        "varnext.experiment_id": run.info.experiment_id,
        "varnext.source_run_name": run.info.run_name or "",
        "varnext.kind": run.data.tags.get("varnext.kind", ""),
        "varnext.latent_dim": str(ckpt.arch.latent_dim),
        "varnext.input_size": f"{ckpt.arch.input.width}x{ckpt.arch.input.height}",
        "varnext.epoch": str(ckpt.meta.get("epoch")),
        **({"varnext.selected_by": metric} if metric else {}),
        **{f"metric.{k}": f"{v:.6g}" for k, v in metrics.items()},
    }
    logged = client.create_logged_model(
        run.info.experiment_id,
        name=MODEL_NAME,
        source_run_id=run_id,
        tags=tags,
        params={k: str(v)[:6000] for k, v in tracking.flatten({"arch": arch}).items()},
        model_type="varnext-vae",
    )
    with tempfile.TemporaryDirectory(prefix="varnext-model-") as tmp, _tracking_uri(uri):
        staged = Path(tmp) / "checkpoint"  # MLflow names the artifact folder after it
        shutil.copytree(checkpoint, staged)
        pyfunc_log = logging.getLogger("mlflow.pyfunc")
        level = pyfunc_log.level
        pyfunc_log.setLevel(logging.WARNING)  # "Validating input example ...": not ours to say
        try:
            info = Model.log(
                artifact_path=None,
                name=MODEL_NAME,
                flavor=mlflow.pyfunc,
                run_id=run_id,
                model_id=logged.model_id,
                python_model=str(CODE_FILE),
                artifacts={"checkpoint": str(staged)},
                code_paths=[str(CODE_FILE.parent)],  # the varnext_ray package, as source
                signature=signature(),
                input_example=np.zeros((2, 9, 16, 3), np.uint8),  # any size is fitted
                pip_requirements=pip_requirements(),
            )
        except (OSError, MlflowException) as err:  # the store (a full disk, a path under a
            # file); the model's own code is not wrapped: an error there is a bug, said so
            client.finalize_logged_model(logged.model_id, "FAILED")
            raise UserError(
                f"registering the model failed: its files could not be logged to the run "
                f"({error_line(err)})",
                f"run {run_id}",
                "check that the experiment's artifact location can be written, then register "
                "again (varnext best --register)",
            ) from None
        finally:
            pyfunc_log.setLevel(level)
        client.finalize_logged_model(logged.model_id, "READY")
        tags["varnext.model_id"] = logged.model_id  # the SQL registry does not return model_id
        with contextlib.suppress(Exception):  # it exists already
            client.create_registered_model(
                name,
                description="varnext VAE: predicts frame t+2s from frames t and t+s "
                "(pyfunc; input (2, H, W, 3) uint8, output (K, H, W, 3) uint8).",
            )
        version = client.create_model_version(
            name,
            source=info.model_uri,
            run_id=run_id,
            tags=tags,
            description=_description(run, arch, metric),
            model_id=logged.model_id,
        )
        client.set_registered_model_alias(name, alias, version.version)
        # Registrations of one name at once each point the alias at their own version; the
        # last one keeps it, and the others must not claim models:/NAME@ALIAS as theirs.
        holder = str(client.get_model_version_by_alias(name, alias).version)
    client.set_tag(run_id, "varnext.registered_model", f"{name}/{version.version}")
    mine = holder == str(version.version)
    return {
        "name": name,
        "version": str(version.version),
        "alias": alias,
        "alias_version": holder,  # the version the alias points at now
        "model_uri": f"models:/{name}@{alias}" if mine else f"models:/{name}/{version.version}",
        "model_id": logged.model_id,
        "run_id": run_id,
    }


def register_run(
    uri: str | None, run_id: str, name: str, *, metric: str | None = None
) -> dict[str, Any]:
    """Downloads run ``run_id``'s ``checkpoint/`` artifact and registers it (see
    :func:`register_checkpoint`)."""
    check_model_name(name, "name")
    uri, client = tracking.open_store(uri)
    with tempfile.TemporaryDirectory(prefix="varnext-register-") as tmp:
        with tracking_errors.store_failures(uri, f"while reading run {run_id}", NO_RUN_FIX):
            run = client.get_run(run_id)
        local = RunArtifacts.of(client, run).download("checkpoint", tmp)
        return register_checkpoint(uri, run_id, local, name, metric=metric)


def register_best(
    uri: str | None, experiment: str, name: str, metric: str = DEFAULT_OBJECTIVE
) -> dict[str, Any]:
    """Registers the best run of ``experiment`` (:func:`~varnext_ray.best.find_best_run`)."""
    from varnext_ray.best import find_best_run

    run = find_best_run(uri, experiment, metric)
    return register_run(run["tracking_uri"], run["run_id"], name, metric=run["metric"])


def register_sweep_best(
    uri: str | None, experiment: str, parent_run_id: str, name: str, objective: str
) -> dict[str, Any] | None:
    """Registers the best trial of one sweep (:func:`~varnext_ray.best.find_best_run` among the
    sweep's trials); None when no trial qualifies."""
    from varnext_ray.best import NoRunQualifies, find_best_run

    try:
        run = find_best_run(uri, experiment, objective, sweep=parent_run_id)
    except NoRunQualifies:
        return None
    return register_run(run["tracking_uri"], run["run_id"], name, metric=run["metric"])


MAX_MODEL_NAME = 256  # MLflow's registered_models.name column (a server database enforces it)


def check_model_name(name: str, where: str = "--register") -> None:
    """A UserError for a registered-model name MLflow would refuse, or could not read back.

    MLflow's own rule (``mlflow.utils.validation._validate_model_name``: not empty, no ``/``
    or ``:``, not a path that resolves elsewhere such as ``.`` or ``..``), checked before
    anything runs, and more: the name must come back whole from ``models:/NAME@champion`` and
    ``models:/NAME/1`` (a ``?`` would not), hold no ``@`` (``models:/a@b`` reads as alias
    ``b``), no control character and no space at an end, and fit MLflow's database column.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.utils.models import _parse_model_uri
    from mlflow.utils.validation import _validate_model_name

    why = None
    if not name.isprintable() or name != name.strip():
        why = "it starts or ends with a space, or holds a control character"
    elif len(name) > MAX_MODEL_NAME:
        why = f"it is longer than MLflow's {MAX_MODEL_NAME} characters"
    elif "@" in name:
        why = "models:/NAME@ALIAS could not tell it from an alias"
    else:
        try:
            _validate_model_name(name)
            by_alias = _parse_model_uri(f"models:/{name}@{ALIAS}")
            by_version = _parse_model_uri(f"models:/{name}/1")
        except MlflowException as err:
            why = f"MLflow refuses it: {str(err).splitlines()[0][:300]}"
        else:
            if (by_alias.name, by_alias.alias, by_version.name) != (name, ALIAS, name):
                why = "models:/NAME@champion would not name it (MLflow reads such URIs as URLs)"
    if why is not None:
        raise UserError(
            f"invalid registered model name {shorten(repr(name), 120)}: {why}",
            where,
            "use letters, digits, '-', '_' or '.' (not only dots), e.g. smoke-vae",
        )


def _checkpoint_artifact(model_dir: Path) -> Path | None:
    """The ``checkpoint`` artifact's folder in a downloaded pyfunc model (its MLmodel says
    where), or None."""
    import yaml

    try:  # bounded: a 20 MB MLmodel took minutes to parse, and its content is the store's
        text = read_bounded(model_dir / "MLmodel", MLMODEL_LIMIT, "MLmodel", "").decode()
        mlmodel = yaml.safe_load(text)
        path = mlmodel["flavors"]["python_function"]["artifacts"]["checkpoint"]["path"]
        if not isinstance(path, str):
            return None
        folder = (model_dir / path).resolve()
        inside = folder.is_relative_to(model_dir.resolve())
        return folder if inside and (folder / "meta.json").is_file() else None
    except (UserError, OSError, LookupError, TypeError, ValueError, RecursionError, yaml.YAMLError):
        return None  # not a model this varnext logged: said by the caller


def _check_ready(uri: str, model_uri: str) -> None:
    """A UserError unless the model version ``models:/NAME@ALIAS`` or ``models:/NAME/N`` names
    is READY: one whose registration failed or is still pending was downloaded and used. Other
    forms (a stage, ``latest``) are resolved by MLflow, which only picks READY versions."""
    rest = model_uri[len("models:/") :]
    name, at, alias = rest.partition("@")
    client = _client(uri)
    if at:
        version = client.get_model_version_by_alias(name, alias)
    else:
        name, _, number = rest.rpartition("/")
        if not number.isdecimal():
            return
        version = client.get_model_version(name, number)
    status = getattr(version, "status", None) or "READY"
    if status != "READY":
        raise UserError(
            f"version {version.version} of model {name!r} is not ready (its status is {status})",
            model_uri,
            "pass another version, or register the model again (varnext best --register)",
        )


def _download_model(model_uri: str, uri: str, tmp: Path) -> Path:
    """The registered model's files, downloaded into ``tmp``. What its artifact store raises
    besides MLflow's own errors (boto3's ``NoCredentialsError``, a refused connection, a
    missing storage library: any exception, as :class:`~varnext_ray.artifacts.RunArtifacts`
    explains) is one UserError naming the model."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    try:
        with _tracking_uri(uri), bounded_retries():
            return Path(
                download_artifacts(
                    artifact_uri=model_uri, dst_path=str(tmp), tracking_uri=uri, registry_uri=uri
                )
            )
    except MlflowException:
        raise  # the model or alias is unknown, or MLflow refuses its store: said by the caller
    except Exception as err:
        raise UserError(
            f"the registered model's artifact store failed ({error_line(err)})",
            model_uri,
            ARTIFACT_FIX,
        ) from err


def download_checkpoint(uri: str | None, model_uri: str, out: str | Path) -> Path:
    """Downloads the checkpoint of a registered model (``models:/NAME@ALIAS`` or
    ``models:/NAME/VERSION``) into ``out`` (new or empty); returns ``out``.

    Raises:
        UserError: ``out`` is not new or empty, the tracking URI names no existing store
            (:func:`~varnext_ray.tracking.open_store`, as ``best`` reads it), the model does
            not exist or holds no ``checkpoint`` artifact.
    """
    from mlflow.exceptions import MlflowException

    from varnext_ray.checkpoint_read import verify_files

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(
            "output exists and is not an empty directory", str(out), "pass a new directory"
        )
    if not model_uri.startswith("models:/"):
        raise UserError(
            f"not a registered model URI ({model_uri!r})",
            "--model",
            "pass models:/NAME@champion or models:/NAME/VERSION",
        )
    uri, _ = tracking.open_store(uri)  # an existing store, as best and report read it
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    quiet = logging.getLogger("mlflow.store.artifact.artifact_repo")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # "No artifacts found ...": a second line before ours
    try:
        _check_ready(uri, model_uri)
        local = _download_model(model_uri, uri, tmp)
        if not any(local.iterdir()):
            raise UserError(
                "the registered model's files are missing from its artifact store",
                model_uri,
                "restore them, or register the model again (varnext best --register)",
            )
        checkpoint = _checkpoint_artifact(local)
        if checkpoint is None:
            raise UserError(
                "the model holds no varnext checkpoint (artifacts/checkpoint)",
                model_uri,
                "pass a model registered by varnext best --register",
            )
        verify_files(checkpoint)  # every file meta.json lists, with its sha256
        if out.exists():
            out.rmdir()
        checkpoint.rename(out)
    except MlflowException as err:
        raise UserError(
            f"cannot load the registered model ({str(err).splitlines()[0][:200]})",
            model_uri,
            "check the name and alias (mlflow ui: Models), and --tracking-uri",
        ) from None
    finally:
        quiet.setLevel(level)
        shutil.rmtree(tmp, ignore_errors=True)
    return out
