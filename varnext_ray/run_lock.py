"""Locks between varnext processes on one machine: one process at a time trains a run, runs a
sweep, or opens a new SQLite MLflow store.

Two ``varnext train`` of the same ``--storage`` and ``--name`` both trained from scratch into
one folder and logged every epoch twice into one MLflow run; two identical sweeps started at
once both passed the "already exists" check; and MLflow's schema migrations of two processes
creating the same SQLite store collided, leaving it at an old schema. All three are kernel
``flock`` locks: a process that dies, ``kill -9`` included, releases its lock with its last
file descriptor, so no stale lock is ever waited on. Storage URIs (``s3://``, ``gs://``) are not
locked: ``flock`` has no meaning there.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from varnext_ray.errors import UserError
from varnext_ray.safe_io import os_reason
from varnext_ray.tracking_sqlite import database_file

log = logging.getLogger(__name__)

LOCK_FILE = ".varnext.lock"  # in a locked run or sweep folder while a process holds it
STORE_WAIT_S = 120.0  # creating a SQLite store takes seconds; a longer wait is a stuck process
_OPENED: set[str] = set()  # store URIs this process opened: MLflow keeps their store open


@contextlib.contextmanager
def held(folder: str | Path, *, what: str, fix: str) -> Iterator[None]:
    """Holds ``folder`` (a local run or sweep folder, made if missing) for this process while
    the block runs; another process's attempt is refused at once.

    The lock is ``flock`` on :data:`LOCK_FILE` inside the folder, which holds the holder's pid
    for the refusal to name. On leaving, the file is removed, and the folder too (with the
    parents made for it) if it was made here and nothing else was written in it. A storage URI
    (``s3://...``) is not locked.

    Raises:
        UserError: Another process holds the folder: ``<what> is in use by another varnext
            process (pid N) (<folder>): <fix>``; or the lock file cannot be made.

    Example:
        >>> with held("runs/r3", what="the run named r3", fix="pass another --name"):
        ...     train_it()
    """
    if "://" in str(folder):
        yield
        return
    folder = Path(folder).absolute()
    made = _make_folder(folder)
    try:
        fd = _acquire(folder / LOCK_FILE, what, fix)
        try:
            yield
        finally:
            _release(fd, folder / LOCK_FILE)
    finally:
        for made_here in made:  # the run's folder first, then the parents made for it
            try:
                made_here.rmdir()
            except OSError:  # not empty: the run wrote in it, or another process holds it
                break


def occupied(folder: str | Path) -> bool:
    """Whether a local ``folder`` exists and holds anything but a :data:`LOCK_FILE` (one left
    by a killed process included), i.e. something a run or a sweep wrote."""
    try:
        return any(entry.name != LOCK_FILE for entry in os.scandir(folder))
    except FileNotFoundError:
        return False
    except NotADirectoryError:
        return True


def _make_folder(folder: Path) -> list[Path]:
    """Makes ``folder`` and its missing parents; those made here, deepest first."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(
            f"cannot make the folder ({os_reason(err)})",
            str(folder),
            "pass a --storage you can write",
        ) from None
    return missing


def _acquire(path: Path, what: str, fix: str) -> int:
    """An open descriptor of ``path`` holding its exclusive ``flock``, the pid written in it."""
    for _ in range(5):
        try:  # os.open's descriptors are not inherited by Ray's subprocesses (PEP 446)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise UserError(
                f"cannot make the lock file ({os_reason(err)})",
                str(path),
                "pass a --storage you can write",
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            holder = f" (pid {pid})" if pid.isdigit() else ""
            raise UserError(
                f"{what} is in use by another varnext process{holder}", str(path.parent), fix
            ) from None
        if _same_file(fd, path):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)  # its holder removed it as we opened it: lock the new one
    raise UserError(f"{what} is in use by other varnext processes", str(path.parent), fix)


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``fd`` is still the file at ``path`` (a holder removes it when done)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (opened.st_dev, opened.st_ino)


def _release(fd: int, path: Path) -> None:
    """Removes the lock file, then lets go of it: removed first, so a process that opened it
    meanwhile finds it gone (:func:`_same_file`) instead of holding a lock nobody sees."""
    try:
        if _same_file(fd, path):
            path.unlink()
    except OSError as err:  # a folder made read-only meanwhile: the lock still ends
        log.debug("could not remove %s: %s", path, err)
    finally:
        os.close(fd)


@contextlib.contextmanager
def creating_store(uri: str) -> Iterator[None]:
    """Around the first opening, in this process, of the SQLite store of ``uri``: holds an
    exclusive ``flock`` on the database's folder, waiting up to :data:`STORE_WAIT_S` for
    another process's.

    Opening a SQLite store creates it if it is new, or finds it half made: MLflow creates the
    tables and runs some fifty migrations, and two processes doing so at once failed each
    other's ("duplicate column name: step", alembic's "expected to match one row") and left
    an old schema that every command refused. The lock is on the folder, not on a file beside
    the database, so nothing is left behind. Other stores, and later openings (MLflow keeps the
    store open in the process), are not locked.

    Raises:
        UserError: Another process held the folder for over :data:`STORE_WAIT_S`.
    """
    path = database_file(uri)
    if path is None or uri in _OPENED:
        yield
        return
    try:
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # check_reachable says why; MLflow fails the same way
        yield
        return
    try:
        _wait_for(fd, path)
        yield
        _OPENED.add(uri)
    finally:
        os.close(fd)  # releases the lock


def _wait_for(fd: int, path: Path) -> None:
    """Takes the exclusive ``flock`` of ``fd``, polling until :data:`STORE_WAIT_S` has passed."""
    deadline = time.monotonic() + STORE_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise UserError(
                    f"another process has been creating or opening the MLflow database for "
                    f"over {STORE_WAIT_S:g} s",
                    str(path),
                    "wait for it to end and run the command again, or pass another --tracking-uri",
                ) from None
            time.sleep(0.1)
        except OSError as err:  # a file system without flock (some network mounts)
            log.debug("no lock on %s (%s): opening the store unlocked", path.parent, err)
            return
