"""Where ``varnext demo`` may write: its ``--workdir`` checked before Ray starts.

A demo writes its data, its sweep and its answer in one folder. That folder must be new, an
empty folder, or the work directory of a demo stopped before its sweep began (whose data is
reused): a demo never fills a folder that holds anything else (a checkpoint folder, the
current folder) nor replaces what a finished demo wrote. Every output it will write is
checked through the shared checks of :mod:`varnext_ray.safe_io`, so a refusal comes before
any work.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from varnext_ray.errors import UserError
from varnext_ray.output_checks import check_new_dir, check_output_files
from varnext_ray.safe_io import kind_of, os_reason, path_stat, read_json
from varnext_ray.storage_checks import check_storage_writable

WORKDIR_FIX = "pass a new or empty folder as --workdir"
# What a demo writes in its work directory, in this order: synth/ and dataset/ (the data), then
# mlflow.db, mlartifacts/ and ray/ (the sweep), then best/ and prediction_strip.png.
STRIP = "prediction_strip.png"
OUTPUTS = ("synth", "dataset", "mlflow.db", "mlartifacts", "ray", "best", STRIP)


def _is_own(name: str) -> bool:
    """An entry a demo writes, or leaves when killed: a staged folder (``.dataset.partial-*``),
    a temporary file (``.prediction_strip.png.tmp-*``) or a SQLite journal."""
    journals = ("mlflow.db-journal", "mlflow.db-wal", "mlflow.db-shm")
    staged = tuple(f".{out}.{kind}-" for out in OUTPUTS for kind in ("partial", "tmp"))
    return name in OUTPUTS or name in journals or name.startswith(staged)


def _is_demo_workdir(workdir: Path, own: dict[str, Any]) -> bool:
    """True if ``synth/synth.json`` records the demo's synthetic clips (``own``: its seed, size
    and number of clips; the demo writes it first, staged): ``varnext synth`` output of other
    settings, as docs/data.md makes, is not a demo's."""
    try:
        synth = read_json(workdir / "synth" / "synth.json", what="synth.json")
    except UserError:
        return False
    clips = synth.get("clips") if isinstance(synth, dict) else None
    return (
        isinstance(clips, list)
        and len(clips) == own["clips"]
        and all(synth.get(k) == v for k, v in own.items() if k != "clips")
    )


def check_workdir(workdir: Path, synth: dict[str, Any]) -> str:
    """Refuses (UserError) a work directory the demo must not write in, before Ray starts.

    ``synth`` is the demo's own ``synth.json`` (seed, size, number of clips).

    It must be a new path or an empty folder that can be written, or the work directory of a
    demo stopped before its sweep began (holding only the demo's own data, which is reused).
    Each output the demo will write is checked: ``best/`` new or empty, no strip yet, a
    ``dataset/`` that loads, ``mlflow.db`` an MLflow store. Returns the tracking URI.
    """
    st = path_stat(workdir, "--workdir is unusable", WORKDIR_FIX)  # a parent that is a file
    if st is not None and not stat.S_ISDIR(st.st_mode):
        what = f"--workdir is {kind_of(st.st_mode)}, not a folder"
        raise UserError(what, str(workdir), WORKDIR_FIX)
    if st is None:
        _check_writable(workdir)
        return _check_store(workdir, new=True)
    try:
        names = sorted(os.listdir(workdir))
    except OSError as err:
        what = f"cannot list --workdir ({os_reason(err)})"
        raise UserError(what, str(workdir), WORKDIR_FIX) from None
    foreign = [name for name in names if not _is_own(name)]
    outputs = [name for name in names if name in OUTPUTS]
    if foreign or (outputs and not _is_demo_workdir(workdir, synth)):
        held = foreign or outputs
        listed = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
        what = f"--workdir is not empty and is not a demo's work directory (it holds {listed})"
        raise UserError(what, str(workdir), WORKDIR_FIX)
    if (workdir / "ray").exists():
        raise UserError(
            "a demo already ran in this work directory"
            if (workdir / "best").exists()
            else "a demo that was stopped before it ended is in this work directory",
            str(workdir),
            "pass another --workdir, or remove this one to run it again",
        )
    _check_outputs(workdir)
    uri = _check_store(workdir, new=False)
    _check_writable(workdir)  # last: it changes the folder's mtime
    return uri


def _check_writable(workdir: Path) -> None:
    """The work directory, or the folder it will be made in, can be written (the shared check
    makes and removes a temporary folder: root and read-only file systems included)."""
    try:
        check_storage_writable(workdir, "--workdir")
    except UserError as err:
        fix = "pass a folder you can write as --workdir, or make this one writable"
        raise UserError(err.what, err.where, fix) from None


def _again(workdir: Path, name: str) -> str:
    """A shared check's fix in the demo's words (it has no --out and no --tracking-uri)."""
    return f"pass another --workdir, or remove {name} from {workdir} to run the demo there"


def _check_store(workdir: Path, *, new: bool) -> str:
    """The demo's tracking URI, checked as every command checks one: its form (no ``?``, no
    control character) and, in an existing folder, an existing ``mlflow.db`` (an MLflow store
    of this MLflow's schema; another program's SQLite file is refused, never migrated)."""
    from varnext_ray.tracking_uri import check_reachable

    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    try:
        check_reachable(uri)
    except UserError as err:
        if new and err.where == str(workdir):  # "the folder ... does not exist": made later
            return uri
        if err.fix.startswith("run `mlflow db upgrade"):
            fix = err.fix
        elif err.where == str(workdir / "mlflow.db"):
            fix = _again(workdir, "mlflow.db")
        else:  # the URI's form
            fix = "pass another --workdir (its path is part of that URI)"
        raise UserError(err.what, err.where, fix) from None
    return uri


def _check_outputs(workdir: Path) -> None:
    """Checks the outputs already in a demo's work directory, through the shared checks."""
    from varnext_ray.manifest import load_manifest

    try:
        check_new_dir(workdir / "best", "--workdir")
        check_output_files([workdir / STRIP], flag=STRIP)
    except UserError as err:
        raise UserError(err.what, err.where, _again(workdir, Path(err.where).name)) from None
    if (workdir / "dataset").exists():
        try:
            load_manifest(workdir / "dataset")
        except UserError as err:
            raise UserError(err.what, err.where, _again(workdir, "dataset")) from None
