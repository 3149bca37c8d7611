"""The project's user-facing error type.

Every mistake a user can make (a bad file, bad JSON, an impossible architecture, a missing
dataset) is raised as a :class:`UserError`; the CLI prints it as one line and exits with status 2.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
import unicodedata
from collections.abc import Iterator
from types import FrameType

# Control characters (newline, escape, ...), format characters (bidi overrides), line and
# paragraph separators and lone surrogates (undecodable file names): printed escaped.
_UNSAFE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def escape(text: str) -> str:
    """``text`` with every control or invisible formatting character escaped (``\\n``, ``\\x1b``).

    A file name holding a newline then cannot start a second ``error:`` line, and a terminal
    escape sequence in a path is printed, not obeyed.
    """
    text = str(text)
    if all(ch.isprintable() or ch == " " for ch in text):
        return text
    out = []
    for ch in text:
        if unicodedata.category(ch) in _UNSAFE:
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


# The password of a URI's user part, ``scheme://user:PASSWORD@host``: never printed.
_URI_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/:@]*):[^\s/@]*@")


def redact(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` URI shown as ``***``."""
    return _URI_PASSWORD.sub(r"\1:***@", text)


class UserError(Exception):
    """A problem with the user's input, reported as ``<what> (<where>): <how to fix>``.

    Control characters in any part are escaped (see :func:`escape`), so the message is always
    exactly one line, and URI passwords are hidden (:func:`redact`).

    Args:
        what: What is wrong, with the value received.
        where: The file, path, flag or JSON path it concerns.
        fix: How to fix it.

    Example:
        >>> raise UserError("no decodable frame", "clip.mp4", "check the file plays")
    """

    def __init__(self, what: str, where: str, fix: str) -> None:
        self.what = escape(redact(what))
        self.where = escape(redact(where))
        self.fix = escape(redact(fix))
        super().__init__(f"{self.what} ({self.where}): {self.fix}")

    def __reduce__(self) -> tuple:
        # Ray pickles exceptions across processes; rebuild from the three parts, not args.
        return (type(self), (self.what, self.where, self.fix))


def failure_summary(error: BaseException, limit: int = 500) -> str:
    """One line saying why a Ray Train run or Tune trial failed, for MLflow and the terminal.

    The :class:`UserError` inside Ray's wrappers (``TuneError -> RayTaskError -> cause``) if
    there is one, as ``what (where): fix``; else the innermost line naming an exception.
    """
    seen: BaseException | None = error
    for _ in range(6):
        if seen is None:
            break
        cause = getattr(seen, "cause", None)  # Ray's task errors wrap the original here
        if isinstance(cause, BaseException) and cause is not seen:
            seen = cause
            continue
        if isinstance(seen, UserError):
            return str(seen)[:limit]
        seen = seen.__cause__
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if "Error:" in line or "Error(" in line:
            return line[:limit]
    return (lines or [type(error).__name__])[-1][:limit]


def user_error_in(error: BaseException) -> UserError | None:
    """The UserError that ``error`` was raised because of or while handling, if any: Tune
    raises a callback's exception as a ``TuneError`` made while handling it (the original is
    only its ``__context__``), and Ray's task errors keep theirs in ``cause``."""
    stack: list[BaseException] = [error]
    seen: set[int] = set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        cause = getattr(current, "cause", None)
        if isinstance(cause, UserError):  # a RayTaskError(UserError): its text is Ray's header
            return cause
        if isinstance(current, UserError):
            return current
        linked = (cause, current.__cause__, current.__context__)
        stack.extend(e for e in linked if isinstance(e, BaseException))
    return None


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived while :func:`sigterm_raises` was active.

    A KeyboardInterrupt, so that whatever unwinds on Ctrl-C unwinds on SIGTERM too, Ray's
    ``ray.get`` included: a signal handler's exception interrupts its wait only if it is a
    KeyboardInterrupt or SystemExit (another is lost there, and the wait goes on). Ray raises
    its own KeyboardInterrupt then, so :func:`terminated` says whether SIGTERM was the cause.
    ``hint`` says what the command left and how to continue; the CLI prints it.
    """

    def __init__(self, hint: str = "") -> None:
        super().__init__(hint)
        self.hint = hint


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what the command left and how to continue (the CLI prints ``hint``)."""

    def __init__(self, hint: str) -> None:
        super().__init__(hint)
        self.hint = hint


_SIGTERM_SEEN = threading.Event()


def terminated() -> bool:
    """Whether SIGTERM arrived inside the current :func:`sigterm_raises` block."""
    return _SIGTERM_SEEN.is_set()


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    _SIGTERM_SEEN.set()
    raise Terminated


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Inside, SIGTERM raises :class:`Terminated`, so what a command stages (``synth``'s and
    ``ingest``'s hidden ``.OUT.partial-*`` folders) is removed on the way out as on Ctrl-C.

    Only in the main thread (the only one that may set signal handlers); a no-op elsewhere.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _SIGTERM_SEEN.clear()
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
