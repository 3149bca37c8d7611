"""Writing our own files atomically: a file through a temporary sibling, a folder staged.

:func:`write_atomic` writes a temporary file in the target's folder, fsyncs it and renames it
into place (``os.replace``), so a reader never sees half a file; with ``overwrite=False`` an
existing file is refused instead of replaced (``os.link`` refuses an existing name atomically).
:func:`staged_dir` builds a folder under a temporary name beside the target and renames it into
place when complete; on failure it removes the staging folder and any parent folders it created
(:func:`parent_folders`), so nothing is left behind.

Example:
    >>> write_atomic("runs/out.json", json_bytes({"ok": True}))
    >>> with staged_dir("runs/ds", flag="--out") as tmp:
    ...     (tmp / "dataset.json").write_bytes(b"{}")
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

from varnext_ray.errors import UserError
from varnext_ray.output_checks import absolute_new_dir, check_new_dir
from varnext_ray.safe_io import os_reason


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(
    path: str | Path, data: bytes, *, overwrite: bool = True, flag: str | None = None
) -> Path:
    """Writes ``data`` to ``path`` through a temporary sibling and a rename (never half a file).

    ``overwrite=False`` refuses (UserError) an existing ``path`` instead of replacing it; the
    check and the rename are one atomic step (``os.link`` fails on an existing name). A new
    file's mode follows the umask, a replaced file keeps its own.
    """
    path = Path(path)
    where = flag or str(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            with contextlib.suppress(FileNotFoundError):
                os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise UserError(
                    "output already exists", str(path), "choose a new path (it is never replaced)"
                ) from None
            os.unlink(tmp)
        _fsync_dir(path.parent)
    except OSError as err:
        raise UserError(
            f"cannot write ({os_reason(err)})", where, "choose a writable path"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return path


@contextlib.contextmanager
def parent_folders(
    path: str | Path, fix: str = "choose an output path in a folder you can write to"
) -> Iterator[Path]:
    """Creates the missing parent folders of ``path`` for the block; removes them again (those
    still empty) if the block fails, so a refused or failed write leaves no empty folders.

    Raises:
        UserError: A folder cannot be created (nothing is left behind then either).
    """
    path = Path(path)
    missing: list[Path] = []  # deepest first
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    made: list[Path] = []
    try:
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:  # made meanwhile by someone else: theirs, not ours
                continue
            except OSError as err:
                raise UserError(
                    f"cannot create the folder ({os_reason(err)})",
                    str(folder),
                    fix,
                ) from None
            made.append(folder)
        yield path
    except BaseException:
        for folder in reversed(made):  # deepest first; one that now holds something stays
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


@contextlib.contextmanager
def staged_dir(target: str | Path, flag: str, *, allow_empty: bool = True) -> Iterator[Path]:
    """Yields a temporary folder beside ``target``; renames it to ``target`` on success.

    Named ``.<name>.partial-<pid>-<random>``: a killed run leaves a hidden folder that never
    reads as the output. On any failure the staging folder and the parent folders this call
    created (:func:`parent_folders`) are removed. The target must be new or an empty folder
    (:func:`check_new_dir`).
    """
    target = absolute_new_dir(target, flag)
    check_new_dir(target, flag, allow_empty=allow_empty)
    fix = f"choose another {flag}"
    staging = target.parent / f".{target.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    with parent_folders(staging, fix):
        try:
            try:
                staging.mkdir()
            except OSError as err:
                raise UserError(f"cannot create ({os_reason(err)})", str(target), fix) from None
            yield staging
            try:
                os.rename(staging, target)  # replaces an empty folder; refuses one that filled
            except OSError as err:
                what = (
                    "output appeared while writing"
                    if target.exists()
                    else "cannot rename into place"
                )
                raise UserError(f"{what} ({os_reason(err)})", str(target), fix) from None
            _fsync_dir(target.parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
