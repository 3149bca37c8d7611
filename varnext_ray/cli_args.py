"""Shared pieces of the ``varnext`` command line: the parser class and common flags."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from varnext_ray.errors import MAX_WHAT, escape, shorten
from varnext_ray.number_text import read_float
from varnext_ray.output_checks import names_a_folder


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and exit status 2."""

    _seen: tuple[str, ...] = ()  # the arguments this parser was last given
    _intermixing = False

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """A command's words may come before, between and after its options
        (``ingest a --out ds b`` reads sources a and b: "unrecognized arguments: b" before)."""
        if self._subparsers is not None or self._intermixing:
            if not self._intermixing:
                self._seen = tuple(sys.argv[1:] if args is None else args)
            return super().parse_known_args(args, namespace)
        self._seen = tuple(sys.argv[1:] if args is None else args)
        self._intermixing = True  # parse_known_intermixed_args calls parse_known_args twice
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False

    def error(self, message: str) -> None:  # type: ignore[override]
        # A value argparse quotes back may be a 5,000-digit number or hold a newline, and
        # "unrecognized arguments: ..." lists every one of them.
        message = re.sub(r"'([^']{60})[^']{20,}'", r"'\1...'", message)
        dashed = self._dash_value()
        unknown = self._unknown_options()
        if dashed:
            message += f"; {dashed[1]} was read as an option: write {'='.join(dashed)}"
        elif unknown and "unrecognized arguments" not in message:
            # argparse set the word aside as an option it does not know, then missed the
            # positional it was meant to be ("required: SOURCE")
            message += f"; {unknown[0]} is not an option of {self.prog}"
            if self._subparsers is None:  # a command's own words are paths
                message += f" (a file or folder of that name is written ./{unknown[0]})"
        message = shorten(escape(message), MAX_WHAT)
        prog = self._command().prog  # a command's extra words are found by the top parser
        sys.stderr.write(f"error: {message} ({prog}): see '{prog} --help'\n")
        raise SystemExit(2)

    def _command(self) -> argparse.ArgumentParser:
        """The (sub)command parser the arguments chose: ``varnext data info`` for
        ``data info ds extra``, this parser when they chose none."""
        parser: argparse.ArgumentParser = self
        for word in self._seen:
            choices = getattr(parser._subparsers, "_group_actions", [None])[0]
            if choices is None or word not in getattr(choices, "choices", {}):
                if not word.startswith("-"):
                    break
                continue
            parser = choices.choices[word]
        return parser

    def _dash_value(self) -> tuple[str, str] | None:
        """An option followed by a value that starts with a dash and is no option here, which
        argparse takes for an option name (``--lr -1e-3``, ``--val -inf``, ``--size -8x-8``;
        its own test lets through only ``-1`` and ``-0.5``)."""
        for option, value in zip(self._seen, self._seen[1:], strict=False):
            if option == "--":
                break
            action = self._option_string_actions.get(option)
            if action is None or action.nargs == 0 or not value.startswith("-") or value == "-":
                continue
            if self._negative_number_matcher.match(value) or self._is_option(value):
                continue
            return option, value
        return None

    def _is_option(self, word: str) -> bool:
        name = word.split("=", 1)[0]
        return any(option.startswith(name) for option in self._option_string_actions)

    def _unknown_options(self) -> list[str]:
        """The arguments before any ``--`` that look like options this parser does not have
        (abbreviations of its long options count as known)."""
        unknown = []
        for arg in self._seen:
            if arg == "--":
                break
            if arg == "-" or not arg.startswith("-") or _is_number(arg):
                continue
            if not self._is_option(arg):
                unknown.append(arg)
        return unknown


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def float_arg(text: str) -> float:
    """argparse ``type`` of a number: :func:`~varnext_ray.number_text.read_float`, so
    ``--lr 1e-320`` or ``--val 1e-400`` is refused rather than read as (nearly) 0, and ``nan``
    or ``1e309`` is refused here, before any work."""
    try:
        return read_float(text)
    except ValueError as err:
        if "could not convert" in str(err):
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number") from None
        raise argparse.ArgumentTypeError(str(err)) from None


def path_arg(text: str) -> Path:
    """argparse ``type`` of a path: ``Path("")`` would silently be the current folder."""
    return Path(location_arg(text))


def file_arg(text: str) -> Path:
    """argparse ``type`` of an output file's path, refusing one that names a folder."""
    location_arg(text)
    if names_a_folder(text):
        raise argparse.ArgumentTypeError("it ends in a slash, which names a folder: name the file")
    return Path(text)


NAME_MAX = 255  # bytes in one file or folder name (Linux's file systems)
PATH_MAX = 4096  # bytes in a path the kernel takes, its final NUL included


def location_arg(text: str) -> str:
    """argparse ``type`` of a path or URI (``--storage``), refusing an empty one, and a path
    the kernel would refuse (ENAMETOOLONG): Python's ``Path.exists`` and ``is_dir`` raise
    for it rather than say False, wherever a command first looks at the path."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path: name a file or folder ('.' is this one)")
    if "://" in text:
        return text
    raw = os.fsencode(text)
    longest = max(len(name) for name in raw.split(b"/"))
    if longest > NAME_MAX:
        raise argparse.ArgumentTypeError(
            f"a name in this path is {longest:,} bytes long, and a file or folder name holds "
            f"at most {NAME_MAX}: shorten it"
        )
    if len(raw) >= PATH_MAX:
        raise argparse.ArgumentTypeError(
            f"the path is {len(raw):,} bytes long, and paths hold at most {PATH_MAX - 1}: "
            "shorten it"
        )
    return text


def subcommand(
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


def add_tracking_args(p: argparse.ArgumentParser, experiment_default: str | None) -> None:
    """--experiment and --tracking-uri."""
    if experiment_default is None:
        p.add_argument("--experiment", required=True, metavar="NAME", help="MLflow experiment")
    else:
        p.add_argument(
            "--experiment",
            default=experiment_default,
            metavar="NAME",
            help=f"MLflow experiment (default {experiment_default})",
        )
    p.add_argument(
        "--tracking-uri",
        default=None,
        metavar="URI",
        help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or ./mlflow.db)",
    )


def add_rollout_args(p: argparse.ArgumentParser) -> None:
    """--rollout-steps and --train-on (what each epoch scores, what training reads)."""
    p.add_argument(
        "--rollout-steps",
        type=int,
        default=4,
        metavar="K",
        help="score extrapolations 1..K steps ahead each epoch, with a GIF (default 4; 0: off)",
    )
    p.add_argument(
        "--train-on",
        choices=("auto", "frames", "triplets"),
        default="auto",
        help="training input (default auto: triplets when loss.linearity_weight > 0)",
    )


def add_cluster_args(p: argparse.ArgumentParser) -> None:
    """--storage and --address."""
    p.add_argument(
        "--storage",
        type=location_arg,
        default="runs/ray",
        help="Ray Train/Tune storage for checkpoints (default runs/ray)",
    )
    add_address_arg(p)


def add_address_arg(p: argparse.ArgumentParser) -> None:
    """--address: the Ray cluster to join."""
    p.add_argument(
        "--address",
        default=None,
        help="Ray address (default $RAY_ADDRESS, else a local Ray on 127.0.0.1)",
    )


def add_resource_args(p: argparse.ArgumentParser, workers_flag: str) -> None:
    """Workers and what each holds."""
    p.add_argument(
        workers_flag, type=int, default=2, dest="workers", help="DDP workers per run (default 2)"
    )
    p.add_argument("--gpus-per-worker", type=float_arg, default=0.0)
    p.add_argument(
        "--cpus-per-worker",
        type=float_arg,
        default=None,
        help="default: 1 with GPUs, else a share leaving 1 CPU for Ray Data",
    )
