"""Run records: small JSON files beside Ray's state for a run (``varnext_run.json`` names the
MLflow run a resumed run continues), on a local path or a storage URI through pyarrow's file
systems, so any node finds them.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from varnext_ray.errors import UserError

RECORD_LIMIT = 64 * 1024  # a run record holds two short strings
RUN_FILE = "varnext_run.json"  # in a run's Ray storage directory: the MLflow run to continue


# How long a GCS call is retried before it fails: pyarrow's default retries for 15 minutes in
# native code, deaf to SIGTERM (no credentials and no network: `train --storage gs://...` hung).
STORAGE_RETRY = datetime.timedelta(seconds=10)


def storage_path(run_dir: str | Path) -> tuple[Any, str]:
    """(pyarrow file system, path in it) for a local path or a storage URI (a GCS one retries
    for :data:`STORAGE_RETRY` at most)."""
    import pyarrow.fs

    text = str(run_dir)
    if "://" in text:
        try:
            fs, path = pyarrow.fs.FileSystem.from_uri(text)
            if isinstance(fs, pyarrow.fs.GcsFileSystem) and "?" not in text:
                fs = pyarrow.fs.GcsFileSystem(retry_time_limit=STORAGE_RETRY)
            return fs, path
        except (pyarrow.ArrowInvalid, OSError, ValueError) as err:  # no such scheme, no JVM
            raise UserError(
                f"cannot open the storage URI ({str(err).splitlines()[0][:160]})",
                text,
                "pass a local folder, or a URI pyarrow opens (s3://BUCKET/path, gs://BUCKET/path)",
            ) from None
    return pyarrow.fs.LocalFileSystem(), str(Path(text).resolve())


def read_record(run_dir: str | Path, name: str = RUN_FILE) -> str | None:
    """The run id recorded in ``run_dir/name`` (local path or storage URI), or None."""
    record = read_json_record(run_dir, name)
    if record is None:
        return None
    run_id = record.get("run_id")
    if not isinstance(run_id, str) or not run_id.isalnum():
        raise UserError(
            f"the run record is damaged (run_id {str(run_id)[:40]!r} is not an MLflow run id)",
            f"{run_dir}/{name}",
            "delete it to start a new MLflow run, or restore it from a backup",
        )
    return run_id


def read_json_record(run_dir: str | Path, name: str) -> dict[str, Any] | None:
    """The JSON object in ``run_dir/name`` (local path or storage URI), or None if absent."""
    import pyarrow.fs

    fs, path = storage_path(run_dir)
    kind = fs.get_file_info(f"{path}/{name}").type
    if kind == pyarrow.fs.FileType.NotFound:
        return None
    if kind != pyarrow.fs.FileType.File:  # a folder, a named pipe (whose read would block)
        what = "a folder" if kind == pyarrow.fs.FileType.Directory else "not a regular file"
        raise UserError(
            f"the run record is {what}",
            f"{path}/{name}",
            "remove it to start a new MLflow run, or restore the record from a backup",
        )
    with fs.open_input_stream(f"{path}/{name}") as stream:
        data = stream.read(RECORD_LIMIT + 1)
    try:
        if len(data) > RECORD_LIMIT:
            raise ValueError(f"over {RECORD_LIMIT} bytes")
        record = json.loads(data.decode("utf-8"))
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except (ValueError, RecursionError) as err:
        raise UserError(
            f"the run record is damaged ({str(err)[:100]})",
            f"{path}/{name}",
            "delete it to start a new MLflow run, or restore it from a backup",
        ) from None
    return record


def write_record(run_dir: str | Path, record: dict[str, Any], name: str = RUN_FILE) -> None:
    """Writes ``record`` as JSON to ``run_dir/name`` (local path or storage URI)."""
    fs, path = storage_path(run_dir)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{name}") as stream:
        stream.write((json.dumps(record) + "\n").encode())
