"""The ``varnext`` command line: one parser, one subcommand per stage of the data flow.

Each ``_add_*`` function registers a subcommand and the function that runs it. User errors
(:class:`~varnext_ray.errors.UserError`) become one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from varnext_ray import __version__
from varnext_ray.errors import UserError

log = logging.getLogger("varnext")


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"error: {message} ({self.prog}): see '{self.prog} --help'\n")
        raise SystemExit(2)


def _subcommand(
    sub: argparse._SubParsersAction, name: str, help_text: str, example: str
) -> argparse.ArgumentParser:
    """Adds a subcommand whose --help ends with an example command line."""
    return sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=f"example:\n  {example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    """Returns the parser for every ``varnext`` subcommand."""
    parser = _Parser(
        prog="varnext",
        description="Next-frame prediction by linear extrapolation in a VAE's latent space.",
        epilog="example:\n  varnext synth runs/synth && varnext ingest runs/synth --out runs/ds",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"varnext {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)
    for add in _COMMANDS:
        add(sub)
    return parser


_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = []


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the process exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    logging.addLevelName(logging.WARNING, "warning")
    logging.addLevelName(logging.INFO, "info")
    try:
        return int(args.run(args) or 0)
    except UserError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted (keyboard): nothing half-written was kept\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
