"""The CLI's error boundary: user mistakes are one ``error:`` line and exit 2; a bug is one line
naming the exception and a file holding its traceback, exit 1 (never a wall of text)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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
