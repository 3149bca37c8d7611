"""The ``varnext`` console script: the CLI behind a guard for the moments it does not cover.

The CLI's modules take a second or two to import (numpy, pyarrow, torch's first pieces). A
Ctrl-C in that time printed a KeyboardInterrupt traceback from inside an import, and a SIGTERM
ended the process silently, as did either after a command had finished its work, while the
interpreter shut down (MLflow's and SQLAlchemy's teardown). Outside the command's own handling
(:func:`varnext_ray.cli.main`, which removes half-written outputs), a signal here is one line
and the shell's status for it: 130 for Ctrl-C, 143 for SIGTERM. Nothing is half-written at
those moments: before the command starts nothing is written, and after it ends its outputs
are whole (and standard output flushed).
"""

from __future__ import annotations

import os
import signal
import sys
import warnings
from types import FrameType
from typing import NoReturn

from varnext_ray.errors import say  # light: the CLI's heavy imports come later

_SAID = {signal.SIGINT: "interrupted (keyboard)", signal.SIGTERM: "terminated (SIGTERM)"}


def _say(signum: int) -> None:
    say(f"error: {_SAID[signum]}: no command was at work; nothing is half-done")


def _before(signum: int, frame: FrameType | None = None) -> NoReturn:
    """While the CLI imports: one line, then the shell's status for the signal."""
    _say(signum)
    raise SystemExit(128 + signum)


def _after(signum: int, frame: FrameType | None = None) -> NoReturn:
    """Once the command has ended, while the interpreter shuts down: the same, at once (an
    exception raised now would only be printed as "ignored")."""
    _say(signum)
    os._exit(128 + signum)


def _warnings_stay_warnings() -> None:
    """``PYTHONWARNINGS=error`` (or ``-W error``), a setting for developing Python code, made
    every deprecation note of MLflow's and SQLAlchemy's an exception: ``best`` ended in
    "unexpected SADeprecationWarning". For this command and the processes it starts (Ray's
    workers read the variable too), such filters show the warning instead of raising it."""
    filters = [("default", *f[1:]) if f[0] == "error" else f for f in warnings.filters]
    if filters != warnings.filters:
        warnings.resetwarnings()
        for action, message, category, module, lineno in reversed(filters):
            warnings.filterwarnings(
                action,
                getattr(message, "pattern", message) or "",  # a compiled regex, a str or None
                category,
                getattr(module, "pattern", module) or "",
                lineno,
            )
    value = os.environ.get("PYTHONWARNINGS")
    if value:
        options = [o.strip().split(":") for o in value.split(",")]
        for option in options:  # an action may be abbreviated: "e", "err"
            if option[0] and "error".startswith(option[0].lower()):
                option[0] = "default"
        os.environ["PYTHONWARNINGS"] = ",".join(":".join(o) for o in options)


# The commands that load torch: its MKL library cannot load from a deleted current folder and
# ends the process with its own "Intel oneMKL FATAL ERROR" line.
_TORCH_COMMANDS = frozenset({"arch", "train", "sweep", "demo", "predict"})


def _deleted_folder(argv: list[str]) -> str | None:
    """The refusal of a torch command run from a current folder that was deleted, or None."""
    try:
        os.getcwd()
        return None
    except FileNotFoundError:
        command = next((word for word in argv if not word.startswith("-")), None)
    if command not in _TORCH_COMMANDS:
        return None  # the others say it themselves where a relative path needs the folder
    return (
        f"error: the current folder was deleted, and varnext {command} loads torch, which "
        "cannot start there (the current folder): cd to an existing folder"
    )


def main() -> int:
    """Runs ``varnext`` with a signal outside the command's own handling said in one line."""
    for signum in _SAID:
        signal.signal(signum, _before)
    _warnings_stay_warnings()
    refused = _deleted_folder(sys.argv[1:])
    if refused:
        say(refused)
        return 2
    from varnext_ray.cli import main as run  # the heavy imports

    # While the command runs, Ctrl-C is Python's KeyboardInterrupt, which the CLI turns into its
    # own line; SIGTERM is the CLI's own (it puts _before back when the command ends).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        status = run()
    except KeyboardInterrupt:  # between the imports and the command, or just after it
        _before(signal.SIGINT)
    for signum in _SAID:
        signal.signal(signum, _after)
    return status


if __name__ == "__main__":
    sys.exit(main())
