"""torch's logging variables, which ``import torch`` reads: a value torch refuses is one line
naming it, exit 2 (it was an "unexpected" AttributeError, ValueError or FileNotFoundError,
exit 1, before any of the command's checks). The CLI runs in a child process: this one has
imported torch already."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SMOKE = str(REPO / "configs" / "smoke_64x36.json")


def _varnext(args: list[str], cwd: Path, **variables: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCH_", "PYTORCH_"))}
    return subprocess.run(
        [sys.executable, "-m", "varnext_ray.cli", *args],
        env=env | variables,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("variables", "said"),
    [
        ({"TORCH_LOGS": ""}, "TORCH_LOGS=''"),
        ({"TORCH_LOGS": "bogus"}, "TORCH_LOGS='bogus' set: Invalid log settings"),
        (
            {"TORCH_LOGS": "+dynamo", "TORCH_LOGS_OUT": "/nonexistent-varnext/x.log"},
            "TORCH_LOGS_OUT='/nonexistent-varnext/x.log' set: [Errno 2]",
        ),
    ],
    ids=["empty", "unknown-name", "log-file-in-no-folder"],
)
def test_a_torch_variable_torch_refuses_is_one_line(
    variables: dict[str, str], said: str, tmp_path: Path
) -> None:
    proc = _varnext(
        ["predict", "--checkpoint", "ck", "--out", "p.png", "a.png", "b.png"], tmp_path, **variables
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: torch cannot start with ") and said in proc.stderr
    assert proc.stderr.count("\n") == 1 and "(environment): unset " in proc.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_torch_variables_torch_takes_and_commands_without_torch_run(tmp_path: Path) -> None:
    log = tmp_path / "torch.log"
    proc = _varnext(
        ["arch", "check", SMOKE], tmp_path, TORCH_LOGS="+dynamo", TORCH_LOGS_OUT=str(log)
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    # synth never imports torch: a torch variable it does not read does not stop it
    proc = _varnext(
        ["synth", "clips", "--clips", "1", "--frames", "4"], tmp_path, TORCH_LOGS="bogus"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "clips").iterdir())


@pytest.mark.parametrize(
    "command",
    [
        ["arch", "check", SMOKE],
        ["best", "--experiment", "x", "--out", "b", "--tracking-uri", "sqlite:///m.db"],
        ["train", "--config", SMOKE, "--data", "ds", "--address", "127.0.0.1:1"],
        ["sweep", "--space", SMOKE, "--data", "ds", "--address", "127.0.0.1:1"],
        ["demo", "--workdir", "w", "--address", "127.0.0.1:1"],
    ],
    ids=lambda command: command[0],
)
def test_every_command_that_imports_torch_checks_its_variables_first(
    command: list[str], tmp_path: Path
) -> None:
    """(predict: above.) Without the check, each ends as an unexpected error, exit 1."""
    proc = _varnext(command, tmp_path, TORCH_LOGS="bogus")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.startswith("error: torch cannot start with TORCH_LOGS='bogus' set: ")
    assert proc.stderr.count("\n") == 1 and list(tmp_path.iterdir()) == []
