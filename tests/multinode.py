"""A real multi-node Ray cluster on one machine: a head and worker nodes, all on 127.0.0.1.

Each node is its own ``ray start --block`` process (token auth, as in conftest's ``ray_head``)
in its own process group, with its own free ports and its own temporary directory, so it
clashes neither with the other nodes nor with any other Ray on the machine. A node is stopped,
or "lost", by signalling its processes by id (its process group, and the Ray workers under it,
which have groups of their own); nothing here ever runs ``ray stop``, which would stop every
Ray on the machine.

Example:
    >>> with local_cluster(head_cpus=2, worker_cpus=(2, 2)) as cluster:
    ...     cluster.alive_nodes()  # {"head": "<node id>", "worker1": ..., "worker2": ...}
    ...     cluster.kill("worker1")  # SIGKILL to every process of that node at once
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tests.ports import free_ports

BIN = Path(sys.executable).parent
LABEL = "varnext_node_"  # a custom resource {"varnext_node_<name>": 1} names each node
OBJECT_STORE_BYTES = 256 * 2**20  # tiny data; three default stores would claim 3 x 30% of RAM
WATCHED = ("ImplicitFunc", "TrainController", "RayTrainWorker")  # trial driver, its Train run

T = TypeVar("T")

# `ray start` for a worker node, on loopback. Ray 2.60's `ray start --address` refuses to start
# a worker node while RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 ("Multi-node Ray clusters are not
# supported on Windows and OSX"), and with it =1 rewrites 127.0.0.1, in --address and in
# --node-ip-address, to the machine's network address (services.resolve_ip_for_localhost).
# This runs Ray's own CLI with only that refusal lifted: the switch stays 0 for the rest of
# Ray (and for the node's raylet, agents and workers), so every address stays 127.0.0.1.
JOIN_ON_LOOPBACK = (
    "import sys, types; import ray._private.ray_constants as c; import ray.scripts.scripts as s; "
    "m = types.ModuleType(c.__name__); m.__dict__.update(vars(c)); m.ENABLE_RAY_CLUSTER = True; "
    "s.ray_constants = m; sys.argv[0] = 'ray'; sys.exit(s.main())"
)


def wait_for(what: str, check: Callable[[], T], timeout_s: float, poll_s: float = 0.5) -> T:
    """Polls ``check()`` until it returns something truthy; raises TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


def cluster_env() -> dict[str, str]:
    """The environment of every node and client: token auth, loopback, this Python first."""
    env = os.environ | {
        "RAY_AUTH_MODE": "token",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("RAY_ADDRESS", None)
    return env


@dataclass
class Node:
    """One ``ray start --block`` process and everything it started.

    Its raylet, agents and GCS share its process group, but Ray 2.60 puts each Ray worker
    process in a process group of its own, so the node's processes are found as the process
    tree under ``ray start`` (a worker whose raylet died is reparented, so take the tree first).
    """

    name: str
    proc: subprocess.Popen
    log: Path
    cpus: float

    def processes(self) -> set[int]:
        """The pids of ``ray start`` and all its descendants, alive now."""
        return {pid for pid in _process_tree(self.proc.pid) if _alive(pid)}


def _process_tree(root: int) -> set[int]:
    """``root`` and every process descended from it, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):  # the process just ended
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in tree:
            tree.add(pid)
            todo += children.get(pid, [])
    return tree


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, waiting to be reaped, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _signal(pids: set[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


@dataclass
class LocalCluster:
    """A running local cluster: its addresses, client environment and nodes by name."""

    address: str  # the GCS address, 127.0.0.1:<port>
    dashboard: str  # http://127.0.0.1:<port> (dashboard, Jobs API, State API)
    env: dict[str, str]
    root: Path
    nodes: dict[str, Node] = field(default_factory=dict)

    def list_nodes(self) -> list[Any]:
        """Ray's State API view of the cluster's nodes (alive and dead)."""
        from ray.util.state import list_nodes

        return list_nodes(address=self.address, detail=True, raise_on_missing_output=False)

    def alive_nodes(self) -> dict[str, str]:
        """``{node name: Ray node id}`` of the nodes Ray reports ALIVE ({} while unreachable)."""
        try:
            nodes = self.list_nodes()
        except Exception:  # the dashboard is still starting
            return {}
        names = {}
        for node in nodes:
            labels = [k for k in (node.resources_total or {}) if k.startswith(LABEL)]
            if node.state == "ALIVE" and labels:
                names[labels[0].removeprefix(LABEL)] = node.node_id
        return names

    def node_names(self) -> dict[str, str]:
        """``{Ray node id: node name}`` for every node this cluster has had, dead or alive."""
        names = {}
        for node in self.list_nodes():
            labels = [k for k in (node.resources_total or {}) if k.startswith(LABEL)]
            if labels:
                names[node.node_id] = labels[0].removeprefix(LABEL)
        return names

    def kill(self, name: str) -> None:
        """Loses a node at once, as when its machine dies: SIGKILL to all of its processes.

        The node's processes are frozen first (SIGSTOP), so none forks or acts in between.
        """
        node = self.nodes[name]
        pids = node.processes()
        _signal(pids, signal.SIGSTOP)
        pids |= node.processes()
        _signal(pids, signal.SIGKILL)
        node.proc.wait(timeout=30)
        wait_for(f"node {name}'s processes to end", lambda: not any(map(_alive, pids)), 30)

    def listening(self) -> list[str]:
        """The local addresses of every TCP port the nodes' processes listen on (needs ``ss``)."""
        pids = set().union(*(n.processes() for n in self.nodes.values()))
        table = subprocess.run(
            ["ss", "-ltnpH"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
        return [
            line.split()[3]
            for line in table.splitlines()
            if any(f"pid={pid}," in line for pid in pids)
        ]

    def logs(self, tail: int = 3000) -> str:
        """The end of every node's ``ray start`` output, for failure messages."""
        return "\n".join(
            f"--- {n.name} ---\n{n.log.read_text(errors='replace')[-tail:]}"
            for n in self.nodes.values()
        )


def _start(
    name: str, args: list[str], cpus: float, root: Path, env: dict[str, str]
) -> subprocess.Popen:
    """Starts one node's ``ray start --block`` in its own process group."""
    temp = root / name
    temp.mkdir()
    flags = (
        "--node-manager-port",
        "--object-manager-port",
        "--metrics-export-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--runtime-env-agent-port",
    )
    ports = dict(zip(flags, free_ports(len(flags)), strict=True))
    ray = [str(BIN / "ray")] if name == "head" else [sys.executable, "-c", JOIN_ON_LOOPBACK]
    cmd = [
        *ray,
        "start",
        "--block",
        *args,
        "--node-ip-address=127.0.0.1",
        f"--num-cpus={cpus:g}",
        f"--resources={json.dumps({LABEL + name: 1})}",
        f"--object-store-memory={OBJECT_STORE_BYTES}",
        "--min-worker-port=0",  # workers take ports the OS picks: no clash between raylets
        "--max-worker-port=0",
        f"--temp-dir={temp}",
        "--disable-usage-stats",
        *(f"{flag}={port}" for flag, port in ports.items()),
    ]
    log = open(root / f"{name}.log", "w")  # noqa: SIM115 (the child holds it; closed by exit)
    try:
        return subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    finally:
        log.close()


def _stop_all(nodes: list[Node], grace_s: float = 5) -> None:
    """SIGTERM to every node's process group at once, then SIGKILL to whatever is left.

    Every process of every node is listed first: Ray workers have process groups of their
    own and outlive their raylet for a moment, reparented.
    """
    pids = set().union(*(n.processes() for n in nodes))
    for node in nodes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.proc.pid, signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        wait_for("the nodes to stop", lambda: not any(map(_alive, pids)), grace_s)
    pids |= set().union(*(n.processes() for n in nodes))
    _signal({pid for pid in pids if _alive(pid)}, signal.SIGKILL)
    for node in nodes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.proc.wait(timeout=10)
    with contextlib.suppress(TimeoutError):
        wait_for("the nodes' processes to end", lambda: not any(map(_alive, pids)), 10)


@contextlib.contextmanager
def local_cluster(
    *, head_cpus: float = 2, worker_cpus: tuple[float, ...] = (2, 2), timeout_s: float = 180
) -> Iterator[LocalCluster]:
    """A head and ``len(worker_cpus)`` worker nodes on 127.0.0.1, each a separate process group.

    Nodes are named ``head``, ``worker1``, ``worker2``, ...; each carries the custom resource
    ``varnext_node_<name>`` so that Ray's node ids can be mapped back to names. Yields once
    Ray reports every node ALIVE; stops every node's process group on exit.

    Args:
        head_cpus: Logical CPUs of the head (scheduling labels; the machine may have fewer).
        worker_cpus: Logical CPUs of each worker node.
        timeout_s: How long to wait for all nodes to be alive.
    """
    env = cluster_env()
    subprocess.run(
        [str(BIN / "ray"), "get-auth-token", "--generate"],  # ~/.ray/auth_token if none yet
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    # Short: Unix socket paths under it must stay below ~107 characters.
    root = Path(tempfile.mkdtemp(prefix="vnr-mn-", dir="/tmp"))
    port, dashboard, client = free_ports(3)
    cluster = LocalCluster(
        address=f"127.0.0.1:{port}",
        dashboard=f"http://127.0.0.1:{dashboard}",
        env=env | {"RAY_ADDRESS": f"127.0.0.1:{port}"},
        root=root,
    )
    head_args = [
        "--head",
        f"--port={port}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={client}",
        "--include-dashboard=true",
    ]
    try:
        proc = _start("head", head_args, head_cpus, root, env)
        cluster.nodes["head"] = Node("head", proc, root / "head.log", head_cpus)
        wait_for("the head's GCS port", lambda: _port_open(port) or _exited(proc), timeout_s)
        for i, cpus in enumerate(worker_cpus, start=1):
            args = [f"--address={cluster.address}"]
            proc = _start(f"worker{i}", args, cpus, root, env)
            cluster.nodes[f"worker{i}"] = Node(f"worker{i}", proc, root / f"worker{i}.log", cpus)
        want = set(cluster.nodes)
        try:
            wait_for(
                f"nodes {sorted(want)} to be ALIVE",
                lambda: set(cluster.alive_nodes()) == want or _any_exited(cluster),
                timeout_s,
                poll_s=1,
            )
        except TimeoutError as err:
            raise RuntimeError(f"{err}\n{cluster.logs()}") from None
        if _any_exited(cluster):
            raise RuntimeError(f"a node's `ray start` exited\n{cluster.logs()}")
        yield cluster
    finally:
        _stop_all(list(cluster.nodes.values()))
        shutil.rmtree(root, ignore_errors=True)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _exited(proc: subprocess.Popen) -> bool:
    if proc.poll() is not None:
        raise RuntimeError(f"`ray start` exited with status {proc.returncode}")
    return False


def _any_exited(cluster: LocalCluster) -> bool:
    """Whether any node's ``ray start`` has exited."""
    return any(n.proc.poll() is not None for n in cluster.nodes.values())


class Placements(threading.Thread):
    """Samples, every ``every_s``, on which node each live trial driver and Train actor runs.

    Trials run one at a time here, so the Train actors alive beside one trial driver
    (``ImplicitFunc``) are that trial's.
    """

    def __init__(self, cluster: LocalCluster, every_s: float = 2.0) -> None:
        super().__init__(name="placements", daemon=True)
        self.every_s = every_s
        self.cluster = cluster
        self.names = cluster.node_names()  # node id -> head / worker1 / worker2
        self.samples: list[tuple[float, list[tuple[str, str, str]]]] = []
        self._stop_event = threading.Event()
        self._lock = threading.Lock()

    def alive(self) -> list[tuple[str, str, str]]:
        """(class name, actor id, node name) of the watched actors alive now."""
        from ray.util.state import list_actors

        actors = list_actors(
            address=self.cluster.address,
            filters=[("state", "=", "ALIVE")],
            limit=10_000,
            raise_on_missing_output=False,
        )
        return [
            (a.class_name, a.actor_id, self.names.get(a.node_id, a.node_id))
            for a in actors
            if a.class_name in WATCHED
        ]

    def run(self) -> None:
        """Samples until stopped (a sample the State API cannot answer is skipped)."""
        while not self._stop_event.wait(self.every_s):
            try:
                sample = self.alive()
            except Exception:  # the dashboard is busy: skip this sample
                continue
            with self._lock:
                self.samples.append((time.monotonic(), sample))

    def stop(self) -> None:
        """Stops sampling."""
        self._stop_event.set()
        self.join(timeout=30)

    def trials(self) -> dict[str, dict[str, set[str]]]:
        """Per trial driver: the nodes of the driver, its Train controller and its workers."""
        trials: dict[str, dict[str, set[str]]] = {}
        with self._lock:
            samples = list(self.samples)
        for _, sample in samples:
            drivers = [(a, n) for c, a, n in sample if c == "ImplicitFunc"]
            controllers = [a for c, a, _ in sample if c == "TrainController"]
            workers = [a for c, a, _ in sample if c == "RayTrainWorker"]
            if len(drivers) != 1 or len(controllers) > 1 or len(workers) > 2:
                continue  # a trial starting while the last one's actors are still stopping
            ((driver, node),) = drivers
            seen = trials.setdefault(
                driver, {"driver": set(), "controller": set(), "workers": set()}
            )
            seen["driver"].add(node)
            seen["controller"] |= {n for c, _, n in sample if c == "TrainController"}
            seen["workers"] |= {n for c, _, n in sample if c == "RayTrainWorker"}
        return trials

    def workers_after(self, t: float) -> dict[str, str]:
        """Train worker actor id -> node of the workers alive at any sample after ``t``."""
        with self._lock:
            return {
                a: n
                for at, sample in self.samples
                if at > t
                for c, a, n in sample
                if c == "RayTrainWorker"
            }
