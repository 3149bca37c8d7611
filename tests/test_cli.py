"""The CLI's error boundary: user mistakes are one ``error:`` line and exit 2; a bug is one line
naming the exception and a file holding its traceback, exit 1 (never a wall of text)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.conftest import REPO
from varnext_ray import cli


def test_an_unexpected_exception_is_one_line_and_a_traceback_file(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(path: Path, **_: object) -> None:
        raise ZeroDivisionError("division by zero\nsecond line")

    monkeypatch.setattr(cli, "load_manifest", broken)
    code = cli.main(["data", "info", "anything"])
    err = capsys.readouterr().err
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: unexpected ZeroDivisionError: division by zero ("), err
    assert "Traceback" not in err and "second line" not in err
    saved = Path(re.search(r"full traceback in (\S+)\)", lines[0]).group(1))
    try:
        text = saved.read_text()
        assert "Traceback (most recent call last)" in text and "ZeroDivisionError" in text
        assert "in broken" in text  # the frame that raised
    finally:
        saved.unlink()


def test_usage_errors_quote_long_or_control_values_in_one_short_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["synth", "out", "--clips", "7" * 5000])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert len(err.strip().splitlines()) == 1 and len(err) < 300, err
    assert err.startswith("error: argument --clips: invalid int value: '777")
    with pytest.raises(SystemExit):
        cli.main(["synth", "out", "--clips", "1\nerror: forged"])
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "\\n" in err, err


@pytest.mark.parametrize(
    "argv",
    [
        ["synth", ""],
        ["ingest", "clips", "--out", ""],
        ["data", "info", ""],
        ["arch", "check", ""],
        ["train", "--config", "a.json", "--data", "d", "--storage", ""],
        ["best", "--experiment", "e", "--out", ""],
        ["demo", "--workdir", ""],  # ran in the current folder
        ["predict", "--checkpoint", "", "--out", "p.png", "a.png", "b.png"],
    ],
)
def test_an_empty_path_is_refused_not_taken_for_the_current_folder(
    argv: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``Path("")`` is ``.``: ``--storage ''`` passed every check as the current folder."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "an empty path" in err and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_a_word_taken_for_an_unknown_option_is_named_with_the_way_to_pass_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``ingest -x.mp4`` said only that SOURCE was missing."""
    with pytest.raises(SystemExit):
        cli.main(["ingest", "-x.mp4", "--out", "ds"])
    err = capsys.readouterr().err
    assert "-x.mp4 is not an option of varnext ingest" in err and "./-x.mp4" in err, err
    with pytest.raises(SystemExit):
        cli.main(["--bogus"])
    err = capsys.readouterr().err
    assert "--bogus is not an option of varnext" in err and "./" not in err, err
    with pytest.raises(SystemExit):  # an abbreviation of a real option is not unknown
        cli.main(["ingest", "--ou", "ds"])
    assert "is not an option" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("value", "verbose"),
    [("off", False), ("false", False), ("0", False), ("", False), ("yes", True), ("1", True)],
)
def test_varnext_verbose_reads_yes_and_no_like_the_other_switches(
    value: str, verbose: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any value but "" and "0" was on: VARNEXT_VERBOSE=false turned Ray's logs on."""
    from varnext_ray import console

    monkeypatch.setenv("VARNEXT_VERBOSE", value)
    assert console.is_verbose() is verbose


def test_a_varnext_verbose_that_is_neither_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VARNEXT_VERBOSE", "maybe")
    assert cli.main(["data", "info", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: VARNEXT_VERBOSE must be 1 or 0 (got 'maybe')"), err


@pytest.mark.parametrize(
    ("redirect", "said"),
    [(">&-", "is closed"), ('1<"$1"', "is open for reading only")],
    ids=["closed", "read-only"],
)
def test_a_standard_output_that_cannot_be_written_is_refused_before_any_work(
    tmp_path: Path, redirect: str, said: str
) -> None:
    """``varnext synth OUT >&-`` wrote its clips, then ended in "unexpected AttributeError"
    (exit 1): Python's ``sys.stdout`` is None when the command starts with it closed. With
    ``1<file`` it wrote them, then failed to say so (exit 2): a re-run then met "output
    already exists" for an output it was told had failed."""
    import subprocess

    (tmp_path / "in.txt").write_text("")
    script = f'exec varnext synth "$0" --clips 1 --frames 3 --size 8x8 {redirect}'
    refused = subprocess.run(
        ["bash", "-c", script, tmp_path / "s", tmp_path / "in.txt"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.startswith(f"error: standard output {said} (standard output): ")
    assert len(refused.stderr.splitlines()) == 1 and not (tmp_path / "s").exists()


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_a_path_standard_output_cannot_encode_is_printed_escaped(
    tmp_path: Path, encoding: str
) -> None:
    """``wrote ... to s_ü`` on an ASCII terminal raised UnicodeEncodeError after the clips
    were written: "unexpected ..., this is a bug", exit 1. Standard error escaped it already."""
    import subprocess

    out = tmp_path / "s_ü中"
    done = subprocess.run(
        ["varnext", "synth", str(out), "--clips", "1", "--frames", "3", "--size", "8x8"],
        capture_output=True,
        env=os.environ | {"PYTHONIOENCODING": encoding},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    said = done.stdout.decode(encoding)
    assert "s_\\xfc\\u4e2d" in said if encoding == "ascii" else "s_ü\\u4e2d" in said, said
    assert any(out.iterdir())  # the clips, written once


def test_a_closed_standard_error_keeps_the_exit_status(tmp_path: Path) -> None:
    """With ``2>&-`` the error line is lost, and writing it was an unexpected OSError: exit 1
    where the mistake is exit 2."""
    import subprocess

    missing = tmp_path / "missing"
    closed = subprocess.run(
        ["bash", "-c", 'exec varnext data info "$0" 2>&-', missing], timeout=120
    )
    assert closed.returncode == 2


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["ingest", "a" * 300, "--out", "{tmp}/ds"], "argument SOURCE: a name in this path is 300"),
        (
            ["train", "--config", "c.json", "--data", "d", "--storage", "{tmp}/" + "s" * 256],
            "argument --storage: a name in this path is 256 bytes long",
        ),
        (["demo", "--workdir", "{tmp}/x/" + "é" * 128 + "/y"], "a name in this path is 256"),
        (["ingest", "v.mp4", "--out", "/" + "ab/" * 1400], "the path is 4,201 bytes long"),
    ],
)
def test_a_path_the_kernel_would_refuse_as_too_long_is_refused_by_the_parser(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], said: str
) -> None:
    """Python's ``Path.is_dir`` raises for a name over 255 bytes (ENAMETOOLONG) rather than
    say False: ingest ended in "unexpected OSError"; demo started Ray, then failed and left
    the folders it had made."""
    with pytest.raises(SystemExit) as ended:
        cli.main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert said in err and "shorten it" in err and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


# Runs the console script's main() with the signal sent from inside the import of the CLI's
# modules (the second or two a Ctrl-C used to land in).
SIGNAL_IN_IMPORT = """
import builtins, os, sys
from varnext_ray import entry
real_import, signum = builtins.__import__, int(sys.argv[1])
def importing(name, *args, **kwargs):
    if name == "varnext_ray.cli":
        os.kill(os.getpid(), signum)
    return real_import(name, *args, **kwargs)
builtins.__import__ = importing
sys.argv = ["varnext", "synth", sys.argv[2]]
sys.exit(entry.main())
"""


@pytest.mark.parametrize(("signum", "status", "said"), [(2, 130, "interrupted"), (15, 143, "term")])
def test_a_signal_while_the_cli_starts_is_one_line(
    tmp_path: Path, signum: int, status: int, said: str
) -> None:
    """Ctrl-C while the CLI's modules import (its first second or two) printed a
    KeyboardInterrupt traceback from inside numpy or pyarrow; SIGTERM ended it without a word.
    It is one line, and the shell's status for the signal (128 + its number)."""
    import subprocess
    import sys

    out = tmp_path / "s"
    ended = subprocess.run(
        [sys.executable, "-c", SIGNAL_IN_IMPORT, str(signum), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ended.returncode == status, ended.stderr
    assert ended.stderr.startswith(f"error: {said}"), ended.stderr
    assert len(ended.stderr.splitlines()) == 1 and not out.exists(), ended.stderr


def test_an_output_file_named_with_a_trailing_slash_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``report --out a.html/`` (a folder) wrote the file ``a.html``: Path drops the slash."""
    out = tmp_path / "a.html"
    with pytest.raises(SystemExit) as ended:
        cli.main(["report", "--experiment", "x", "--out", f"{out}/"])
    assert ended.value.code == 2 and not out.exists()
    assert "--out: it ends in a slash, which names a folder" in capsys.readouterr().err


def test_a_commands_words_may_follow_its_options() -> None:
    """``ingest a --out ds b`` said "unrecognized arguments: b (varnext)"."""
    from varnext_ray.cli import build_parser

    args = build_parser().parse_args(["ingest", "a", "--out", "ds", "--size", "64x36", "b"])
    assert args.sources == [Path("a"), Path("b")] and args.out == Path("ds")


@pytest.mark.parametrize(
    ("argv", "prog"),
    [
        (["synth", "a", "b"], "varnext synth"),
        (["data", "info", "ds", "extra"], "varnext data info"),
    ],
)
def test_an_extra_word_names_its_command(
    argv: list[str], prog: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command's extra words reach the top parser, whose line named only ``varnext``."""
    with pytest.raises(SystemExit) as ended:
        cli.main(argv)
    assert ended.value.code == 2
    assert f"unrecognized arguments: {argv[-1]} ({prog}): see '{prog} --help'" in (
        capsys.readouterr().err
    )


def test_a_torch_command_from_a_deleted_folder_is_one_line(tmp_path: Path) -> None:
    """torch's MKL cannot load from a deleted current folder: ``arch check`` ended with
    "Intel oneMKL FATAL ERROR: Cannot load libtorch_cpu.so" and exit 1."""
    import shlex
    import subprocess
    import sys

    gone = tmp_path / "gone"
    gone.mkdir()
    config = REPO / "configs" / "smoke_64x36.json"
    script = (
        f"cd {shlex.quote(str(gone))} && rmdir {shlex.quote(str(gone))} && exec "
        f"{shlex.quote(sys.executable)} -m varnext_ray.entry arch check {shlex.quote(str(config))}"
    )
    ended = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    assert ended.returncode == 2, ended.stderr
    assert ended.stderr.startswith("error: the current folder was deleted"), ended.stderr
    assert len(ended.stderr.splitlines()) == 1, ended.stderr
