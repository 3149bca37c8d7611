"""Checks on where a command writes, made before any work: nothing it reads or keeps is lost.

:func:`check_new_dir` and :func:`normal_new_dir` vet a new output folder (what
:func:`~varnext_ray.atomic_write.staged_dir` fills); :func:`check_output_files` vets output files
(never one of the command's inputs, a protected file, a symlink or a non-file; an existing one
only with ``--overwrite``); :func:`check_not_inside` refuses an output inside an input folder.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from varnext_ray.errors import UserError
from varnext_ray.safe_io import kind_of, os_reason, path_stat

# Linux inode flags (``chattr``): a folder marked so cannot be replaced, even by root.
_FS_IOC_GETFLAGS, _IMMUTABLE, _APPEND_ONLY = 0x80086601, 0x10, 0x20


def names_a_folder(text: str) -> bool:
    """Whether an output path, as written, names a folder (a trailing ``/``, a last part
    ``.``): ``Path`` drops the slash, so ``--out a.html/`` was written as the file ``a.html``."""
    return text.endswith(("/", os.sep, "/.")) or text in (".", "")


def check_current_folder(path: str | Path, flag: str) -> None:
    """A UserError if ``path`` is relative and the current folder was deleted: nothing can be
    made in it (the kernel answers ENOENT), and Python cannot even name it.

    Only a deleted folder refuses: one too deep for ``getcwd`` (ENAMETOOLONG) or unreadable
    above still takes relative paths, and an absolute path never needs the current folder.
    """
    if Path(path).is_absolute():
        return
    try:
        os.getcwd()
    except FileNotFoundError:
        raise UserError(
            f"the current folder was deleted, so the relative {flag} cannot be made there",
            str(path),
            f"cd to an existing folder, or pass an absolute {flag}",
        ) from None
    except OSError:
        return


def check_new_dir(path: str | Path, flag: str, *, allow_empty: bool = True) -> None:
    """Refuses (UserError) an output folder that exists with content, is a file, or lies under one.

    An existing empty folder is accepted when ``allow_empty`` (it is replaced atomically).
    """
    path = Path(path)
    check_current_folder(path, flag)
    fix = f"choose a new {flag} (existing data is never overwritten)"
    st = path_stat(path, f"{flag} is unusable", fix)
    if st is None and os.path.islink(path):
        raise UserError("output already exists (a symlink to nothing)", str(path), fix)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        through = ", through a symlink" if os.path.islink(path) else ""
        raise UserError(f"output already exists ({kind_of(st.st_mode)}{through})", str(path), fix)
    if st is not None and os.path.islink(path):  # a new folder is renamed into place: not
        real = os.path.realpath(path)  # through a link, which it would replace or fail on
        what = f"output is a symlink (to {real}); the new folder cannot go through it"
        raise UserError(what, str(path), f"pass the folder it points to ({real}) as {flag}")
    if st is not None:
        if not allow_empty:
            raise UserError("output already exists", str(path), fix)
        try:
            if any(os.scandir(path)):
                raise UserError("output already exists and is not empty", str(path), fix)
        except OSError as err:
            raise UserError(f"output is unreadable ({os_reason(err)})", str(path), fix) from None
        check_replaceable(path, flag)
        return
    parent = path.parent
    while True:
        pst = path_stat(parent, f"{flag} is unusable", fix)
        if pst is not None:
            if not stat.S_ISDIR(pst.st_mode):
                raise UserError(f"a parent of {flag} is {kind_of(pst.st_mode)}", str(parent), fix)
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UserError(f"cannot write in the folder of {flag}", str(parent), fix)
            if parent == path.parent:  # the staged folder is renamed within it at the end
                _refuse_fixed(parent, f"the folder of {flag}", flag)
            return
        if parent == parent.parent:
            return
        parent = parent.parent


def normal_new_dir(path: str | Path, flag: str) -> Path:
    """``path`` normalised ("." or "a/.." are staged beside the folder they name, not inside
    it) but left relative if given so: the kernel takes a relative path below a current folder
    too deep to be named absolutely. Refuses the current folder (renamed into place, the new
    folder would leave the shell in a deleted one) and the folders above it."""
    check_current_folder(path, flag)
    normal = Path(os.path.normpath(path))
    if normal.name == ".." or str(normal) == "." or _is_current_folder(normal):
        which = "above the current folder" if normal.name == ".." else "the current folder"
        raise UserError(
            f"{flag} is {which}, which the new output would replace",
            str(path),
            f"pass a new folder as {flag}, e.g. runs/NAME",
        )
    return normal


def _is_current_folder(path: Path) -> bool:
    """Whether ``path`` is the current folder (the same inode), without naming the latter."""
    try:
        return os.path.samestat(os.stat(path), os.stat("."))
    except OSError:
        return False


def check_replaceable(folder: Path, flag: str) -> None:
    """A UserError if the existing empty output ``folder`` cannot be replaced by a rename: it
    or its parent is immutable or append-only (``chattr``), or the parent is not writable.
    Checked before the work: the rename comes only once everything was made."""
    _refuse_fixed(folder, f"the empty {flag}", flag)
    _refuse_fixed(folder.parent, f"the folder of {flag}", flag)
    if not os.access(folder.parent, os.W_OK | os.X_OK):
        what = f"cannot replace the empty {flag}: its folder is not writable"
        fix = f"choose another {flag}, or make its folder writable (chmod u+w)"
        raise UserError(what, str(folder.parent), fix)


def _refuse_fixed(path: Path, role: str, flag: str) -> None:
    """A UserError if ``path`` is immutable or append-only: no entry of it (or, immutable,
    it itself) can be renamed away, which a staged output's last step needs."""
    flags = _inode_flags(path)
    for bit, word in ((_IMMUTABLE, "immutable"), (_APPEND_ONLY, "append-only")):
        if flags & bit:
            fix = f"choose another {flag}, or clear the flag (chattr -{word[0]} {path})"
            raise UserError(f"{role} is {word} (chattr +{word[0]})", str(path), fix)


def _inode_flags(path: Path) -> int:
    """The ``chattr`` flags of ``path`` (0 where the filesystem or system has none)."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system
        return 0
    buf = bytearray(8)
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.ioctl(fd, _FS_IOC_GETFLAGS, buf)
        finally:
            os.close(fd)
    return int.from_bytes(buf[:4], "little")


def check_not_inside(out: str | Path, flag: str, folder: str | Path, role: str) -> None:
    """A UserError if the local output folder ``out`` is ``folder`` (an input of the command,
    ``role`` such as "the dataset (--data)") or lies inside it, symlinks resolved: the command
    would write among what it reads. A URI (``s3://...``) is never inside a local folder."""
    if "://" in str(out) or not _inside(Path(out), Path(folder)):
        return
    raise UserError(
        f"{flag} lies inside {role}, which must not change: the command would write among "
        "the files it reads",
        str(out),
        f"pass a {flag} outside {folder}",
    )


def _inside(path: Path, folder: Path) -> bool:
    """True if ``path`` (symlinks resolved) is ``folder`` or lies anywhere below it."""
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
        return False


def _refuse_symlink(out: Path, flag: str) -> None:
    """A UserError if ``out`` is a symlink, dangling or not.

    Writing through a temporary file and a rename would replace the link itself with a file
    (and a dangling link reads as "nothing there" to ``exists``), so no output is ever a link.
    """
    if not os.path.islink(out):
        return
    try:
        target = os.readlink(out)
    except OSError:
        target = "?"
    dangling = "" if os.path.exists(out) else ", which does not exist"
    raise UserError(
        f"{flag} is a symlink (to {target}{dangling}); writing would replace the link",
        str(out),
        f"pass the real path or another {flag} (a link is never written through or replaced)",
    )


def check_output_files(
    outs: Sequence[str | Path],
    *,
    flag: str,
    overwrite: bool = False,
    inputs: Sequence[str | Path] = (),
    protected: Sequence[str | Path] = (),
    protected_dirs: Sequence[tuple[str | Path, str]] = (),
) -> None:
    """Refuses (UserError) output files that would destroy something, before any work is done.

    Never allowed, even with ``overwrite``: an output that is one of the command's ``inputs``,
    a ``protected`` file (such as the MLflow database), a path inside one of the
    ``protected_dirs`` (folder, role) pairs (such as the checkpoint being read; symlinks
    resolved), a symlink (dangling or not), or anything that is not a regular file. An existing
    output is replaced only with ``overwrite`` (the command's ``--overwrite``). The folder must
    exist or be creatable, and be writable.
    """

    sacred = [(Path(p), "its own input") for p in inputs] + [
        (Path(p), "a file it must keep") for p in protected
    ]
    for out in map(Path, outs):
        check_current_folder(out, flag)
        for other, role in sacred:
            if _same_file(out, other):
                raise UserError(
                    f"the output would overwrite {role}",
                    str(out),
                    f"pass another {flag}",
                )
        for folder, role in protected_dirs:
            check_not_inside(out, flag, folder, role)
        _refuse_symlink(out, flag)
        _check_output_file(out, flag, overwrite)


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are one file, or name one path (when neither exists yet).

    Compared as given where the current folder cannot be named (a folder too deep for
    ``getcwd``): making the paths absolute there fails, while the kernel takes them.
    """
    try:
        if os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b):
            return True
    except OSError:
        pass
    try:
        return os.path.abspath(a) == os.path.abspath(b)
    except OSError:
        return os.path.normpath(a) == os.path.normpath(b)


def _check_output_file(out: Path, flag: str, overwrite: bool) -> None:
    st = path_stat(out, f"{flag} is unusable", f"pass another {flag}")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise UserError(
            f"{flag} is {kind_of(st.st_mode)}, not a file",
            str(out),
            f"pass a file path for {flag}",
        )
    if st is not None and not overwrite:
        raise UserError(
            "the output file already exists",
            str(out),
            f"pass --overwrite to replace it, or another {flag}",
        )
    parent = out.parent  # as given: a relative path works below any current folder
    while not os.path.exists(parent) and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(
            f"{flag} is not in a writable directory",
            str(parent),
            f"pass a {flag} in a folder you can write to",
        )
