"""Reading user files safely and writing our own files atomically: the one place for both.

Reading. Everything the user hands us (architecture and search-space JSON, ``dataset.json``,
a checkpoint's ``meta.json``, images, videos) goes through :func:`regular_file` first: a
missing path, a directory, a FIFO (opening one blocks until a writer appears), a device such as
``/dev/null`` or ``/dev/zero``, a socket, a permission problem or a symlink loop each become a
:class:`~varnext_ray.errors.UserError` naming the path, before anything is opened.
:func:`read_json` adds a byte cap (checked on the file's size and again while reading, so a file
growing under us cannot get past it), UTF-8 decoding, and turns every way ``json.loads`` can
fail (syntax, nesting 100,000 deep, a 5,000-digit integer, ``NaN``) into one ``UserError``.

Writing. :func:`write_atomic` writes a temporary file in the target's folder, fsyncs it and
renames it into place (``os.replace``), so a reader never sees half a file; with
``overwrite=False`` an existing file is refused instead of replaced (``os.link`` refuses an
existing name atomically). :func:`staged_dir` builds a folder under a temporary name beside
the target and renames it into place when complete; on failure it removes the staging folder
and any parent folders it created, so nothing is left behind.

Example:
    >>> data = read_json("configs/smoke_64x36.json", what="architecture")
    >>> write_atomic("runs/out.json", json_bytes({"ok": True}))
    >>> with staged_dir("runs/ds", flag="--out") as tmp:
    ...     (tmp / "dataset.json").write_bytes(b"{}")
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import stat
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from varnext_ray.errors import UserError

KIB, MIB = 1024, 1024 * 1024
CONFIG_LIMIT = 1 * MIB  # architectures, search spaces, checkpoint arch.json
MANIFEST_LIMIT = 64 * MIB  # dataset.json of hours of footage is a few MB
META_LIMIT = 16 * MIB  # a checkpoint's meta.json / optimizer.json
MAX_JSON_DEPTH = 64  # our JSON files nest 5 deep at most

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISLNK, "a symlink to nothing (dangling, or a loop)"),  # lstat of a broken link
)


def size_text(n: int) -> str:
    """``1048576`` -> ``"1 MiB"`` (for messages)."""
    for unit, scale in (("GiB", 1024**3), ("MiB", MIB), ("KiB", KIB)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} bytes"


def os_reason(err: OSError) -> str:
    """The short reason of an OSError (``Permission denied``), without the path."""
    return err.strerror or type(err).__name__


def kind_of(mode: int) -> str:
    """What a file is, in words (``a file``, ``a directory``, ``a named pipe (FIFO)``)."""
    if stat.S_ISREG(mode):
        return "a file"
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def path_stat(path: str | Path, what: str, fix: str) -> os.stat_result | None:
    """``os.stat`` (following symlinks); None if nothing is there; a UserError for other errors."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        raise UserError(f"{what}: {_not_a_folder(path)}", str(path), fix) from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UserError(f"{what}: a symlink loop", str(path), fix) from None
        raise UserError(f"{what}: cannot read ({os_reason(err)})", str(path), fix) from None
    except ValueError as err:  # an embedded NUL byte
        raise UserError(f"{what}: invalid path ({err})", str(path), fix) from None


def _not_a_folder(path: str | Path) -> str:
    """Why ``path`` cannot be reached (ENOTDIR): the first folder on its way that is not one."""
    for parent in reversed(Path(path).parents):
        try:
            mode = os.stat(parent).st_mode
        except OSError:
            break
        if not stat.S_ISDIR(mode):
            return f"{parent} is {kind_of(mode)}, not a folder"
    return "a parent of this path is not a folder"


def regular_file(path: str | Path, what: str = "file", fix: str = "check the path") -> Path:
    """The path, if it is a regular file (after symlinks); else a UserError saying what it is.

    Checked before opening, so a FIFO or a device is never opened (opening a FIFO blocks).
    """
    st = path_stat(path, what, fix)
    if st is None:
        raise UserError(f"{what} not found", str(path), fix)
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{what} is {kind_of(st.st_mode)}, not a regular file", str(path), fix)
    return Path(path)


def read_bounded(
    path: str | Path, limit: int, what: str = "file", fix: str = "check the path"
) -> bytes:
    """A regular file's bytes, refusing it (UserError) if it is larger than ``limit`` bytes."""
    path = regular_file(path, what, fix)
    too_big = f"{what} is larger than the {size_text(limit)} limit"
    try:
        # O_NONBLOCK: should the path be swapped for a FIFO after the check, open does not block.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as err:
        raise UserError(f"{what}: cannot open ({os_reason(err)})", str(path), fix) from None
    try:
        with os.fdopen(fd, "rb") as f:
            fd = -1
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise UserError(f"{what} is {kind_of(st.st_mode)}", str(path), fix)
            if st.st_size > limit:
                raise UserError(f"{too_big} ({size_text(st.st_size)})", str(path), fix)
            data = f.read(limit + 1)
    except OSError as err:
        raise UserError(f"{what}: cannot read ({os_reason(err)})", str(path), fix) from None
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > limit:
        raise UserError(too_big, str(path), fix)
    return data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (use a finite number)")


def _finite_float(text: str) -> float:
    """A JSON number as a float; one too large for a float (``1e400``, which Python reads as
    infinity) is refused like ``Infinity``."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is too large for a number (use a finite number)")
    return value


def _depth_ok(value: Any, limit: int) -> bool:
    """True if ``value`` nests at most ``limit`` lists/objects deep (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            if depth > limit:
                return False
            stack.extend((child, depth + 1) for child in item if isinstance(child, (dict, list)))
    return True


def parse_json(
    data: bytes | str,
    where: str,
    fix: str = "fix the JSON syntax there",
    *,
    allow_nan: bool = False,
    object_pairs_hook: Any = None,
    max_depth: int = MAX_JSON_DEPTH,
    refuse_duplicates: bool = True,
) -> Any:
    """Decodes JSON (UTF-8, an optional BOM), turning every failure into a UserError.

    ``allow_nan=False`` refuses ``NaN`` and ``Infinity`` (not JSON); True lets them through for
    a validator that names the field (architectures: ``must be a finite number``).
    ``refuse_duplicates`` (the default) refuses an object that repeats a key: JSON keeps the
    last silently, so a hand-edited file could say one thing and mean another.
    """
    duplicates: list[str] = []
    if refuse_duplicates and object_pairs_hook is None:

        def object_pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            seen: dict[str, Any] = {}
            for key, value in pairs:
                if key in seen:
                    duplicates.append(key)
                seen[key] = value
            return seen

    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            what = f"not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start})"
            raise UserError(what, where, "save the file as UTF-8 JSON") from None
    else:
        text = data
    if "\x00" in text:  # never in JSON, which escapes control characters even in strings
        offset = text.index("\x00")
        what = f"not UTF-8 JSON: it holds a NUL byte (at offset {offset}), as UTF-16 text does"
        raise UserError(what, where, "save the file as UTF-8 JSON")
    kwargs: dict[str, Any] = (
        {} if allow_nan else {"parse_constant": _reject_constant, "parse_float": _finite_float}
    )
    if object_pairs_hook is not None:
        kwargs["object_pairs_hook"] = object_pairs_hook
    try:
        value = json.loads(text, **kwargs)
    except json.JSONDecodeError as err:
        said = err.msg.removesuffix(" at")  # "Invalid control character at"
        what = f"invalid JSON: {said} at line {err.lineno} column {err.colno}"
        raise UserError(what, where, fix) from None
    except RecursionError:
        what = f"invalid JSON: nested more than {max_depth} levels deep"
        raise UserError(what, where, "flatten the JSON") from None
    except ValueError as err:  # int digit limit, NaN/Infinity
        msg = str(err)
        if "digits" in msg:
            msg = "a number with too many digits"
        raise UserError(f"invalid JSON: {msg.split(';')[0]}", where, fix) from None
    if not _depth_ok(value, max_depth):
        what = f"invalid JSON: nested more than {max_depth} levels deep"
        raise UserError(what, where, "flatten the JSON")
    if duplicates:
        keys = ", ".join(f'"{k[:40]}"' for k in duplicates[:5])
        raise UserError(f"duplicate key {keys} in one object", where, "keep one of each")
    return value


def read_json(
    path: str | Path,
    *,
    what: str = "JSON file",
    limit: int = CONFIG_LIMIT,
    fix: str = "check the path",
    allow_nan: bool = False,
    object_pairs_hook: Any = None,
    refuse_duplicates: bool = True,
) -> Any:
    """A JSON file's value: a regular file, at most ``limit`` bytes, valid UTF-8 JSON."""
    data = read_bounded(path, limit, what, fix)
    return parse_json(
        data,
        str(path),
        allow_nan=allow_nan,
        object_pairs_hook=object_pairs_hook,
        refuse_duplicates=refuse_duplicates,
    )


def json_bytes(obj: Any, *, indent: int | None = 2, sort_keys: bool = False) -> bytes:
    """``obj`` as UTF-8 JSON ending in a newline; NaN or infinity is a ValueError, never written."""
    return (json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=False) + "\n").encode()


# ---- writing ----------------------------------------------------------------------------------


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


def check_new_dir(path: str | Path, flag: str, *, allow_empty: bool = True) -> None:
    """Refuses (UserError) an output folder that exists with content, is a file, or lies under one.

    An existing empty folder is accepted when ``allow_empty`` (it is replaced atomically).
    """
    path = Path(path)
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
        return
    parent = path.parent
    while True:
        pst = path_stat(parent, f"{flag} is unusable", fix)
        if pst is not None:
            if not stat.S_ISDIR(pst.st_mode):
                raise UserError(f"a parent of {flag} is {kind_of(pst.st_mode)}", str(parent), fix)
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UserError(f"cannot write in the folder of {flag}", str(parent), fix)
            return
        if parent == parent.parent:
            return
        parent = parent.parent


def absolute_new_dir(path: str | Path, flag: str) -> Path:
    """``path`` made absolute and normalised ("." or "a/.." are staged beside the folder they
    name, not inside it), refusing the current folder: renamed into place, the new folder
    would leave the shell in a deleted one."""
    try:
        cwd = Path.cwd()
    except OSError as err:
        raise UserError(
            f"the current folder is unusable ({os_reason(err)})", str(path), "cd elsewhere"
        ) from None
    path = Path(os.path.normpath(cwd / path))
    if path == cwd:
        raise UserError(
            f"{flag} is the current folder, which the new output would replace",
            str(path),
            f"pass a new folder as {flag}, e.g. runs/NAME",
        )
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


def check_storage_writable(storage: str | Path, flag: str = "--storage") -> None:
    """Refuses a local ``storage`` folder that cannot be made or written (a file on the way, a
    read-only or immutable folder), before Ray starts; writes nothing that stays. A URI
    (``s3://...``) is checked for a scheme pyarrow knows and a bucket, and otherwise left to
    its filesystem (opening it may ask the network, e.g. for an S3 bucket's region)."""
    if "://" in str(storage):
        _check_storage_uri(str(storage), flag)
        return
    path = Path(storage).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists() or p.is_symlink())
    if not existing.is_dir():
        raise UserError(
            f"{existing} is {kind_of(existing.lstat().st_mode)}, not a folder",
            flag,
            "pass a folder (new or existing) for Ray's checkpoints and run state",
        )
    try:  # the only test of writability that holds for root and immutable folders alike
        os.rmdir(tempfile.mkdtemp(prefix=".varnext-check-", dir=existing))
    except OSError as err:
        raise UserError(
            f"cannot write in {existing} ({os_reason(err)})",
            flag,
            "pass a folder you can write, or make this one writable",
        ) from None


# The URI schemes of pyarrow's file systems (pyarrow.fs.FileSystem.from_uri), and whether the
# URI must name a bucket or a host first.
STORAGE_SCHEMES = {
    **dict.fromkeys(("s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss"), True),
    **dict.fromkeys(("file", "local", "mock"), False),
}


def _check_storage_uri(uri: str, flag: str) -> None:
    """A storage URI whose scheme pyarrow opens, with its bucket or host where it needs one."""
    from urllib.parse import urlsplit

    fix = "pass a local folder, or a URI pyarrow opens (s3://BUCKET/path, gs://BUCKET/path)"
    try:
        parts = urlsplit(uri)
    except ValueError as err:
        raise UserError(f"not a valid storage URI ({err})", flag, fix) from None
    scheme = parts.scheme.lower()
    if scheme not in STORAGE_SCHEMES:
        raise UserError(f"unknown storage URI scheme {scheme!r} in {uri}", flag, fix)
    if STORAGE_SCHEMES[scheme] and not parts.netloc:
        raise UserError(f"the storage URI {uri} names no bucket or host", flag, fix)
    from varnext_ray.tracking import storage_path

    fs, path = storage_path(uri)
    try:  # one call: credentials, network and bucket, before Ray (GCS's retries are bounded)
        fs.get_file_info(path)
    except OSError as err:
        what = f"cannot reach the storage ({str(err).strip().splitlines()[0][:160]})"
        fix = "check its credentials and the network, or pass a local folder"
        raise UserError(what, uri, fix) from None


def check_trusted_storage(path: str) -> None:
    """Refuses to ``--resume`` from a local sweep folder that other users can write.

    ``Tuner.restore`` unpickles Tune's saved state (the searcher, the trials), and unpickling
    runs code: whoever can write that folder can run code as the user who resumes. So the
    sweep folder and every folder above it must be owned by this user or root and not be
    writable by group or others (a sticky folder such as /tmp above it is fine: others cannot
    replace what is ours there). Remote storage (s3://...) is trusted as its access policy says.
    """
    if "://" in path:
        return
    uid = os.geteuid()
    for folder in [Path(path), *Path(path).parents]:
        try:
            st = folder.stat()
        except OSError:
            continue
        sticky = bool(st.st_mode & stat.S_ISVTX)
        writable_by_others = bool(st.st_mode & 0o022) and not sticky
        if st.st_uid not in (uid, 0) or writable_by_others:
            raise UserError(
                "--resume reads Ray Tune's pickled state from this folder, and other users "
                f"can write {folder} (mode {stat.S_IMODE(st.st_mode):o}, owner uid {st.st_uid})",
                str(folder),
                "resume only from storage only you can write (chmod go-w), or start a new sweep",
            )


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

    def same(a: Path, b: Path) -> bool:
        try:
            return a.exists() and b.exists() and os.path.samefile(a, b)
        except OSError:
            return False

    sacred = [(Path(p), "its own input") for p in inputs] + [
        (Path(p), "a file it must keep") for p in protected
    ]
    for out in map(Path, outs):
        for other, role in sacred:
            if same(out, other) or out.absolute() == other.absolute():
                raise UserError(
                    f"the output would overwrite {role}",
                    str(out),
                    f"pass another {flag}",
                )
        for folder, role in protected_dirs:
            check_not_inside(out, flag, folder, role)
        _refuse_symlink(out, flag)
        _check_output_file(out, flag, overwrite)


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
    parent = out.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(
            f"{flag} is not in a writable directory",
            str(parent),
            f"pass a {flag} in a folder you can write to",
        )
