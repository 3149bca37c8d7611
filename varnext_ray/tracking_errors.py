"""The tracking store failing, in one line: which failures are the store's (a server that
stopped answering, a locked or full database, text in it that is not UTF-8), the UserError
each becomes, and the filter that keeps MLflow's own log of them (two tracebacks) quiet.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator

from varnext_ray.errors import UserError, failure_summary
from varnext_ray.tracking_sqlite import undecodable_row


def is_store_error(err: BaseException) -> bool:
    """Whether ``err`` is the tracking store failing: an MLflow error (a server that stopped
    answering, after MLflow's own retries), or its HTTP or database layer's."""
    from mlflow.exceptions import MlflowException
    from requests import RequestException
    from sqlalchemy.exc import SQLAlchemyError

    return isinstance(err, (MlflowException, RequestException, SQLAlchemyError))


def _chain(err: BaseException) -> Iterator[BaseException]:
    """``err`` and every exception it was raised from or during (a SQLAlchemy error's
    ``orig`` too), each once."""
    from sqlalchemy.exc import DBAPIError

    stack, seen = [err], set()
    while stack:
        found = stack.pop()
        if id(found) in seen:
            continue
        seen.add(id(found))
        yield found
        if isinstance(found, DBAPIError) and isinstance(found.orig, BaseException):
            stack.append(found.orig)
        stack += [e for e in (found.__cause__, found.__context__) if e is not None]


# SQLite's Python driver reading a TEXT value that is not UTF-8 (a store edited by hand)
_UNDECODABLE = re.compile(r"Could not decode to UTF-8 column '(.*?)' with text '(.*)'", re.DOTALL)


def undecodable_text(err: BaseException) -> tuple[str, str] | None:
    """(column, text as read) when ``err`` is, or was raised from, SQLite finding text that is
    not UTF-8 in the store: its content, not its state (so no :func:`database_failure`)."""
    import sqlite3

    for found in _chain(err):
        matched = isinstance(found, sqlite3.OperationalError) and _UNDECODABLE.match(str(found))
        if matched:
            return matched[1], matched[2]
    return None


def database_failure(err: BaseException) -> str | None:
    """The database's own reason (e.g. "database is locked") when ``err`` is, or was raised
    from, a SQL store's operational failure: the database locked by another writer, read-only,
    its disk full or failing. That is the machine's state, not a bug; None for anything else,
    text in the store that is not UTF-8 included (:func:`undecodable_text`)."""
    import sqlite3

    from sqlalchemy.exc import OperationalError

    if undecodable_text(err) is not None:
        return None
    for found in _chain(err):
        if isinstance(found, OperationalError):
            found = found.orig or found  # "database is locked", not SQLAlchemy's wrapping
        if isinstance(found, sqlite3.OperationalError | OperationalError):
            return (str(found).strip().splitlines() or [type(found).__name__])[0][:200]
    return None


def text_error(err: BaseException, uri: str) -> UserError | None:
    """The UserError of ``err`` when it is the store holding text that is not UTF-8
    (:func:`undecodable_text`), naming the row where it is found; None for anything else."""
    found = undecodable_text(err)
    if found is None:
        return None
    column, text = found
    shown = text if len(text) <= 40 else f"{text[:40]}..."
    row = undecodable_row(uri, column)
    fix = "rewrite that value as UTF-8 text (it was edited outside MLflow)"
    if row is None:
        where = f"column {column!r}: {shown!r}"
    else:
        table, what, owner = row
        where = f"{table}.{column} of {what} {owner}: {shown!r}"
        fix += ", or delete that run from the database" if what == "run" else ""
    return UserError(
        f"the MLflow store holds text that is not UTF-8 ({where})",
        uri,
        f"{fix}, or pass another --tracking-uri",
    )


@contextlib.contextmanager
def readable_text(uri: str) -> Iterator[None]:
    """Inside, the store holding text that is not UTF-8 is a one-line UserError
    (:func:`text_error`); any other exception passes unchanged."""
    try:
        yield
    except Exception as err:
        failed = None if isinstance(err, UserError) else text_error(err, uri)
        if failed is None:
            raise
        raise failed from None


class _ReportedStoreErrors(logging.Filter):
    """Drops MLflow's own log (with two tracebacks) of a database error that varnext reports
    in one line anyway: text that is not UTF-8, or the database's state (locked, read-only,
    full). Any other error it logs stays visible."""

    def filter(self, record: logging.LogRecord) -> bool:
        err = record.exc_info[1] if record.exc_info else None
        if err is None:
            return True
        return undecodable_text(err) is None and database_failure(err) is None


def quiet_reported_store_errors() -> None:
    """Installs :class:`_ReportedStoreErrors` on MLflow's database logger, once."""
    logger = logging.getLogger("mlflow.store.db.utils")
    if not any(isinstance(f, _ReportedStoreErrors) for f in logger.filters):
        logger.addFilter(_ReportedStoreErrors())


@contextlib.contextmanager
def store_failures(uri: str, during: str, fix: str) -> Iterator[None]:
    """Inside, the store failing (:func:`is_store_error`) is a one-line UserError naming
    ``during`` what, the store, and ``fix``; any other exception passes unchanged."""
    try:
        yield
    except Exception as err:
        if isinstance(err, UserError) or not is_store_error(err):
            raise
        failed = text_error(err, uri)
        if failed is not None:
            raise failed from None
        reason = database_failure(err) or failure_summary(err, 300)
        raise UserError(f"the MLflow store failed {during} ({reason})", uri, fix) from err
