"""Reading user files safely: path checks, bounded reads and JSON, the one place for all three.

Everything the user hands us (architecture and search-space JSON, ``dataset.json``, a
checkpoint's ``meta.json``, images, videos) goes through :func:`regular_file` first: a missing
path, a directory, a FIFO (opening one blocks until a writer appears), a device such as
``/dev/null`` or ``/dev/zero``, a socket, a permission problem or a symlink loop each become a
:class:`~varnext_ray.errors.UserError` naming the path, before anything is opened.
:func:`read_json` adds a byte cap (checked on the file's size and again while reading, so a file
growing under us cannot get past it), UTF-8 decoding, and turns every way ``json.loads`` can
fail (syntax, nesting 100,000 deep, a 5,000-digit integer, ``NaN``) into one ``UserError``.
:func:`json_bytes` is the other way: what we write as JSON, never with a NaN.

Writing our own files atomically is :mod:`varnext_ray.atomic_write`; the checks before writing
are :mod:`varnext_ray.output_checks` (files and folders) and :mod:`varnext_ray.storage_checks`
(Ray's ``--storage``).

Example:
    >>> data = read_json("configs/smoke_64x36.json", what="architecture")
    >>> value = parse_json(b'{"ok": true}', "--config")
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

from varnext_ray.errors import UserError
from varnext_ray.number_text import read_float

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
    """A JSON number as a float (:func:`~varnext_ray.number_text.read_float`): one too large
    for a float (``1e400``, which Python reads as infinity) is refused like ``Infinity``, one
    too small (``1e-400``, read as 0) like a typo."""
    return read_float(text)


def _any_float(text: str) -> float:
    """As :func:`_finite_float`, but ``1e400`` is infinity, for a validator that names the
    field (as it names ``Infinity``); a number too small for a float is still refused."""
    return read_float(text, finite=False)


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
        {"parse_float": _any_float}
        if allow_nan
        else {"parse_constant": _reject_constant, "parse_float": _finite_float}
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
        if "int_max_str_digits" in msg:  # "Exceeds the limit (4300 digits) ..."
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
