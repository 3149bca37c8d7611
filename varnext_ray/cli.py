"""The ``varnext`` command line: one parser, one subcommand per stage of the data flow.

Each ``_add_*`` function registers a subcommand and the function that runs it. User errors
(:class:`~varnext_ray.errors.UserError`) become one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence

from varnext_ray import __version__, console
from varnext_ray.cli_args import Parser, float_arg, path_arg, subcommand
from varnext_ray.cli_jobs import JOB_COMMANDS
from varnext_ray.errors import (
    GuardedStdout,
    UserError,
    escape,
    guarded_stdout,
    redact,
    say,
    sigterm_raises,
    terminated,
    user_error_in,
)
from varnext_ray.frame_fit import parse_size
from varnext_ray.ingest import IngestOptions, ingest
from varnext_ray.manifest import ENCODINGS, load_manifest
from varnext_ray.manifest import info as dataset_info
from varnext_ray.synth import FORMATS, write_synthetic
from varnext_ray.synth import MAX_SIDE as SYNTH_MAX_SIDE
from varnext_ray.torch_env import check_torch_starts

log = logging.getLogger("varnext")
OWN_LOGGERS = ("varnext", "varnext_ray")  # whose info lines a command prints


def build_parser() -> argparse.ArgumentParser:
    """Returns the parser for every ``varnext`` subcommand."""
    parser = Parser(
        prog="varnext",
        description="Next-frame prediction by linear extrapolation in a VAE's latent space.",
        epilog="example:\n  varnext synth runs/synth && varnext ingest runs/synth --out runs/ds",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"varnext {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log debug messages, and Ray's own INFO logs (Ray Train reports, Ray Data plans)",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=Parser
    )
    for add in _COMMANDS:
        add(sub)
    return parser


def _add_synth(sub: argparse._SubParsersAction) -> None:
    from varnext_ray.safe_io import size_text
    from varnext_ray.synth import MAX_CLIPS, MAX_FRAMES, MAX_RAW_BYTES, MAX_SEED, MAX_SIDE, MIN_SIDE

    p = subcommand(
        sub,
        "synth",
        "Write synthetic fixed-camera clips (the built-in default data).",
        "varnext synth runs/synth --clips 4 --frames 120 --size 640x360 --seed 0",
    )
    p.add_argument(
        "out_dir",
        type=path_arg,
        metavar="OUT_DIR",
        help="new or empty directory (filled only when every clip is written)",
    )
    p.add_argument(
        "--clips", type=int, default=4, help=f"number of clips, 1..{MAX_CLIPS} (default 4)"
    )
    p.add_argument(
        "--frames", type=int, default=120, help=f"frames per clip, 3..{MAX_FRAMES} (default 120)"
    )
    p.add_argument(
        "--size",
        default="640x360",
        help=f"WxH, each side {MIN_SIDE}..{MAX_SIDE}; clips x frames x W x H x 3 at most "
        f"{size_text(MAX_RAW_BYTES)} (default 640x360)",
    )
    p.add_argument("--seed", type=int, default=0, help=f"random seed, 0..{MAX_SEED} (default 0)")
    p.add_argument("--format", choices=FORMATS, default="mp4", help="mp4 (H.264) or png folders")
    p.add_argument(
        "--bump-probability",
        type=float_arg,
        default=0.5,
        help="chance in [0, 1] that a clip has a camera bump (default 0.5)",
    )
    p.set_defaults(run=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    manifest = write_synthetic(
        args.out_dir,
        clips=args.clips,
        frames=args.frames,
        size=parse_size(args.size, max_side=SYNTH_MAX_SIDE),
        seed=args.seed,
        fmt=args.format,
        bump_probability=args.bump_probability,
    )
    bumps = sum(len(c["bumps"]) for c in manifest["clips"])
    print(
        f"wrote {len(manifest['clips'])} clips x {args.frames} frames ({args.size}, "
        f"{args.format}, {bumps} camera bumps) to {escape(args.out_dir)}"
    )
    return 0


def _add_ingest(sub: argparse._SubParsersAction) -> None:
    p = subcommand(
        sub,
        "ingest",
        "Decode videos and image folders into a frame dataset.",
        "varnext ingest runs/synth footage.mp4 --out runs/dataset --size 160x90",
    )
    p.add_argument(
        "sources",
        type=path_arg,
        nargs="+",
        metavar="SOURCE",
        help="video files, image folders, or folders of either",
    )
    p.add_argument("--out", type=path_arg, required=True, help="the dataset directory to create")
    p.add_argument("--size", default="640x360", help="WxH of the frames (default 640x360)")
    p.add_argument("--every", type=int, default=1, help="keep every Nth frame (default 1)")
    p.add_argument("--val", type=float_arg, default=0.1, help="validation fraction (default 0.1)")
    p.add_argument("--test", type=float_arg, default=0.1, help="test fraction (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    p.add_argument(
        "--guard",
        type=int,
        default=16,
        help="frames dropped between time blocks of different splits (default 16)",
    )
    p.add_argument(
        "--cut-threshold",
        type=float_arg,
        default=0.02,
        help="minimum frame difference of a cut (default 0.02, see docs/data.md)",
    )
    p.add_argument(
        "--cut-ratio",
        type=float_arg,
        default=4.0,
        help="a cut must also exceed this times the recent median (default 4)",
    )
    p.add_argument(
        "--encoding",
        choices=ENCODINGS,
        default="raw",
        help="image bytes in Parquet (default raw: the fastest lossless one to train from)",
    )
    p.set_defaults(run=_run_ingest)


def _run_ingest(args: argparse.Namespace) -> int:
    opts = IngestOptions(
        size=parse_size(args.size),
        every=args.every,
        val=args.val,
        test=args.test,
        seed=args.seed,
        guard=args.guard,
        cut_threshold=args.cut_threshold,
        cut_ratio=args.cut_ratio,
        encoding=args.encoding,
    )
    manifest = ingest(args.sources, args.out, opts)
    splits = ", ".join(f"{k} {v}" for k, v in manifest["splits"].items())
    print(
        f"wrote {manifest['frames']} frames in {len(manifest['clips'])} clips ({splits}; "
        f"{len(manifest['skipped'])} skipped) to {escape(args.out)}"
    )
    return 0


def _add_data(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="Inspect a frame dataset.")
    data_sub = data.add_subparsers(
        dest="data_command", required=True, metavar="COMMAND", parser_class=Parser
    )
    p = subcommand(
        data_sub,
        "info",
        "Show a frame dataset's frames, clips and splits.",
        "varnext data info runs/dataset --json",
    )
    p.add_argument("dataset", type=path_arg, metavar="DATASET")
    p.add_argument("--stride", type=int, default=1, help="triplet stride to count (default 1)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=_run_data_info)


def _run_data_info(args: argparse.Namespace) -> int:
    if args.stride < 1:
        raise UserError(f"--stride must be >= 1 (got {args.stride})", "--stride", "pass 1 or more")
    summary = dataset_info(load_manifest(args.dataset, check_keys=True), args.stride)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    w, h = summary["size"]
    print(
        f"{escape(summary['path'])}: {summary['frames']} frames of {w}x{h} "
        f"({summary['encoding']}), "
        f"{summary['clips']} clips from {summary['sources']} sources, "
        f"{summary['skipped']} skipped, split by {escape(summary['split_policy'])} "
        f"(seed {summary['seed']})"
    )
    print(f"{'split':<6} {'frames':>8} {'clips':>6} {'triplets(s=' + str(args.stride) + ')':>14}")
    for split, frames in summary["splits"].items():
        print(
            f"{split:<6} {frames:>8} {summary['clips_per_split'][split]:>6} "
            f"{summary['triplets'][split]:>14}"
        )
    return 0


def _add_arch(sub: argparse._SubParsersAction) -> None:
    arch = subcommand(
        sub,
        "arch",
        "Check JSON architectures.",
        "varnext arch check configs/small_160x90.json",
    )
    arch_sub = arch.add_subparsers(
        dest="arch_command", required=True, metavar="COMMAND", parser_class=Parser
    )
    p = subcommand(
        arch_sub,
        "check",
        "Validate an architecture and print each layer's output shape and parameters.",
        "varnext arch check configs/seed_640x360.json --json",
    )
    p.add_argument("config", type=path_arg, metavar="CONFIG.json")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--max-params",
        type=_size_limit,
        default=None,
        metavar="N",
        help="most parameters allowed (default 1e9, or $VARNEXT_MAX_PARAMS; 'inf': no limit)",
    )
    p.add_argument(
        "--max-activation-bytes",
        type=_size_limit,
        default=None,
        metavar="N",
        help="most float32 activation bytes per frame (default 4 GiB, or "
        "$VARNEXT_MAX_ACTIVATION_BYTES; 'inf': no limit)",
    )
    p.set_defaults(run=_run_arch_check, uses_torch=True)


def _size_limit(text: str) -> float:
    """A limit such as ``2000000000``, ``2e9`` or ``inf`` (argparse type): the rule of the
    environment variables ``VARNEXT_MAX_PARAMS`` and ``VARNEXT_MAX_ACTIVATION_BYTES``."""
    from varnext_ray.arch import LIMIT_RULE, parse_limit  # imports torch

    value = parse_limit(text)
    if value is None:  # 1e-300 was taken, then every architecture was "over the limit of 0"
        raise argparse.ArgumentTypeError(f"must be {LIMIT_RULE} such as 2e9 (got {text[:40]!r})")
    return value


def _run_arch_check(args: argparse.Namespace) -> int:
    from varnext_ray.arch import check_report, format_table, load_arch  # imports torch

    arch = load_arch(
        args.config,
        max_params=args.max_params,
        max_activation_bytes=args.max_activation_bytes,
    )
    report = check_report(arch)
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0


_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_synth,
    _add_ingest,
    _add_data,
    _add_arch,
    *JOB_COMMANDS,
]


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the process exit status."""
    closed = _closed_stream()
    if closed is not None:  # before argparse, which writes usage and --help to it
        say(f"error: {closed}")
        return 2
    _escape_unprintable_output()
    args = build_parser().parse_args(argv)
    try:
        console.set_verbose(args.verbose)  # before Ray is imported
    except UserError as err:  # VARNEXT_VERBOSE is neither yes nor no
        say(f"error: {err}")
        return 2
    handler = console.StderrHandler()
    console.reopen_closed_streams()
    handler.setFormatter(console.OneLineFormatter("%(levelname)s: %(message)s"))
    # Other libraries' notes (torch's cache statistics at exit, MLflow's, boto's) are not the
    # command's: only their warnings show, unless -v.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, handlers=[handler]
    )
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if args.verbose else logging.INFO)
    logging.addLevelName(logging.WARNING, "warning")
    logging.addLevelName(logging.INFO, "info")
    with guarded_stdout() as stdout:
        return _run(args, stdout)


def _closed_stream() -> UserError | None:
    """A standard output started closed (``>&-``: Python's ``sys.stdout`` is None) or open for
    reading only (``1<file``), refused before any work: every command reports what it wrote
    there, and a command that did its work and then failed to say so reads as failed."""
    fix = "redirect it to a file or to /dev/null (>/dev/null)"
    if sys.stdout is None:
        return UserError(
            "standard output is closed", "standard output", f"{fix} rather than closing it (>&-)"
        )
    try:
        mode = fcntl.fcntl(sys.stdout.fileno(), fcntl.F_GETFL) & os.O_ACCMODE
    except (OSError, ValueError, AttributeError):  # no file descriptor (a test's capture)
        return None
    if mode != os.O_RDONLY:
        return None
    return UserError(
        "standard output is open for reading only", "standard output", f"{fix}, not from one"
    )


def _escape_unprintable_output() -> None:
    """Standard output escapes (``\\xfc``) what its encoding cannot show, as standard error
    does: a path printed to an ASCII or Latin-1 terminal (``PYTHONIOENCODING``, ``LANG=C``)
    raised UnicodeEncodeError after the command had written its output."""
    with contextlib.suppress(AttributeError, ValueError):  # not a TextIOWrapper; detached
        sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]


def _run(args: argparse.Namespace, stdout: GuardedStdout) -> int:
    """Runs the chosen subcommand; every way it can end is one line on stderr at most."""
    try:
        with sigterm_raises():  # SIGTERM unwinds like Ctrl-C: staged outputs are removed
            if getattr(args, "uses_torch", False):
                check_torch_starts()  # torch reads TORCH_LOGS & co. as it is imported
            status = int(args.run(args) or 0)
            stdout.finish()  # the output is written only once it is flushed
            return status
    except UserError as err:  # a RayTaskError(UserError) too, whose own text is Ray's header
        say(f"error: {user_error_in(err) or err}")
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (Terminated, or Ray's after it)
        hint = getattr(err, "hint", "") or "nothing half-written was kept"
        if terminated():
            say(f"error: terminated (SIGTERM): {hint}")
            return 143
        say(f"error: interrupted (keyboard): {hint}")
        return 130
    except Exception as err:  # a bug, not the user's mistake: one line, the story in a file
        if _out_of_memory(err):  # nothing the command held is kept (staged outputs unwind)
            say(
                f"error: out of memory (varnext {args.command}): its inputs need more memory "
                "than this process may take: pass smaller inputs (downscale large frames or "
                "videos with ffmpeg), or run it where more memory is free"
            )
            return 2
        if stdout.caused(err):  # a full disk or a closed pipe behind standard output
            failed = stdout.failure_error()
            if failed is None:  # e.g. `varnext data info DS --json | head`: quietly
                return 0
            say(f"error: {failed}")
            return 2
        found = user_error_in(err)  # a UserError raised in a Ray task (a damaged frame)
        if found is not None:
            say(f"error: {found}")
            return 2
        failed = _database_failure_line(args, err)
        if failed is not None:
            say(failed)
            return 2
        say(unexpected_error_line(err, save_traceback(err)))
        return 1


def _out_of_memory(err: BaseException) -> bool:
    """Python's MemoryError, or torch's OutOfMemoryError (a device's memory)."""
    torch = sys.modules.get("torch")
    device_oom = getattr(torch, "OutOfMemoryError", None) if torch else None
    return isinstance(err, MemoryError) or (device_oom is not None and isinstance(err, device_oom))


def _database_failure_line(args: argparse.Namespace, err: BaseException) -> str | None:
    """The error line of the MLflow database failing under a command (locked by another
    process, read-only, its disk full), which no check before the work can rule out."""
    if "sqlalchemy" not in sys.modules:  # no SQL store was opened
        return None
    from varnext_ray.tracking import resolve_tracking_uri
    from varnext_ray.tracking_errors import database_failure, text_error

    try:
        store = resolve_tracking_uri(getattr(args, "tracking_uri", None))
    except Exception:  # the line must be said whatever the URI holds
        store = "the MLflow tracking store"
    bad_text = text_error(err, store)  # the store's content, where no command wrapped the call
    if bad_text is not None:
        return f"error: {bad_text}"
    reason = database_failure(err)
    if reason is None:
        return None
    return (
        f"error: the MLflow database failed ({reason}) ({store}): another process may hold "
        "it (retry once it ends), or it cannot be written (pass a --tracking-uri you can write)"
    )


def save_traceback(err: BaseException) -> str:
    """Writes ``err``'s full traceback to a new file in the temp folder; returns its path."""
    import tempfile
    import traceback

    try:
        fd, path = tempfile.mkstemp(prefix="varnext-traceback-", suffix=".txt")
        with open(fd, "w", encoding="utf-8") as stream:
            stream.write(f"varnext {__version__}: {' '.join(map(repr, sys.argv))}\n\n")
            traceback.print_exception(err, file=stream)
        return path
    except OSError:
        return "(could not be saved)"


def unexpected_error_line(err: BaseException, traceback_file: str) -> str:
    """The one line an unexpected exception gets: its type and message, and the traceback file."""
    message = escape(redact(str(err).strip().splitlines()[0][:200])) if str(err).strip() else ""
    return (
        f"error: unexpected {type(err).__name__}{': ' + message if message else ''} "
        f"(full traceback in {traceback_file}): this is a bug in varnext; please report it "
        "with that file"
    )


if __name__ == "__main__":
    sys.exit(main())
