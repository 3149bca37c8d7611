"""Shared fixtures: tiny synthetic data and a local loopback Ray instance."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Keep Ray on loopback with token auth, and quiet, for every test (set before ray is imported).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

from tests.ports import free_port, free_ports
from varnext_ray.ingest import IngestOptions, ingest
from varnext_ray.synth import write_synthetic

REPO = Path(__file__).resolve().parent.parent
REAL_CLIP = REPO.parent / "shared" / "data" / "traffic_overpass.avi"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Runs tests/test_multinode.py last: it shuts the session's local Ray down first."""
    items.sort(key=lambda item: item.path.name == "test_multinode.py")  # stable sort


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

    from varnext_ray.cluster import connect_ray

    os.environ.pop("RAY_ADDRESS", None)
    connect_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@contextlib.contextmanager
def running_mlflow_server(root: Path, port: int | None = None) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 (SQLite backend in ``root``, served artifacts);
    yields its URI. Started in its own process group and stopped by that group's id, so its
    uvicorn workers end with it. The same ``root`` and ``port`` serve the same store again."""
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    port = port or free_port()
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
    log = open(root / "server.log", "a")  # noqa: SIM115 (closed below)
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
    try:
        yield uri
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 for the session (see :func:`running_mlflow_server`)."""
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow_server")) as uri:
        yield uri


def _wait_for_port(port: int, proc, timeout_s: float, what: str) -> None:
    import socket
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start (exit {proc.poll()})")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory):
    """A separate Ray head on loopback (``ray start --head --block``, token auth, dashboard on).

    Yields ``{"address", "dashboard", "env"}``; ``env`` is what a client process needs (token
    mode, this Python's bin directory first on PATH so a job's entrypoint finds ``varnext``).
    The dashboard agent, which runs submitted jobs, gets a free port: at its default (52365) it
    fails to bind whenever another Ray runs on this machine, and every submission then answers
    "No available agent to submit job". The head runs in its own process group and is stopped
    by that group's id.
    """
    import signal
    import subprocess
    import sys

    bin_dir = Path(sys.executable).parent
    env = os.environ | {
        "RAY_AUTH_MODE": "token",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("RAY_ADDRESS", None)
    subprocess.run(
        [str(bin_dir / "ray"), "get-auth-token", "--generate"],
        env=env,
        check=True,
        capture_output=True,
    )
    port, dashboard, agent = free_ports(3)
    log = open(tmp_path_factory.mktemp("ray_head") / "head.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            str(bin_dir / "ray"),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=2",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            f"--dashboard-agent-listen-port={agent}",
            "--include-dashboard=true",
            "--disable-usage-stats",
        ],
        # Ray 2.60's `ray start --block` drains its node for 30 s on SIGTERM (for Serve
        # replicas on Kubernetes); a test's head has nothing to drain: stop at once.
        env=env | {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _wait_for_port(port, proc, 90, "ray head")
        _wait_for_port(dashboard, proc, 90, "ray dashboard")
        _wait_for_port(agent, proc, 90, "ray dashboard agent")
        yield {
            "address": f"127.0.0.1:{port}",
            "dashboard": f"http://127.0.0.1:{dashboard}",
            "env": env | {"RAY_ADDRESS": f"127.0.0.1:{port}"},
        }
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        _kill_group_leftovers(proc.pid)
        log.close()


def _kill_group_leftovers(pgid: int) -> None:
    """SIGKILLs what is left of a process group (Ray workers that outlive their raylet)."""
    import signal
    import time

    for _ in range(20):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def smoke_checkpoint(directory: Path, name: str, seed: int, background: Any = None) -> Path:
    """A checkpoint of the smoke architecture with weights from ``seed``, at ``directory/name``
    (``meta.extra.name`` is ``name``), holding ``background`` (uint8 (H, W, 3)) when given."""
    import torch

    from varnext_ray.arch import load_arch
    from varnext_ray.background import BACKGROUND_FILE, png_bytes
    from varnext_ray.checkpoint import save_checkpoint
    from varnext_ray.model import build_vae

    torch.manual_seed(seed)
    cfg = load_arch(REPO / "configs" / "smoke_64x36.json")
    return save_checkpoint(
        directory / name,
        model=build_vae(cfg),
        arch_cfg=cfg,
        epoch=0,
        metrics={"extrap_psnr": 1.0},
        extra={"name": name},
        files=None if background is None else {BACKGROUND_FILE: png_bytes(background)},
    )


@contextlib.contextmanager
def nearly_full_tmpfs(folder: Path) -> Iterator[Path]:
    """A real 300 KiB tmpfs mounted at ``folder`` (made here) with 8 KiB left, unmounted after;
    the test is skipped where this process may not mount (root in CI may)."""
    import subprocess

    folder.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(folder)])
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (folder / "fill").write_bytes(b"\0" * 290 * 1024)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
