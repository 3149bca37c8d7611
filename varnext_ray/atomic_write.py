"""Writing our own files atomically: a file through a temporary sibling, a folder staged.

:func:`write_atomic` writes a temporary file in the target's folder, fsyncs it and renames it
into place (``os.replace``), so a reader never sees half a file; with ``overwrite=False`` an
existing file is refused instead of replaced (``os.link`` refuses an existing name atomically).
:func:`staged_file` is the same with a block between the write and the rename, for work that
must follow the local write and succeed before the file appears. Temporary names are hidden
and cut to fit NAME_MAX (:func:`hidden_name`); paths stay as given (relative ones too).
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
import errno
import os
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

from varnext_ray.errors import UserError
from varnext_ray.output_checks import check_new_dir, normal_new_dir
from varnext_ray.safe_io import os_reason

NAME_MAX = 255  # bytes of one file name (Linux, macOS): a temporary name must fit too


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def hidden_name(name: str, tag: str) -> str:
    """A hidden temporary name for a file or folder called ``name``: ``.<name>.<tag>``, the
    name part cut (on a character) so the whole fits NAME_MAX bytes; ``tag`` (random) keeps
    it unique. A legal 255-byte output name must not fail on its temporary sibling's name."""
    room = NAME_MAX - len(f"..{tag}".encode())
    kept, used = [], 0
    for char in name:  # a surrogate escape (an undecodable byte) is one byte on disk
        size = len(char.encode("utf-8", "surrogateescape"))
        if used + size > room:
            break
        kept.append(char)
        used += size
    return f".{''.join(kept)}.{tag}"


@contextlib.contextmanager
def staged_file(
    path: str | Path, data: bytes, *, overwrite: bool = True, flag: str | None = None
) -> Iterator[Path]:
    """Writes ``data`` to a temporary sibling of ``path``, yields ``path``, and renames the
    sibling into place only if the block succeeds (else removes it): work that must happen
    only once the file can be written (logging it elsewhere) goes in the block, so a local
    failure comes before it, and a failure of the block leaves no file.

    ``overwrite=False`` refuses (UserError) an existing ``path``: before the block, and again
    atomically at the rename (``os.link`` fails on an existing name). A new file's mode
    follows the umask; a replaced file keeps its mode, owner and group (:func:`_take_owner`).
    """
    path = Path(path)
    where = flag or str(path)
    tmp = path.with_name(hidden_name(path.name, f"tmp-{uuid.uuid4().hex[:8]}"))
    try:
        with _as_user_error(where):
            _write_new(tmp, data)
        if not overwrite and os.path.lexists(path):
            raise _exists(path)
        yield path
        with _as_user_error(where):
            _put_in_place(tmp, path, overwrite)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def write_atomic(
    path: str | Path, data: bytes, *, overwrite: bool = True, flag: str | None = None
) -> Path:
    """Writes ``data`` to ``path`` through a temporary sibling and a rename (never half a file);
    see :func:`staged_file` for ``overwrite``."""
    with staged_file(path, data, overwrite=overwrite, flag=flag) as done:
        return done


@contextlib.contextmanager
def _as_user_error(where: str) -> Iterator[None]:
    """An OSError of writing our file (a full disk, a name too long) as a UserError."""
    try:
        yield
    except OSError as err:
        raise UserError(
            f"cannot write ({os_reason(err)})", where, "choose a writable path"
        ) from None


def _write_new(tmp: Path, data: bytes) -> None:
    with open(tmp, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _put_in_place(tmp: Path, path: Path, overwrite: bool) -> None:
    """Renames ``tmp`` to ``path`` (replacing it only with ``overwrite``), then syncs the folder."""
    if overwrite:
        replaced = _stat_or_none(path)
        if replaced is not None:  # the replaced file's owner, group and mode are kept
            _take_owner(tmp, replaced)
            os.chmod(tmp, stat.S_IMODE(replaced.st_mode))
        os.replace(tmp, path)
    else:
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise _exists(path) from None
        os.unlink(tmp)
    _fsync_dir(path.parent)


def _exists(path: Path) -> UserError:
    return UserError("output already exists", str(path), "choose a new path (it is never replaced)")


@contextlib.contextmanager
def parent_folders(
    path: str | Path, fix: str = "choose an output path in a folder you can write to"
) -> Iterator[Path]:
    """Creates the missing parent folders of ``path`` for the block; removes them again (those
    still empty) if the block fails, so a refused or failed write leaves no empty folders.
    After a block that succeeds, the ones it left empty go too: ``nx/../q.png`` needs ``nx``
    to exist while the path is resolved, but the file lands beside it.

    Raises:
        UserError: A folder cannot be created (nothing is left behind then either).
    """
    path = Path(path)
    missing: list[Path] = []  # deepest first
    parent = path.parent  # as given: a relative path works below any current folder
    while not os.path.exists(parent) and parent != parent.parent:
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
    finally:
        for folder in reversed(made):  # deepest first; one that now holds something stays
            with contextlib.suppress(OSError):
                folder.rmdir()


@contextlib.contextmanager
def staged_dir(target: str | Path, flag: str, *, allow_empty: bool = True) -> Iterator[Path]:
    """Yields a temporary folder beside ``target``; renames it to ``target`` on success.

    Named ``.<name>.partial-<pid>-<random>``: a killed run leaves a hidden folder that never
    reads as the output. On any failure the staging folder and the parent folders this call
    created (:func:`parent_folders`) are removed. The target must be new or an empty folder
    (:func:`check_new_dir`); an empty folder's mode, owner and group are the output's (a
    private ``mkdir -m 700`` folder stays private, a set-group-ID one passes its group on).
    """
    target = normal_new_dir(target, flag)
    check_new_dir(target, flag, allow_empty=allow_empty)
    fix = f"choose another {flag}"
    tag = f"partial-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    staging = target.parent / hidden_name(target.name, tag)
    with parent_folders(staging, fix):
        try:
            try:
                staging.mkdir()
                empty = _stat_or_none(target)  # an empty folder the user made for the output
                if empty is not None:
                    _take_owner(staging, empty)
                    os.chmod(staging, stat.S_IMODE(empty.st_mode) | stat.S_IRWXU)  # to fill it
            except OSError as err:
                raise UserError(f"cannot create ({os_reason(err)})", str(target), fix) from None
            yield staging
            if empty is not None:
                with _as_user_error(str(target)):
                    os.chmod(staging, stat.S_IMODE(empty.st_mode))
            _rename_into_place(staging, target, fix)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def _stat_or_none(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def _take_owner(new: Path, old: os.stat_result) -> None:
    """Gives ``new`` the owner and group of the file or folder ``old`` it replaces, where this
    process may (root; or a group of its own): a replaced output keeps who may read it. Set
    before the mode, which a change of owner may clear bits of (set-group-ID)."""
    now = os.stat(new)
    if (now.st_uid, now.st_gid) == (old.st_uid, old.st_gid):
        return
    with contextlib.suppress(PermissionError):
        os.chown(new, old.st_uid, old.st_gid)
        return
    with contextlib.suppress(PermissionError):  # not root: at least the group, if it is ours
        os.chown(new, -1, old.st_gid)


def _rename_into_place(staging: Path, target: Path, fix: str) -> None:
    """Renames the complete ``staging`` folder to ``target``, replacing an empty folder; a
    failure says its real reason: "appeared" only for an output that filled meanwhile."""
    try:
        os.rename(staging, target)
    except OSError as err:
        if err.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):  # filled, or a file
            what = "output appeared while writing"
        elif os.path.lexists(target):
            what = "cannot replace the empty output folder"
        else:
            what = "cannot rename into place"
        raise UserError(f"{what} ({os_reason(err)})", str(target), fix) from None
    _fsync_dir(target.parent)
