"""A tracking server that answers ``/health`` but never its API (its database stuck): the
commands that read it end in one line within a minute, where they waited silently for MLflow's
default of 120 s per attempt over 7 attempts (about 15 minutes).

The server is a real HTTP server on 127.0.0.1 that holds every API request open; the commands
run through the real CLI entry point.
"""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from varnext_ray.cli import main

pytestmark = pytest.mark.slow


class _Stuck(http.server.BaseHTTPRequestHandler):
    release = threading.Event()

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.startswith("/health"):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")
            return
        self.release.wait(300)  # an API call: no answer

    do_POST = do_GET


@pytest.fixture(scope="module")
def stuck_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stuck)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    _Stuck.release.set()
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("command", "said"),
    [
        (["best", "--experiment", "x", "--out", "b1"], "while looking up the experiment"),
        (["report", "--experiment", "x", "--out", "r.html"], "while looking up the experiment"),
        (
            ["predict", "--model", "models:/x@champion", "--out", "p.png", "a.png", "b.png"],
            "cannot load the registered model",
        ),
    ],
    ids=["best", "report", "predict-model"],
)
@pytest.mark.timeout(90)  # a hang, not a timing: with MLflow's defaults it waited 15 minutes
def test_a_server_that_stopped_answering_is_one_line_within_a_minute(
    stuck_server: str,
    command: list[str],
    said: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (64, 36)).save(name)
    for key in list(os.environ):
        if key.startswith("MLFLOW_HTTP_REQUEST"):
            monkeypatch.delenv(key)
    code = main([*command, "--tracking-uri", stuck_server])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert said in err and stuck_server in err
    assert not any(k.startswith("MLFLOW_HTTP_REQUEST") for k in os.environ)  # put back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]
