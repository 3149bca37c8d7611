"""Checks on Ray's storage (``--storage``) before Ray starts: writable, reachable, trusted.

:func:`check_storage_writable` refuses a local folder that cannot be written, or a URI whose
scheme pyarrow does not open or whose bucket cannot be reached; :func:`check_trusted_storage`
refuses to ``--resume`` from a local folder other users can write (resuming unpickles it).
A ``file://`` URI is a local folder to both (:func:`local_storage`).
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
from pathlib import Path

from varnext_ray.errors import UserError
from varnext_ray.safe_io import kind_of, os_reason

# pyarrow's URI schemes of the local file system (any case: pyarrow refuses FILE:, and that
# is said as such rather than taken for a folder): Ray writes such a storage on this machine.
_LOCAL_URI = re.compile(r"(file|local):", re.IGNORECASE)


def local_storage(storage: str | Path) -> str | Path:
    """``storage`` as the local path Ray writes for it: a ``file:`` (or ``local:``) URI, with
    two slashes or one (``file:/abs``, RFC 8089's short form), becomes its path, %-escapes
    decoded as pyarrow decodes them, so that it gets every check a local path gets (a plain
    path check took ``file:/abs`` for the relative folder ``./file:/abs``); a local path or
    another URI (``s3://...``) is returned unchanged.

    Raises:
        UserError: A file URI pyarrow does not open (``file://HOST/...``, a relative one).
    """
    text = str(storage)
    if not _LOCAL_URI.match(text):
        return storage
    import pyarrow
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(text)[1]
    except (pyarrow.ArrowInvalid, OSError, ValueError) as err:
        raise UserError(
            f"cannot open the storage URI ({str(err).splitlines()[0][:160]})",
            text,
            "pass a local folder, or file:///abs/path",
        ) from None


def check_storage_writable(storage: str | Path, flag: str = "--storage") -> None:
    """Refuses a local ``storage`` folder that cannot be made or written (a file on the way, a
    read-only or immutable folder), before Ray starts; writes nothing that stays. A ``file://``
    URI is checked as its local path (:func:`local_storage`). A URI (``s3://...``) is checked
    for a scheme pyarrow knows and a bucket, and otherwise left to its filesystem (opening it
    may ask the network, e.g. for an S3 bucket's region)."""
    storage = local_storage(storage)
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
    from varnext_ray.run_records import storage_path

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
    replace what is ours there). A ``file://`` URI is checked as its local path
    (:func:`local_storage`); remote storage (s3://...) is trusted as its access policy says.
    """
    path = str(local_storage(path))
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
