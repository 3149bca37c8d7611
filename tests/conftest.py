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
