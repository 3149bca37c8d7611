"""Reading a checkpoint directory: its meta.json, checked, and the files it lists, each checked
against its sha256 before it is used.

A file is read once: its bytes are hashed and then parsed (:func:`verified_bytes`), so what was
checked is what is used. Every file must be a regular file (never a FIFO) within a size limit.
The format is :mod:`varnext_ray.checkpoint`; loading the model is
:mod:`varnext_ray.checkpoint_load`.

Example:
    >>> meta = read_meta("runs/ckpt"); meta["metrics"]
    >>> arch = read_arch("runs/ckpt")
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import stat
from pathlib import Path
from typing import Any

from varnext_ray.arch import ArchConfig, parse_arch
from varnext_ray.checkpoint import (
    ARCH,
    FORMAT,
    FORMAT_VERSION,
    LISTED_FILE_LIMIT,
    META,
    plain_name,
)
from varnext_ray.errors import UserError
from varnext_ray.safe_io import (
    CONFIG_LIMIT,
    META_LIMIT,
    kind_of,
    parse_json,
    path_stat,
    read_bounded,
)

_RESAVE = "re-download or re-save the whole checkpoint directory; never edit its files"


def parse_checkpoint_json(path: Path, data: bytes) -> Any:
    """The JSON value of a checkpoint file's bytes (NaN allowed); a UserError says to re-save."""
    try:
        # NaN is allowed: a failed epoch's metrics may hold it (json.dumps writes it)
        return parse_json(data, str(path), _RESAVE, allow_nan=True)
    except UserError as err:
        raise UserError(f"not valid JSON ({err.what})", str(path), _RESAVE) from None


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _as_float(value: Any) -> float | None:
    """``value`` as a float when it is a JSON number (not a bool) that a float holds, else None:
    JSON allows integers past a float's range (``1e309`` written out), which every reader of
    the number (comparisons with float metrics, MLflow) would fail on."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def _finite_number(value: Any) -> bool:
    """True for an int or a finite float (not a bool) within a float's range: an ``Infinity``
    best would make a resumed run find no better epoch ever, silently."""
    number = _as_float(value)
    return number is not None and math.isfinite(number)


def _check_meta(meta: dict[str, Any], path: Path) -> None:
    """The keys readers rely on, with their types (a hand-edited meta.json is refused)."""

    def bad(key: str, want: str, got: Any) -> UserError:
        shown = json.dumps(got)[:60] if isinstance(got, (str, int, float, list, dict)) else got
        return UserError(f"meta.json: {key} must be {want} (got {shown})", str(path), _RESAVE)

    version = meta.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise UserError(
            f"unsupported checkpoint format {json.dumps(version)[:40]} (this varnext reads "
            f"format {FORMAT_VERSION})",
            str(path),
            "use the varnext version that wrote it, or train the model again with this one",
        )
    files = meta.get("files")
    if not isinstance(files, dict):
        raise UserError('meta.json has no "files" table of sha256 hashes', str(path), _RESAVE)
    for name, digest in files.items():
        if not plain_name(name):
            raise bad("files", "a table of plain file names in the directory", name)
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise bad(f"files.{name}", "a sha256 hex digest", digest)
    epoch = meta.get("epoch", 0)
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        raise bad("epoch", "an integer >= 0", epoch)
    for key in ("metrics", "extra"):
        if not isinstance(meta.get(key, {}), dict):
            raise bad(key, "an object {...}", meta.get(key))
    best = meta.get("extra", {}).get("best")  # the objective's best so far: resumed with it
    if best is not None and not _finite_number(best):  # training only keeps finite bests
        raise bad("extra.best", "a finite number or null", best)
    metrics = meta.get("metrics", {})
    for key, value in metrics.items():
        if _as_float(value) is None:
            raise bad(f"metrics.{key}", "a number", value)
    size = meta.get("image_size", [1, 1])
    if not (
        isinstance(size, list)
        and len(size) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size)
    ):
        raise bad("image_size", "[width, height]", size)


def read_meta(directory: str | Path) -> dict[str, Any]:
    """meta.json of a checkpoint directory, checked for its format, keys and file hashes."""
    directory = Path(directory)
    fix = "pass the directory that save_checkpoint wrote (it holds meta.json)"
    st = path_stat(directory, "checkpoint directory", fix)
    if st is None or not stat.S_ISDIR(st.st_mode):
        what = "checkpoint directory not found"
        if st is not None:
            what = f"checkpoint is {kind_of(st.st_mode)}, not a directory"
        raise UserError(what, str(directory), fix)
    path = directory / META
    if not path.exists() and not path.is_symlink():
        epochs = sorted(p.name for p in directory.glob("epoch_*") if (p / META).is_file())
        if epochs:  # a training run's folder, which holds one checkpoint per epoch
            raise UserError(
                f"this is a training run's folder, holding {len(epochs)} checkpoint(s) "
                f"({epochs[0]} .. {epochs[-1]}), not a checkpoint",
                str(directory),
                f"pass one of them, e.g. {directory / epochs[-1]}, or the folder that "
                "varnext best downloads",
            )
    meta = parse_checkpoint_json(path, _file_bytes(path, META_LIMIT))
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        got = got if isinstance(got, str) and len(got) < 60 else type(got).__name__
        raise UserError(
            f'not a varnext checkpoint (format {got!r}, want "{FORMAT}")', str(path), _RESAVE
        )
    _check_meta(meta, path)
    return meta


def _file_bytes(path: Path, limit: int) -> bytes:
    """A checkpoint file's bytes: a regular file (never a FIFO) of at most ``limit`` bytes."""
    _check_regular(path)
    return read_bounded(path, limit, "checkpoint file", _RESAVE)


def _check_regular(path: Path) -> None:
    """UserError unless ``path`` is a regular file (missing, a folder or a FIFO are refused)."""
    st = path_stat(path, "checkpoint file", _RESAVE)
    if st is None:
        raise UserError("checkpoint file is missing", str(path), _RESAVE)
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"checkpoint file is {kind_of(st.st_mode)}", str(path), _RESAVE)


def read_listed_file(
    directory: str | Path, name: str, limit: int = LISTED_FILE_LIMIT
) -> bytes | None:
    """The bytes of a file that :func:`save_checkpoint` wrote from ``files``, sha256-checked;
    None when meta.json does not list it (an older checkpoint)."""
    meta = read_meta(directory)
    if name not in meta["files"]:
        return None
    return verified_bytes(Path(directory), meta, name, limit)


def verified_bytes(directory: Path, meta: dict[str, Any], name: str, limit: int) -> bytes:
    """The bytes of one checkpoint file (at most ``limit``), checked against meta.json's sha256."""
    path = directory / name
    want = meta["files"].get(name)
    if want is None:
        raise UserError(f"meta.json lists no sha256 for {name}", str(directory / META), _RESAVE)
    data = _file_bytes(path, limit)
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise _altered(path, got, want)
    return data


def _altered(path: Path, got: str, want: str) -> UserError:
    what = f"file was altered: sha256 {got[:12]}... does not match meta.json ({want[:12]}...)"
    return UserError(what, str(path), _RESAVE)


def verify_files(directory: str | Path) -> dict[str, Any]:
    """Checks that every file meta.json lists is in ``directory`` with its sha256 (read in
    chunks, so any size), and returns meta.json.

    Raises:
        UserError: meta.json is not valid, or a listed file is missing, not a regular file or
            was altered.
    """
    directory = Path(directory)
    meta = read_meta(directory)
    for name, want in meta["files"].items():
        path = directory / name
        _check_regular(path)
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != want:
            raise _altered(path, digest.hexdigest(), want)
    return meta


def read_arch(
    directory: str | Path,
    *,
    max_params: float | None = None,
    max_activation_bytes: float | None = None,
) -> ArchConfig:
    """The validated architecture of a checkpoint directory (its sha256-checked arch.json)."""
    directory = Path(directory)
    data = verified_bytes(directory, read_meta(directory), ARCH, CONFIG_LIMIT)
    return parse_arch(
        parse_checkpoint_json(directory / ARCH, data),
        str(directory / ARCH),
        max_params=max_params,
        max_activation_bytes=max_activation_bytes,
    )
