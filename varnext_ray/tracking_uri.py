"""Checks of a tracking URI before anything runs: the store must be there, be MLflow's, and
answer, so a bad ``--tracking-uri`` is one line (exit 2) rather than a traceback, a hang, or
MLflow's tables written into somebody else's SQLite file.

SQLite files are inspected through a read-only connection before MLflow opens them (another
program's database, a damaged file, a store of another schema version are refused); database
URIs need their driver and a port that answers; an MLflow server must answer ``GET /health``
within the timeout.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

from varnext_ray.errors import UserError

log = logging.getLogger(__name__)


DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
SERVER_SCHEMES = ("http", "https", "databricks")
SQLITE_MAGIC = b"SQLite format 3\x00"
_URI_FIX = "pass sqlite:////abs/path/mlflow.db or http://HOST:PORT of an mlflow server"


def check_reachable(
    uri: str, timeout_s: float = 5.0, *, existing: bool = False, writes: bool | None = None
) -> None:
    """A UserError unless ``uri`` names a tracking store MLflow can use, and it answers.

    Checked before anything is written or Ray starts: the scheme is a database or a server
    (MLflow 3 refuses its old file store, and a bare path would be taken for one); a SQLite
    store is an MLflow store of this MLflow's schema, or a new file in an existing folder (with
    ``existing``, for commands that only read, it must hold a store), and, for a command that
    ``writes`` (by default one that may create the store), can be written; another database's
    driver is installed and its host accepts a connection; an http(s) server answers MLflow's
    ``/health`` within ``timeout_s``. Nothing is written to the store.
    """
    if uri != uri.strip() or any(ord(c) < 32 or ord(c) == 127 for c in uri):
        raise UserError(
            "the tracking URI starts or ends with a space, or holds a control character",
            repr(uri),
            "remove it (a stray space or newline in MLFLOW_TRACKING_URI or --tracking-uri)",
        )
    try:
        parsed = urlparse(uri)
    except ValueError as err:  # e.g. "Invalid IPv6 URL": an unclosed [
        raise UserError(f"the tracking URI is malformed ({err})", uri, _URI_FIX) from None
    check_mlflow_env()
    scheme = parsed.scheme.split("+", 1)[0].lower()
    if scheme == "sqlite":
        writes = not existing if writes is None else writes
        _check_sqlite(uri, existing=existing, writes=writes, timeout_s=timeout_s)
        _check_engine_settings(uri)
        return
    if scheme == "databricks":
        _check_databricks(uri)
        return
    if scheme in DATABASE_SCHEMES:
        _check_database(uri, timeout_s)
        _check_engine_settings(uri)
        return
    if scheme not in SERVER_SCHEMES:
        shown = f"scheme {parsed.scheme!r}" if parsed.scheme else "no scheme (a plain path)"
        raise UserError(
            f"unsupported MLflow tracking URI: {shown}",
            uri,
            f"{_URI_FIX} (MLflow 3 no longer writes a file store)",
        )
    try:
        port = parsed.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise UserError("the tracking URI has a bad port", uri, _URI_FIX) from None
    if not parsed.hostname:
        raise UserError("the tracking URI names no host", uri, _URI_FIX)
    fix = "start it (mlflow server --host 127.0.0.1 --port PORT) or pass another --tracking-uri"
    _check_tcp(parsed.hostname, port, timeout_s, "MLflow tracking server", uri, fix)
    _check_health(uri, timeout_s)


_ENV_TYPES = {bool: "true/false (or 1/0)", int: "integer", float: "number"}
ENV_FIX = "unset it or set a valid value"


def check_mlflow_env() -> None:
    """A UserError for the first environment variable MLflow declares
    (``mlflow.environment_variables``) that is set to a value it cannot read.

    MLflow reads each variable only where it needs it, deep inside a call, and raises a bare
    ValueError there (``MLFLOW_SQLALCHEMYSTORE_POOL_SIZE=abc`` as the store opens,
    ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=maybe`` in a download): every one is read here
    once, before the store is opened. Nothing is imported when no such variable is set.
    """
    if not any("MLFLOW" in name for name in os.environ):
        return
    from mlflow import environment_variables

    for variable in vars(environment_variables).values():
        if not isinstance(variable, environment_variables._EnvironmentVariable):
            continue
        if not variable.defined:
            continue
        try:
            variable.get()
        except ValueError:
            kind = _ENV_TYPES.get(variable.type, getattr(variable.type, "__name__", "value"))
            raise UserError(
                f"environment variable {variable.name}={variable.get_raw()!r} is not a valid "
                f"{kind} (MLflow reads it)",
                "environment",
                ENV_FIX,
            ) from None


def _check_engine_settings(uri: str) -> None:
    """A UserError if MLflow cannot build its SQLAlchemy engine for ``uri`` with the
    ``MLFLOW_SQLALCHEMYSTORE_*`` settings (a ``POOLCLASS`` that names no pool, a pool size
    the dialect refuses). The engine is built as MLflow builds it and disposed unused: nothing
    connects. Only when such a variable is set."""
    if not any(name.startswith("MLFLOW_SQLALCHEMYSTORE_") for name in os.environ):
        return
    from mlflow.store.db.utils import create_sqlalchemy_engine
    from sqlalchemy.exc import ArgumentError

    quiet = logging.getLogger("mlflow.store.db.utils")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it logs the refusal as a warning before raising it
    try:
        create_sqlalchemy_engine(uri).dispose()
    except (ValueError, TypeError, ArgumentError) as err:
        raise UserError(
            f"MLflow cannot set up its database engine ({str(err)[:300]})",
            "MLFLOW_SQLALCHEMYSTORE_* environment variables",
            "unset them or set valid values",
        ) from None
    finally:
        quiet.setLevel(level)


def _check_tcp(host: str, port: int, timeout_s: float, what: str, uri: str, fix: str) -> None:
    """A UserError unless ``host:port`` accepts a TCP connection within ``timeout_s``."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except OSError as err:
        raise UserError(f"{what} unreachable ({err.strerror or err})", uri, fix) from None


def _check_health(uri: str, timeout_s: float) -> None:
    """A UserError unless ``GET <uri>/health`` (served by ``mlflow server``) answers 200 in time."""
    import http.client
    import ssl
    import urllib.error
    import urllib.request

    parsed = urlparse(uri)
    url = parsed._replace(
        netloc=parsed.netloc.rsplit("@", 1)[-1],  # credentials go in a header, not the URL
        path=parsed.path.rstrip("/") + "/health",
        query="",
        fragment="",
    ).geturl()
    fix = "pass the http://HOST:PORT of an `mlflow server`, or start one there"
    try:
        request = urllib.request.Request(url, headers=_auth_headers())
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            status = response.status
    except urllib.error.HTTPError as err:
        status = err.code
        err.close()
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        reason = getattr(err, "reason", err)
        if isinstance(reason, ssl.SSLError):
            return  # TLS settings are MLflow's (MLFLOW_TRACKING_INSECURE_TLS ...): let it report
        if isinstance(reason, TimeoutError):
            what = f"no MLflow server answers within {timeout_s:g} s"
        else:
            what = f"no MLflow server answers (GET /health: {reason or type(reason).__name__})"
        raise UserError(what, uri, fix) from None
    if status in (401, 403):
        raise UserError(
            f"the MLflow tracking server refuses access (GET /health: {status})",
            uri,
            "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)",
        )
    if status != 200:
        raise UserError(f"not an MLflow tracking server (GET /health: {status})", uri, fix)


def _check_databricks(uri: str) -> None:
    """A UserError unless MLflow finds Databricks credentials for ``uri`` (a profile of
    ~/.databrickscfg, or DATABRICKS_HOST and DATABRICKS_TOKEN). Nothing is sent."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.databricks_utils import get_databricks_host_creds

    quiet = logging.getLogger("mlflow.utils.databricks_utils")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its warning would be a second line before ours
    try:
        get_databricks_host_creds(uri)
    except MlflowException:
        raise UserError(
            "no Databricks credentials are configured for this tracking URI",
            uri,
            "add the profile to ~/.databrickscfg, or set DATABRICKS_HOST and DATABRICKS_TOKEN",
        ) from None
    finally:
        quiet.setLevel(level)


def _header_value(name: str) -> str | None:
    """The environment variable ``name`` if an HTTP header can carry it, else a UserError
    that names the variable but never shows its value (a secret)."""
    value = os.environ.get(name)
    if value and (
        not value.isprintable() or any(ord(c) > 255 for c in value) or value != value.strip()
    ):
        raise UserError(
            "a credential holds a newline, a space at an end, or a character HTTP cannot send",
            name,
            f"set {name} to the credential alone, on one line",
        )
    return value


def _auth_headers() -> dict[str, str]:
    """The credentials MLflow's client would send, from its environment variables."""
    import base64

    token = _header_value("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user = _header_value("MLFLOW_TRACKING_USERNAME")
    password = _header_value("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        pair = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {pair}"}
    return {}


# pip packages of the DB-API modules SQLAlchemy dialects import (module -> package).
_DRIVER_PACKAGES = {
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "pg8000": "pg8000",
    "asyncpg": "asyncpg",
    "MySQLdb": "mysqlclient",
    "pymysql": "PyMySQL",
    "mysql": "mysql-connector-python",
    "pyodbc": "pyodbc",
    "pymssql": "pymssql",
}
_DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


def _check_database(uri: str, timeout_s: float) -> None:
    """A UserError unless the database URI's driver imports and its host accepts a connection."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(uri)
        shown = url.render_as_string(hide_password=True)
        dialect = url.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError) as err:
        raise UserError(
            f"SQLAlchemy cannot use this tracking URI ({str(err)[:200]})",
            urlparse(uri)._replace(netloc="...").geturl(),
            "pass postgresql://USER:PASSWORD@HOST:PORT/DB (or mysql://, mssql://, sqlite:////)",
        ) from None
    try:
        dialect.import_dbapi()
    except ImportError as err:
        module = (err.name or str(err)).split(".")[0]
        package = _DRIVER_PACKAGES.get(module, module)
        raise UserError(
            f"the {url.drivername} database driver is not installed (no module {module!r})",
            shown,
            f"pip install '{package}' into this environment, or name an installed driver "
            f"({url.get_backend_name()}+DRIVER://...)",
        ) from None
    if url.host:  # no host: a local socket, left to the driver
        port = url.port or _DATABASE_PORTS.get(url.get_backend_name(), 0)
        fix = "start the database server, or check the host and port in --tracking-uri"
        _check_tcp(url.host, port, timeout_s, "database server", shown, fix)


def _check_sqlite(
    uri: str, *, existing: bool = False, writes: bool = False, timeout_s: float = 5.0
) -> None:
    """A SQLite tracking URI must be absolute and name an MLflow store or a new file in a
    folder; one a command ``writes`` to must be writable (:func:`_check_sqlite_writable`)."""
    import stat

    scheme, _, rest = uri.partition(":")
    if scheme.split("+", 1)[0] != "sqlite":  # SQLAlchemy has no dialect named SQLITE
        raise UserError(
            f"a SQLite tracking URI begins with sqlite: in lower case, not {scheme}:",
            uri,
            _URI_FIX,
        )
    if not rest.startswith("////"):
        raise UserError(
            "a SQLite tracking URI needs an absolute path (four slashes)", uri, _URI_FIX
        )
    if "?" in rest:  # ?mode=ro, ?uri=true&...: MLflow and SQLite read these differently
        raise UserError(
            "a SQLite tracking URI takes no ?options here (MLflow would open another file "
            "than the one checked)",
            uri,
            "remove everything from the ?",
        )
    path = Path(rest[len("///") :])
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        if existing:  # a command that reads runs
            raise UserError("no MLflow database at this path", uri, NO_STORE_FIX) from None
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
            f"cannot read the MLflow database ({err.strerror})", str(path), _URI_FIX
        ) from None
    if not stat.S_ISREG(mode):
        raise UserError("the MLflow database path is not a regular file", str(path), _URI_FIX)
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as err:
        raise UserError(
            f"cannot read the MLflow database ({err.strerror})", str(path), _URI_FIX
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
    scheme, _, rest = uri.partition(":")
    if scheme.split("+", 1)[0].lower() != "sqlite":
        return True
    path = Path(rest[len("///") :])
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
            state = "is empty" if path.stat().st_size == 0 else "has no tables"
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
