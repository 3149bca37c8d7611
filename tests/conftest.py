"""Shared fixtures: tiny synthetic data and a local loopback Ray instance."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Keep Ray on loopback with token auth, and quiet, for every test (set before ray is imported).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

from varnext_ray.ingest import IngestOptions, ingest
from varnext_ray.synth import write_synthetic

REPO = Path(__file__).resolve().parent.parent
REAL_CLIP = REPO.parent / "shared" / "data" / "traffic_overpass.avi"


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four 48-frame synthetic mp4 clips at 96x54; at least one has a camera bump."""
    out = tmp_path_factory.mktemp("synth") / "clips"
    write_synthetic(out, clips=4, frames=48, size=(96, 54), seed=3, bump_probability=0.6)
    return out


@pytest.fixture(scope="session")
def dataset_dir(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic clips ingested at 64x36."""
    out = tmp_path_factory.mktemp("dataset") / "ds"
    ingest([synth_dir], out, IngestOptions(size=(64, 36), val=0.2, test=0.2, seed=0))
    return out


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance on loopback (token auth, dashboard on), shut down after the session."""
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        log_to_driver=False,
        configure_logging=False,
    )
    yield ray
    ray.shutdown()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """A real ``mlflow server`` on 127.0.0.1 (SQLite backend, served artifacts); yields its URI.

    Started in its own process group and stopped by that group's id, so its uvicorn workers
    end with it.
    """
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    root = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
    ]
    log = open(root / "server.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise RuntimeError(f"mlflow server did not start: {(root / 'server.log').read_text()}")
        time.sleep(0.5)
    yield uri
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()
