"""Checks of a tracking URI before anything runs: the store must be there, be MLflow's, and
answer, so a bad ``--tracking-uri`` is one line (exit 2) rather than a traceback, a hang, or
MLflow's tables written into somebody else's SQLite file.

SQLite files are inspected through a read-only connection before MLflow opens them (another
program's database, a damaged file, a store of another schema version are refused: the checks
of :mod:`varnext_ray.tracking_sqlite`); database
URIs need their driver and a port that answers; an MLflow server must answer ``GET /health``
within the timeout.
"""

from __future__ import annotations

import logging
import os
import socket
from urllib.parse import urlparse

from varnext_ray.errors import UserError
from varnext_ray.tracking_sqlite import URI_FIX, check_sqlite

log = logging.getLogger(__name__)


DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
SERVER_SCHEMES = ("http", "https", "databricks")


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
        raise UserError(f"the tracking URI is malformed ({err})", uri, URI_FIX) from None
    check_mlflow_env()
    scheme = parsed.scheme.split("+", 1)[0].lower()
    if scheme == "sqlite":
        writes = not existing if writes is None else writes
        check_sqlite(uri, existing=existing, writes=writes, timeout_s=timeout_s)
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
            f"{URI_FIX} (MLflow 3 no longer writes a file store)",
        )
    try:
        port = parsed.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise UserError("the tracking URI has a bad port", uri, URI_FIX) from None
    if not parsed.hostname:
        raise UserError("the tracking URI names no host", uri, URI_FIX)
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
