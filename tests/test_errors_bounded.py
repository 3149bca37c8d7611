"""Error lines stay short and the CLI's own output failures are one line too.

Each case runs the real CLI in a process of its own: a 200,000-item list in an architecture
made a 600 KB ``error:`` line, ``--max-params 1e-300`` was taken, and a full disk behind
standard output ended in ``unexpected OSError`` (exit 1).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "configs" / "smoke_64x36.json"
LONGEST_LINE = 10_000


def _varnext(
    tmp_path: Path, *argv: str, stdout: Any = subprocess.DEVNULL
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "varnext_ray.cli", *argv],
        cwd=tmp_path,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=180,
    )


def _one_line(proc: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line of a refused command (exit 2), with no traceback."""
    err = proc.stderr
    assert proc.returncode == 2, f"exit {proc.returncode}: {err[:2000]}"
    assert "Traceback" not in err and "Exception ignored" not in err, err[:2000]
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[:2000]
    assert len(lines[0]) < LONGEST_LINE, f"{len(lines[0]):,} characters: {lines[0][:300]}"
    return lines[0]


def _smoke(**changes: Any) -> dict[str, Any]:
    data = json.loads(SMOKE.read_text())
    data["encoder"].update(changes)
    return data


def _write(tmp_path: Path, name: str, data: Any) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


HUGE = {
    # one problem quoting the whole list ("must be [] with a spatial latent (got [1, 1, ...])")
    "arch-linear-200000": lambda tmp: (
        ["arch", "check", _write(tmp, "a.json", _smoke(linear=[1] * 200_000))],
        "encoder.linear: must be [] with a spatial latent",
    ),
    # 5,000 layers with strings where numbers go: 15,000 problems
    "arch-conv-5000-layers": lambda tmp: (
        [
            "arch",
            "check",
            _write(
                tmp,
                "a.json",
                _smoke(conv=[{"out_channels": "x", "kernel_size": "y", "norm": "z"}] * 5000),
            ),
        ],
        "invalid architecture, 15,000 problems: encoder.conv[0].out_channels: must be an integer",
    ),
    "space-linear-30000": lambda tmp: (
        [
            "sweep",
            "--space",
            _write(tmp, "s.json", {"name": "s", "base": str(SMOKE), "linear": [["x"]] * 30000}),
            "--data",
            str(tmp / "no-dataset"),
        ],
        "invalid search space, 30,000 problems: linear[0][0]: must be an integer",
    ),
}


@pytest.mark.parametrize("case", sorted(HUGE))
def test_a_huge_config_is_refused_in_one_short_line(tmp_path: Path, case: str) -> None:
    argv, expected = HUGE[case](tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    line = _one_line(_varnext(tmp_path, *argv))
    assert expected in line, line[:2000]
    assert "more (" in line or "characters cut]" in line, line[:2000]
    assert line.endswith("lists every key and its default") or case.startswith("space")
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "the command wrote something"


def test_every_user_error_line_is_bounded() -> None:
    from varnext_ray.errors import MAX_WHAT, UserError, list_problems, shorten

    err = UserError("x" * 10**6, "y" * 10**5, "z" * 10**5)
    assert "\n" not in str(err) and len(str(err)) < LONGEST_LINE
    assert str(err).startswith("xxx") and "characters cut]" in err.what
    assert len(shorten("a" * 5000, MAX_WHAT)) <= MAX_WHAT
    text = list_problems("invalid thing", [f"p{i}: bad" for i in range(100)])
    assert text.startswith("invalid thing, 100 problems: p0: bad; p1: bad")
    assert text.endswith("p4: bad; and 95 more")
    assert list_problems("invalid thing", ["p0: bad"]) == "invalid thing: p0: bad"


def test_unrecognized_arguments_make_a_short_line(tmp_path: Path) -> None:
    line = _one_line(_varnext(tmp_path, "arch", "check", str(SMOKE), *["--x"] * 5000))
    assert "unrecognized arguments: --x --x" in line


@pytest.mark.parametrize("flag", ["--max-params", "--max-activation-bytes"])
@pytest.mark.parametrize("value", ["1e-300", "0.5", "0", "nan"])
def test_a_size_limit_below_one_is_refused_as_the_environment_variable_is(
    tmp_path: Path, flag: str, value: str
) -> None:
    line = _one_line(_varnext(tmp_path, "arch", "check", str(SMOKE), flag, value))
    assert f"argument {flag}: must be a number >= 1 or 'inf' such as 2e9 (got '{value}')" in line


def test_a_size_limit_of_one_or_more_is_taken(tmp_path: Path) -> None:
    proc = _varnext(tmp_path, "arch", "check", str(SMOKE), "--max-params", "1e12")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_output_to_a_full_disk_is_one_line(tmp_path: Path, extra: list[str]) -> None:
    with open("/dev/full", "w") as full:
        proc = _varnext(tmp_path, "arch", "check", str(SMOKE), *extra, stdout=full)
    line = _one_line(proc)
    assert line.startswith("error: cannot write the output: No space left on device "), line
    assert "(standard output): free some space there" in line, line


def test_output_to_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    read, write = os.pipe()
    os.close(read)  # like `varnext arch check ... | head -0`: nobody reads
    try:
        proc = _varnext(tmp_path, "arch", "check", str(SMOKE), stdout=write)
    finally:
        os.close(write)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
