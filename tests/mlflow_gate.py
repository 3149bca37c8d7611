"""An HTTP proxy in front of an MLflow server that holds one epoch's metrics until released.

Used by tests/test_multinode.py to kill a node at a known point of an epoch.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class EpochGate:
    """An HTTP proxy in front of an MLflow server that holds the metrics of one epoch.

    Rank 0 logs an epoch's metrics to MLflow before it reports the epoch to Ray Train, so while
    the proxy holds that request the epoch is neither logged nor checkpointed: a node can be
    killed at a known point of the epoch, however fast the epoch runs. ``open()`` drops the
    held requests (their sender died meanwhile) and lets every later request through.

    Example:
        >>> with EpochGate("http://127.0.0.1:5000", step=2) as gate:
        ...     run_sweep_with(tracking_uri=gate.uri)  # rank 0 waits at its step-2 metrics
        ...     gate.held.wait(60); kill_the_node(); gate.open()
    """

    def __init__(self, upstream: str, *, step: int) -> None:
        self.upstream = upstream.rstrip("/")
        self.step = step
        self.held = threading.Event()  # a request for ``step`` is being held
        self.opened = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _GateHandler)
        self._server.daemon_threads = True
        self._server.gate = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def uri(self) -> str:
        """The tracking URI to hand out instead of the server's."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def holds(self, path: str, body: bytes) -> bool:
        """Whether a request is rank 0's metrics of the gated step (while the gate is closed)."""
        if self.opened.is_set() or not path.endswith("/mlflow/runs/log-batch"):
            return False
        try:
            metrics = json.loads(body or b"{}").get("metrics") or []
        except ValueError:
            return False
        return any(str(m.get("step")) == str(self.step) for m in metrics)  # int64 -> "2"

    def open(self) -> None:
        """Drops the held requests; every later request goes through."""
        self.opened.set()

    def __enter__(self) -> EpochGate:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.opened.set()
        self._server.shutdown()
        self._server.server_close()


class _GateHandler(BaseHTTPRequestHandler):
    """Relays a request to the upstream server, unless the gate holds it."""

    server: Any

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _relay(self) -> None:
        gate: EpochGate = self.server.gate
        body = self._body()
        if gate.holds(self.path, body):
            gate.held.set()
            gate.opened.wait(timeout=600)
            self.close_connection = True  # dropped: its sender was killed while it waited
            return
        skip = {"host", "content-length", "connection", "transfer-encoding"}
        request = urllib.request.Request(
            gate.upstream + self.path,
            data=body if self.command in ("POST", "PUT", "PATCH") else None,
            method=self.command,
            headers={k: v for k, v in self.headers.items() if k.lower() not in skip},
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                status, headers, data = response.status, response.headers, response.read()
        except urllib.error.HTTPError as err:
            status, headers, data = err.code, err.headers, err.read()
        self.send_response(status)
        for key, value in headers.items():
            if key.lower() not in skip | {"server", "date"}:
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _relay

    def log_message(self, *args: Any) -> None:  # quiet
        pass
