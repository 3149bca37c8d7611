"""The project's user-facing error type.

Every mistake a user can make (a bad file, bad JSON, an impossible architecture, a missing
dataset) is raised as a :class:`UserError`; the CLI prints it as one line and exits with status 2.
Here too: what keeps that line short (:func:`shorten`, :func:`list_problems`), and the guard
that tells a failing standard output (a full disk, a closed pipe) from the command's own files.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import sys
import threading
import unicodedata
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any, TextIO

# Control characters (newline, escape, ...), format characters (bidi overrides), line and
# paragraph separators and lone surrogates (undecodable file names): printed escaped.
_UNSAFE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def say(line: str) -> None:
    """Writes one line to standard error. A closed one (``2>&-``) loses it, but never changes
    the exit status the line goes with (2 for a mistake)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):  # None when closed at start
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


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


# An error line stays readable whatever it quotes: each part is cut in the middle beyond these,
# a list of problems names the first MAX_PROBLEMS (each cut to MAX_PROBLEM_CHARS) and counts
# the rest. A 200,000-item list in a config made a 600 KB line before.
MAX_WHAT, MAX_WHERE, MAX_FIX = 3000, 1000, 1000
MAX_PROBLEMS, MAX_PROBLEM_CHARS = 5, 300


def shorten(text: str, limit: int) -> str:
    """``text`` if at most ``limit`` characters, else its start and end around a marker saying
    how much was cut (``[1,234 characters cut]``); never longer than ``limit``."""
    if len(text) <= limit:
        return text
    marker = f" ...[{len(text):,} characters cut]... "
    keep = max(limit - len(marker), 0)
    head, tail = keep - keep // 3, keep // 3
    marker = f" ...[{len(text) - keep:,} characters cut]... "
    return text[:head] + marker + text[len(text) - tail :]


def list_problems(head: str, problems: Sequence[str], most: int = MAX_PROBLEMS) -> str:
    """``head, N problems: first; second; ...; and K more``, or ``head: the problem`` for one.

    The first ``most`` problems are listed, each cut to :data:`MAX_PROBLEM_CHARS` (a value
    quoted whole can be megabytes), and the rest counted, so the line stays short.
    """
    shown = [shorten(problem, MAX_PROBLEM_CHARS) for problem in problems[:most]]
    if len(problems) > most:
        shown.append(f"and {len(problems) - most:,} more")
    count = f", {len(problems):,} problems" if len(problems) > 1 else ""
    return f"{head}{count}: {'; '.join(shown)}"


class UserError(Exception):
    """A problem with the user's input, reported as ``<what> (<where>): <how to fix>``.

    Control characters in any part are escaped (see :func:`escape`), so the message is always
    exactly one line, URI passwords are hidden (:func:`redact`), and each part is cut to at
    most a few thousand characters (:func:`shorten`), whatever it quotes.

    Args:
        what: What is wrong, with the value received.
        where: The file, path, flag or JSON path it concerns.
        fix: How to fix it.

    Example:
        >>> raise UserError("no decodable frame", "clip.mp4", "check the file plays")
    """

    def __init__(self, what: str, where: str, fix: str) -> None:
        self.what = shorten(escape(redact(what)), MAX_WHAT)
        self.where = shorten(escape(redact(where)), MAX_WHERE)
        self.fix = shorten(escape(redact(fix)), MAX_FIX)
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


_FULL = {getattr(errno, name, None) for name in ("ENOSPC", "EDQUOT", "EFBIG")} - {None}


class GuardedStdout:
    """Standard output that remembers the first OSError its writes raised (and raises it on).

    A full disk (``> /dev/full``), a closed pipe (``| head``) or a failing device surfaces in
    whatever ``print`` met it; the CLI then tells that apart from an OSError of the command's
    own files through :meth:`caused`. Everything else is the wrapped stream's.
    """

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.failure: OSError | None = None

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self.stream, method)(*args)
        except OSError as err:
            self.failure = self.failure or err
            raise

    def write(self, text: str) -> int:
        return self._call("write", text)

    def writelines(self, lines: Any) -> None:
        self._call("writelines", lines)

    def flush(self) -> None:
        self._call("flush")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)

    def finish(self) -> None:
        """Flushes what is buffered; raises the failure of any earlier write, even one that
        the command caught: its output is then incomplete."""
        self.flush()
        if self.failure is not None:
            raise self.failure

    def caused(self, error: BaseException) -> bool:
        """Whether ``error`` is this stream's failure, or was raised while handling it."""
        seen: BaseException | None = error
        for _ in range(20):
            if seen is None or self.failure is None:
                return False
            if seen is self.failure:
                return True
            seen = seen.__cause__ or seen.__context__
        return False

    def failure_error(self) -> UserError | None:
        """The failure as the CLI reports it; None for a closed pipe (``| head``), which ends
        the command quietly, as Python tools do. Later writes then go to the null device, so
        nothing is reported again when the interpreter flushes its streams at exit."""
        failure = self.failure
        with contextlib.suppress(OSError, ValueError):  # no file descriptor (a test's capture)
            fd = self.stream.fileno()
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, fd)
            os.close(null)
        if failure is None or isinstance(failure, BrokenPipeError):
            return None
        return UserError(
            f"cannot write the output: {failure.strerror or failure}",
            "standard output",
            ("free some space there" if failure.errno in _FULL else "check where it goes")
            + ", or redirect the output elsewhere; what was printed is incomplete",
        )


@contextlib.contextmanager
def guarded_stdout() -> Iterator[GuardedStdout]:
    """Inside, ``sys.stdout`` is a :class:`GuardedStdout` of the one before (put back after)."""
    guard = GuardedStdout(sys.stdout)
    sys.stdout = guard  # type: ignore[assignment]
    try:
        yield guard
    finally:
        if sys.stdout is guard:
            sys.stdout = guard.stream
