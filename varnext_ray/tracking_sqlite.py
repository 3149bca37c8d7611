"""Checks of a SQLite tracking store before MLflow opens it: an MLflow store of this MLflow's
schema, or a new file in a writable folder.

The file is inspected through a read-only connection (another program's database, a damaged
file, a store of another schema version are refused); a store another process is creating or
upgrading right now is given time to settle. :func:`check_sqlite` is called by
:func:`~varnext_ray.tracking_uri.check_reachable`; :func:`store_exists` says whether opening a
store creates nothing; :func:`sqlite_path` is the file a URI names, as SQLAlchemy opens it;
:func:`undecodable_row` finds the run whose text in a store edited by hand is not UTF-8.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from pathlib import Path

from varnext_ray.errors import UserError

SQLITE_MAGIC = b"SQLite format 3\x00"
URI_FIX = "pass sqlite:////abs/path/mlflow.db or http://HOST:PORT of an mlflow server"


def check_sqlite(
    uri: str, *, existing: bool = False, writes: bool = False, timeout_s: float = 5.0
) -> None:
    """A SQLite tracking URI must be absolute and name an MLflow store or a new file in a
    folder; one a command ``writes`` to must be writable (:func:`_check_sqlite_writable`).
    The file checked is the one MLflow opens (:func:`sqlite_path`)."""
    import stat

    scheme, _, rest = uri.partition(":")
    if scheme.split("+", 1)[0] != "sqlite":  # SQLAlchemy has no dialect named SQLITE
        raise UserError(
            f"a SQLite tracking URI begins with sqlite: in lower case, not {scheme}:",
            uri,
            URI_FIX,
        )
    path = sqlite_path(uri)
    if not rest.startswith("////"):
        raise UserError("a SQLite tracking URI needs an absolute path (four slashes)", uri, URI_FIX)
    if "?" in rest:  # ?mode=ro, ?uri=true&...: MLflow and SQLite read these differently
        raise UserError(
            "a SQLite tracking URI takes no ?options here (MLflow would open another file "
            "than the one checked)",
            uri,
            "remove everything from the ?",
        )
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if existing:  # a command that reads runs
            where = uri if uri.endswith(str(path)) else f"{uri}, the file {path}"
            raise UserError("no MLflow database at this path", where, NO_STORE_FIX) from None
        if not path.parent.is_dir():
            raise UserError(
                "the folder of the MLflow database does not exist",
                str(path.parent),
                "create it, or pass a --tracking-uri in an existing folder",
            ) from None
        if writes:
            _check_sqlite_writable(path)
        return
    except OSError as err:
        raise UserError(
            f"cannot read the MLflow database ({err.strerror})", str(path), URI_FIX
        ) from None
    if not stat.S_ISREG(mode):
        raise UserError("the MLflow database path is not a regular file", str(path), URI_FIX)
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as err:
        raise UserError(
            f"cannot read the MLflow database ({err.strerror})", str(path), URI_FIX
        ) from None
    if head and head != SQLITE_MAGIC:
        raise UserError(
            "this file is not a SQLite database (MLflow would not open it)",
            str(path),
            "point --tracking-uri at your runs' mlflow.db, or at a new file name",
        )
    if head or existing:
        _check_sqlite_store(path, uri, existing=existing, timeout_s=timeout_s)
    if writes:
        _check_sqlite_writable(path)


IN_MEMORY = ("", ":memory:")  # SQLAlchemy's in-memory databases: sqlite://, sqlite:///:memory:
SQLITE_DRIVERS = ("sqlite", "sqlite+pysqlite")  # what MLflow's store opens SQLite files with


def database_file(uri: str) -> Path | None:
    """The absolute path of the file a ``sqlite:///`` URI opens (:func:`sqlite_path`); None for
    another store, and for a URI :func:`sqlite_path` refuses (the checks before the work say
    why)."""
    if uri.partition(":")[0].split("+", 1)[0].lower() != "sqlite":
        return None
    try:
        return Path(sqlite_path(uri)).absolute()
    except UserError:
        return None


def sqlite_path(uri: str) -> Path:
    """The file MLflow opens for the SQLite ``uri``: SQLAlchemy's database of the URI, so the
    file checked is the file opened.

    Raises:
        UserError: An in-memory database (``sqlite://``, ``:memory:``): every run is lost when
            the command ends. A file named ``:memory:`` is refused too: a relative
            ``sqlite:///:memory:`` is resolved against the current folder into one. Also a
            driver other than Python's sqlite3, %-escapes (``%6F`` decodes to ``o`` for
            SQLAlchemy, but MLflow makes the folder from the escaped text), and a control
            character.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(uri)
    except (ArgumentError, ValueError) as err:
        raise UserError(f"the tracking URI is malformed ({err})", uri, URI_FIX) from None
    database = url.database or ""
    if database in IN_MEMORY or Path(database).name == ":memory:":
        raise UserError(
            "a SQLite tracking URI needs an absolute path (four slashes) to a file, not an "
            "in-memory store (:memory:, which loses every run when the command ends)",
            uri,
            "pass sqlite:////abs/path/mlflow.db",
        )
    if url.drivername.lower() not in SQLITE_DRIVERS:
        raise UserError(
            f"MLflow opens a SQLite store with Python's sqlite3 module, not the "
            f"{url.drivername!r} driver",
            uri,
            "pass sqlite:////abs/path/mlflow.db",
        )
    if "%" in uri:  # MLflow makes the database's folder from the path as written, escapes kept
        raise UserError(
            "a SQLite tracking URI must not hold %-escapes: SQLAlchemy opens the decoded path "
            "but MLflow creates its folder from the path as written (a stray folder such as "
            "'my%20runs', or a failure where that name is taken)",
            uri,
            "write the path as it is, spaces and other characters included "
            "(sqlite:////abs/my runs/mlflow.db)",
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in database):
        raise UserError(
            "the SQLite path holds a control character",
            uri,
            "pass a path without control characters",
        )
    # sqlite://///abs (five slashes) names //abs, which is /abs here; as //abs it would be
    # read as a host ("file://abs/...") where the store is opened read-only to check it
    return Path("/" + database.lstrip("/")) if database.startswith("/") else Path(database)


def _check_sqlite_writable(path: Path) -> None:
    """SQLite writes the database file and, beside it, its journal: the file (where it exists)
    and its folder must both be writable. A read-only mount or a missing permission passed
    every other check, and a command failed on its first write, after its work (a checkpoint
    downloaded, a training run's epochs) with MLflow's tracebacks."""
    for target, what in ((path, "the MLflow database"), (path.parent, "its folder")):
        if (target is path.parent or target.exists()) and not os.access(target, os.W_OK):
            raise UserError(
                f"{what} cannot be written (a read-only file system, or no write permission)",
                str(target),
                "pass a --tracking-uri in a folder you can write, or make it writable",
            )


def store_exists(uri: str) -> bool:
    """Whether the store of ``uri`` (passed by :func:`check_reachable`) exists already, so that
    opening it creates nothing: a SQLite file holding MLflow's tables; any server or other
    database."""
    if uri.partition(":")[0].split("+", 1)[0].lower() != "sqlite":
        return True
    path = sqlite_path(uri)
    if not path.is_file():
        return False
    tables, _ = _sqlite_tables(path, 2.0)
    return tables is None or MLFLOW_TABLES.issubset(tables)  # None: a writer holds it


# Tables every MLflow store has had since its first schema.
MLFLOW_TABLES = frozenset({"alembic_version", "experiments", "runs", "metrics", "params", "tags"})
NO_STORE_FIX = "pass the --tracking-uri your runs were logged to (or set MLFLOW_TRACKING_URI)"


def _check_sqlite_store(path: Path, uri: str, *, existing: bool, timeout_s: float) -> None:
    """A UserError unless the SQLite file at ``path`` is an MLflow store of this MLflow's schema
    (or, unless ``existing``, holds no tables yet); read through a read-only connection.

    A store that another process is creating or upgrading right now (two commands started at
    once on a new store) passes through every older schema on its way: a refusal is given only
    once the file has stopped changing for :data:`SETTLED_S` (or after :data:`SETTLE_MAX_S`).
    """
    started = changed = time.monotonic()
    last: tuple | None = None
    while True:
        tables, versions = _sqlite_tables(path, timeout_s)
        if tables is None:  # busy or locked by a writer: MLflow waits for it
            return
        try:
            _check_sqlite_tables(path, uri, tables, versions, existing=existing)
            return
        except UserError:
            stat = path.stat()
            stamp = (stat.st_size, stat.st_mtime_ns, tuple(versions), frozenset(tables))
            now = time.monotonic()
            if stamp != last:
                last, changed = stamp, now
            if now - changed >= SETTLED_S or now - started >= SETTLE_MAX_S:
                raise
            time.sleep(0.25)


SETTLED_S = 1.5  # unchanged this long: no other process is creating or upgrading the store
SETTLE_MAX_S = 15.0


def _check_sqlite_tables(
    path: Path, uri: str, tables: set[str], versions: list[str], *, existing: bool
) -> None:
    """The verdict of :func:`_check_sqlite_store` on one reading of the file."""
    own = sorted(t for t in tables if not t.startswith(("sqlite_", "alembic_")))
    if not own:
        if existing:
            state = "is empty" if path.stat().st_size == 0 else "has no tables of its own"
            if tables:  # only SQLite's or Alembic's bookkeeping
                state = f"has only {', '.join(sorted(tables)[:3])}"
            what = f"this file holds no MLflow store (it {state})"
            raise UserError(what, str(path), NO_STORE_FIX)
        return
    if not MLFLOW_TABLES.issubset(tables):
        listed = ", ".join(own[:5]) + (", ..." if len(own) > 5 else "")
        raise UserError(
            f"this SQLite database is not an MLflow store (its tables: {listed})",
            str(path),
            "point --tracking-uri at your runs' mlflow.db, or at a new file name "
            "(MLflow would add its tables to this one)",
        )
    _check_schema(versions, uri)


def _sqlite_tables(path: Path, timeout_s: float) -> tuple[set[str] | None, list[str]]:
    """The table names of the SQLite file and its ``alembic_version`` rows; (None, []) if locked.

    Opened read-only (``mode=ro``): nothing is written, not even a journal.
    """
    import sqlite3
    from urllib.parse import quote

    try:
        conn = sqlite3.connect(
            f"file:{quote(os.fsencode(path))}?mode=ro", uri=True, timeout=min(timeout_s, 2.0)
        )
        try:
            rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            tables = {str(row[0]) for row in rows}
            versions: list[str] = []
            if "alembic_version" in tables:
                rows = conn.execute("SELECT version_num FROM alembic_version")
                versions = [str(row[0]) for row in rows]
        finally:
            conn.close()
    except sqlite3.DatabaseError as err:
        name = getattr(err, "sqlite_errorname", "")
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
            return None, []
        raise UserError(
            f"the SQLite database is damaged or unreadable ({err})",
            str(path),
            "restore it from a backup, or pass a --tracking-uri with a new file name",
        ) from None
    return tables, versions


def _check_schema(versions: list[str], uri: str) -> None:
    """A UserError unless the store's schema revision is the installed MLflow's head."""
    head, known = _mlflow_revisions()
    found = versions[0] if len(versions) == 1 else None
    if head is None or found == head:
        return
    from importlib.metadata import version

    mlflow_version = version("mlflow")
    if found is None or found in known:
        raise UserError(
            f"the MLflow store has an older schema ({found or 'no version'}; "
            f"MLflow {mlflow_version} needs {head})",
            uri,
            f"run `mlflow db upgrade {uri}` (back it up first)",
        )
    raise UserError(
        f"the MLflow store was written by a newer MLflow (schema {found} is unknown to "
        f"the installed MLflow {mlflow_version})",
        uri,
        "use that MLflow version (pip install -U mlflow), or pass another --tracking-uri",
    )


@functools.cache
def _mlflow_revisions() -> tuple[str | None, frozenset[str]]:
    """(head, every revision) of the installed MLflow's schema migrations.

    Read from ``mlflow/store/db_migrations/versions`` with ``ast``, as alembic's
    ``ScriptDirectory.get_heads`` would find them, without importing MLflow or alembic (which
    costs seconds); the head is None unless there is exactly one.
    """
    import ast
    import importlib.util

    spec = importlib.util.find_spec("mlflow")
    if spec is None or not spec.submodule_search_locations:
        return None, frozenset()
    folder = Path(next(iter(spec.submodule_search_locations)), "store", "db_migrations", "versions")
    revisions: set[str] = set()
    parents: set[str] = set()
    for file in folder.glob("*.py"):
        for node in ast.parse(file.read_bytes()).body:
            if not isinstance(node, ast.Assign) or len(node.targets) != 1:
                continue
            name = getattr(node.targets[0], "id", None)
            if name not in ("revision", "down_revision"):
                continue
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue
            values = value if isinstance(value, tuple | list) else (value,)
            (revisions if name == "revision" else parents).update(
                v for v in values if isinstance(v, str)
            )
    heads = revisions - parents
    return (next(iter(heads)) if len(heads) == 1 else None), frozenset(revisions)


# Tables of an MLflow SQLite store holding text a user can edit, with the column naming the
# run or experiment a row belongs to (``metrics`` left out: it may hold millions of rows).
_TEXT_TABLES = (
    ("runs", "run_uuid", "run"),
    ("params", "run_uuid", "run"),
    ("tags", "run_uuid", "run"),
    ("latest_metrics", "run_uuid", "run"),
    ("experiments", "experiment_id", "experiment"),
    ("experiment_tags", "experiment_id", "experiment"),
)


def undecodable_row(uri: str, column: str) -> tuple[str, str, str] | None:
    """(table, what, its id) of the first row of a SQLite store whose ``column`` is not UTF-8
    text, read only; None for another store, or where none is found."""
    import sqlite3

    database = database_file(uri)
    if database is None:
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as db:
            for table, key, what in _TEXT_TABLES:
                names = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                if column not in names or key not in names:
                    continue
                db.text_factory = bytes
                for owner, value in db.execute(f'SELECT "{key}", "{column}" FROM "{table}"'):
                    if isinstance(value, bytes) and not _is_utf8(value):
                        if isinstance(owner, bytes):
                            owner = owner.decode("utf-8", "backslashreplace")
                        return table, what, str(owner)
                db.text_factory = str
    except (sqlite3.Error, ValueError):
        return None
    return None


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
