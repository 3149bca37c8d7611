"""A run's artifacts, read and written through MLflow with every failure of the store one line.

MLflow hands each artifact call to the repository of the artifact URI's scheme (local files,
``mlflow-artifacts:``, S3, GCS, HDFS, FTP, ...), which lets its storage library's exceptions
through unchanged: :class:`RunArtifacts` turns any of them into one :class:`ArtifactStoreError`
naming the run and its artifact URI, and bounds MLflow's and boto's retries meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from varnext_ray import tracking
from varnext_ray.errors import UserError
from varnext_ray.output_checks import check_not_inside

# A run's artifacts could not be read: a store out of reach, or its files damaged there.
ARTIFACT_FIX = (
    "check the artifact store is reachable and the run's checkpoint files are intact there, "
    "or pick another run"
)


class ArtifactStoreError(UserError):
    """A run's artifact store failed; ``__cause__`` is what MLflow or its storage library raised."""


# Bounds on MLflow's and boto's own retries while a command here reads or writes a run's
# artifacts: a store out of reach is one line within seconds, not minutes (MLflow's default
# is 7 retries, with a backoff doubling from 2 s; boto's 5 attempts). A value set by the user
# is kept.
ARTIFACT_RETRIES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "AWS_MAX_ATTEMPTS": "2",
}


@contextlib.contextmanager
def bounded_retries() -> Iterator[None]:
    """:data:`ARTIFACT_RETRIES` in the environment for the block (where unset), then removed.
    MLflow reads its variables per request, boto when it makes a client (MLflow caches it)."""
    added = {k: v for k, v in ARTIFACT_RETRIES.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


# A read of the tracking server's API waits this long for an answer: a server whose database is
# stuck still answers /health (checked first, 5 s) and then held `best`, `report` and
# `predict --model` silent for MLflow's default 120 s per attempt, over 7 attempts.
REQUEST_TIMEOUT_S = "10"


@contextlib.contextmanager
def bounded_requests() -> Iterator[None]:
    """:func:`bounded_retries`, and each MLflow request waits :data:`REQUEST_TIMEOUT_S` for an
    answer (where the user set no ``MLFLOW_HTTP_REQUEST_TIMEOUT``): for commands that only
    read the store or log small files, so a server that stopped answering is one line."""
    added = "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ
    if added:
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = REQUEST_TIMEOUT_S
    try:
        with bounded_retries():
            yield
    finally:
        if added:
            os.environ.pop("MLFLOW_HTTP_REQUEST_TIMEOUT", None)


@dataclass(frozen=True)
class RunArtifacts:
    """One run's artifacts through an ``MlflowClient``; every failure of a call is one
    :class:`ArtifactStoreError` naming the run and its artifact URI.

    MLflow hands each call to the repository of the URI's scheme, which lets its storage
    library's exceptions through unchanged (boto3's ``NoCredentialsError``, ftplib's
    ``ConnectionRefusedError``, an ``ImportError`` without google-cloud-storage, pyarrow's
    ``OSError`` without a JVM for HDFS; MLflow's own for an unknown scheme): no list of types
    covers them, so any exception a call raises is the store's. A relative local artifact URI
    is refused before any call: MLflow would read and write it under the current folder.
    """

    client: Any
    run_id: str
    uri: str  # the run's artifact URI
    fix: str = ARTIFACT_FIX  # of a failure

    @classmethod
    def of(cls, client: Any, run: Any) -> RunArtifacts:
        """The artifacts of ``run`` (an MLflow ``Run``)."""
        return cls(client, run.info.run_id, run.info.artifact_uri or "")

    @property
    def where(self) -> str:
        return f"run {self.run_id}, artifacts at {self.uri or '(none)'}"

    def list(self, path: str | None = None) -> list[Any]:
        """The artifacts in ``path`` (``FileInfo``: ``path``, ``is_dir``, ``file_size``)."""
        return self._call(f"listing {path or 'its artifacts'}", self.client.list_artifacts, path)

    def download(self, path: str, dst: str | Path) -> Path:
        """Downloads ``path`` into the folder ``dst``; returns the local copy."""
        return Path(self._call(f"fetching {path}", self.client.download_artifacts, path, str(dst)))

    def log(self, local: Path, artifact_path: str | None = None) -> None:
        """Uploads a file, or a folder's contents, under ``artifact_path``."""
        upload = self.client.log_artifacts if local.is_dir() else self.client.log_artifact
        self._call(f"uploading {local.name}", upload, str(local), artifact_path)

    def _call(self, doing: str, method: Any, *args: Any) -> Any:
        logging.getLogger("botocore.credentials").setLevel(logging.WARNING)  # "Found ..."
        try:
            if _relative_local(self.uri):
                raise ArtifactStoreError(
                    "the run's artifact location is a relative path (MLflow would use it "
                    "under the current folder)",
                    self.where,
                    "give the run an absolute artifact location in the store (MLflow records "
                    "absolute ones), or pick another run",
                )
            with bounded_retries():
                return method(self.run_id, *args)
        except UserError:
            raise
        except Exception as err:
            raise ArtifactStoreError(
                f"the run's artifact store failed while {doing} ({error_line(err)})",
                self.where,
                self.fix,
            ) from err


def error_line(err: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message`` (cut to ``limit``), or the type alone."""
    lines = str(err).strip().splitlines()
    return type(err).__name__ + (f": {lines[0][:limit]}" if lines else "")


def _relative_local(artifact_uri: str) -> bool:
    """Whether ``artifact_uri`` is a local path (no scheme, or ``file:``) that is not absolute."""
    from urllib.parse import urlparse

    parsed = urlparse(artifact_uri)
    return parsed.scheme.lower() in ("", "file") and not parsed.path.startswith("/")


# ---- outputs beside the store ------------------------------------------------------------------


def local_folder(uri: str | None) -> Path | None:
    """The local folder an artifact URI or location names: an absolute path, plain or
    ``file:``; None for a remote store (``s3://``, ``mlflow-artifacts:``, ...)."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(uri or "")
    if parsed.scheme.lower() == "file" and parsed.netloc in ("", "localhost"):
        path = unquote(parsed.path)
    elif parsed.scheme == "" and uri:
        path = uri
    else:
        return None
    return Path(path) if path.startswith("/") else None


def check_out_of_store(
    out: str | Path, flag: str, uri: str, locations: Iterable[str | None]
) -> None:
    """A UserError if ``out`` lies in a local folder of the MLflow artifact store: a run's
    artifact URI or an experiment's artifact location (``locations``; remote ones never
    hold a local path), or the folder beside a SQLite database (``uri``) that varnext's
    experiments keep their artifacts in (:func:`~varnext_ray.tracking.artifact_location`)."""
    from varnext_ray.tracking_sqlite import database_file

    database = database_file(uri)
    if database is not None:
        locations = [str(database.parent / tracking.ARTIFACTS_DIR), *locations]
    for location in locations:
        folder = local_folder(location)
        if folder is not None:
            check_not_inside(out, flag, folder, "the MLflow artifact store")
