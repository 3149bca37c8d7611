"""Headless Chromium driven over the DevTools protocol, for pages that are JavaScript apps.

``chromium --dump-dom`` takes one snapshot after a fixed budget; the MLflow UI loads its data
after start-up and hides nested runs until a click, so tests/test_mlflow_ui.py needs to wait
for text, click, and take screenshots. This speaks the DevTools protocol over a WebSocket
(aiohttp, which Ray already installs): nothing new to install.

Example:
    >>> with Browser(tmp_path) as page:
    ...     page.goto("http://127.0.0.1:5000/#/experiments/1")
    ...     page.wait_for_text("sweep-")
    ...     page.screenshot(tmp_path / "runs.png")
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
# Headless, sandbox-free (root in CI) and quiet: no network of its own beyond 127.0.0.1 pages.
HEADLESS_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


class Browser:
    """One headless Chromium in its own process group, with one page to drive."""

    def __init__(self, tmp: Path, width: int = 1600, height: int = 1100) -> None:
        self.tmp = tmp
        self.size = (width, height)
        self._loop = asyncio.new_event_loop()
        self._proc: subprocess.Popen | None = None
        self._session: Any = None
        self._ws: Any = None
        self._next_id = 0

    def __enter__(self) -> Browser:
        self._log = open(self.tmp / "chromium.log", "w+")  # closed in __exit__
        self._proc = subprocess.Popen(
            [
                str(CHROMIUM),
                *HEADLESS_FLAGS,
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--window-size={self.size[0]},{self.size[1]}",
                f"--user-data-dir={self.tmp / 'profile'}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            start_new_session=True,
        )
        try:
            port = self._devtools_port()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                pages = [t for t in json.load(r) if t["type"] == "page"]
            self._loop.run_until_complete(self._connect(pages[0]["webSocketDebuggerUrl"]))
            self.send("Page.enable")
            self.send("Runtime.enable")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self._loop.run_until_complete(self._close())
        self._loop.close()
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        self._log.close()

    def _devtools_port(self, timeout_s: float = 30) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._log.seek(0)
            found = re.search(r"DevTools listening on ws://127\.0\.0\.1:(\d+)/", self._log.read())
            if found:
                return int(found[1])
            if self._proc.poll() is not None:
                break
            time.sleep(0.2)
        self._log.seek(0)
        raise RuntimeError(f"chromium did not start: {self._log.read()[-2000:]}")

    async def _connect(self, url: str) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(url, max_msg_size=0)

    async def _close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()

    async def _call(self, method: str, params: dict[str, Any], timeout_s: float) -> Any:
        self._next_id += 1
        call_id = self._next_id
        await self._ws.send_json({"id": call_id, "method": method, "params": params})
        while True:
            message = await asyncio.wait_for(self._ws.receive_json(), timeout_s)
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def send(self, method: str, timeout_s: float = 30, **params: Any) -> Any:
        """One DevTools call; returns its result."""
        return self._loop.run_until_complete(self._call(method, params, timeout_s))

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        """Opens ``url`` (it goes on loading: use :meth:`wait_for`)."""
        self.send("Page.navigate", url=url)

    def text(self) -> str:
        """The page's visible text."""
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def wait_for(self, expression: str, timeout_s: float = 60, what: str = "") -> Any:
        """Polls a JavaScript expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(RuntimeError):  # the page may be between documents
                value = self.evaluate(expression)
                if value:
                    return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout_s} s waiting for {what or expression}; page text: "
                    f"{self.text()[:1500]!r}"
                )
            time.sleep(0.5)

    def wait_for_text(self, *needles: str, timeout_s: float = 60) -> str:
        """Waits until every needle is in the page's text; returns the text."""
        probe = " && ".join(f"document.body.innerText.includes({json.dumps(n)})" for n in needles)
        self.wait_for(f"document.body && {probe}", timeout_s, f"text {needles}")
        return self.text()

    def screenshot(self, path: Path) -> Path:
        """A PNG of the viewport at ``path``."""
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path
