"""The Ray cluster: connecting to it, what a run asks of it, and whether it can ever fit.

Example:
    >>> connect_ray()  # RAY_ADDRESS, or a new local Ray on loopback
    >>> resources = Resources(workers=2)
    >>> check_resources(resources, resources.cpus(cluster_cpus()))
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from varnext_ray.dataset import load_manifest
from varnext_ray.errors import UserError


@dataclass(frozen=True)
class Resources:
    """Workers per run and what each holds. ``cpus_per_worker=None`` picks a share (below)."""

    workers: int = 2
    gpus_per_worker: float = 0.0
    cpus_per_worker: float | None = None

    def cpus(self, cluster_cpus: float, *, runs: int = 1, driver_cpus: float = 0.0) -> float:
        """CPUs per worker: as given, or 1 with GPUs, or a share of the cluster.

        The share leaves 1 CPU for Ray Data and ``driver_cpus`` for each of ``runs``
        concurrent runs (a sweep's trial drivers), split over all their workers.
        """
        if self.cpus_per_worker is not None:
            return self.cpus_per_worker
        if self.gpus_per_worker > 0:
            return 1.0
        free = cluster_cpus - 1 - driver_cpus * runs
        return round(max(0.1, min(1.0, free / (self.workers * runs))), 2)

    def per_worker(self, cpus: float) -> dict[str, float]:
        """Ray Train's ``resources_per_worker`` for ``cpus`` CPUs per worker."""
        return {"CPU": cpus} | ({"GPU": self.gpus_per_worker} if self.gpus_per_worker else {})


def cluster_cpus() -> float:
    """The CPUs of the connected cluster (1 if it reports none)."""
    import ray

    return ray.cluster_resources().get("CPU", 1)


def check_resources(resources: Resources, cpus_per_worker: float) -> None:
    """A clear error within seconds when the cluster can never place the workers."""
    import ray

    if _autoscaling():  # nodes may still be coming
        return
    total = ray.cluster_resources()
    asks = (  # resource, per worker, flag, fix
        ("GPU", resources.gpus_per_worker, "--workers/--gpus-per-worker", "add GPU nodes"),
        ("CPU", cpus_per_worker, "--workers", "pass a smaller --cpus-per-worker"),
    )
    for kind, each, flag, fix in asks:
        need, have = resources.workers * each, total.get(kind, 0)
        if need > have + 1e-9:
            raise UserError(
                f"{resources.workers} workers x {each:g} {kind} need {need:g} {kind}s; "
                f"the cluster has {have:g}",
                flag,
                f"ask for fewer workers, or {fix}",
            )


def _autoscaling() -> bool:
    """True on a cluster started by the launcher, whose nodes may still be coming."""
    return bool(os.environ.get("VARNEXT_AUTOSCALING"))


def fits_in_object_store(data: Path, share: float = 0.25, copies: int = 1) -> bool:
    """Whether the decoded training frames (``copies`` times) take at most ``share`` of the
    object store.

    Then the training dataset is materialised once: Ray Data otherwise re-reads and decodes
    the split every epoch (benchmarks/train_overhead.py measured that as the main gap between
    Ray Train and a plain loop).
    """
    import ray

    manifest = load_manifest(data)
    width, height = manifest.size
    needed = manifest.data["splits"]["train"] * width * height * 3 * copies
    return needed <= share * ray.cluster_resources().get("object_store_memory", 0)


def connect_ray(address: str | None = None, num_cpus: float | None = None) -> None:
    """Connects to ``address`` or ``RAY_ADDRESS``; with neither, starts a local Ray on loopback.

    The local instance keeps the dashboard on (Train frees finished workers' placement groups
    through it) and binds to 127.0.0.1. Every worker of the job gets ``RAY_ADDRESS`` set to this
    cluster's GCS address: Train's PlacementGroupCleaner looks the cluster up by that, and
    without it fails ("Found multiple active Ray instances") whenever another Ray runs on the
    same machine, leaving finished trials' workers reserved and the next trial waiting forever.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        env = {"RAY_ADDRESS": address} if _is_gcs_address(address) else {}
        ray.init(address=address, log_to_driver=True, runtime_env={"env_vars": env})
        return
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    port = _free_port()
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)  # read by the local node that ray.init starts
    try:
        ray.init(
            address="local",  # a new instance, never one that `ray start` left recorded in /tmp
            num_cpus=num_cpus,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            log_to_driver=True,
            runtime_env={"env_vars": {"RAY_ADDRESS": f"127.0.0.1:{port}"}},
        )
    finally:
        del os.environ["RAY_GCS_SERVER_PORT"]


def _is_gcs_address(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit() and "://" not in address


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
