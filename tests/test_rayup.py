"""`ray up cluster-onprem.yaml` for real, on this machine, over SSH to 127.0.0.1.

The on-premise config is brought up by Ray's own cluster launcher exactly as on a lab's hosts:
a private sshd on 127.0.0.1 (a free port, a key made for the test, key-only), a config derived
from cluster-onprem.yaml (head_ip 127.0.0.1, no workers, the port through
``ssh_proxy_command: nc``), ``ray up`` (rsync of the repository and the token, the setup
commands: a venv, ``pip install -e`` of the synced copy, token auth, the MLflow server on the
head), ``ray exec 'ray status'``, a one-trial sweep submitted with ``ray job submit`` and the
token, an anonymous Jobs API request refused (401), the best checkpoint pulled from the head's
MLflow server with ``varnext best``, ``ray down``; then the sshd is stopped by its pid and
nothing it started is left.

Why it must run apart from other Ray work (its own pytest invocation in .ci/run, after the
main one): ``ray up`` (the head's start commands) and ``ray down`` run ``ray stop`` on the
head, and ``ray stop`` ends every Ray process on the machine whose name matches, whoever
started it. The sshd therefore runs in its own PID and mount namespace
(``unshare --pid --fork --kill-child --mount-proc``): ``ray stop`` there sees only that
namespace's processes, the "head" gets a private home (/root) and /tmp/ray, and stopping the
sshd (the namespace's first process) ends everything in it. A canary process named ``raylet``
outside the namespace checks that isolation on every run. It still shares the network and the
CPUs with everything else, so running it beside other Ray tests only slows both down; the
namespace is a guard, not a licence.

What differs from a lab (loopback only, nothing installed system-wide): the head's Ray ports
are free ports (GCS, dashboard, client server, node manager, object manager) plus the agents'
ports and ``--node-ip-address=127.0.0.1`` with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (else
Ray swaps 127.0.0.1 for the machine's routable address); MLflow's port is a free port; the
venv is made with ``--system-site-packages`` (this Python's ray, torch, mlflow; a full install
would download gigabytes), so ``pip install -e ~/varnext`` only installs the synced project.

Measured wall time (2 shared cores): see docs/cluster.md, "Your own machines (on-premise)".
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.ports import free_port
from varnext_ray.ingest import IngestOptions, ingest
from varnext_ray.synth import write_synthetic

ONPREM_YAML = REPO / "cluster-onprem.yaml"
BIN = Path(sys.executable).parent
TOOLS = {"sshd": "/usr/sbin/sshd", "rsync": "rsync", "nc": "nc", "unshare": "unshare", "ss": "ss"}
EXPERIMENT = "onprem"
SSH_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
SSH_OPTS += ["-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes"]

SSHD_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/ssh_host_ed25519_key
PidFile {dir}/sshd.pid
AuthorizedKeysFile {dir}/authorized_keys
# The key files sit under /tmp (world-writable), which StrictModes would refuse.
StrictModes no
PermitRootLogin prohibit-password
AllowUsers {user}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
X11Forwarding no
AllowTcpForwarding local
PrintMotd no
MaxSessions 32
MaxStartups 64
Subsystem sftp /usr/lib/openssh/sftp-server
"""


def _needs() -> None:
    """Skips (fails on CI, where .ci/run installs them) without root or the SSH tools."""
    missing = [name for name, exe in TOOLS.items() if not shutil.which(exe)]
    problem = f"needs {', '.join(missing)} (apt-get install openssh-server rsync netcat-openbsd)"
    if os.geteuid() != 0:
        problem = "needs root (a PID + mount namespace for the private sshd)"
    elif not missing:
        return
    if os.environ.get("VARNEXT_REQUIRE_RAYUP"):
        pytest.fail(problem)
    pytest.skip(problem)


def _run(cmd: list[str], timeout_s: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, **kwargs)


def _wait(what: str, check: Any, timeout_s: float, poll_s: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


def _children() -> dict[int, list[int]]:
    """``{ppid: [pid, ...]}`` of every process on the machine, from /proc."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _tree(root: int) -> set[int]:
    """``root`` and all its descendants, alive now."""
    children, found, todo = _children(), set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in found and Path(f"/proc/{pid}").exists():
            found.add(pid)
            todo += children.get(pid, [])
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _listening(pids: set[int]) -> list[str]:
    """Local addresses of the TCP sockets that ``pids`` listen on (``ss -ltnpH``)."""
    out = _run(["ss", "-ltnpH"], 30).stdout
    return [
        line.split()[3]
        for line in out.splitlines()
        if {int(p) for p in re.findall(r"pid=(\d+)", line)} & pids
    ]


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError as err:
        return 0, str(err)


# ---- the config, derived from cluster-onprem.yaml ----------------------------------------------


def _replace_once(commands: list[str], old: str, new: str) -> list[str]:
    """``commands`` with ``old`` replaced in exactly one of them (fails if it is not there)."""
    hits = [i for i, cmd in enumerate(commands) if old in cmd]
    assert len(hits) == 1, f"cluster-onprem.yaml changed: {old!r} is in {len(hits)} commands"
    return [cmd.replace(old, new) if i == hits[0] else cmd for i, cmd in enumerate(commands)]


def _derive_config(root: Path, ssh_port: int, ports: dict[str, int]) -> dict[str, Any]:
    """cluster-onprem.yaml for a head at 127.0.0.1 through the private sshd, no workers."""
    cfg = yaml.safe_load(ONPREM_YAML.read_text())
    cfg["cluster_name"] = f"varnext-rayup-test-{uuid.uuid4().hex[:8]}"
    cfg["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    cfg["max_workers"] = 0
    cfg["auth"] = {
        "ssh_user": getpass.getuser(),
        "ssh_private_key": str(root / "ssh" / "id_ed25519"),
        "ssh_proxy_command": f"nc %h {ssh_port}",
    }
    cfg["file_mounts"]["~/.varnext/cluster-token"] = str(root / "token")

    setup = _replace_once(cfg["setup_commands"], "/REPLACE-ME/shared/varnext", str(root / "shared"))
    setup = _replace_once(setup, "python3 -m venv ", "python3 -m venv --system-site-packages ")
    # Loopback: with this switch Ray keeps 127.0.0.1 (ray start, ray status, job drivers).
    (env_line,) = [i for i, cmd in enumerate(setup) if "RAY_AUTH_TOKEN_PATH=" in cmd]
    setup.insert(env_line + 1, "echo 'export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0' >> ~/varnext.env")
    cfg["setup_commands"] = setup

    mlflow = str(ports["mlflow"])
    cfg["head_setup_commands"] = _replace_once(cfg["head_setup_commands"], ":5000", f":{mlflow}")
    start = _replace_once(cfg["head_start_ray_commands"], "--port 5000", f"--port {mlflow}")
    (ray_start,) = [i for i, cmd in enumerate(start) if "ray start --head" in cmd]

    def free(match: re.Match[str]) -> str:
        return f"--{match.group(1)}={ports.setdefault(match.group(1), free_port())}"

    cmd = re.sub(r"--([a-z-]+-port|port)=\d+", free, start[ray_start])
    agents = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port")
    for flag in (*agents, "runtime-env-agent-port"):
        ports.setdefault(flag, free_port())
    extra = [f"--{flag}={port}" for flag, port in ports.items() if flag != "mlflow"]
    extra = [flag for flag in extra if flag.split("=")[0] + "=" not in cmd]
    extra += ["--node-ip-address=127.0.0.1", "--num-cpus=2", f"--object-store-memory={2**28}"]
    extra += ["--min-worker-port=0", "--max-worker-port=0"]  # the OS picks: no clash
    start[ray_start] = f"{cmd} {' '.join(extra)}"
    cfg["head_start_ray_commands"] = start
    return cfg


# ---- the private sshd, in its own PID + mount namespace ----------------------------------------


def _make_host(root: Path, ssh_port: int) -> list[str]:
    """Keys, token, the head's private home and /tmp/ray; returns the namespace's command."""
    ssh, home, raytmp, token = (root / d for d in ("ssh", "home", "raytmp", "token"))
    for folder in (ssh, home, raytmp, token, root / "shared"):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name, comment in (("id_ed25519", "client"), ("ssh_host_ed25519_key", "host")):
        keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"rayup-{comment}"]
        _run([*keygen, "-f", str(ssh / name)], 30, check=True)
    shutil.copy(ssh / "id_ed25519.pub", ssh / "authorized_keys")
    (token / "auth_token").write_text(os.urandom(32).hex())
    (token / "auth_token").chmod(0o600)
    user = getpass.getuser()
    (ssh / "sshd_config").write_text(SSHD_CONFIG.format(port=ssh_port, dir=ssh, user=user))

    # The host's own Python lives under the home that the namespace hides: mount it back in,
    # and put it on the login PATH (a lab host has its python3 on PATH).
    real_home = Path(os.path.expanduser(f"~{user}"))
    mounts = []
    python_home = Path(sys.base_prefix).resolve()
    if python_home.is_relative_to(real_home):
        inside = home / python_home.relative_to(real_home)
        inside.mkdir(parents=True)
        mounts.append(f"mount --bind {python_home} {inside}")
    python_bin = Path(sys.executable).resolve().parent
    (home / ".bashrc").write_text(f"export PATH={python_bin}:$PATH\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation folder
    Path("/tmp/ray").mkdir(exist_ok=True)
    mounts += [f"mount --rbind {home} {real_home}", f"mount --bind {raytmp} /tmp/ray"]
    inner = " && ".join([*mounts, f"exec /usr/sbin/sshd -D -e -f {ssh / 'sshd_config'}"])
    unshare = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"]
    return [*unshare, "--propagation", "private", "sh", "-c", inner]


@contextlib.contextmanager
def _private_sshd(root: Path, ssh_port: int) -> Iterator[int]:
    """Starts the namespaced sshd; yields its host pid (the namespace's pid 1), then stops it."""
    log = open(root / "sshd.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        _make_host(root, ssh_port),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait("the private sshd", lambda: _port_open(ssh_port) or proc.poll() is not None, 30)
        assert proc.poll() is None, (root / "sshd.log").read_text()
        yield _wait("sshd's pid", lambda: _children().get(proc.pid, [None])[0], 10)
    finally:
        for pid in _children().get(proc.pid, []):  # the namespace's init: the kernel ends
            with contextlib.suppress(ProcessLookupError):  # everything in it with it
                os.kill(pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


@contextlib.contextmanager
def _canary(root: Path) -> Iterator[subprocess.Popen]:
    """A process named ``raylet`` outside the namespace: a machine-wide ``ray stop`` kills it."""
    exe = root / "canary" / "raylet"
    exe.parent.mkdir()
    exe.symlink_to(shutil.which("sleep") or "/bin/sleep")
    proc = subprocess.Popen([str(exe), "3600"], start_new_session=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


# ---- the test ----------------------------------------------------------------------------------


def test_onprem_config_is_valid_closed_and_marked() -> None:
    """Ray's own validator accepts it; token auth, loopback dashboard, placeholders marked."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(ONPREM_YAML.read_text())
    validate_config(prepare_config(yaml.safe_load(ONPREM_YAML.read_text())))
    assert raw["provider"]["type"] == "local"
    marked = [raw["provider"]["head_ip"], *raw["provider"]["worker_ips"], *raw["auth"].values()]
    assert all("REPLACE-ME" in value for value in marked), marked
    assert sum("REPLACE-ME" in cmd for cmd in raw["setup_commands"]) == 1  # VARNEXT_SHARED
    assert "0.0.0.0" not in json.dumps(raw)  # in no command nor setting (comments aside)
    starts = [
        cmd
        for role in ("head", "worker")
        for cmd in raw[f"{role}_start_ray_commands"]
        if "ray start" in cmd
    ]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token" in cmd for cmd in starts)
    (head,) = [cmd for cmd in starts if "--head" in cmd]
    assert "--dashboard-host=127.0.0.1" in head and "--include-dashboard=true" in head
    mlflow = " ".join(raw["head_start_ray_commands"])
    assert "--host $VARNEXT_HEAD_IP" in mlflow and "bind=127.0.0.1" in mlflow


@pytest.fixture
def alone_and_equipped(request: pytest.FixtureRequest) -> None:
    """Runs only in a pytest invocation of its own, on a machine with root and the SSH tools."""
    if any(item.path != request.node.path for item in request.session.items):
        pytest.skip("runs apart from other Ray work, in its own pytest: pytest tests/test_rayup.py")
    _needs()


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(900)
def test_ray_up_onprem_config_over_ssh_on_loopback(
    tmp_path: Path, alone_and_equipped: None
) -> None:
    root = tmp_path
    ssh_port = free_port()
    ports = {"mlflow": free_port()}
    cfg = _derive_config(root, ssh_port, ports)
    config = root / "cluster.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    dashboard = f"http://127.0.0.1:{ports['dashboard-port']}"
    mlflow_uri = f"http://127.0.0.1:{ports['mlflow']}"
    env = os.environ | {
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(root / "token" / "auth_token"),
    }
    env.pop("RAY_ADDRESS", None)
    times: dict[str, float] = {}
    state_files = [Path(f"/tmp/ray/cluster-{cfg['cluster_name']}.{x}") for x in ("state", "lock")]

    def ray(step: str, *args: str, check: bool = True) -> str:
        start = time.monotonic()
        done = _run([str(BIN / "ray"), *args], 300, env=env, cwd=REPO)
        times[step] = times.get(step, 0) + time.monotonic() - start
        said = done.stdout + done.stderr
        (root / f"{step.replace(' ', '_')}.log").write_text(said)
        if check:
            assert done.returncode == 0, f"ray {' '.join(args)} failed ({done.returncode}):\n{said}"
        return said if done.returncode == 0 else f"FAILED {said}"

    began = time.monotonic()
    try:
        with _canary(root) as canary, _private_sshd(root, ssh_port) as sshd:
            times["sshd"] = time.monotonic() - began
            key = str(root / "ssh" / "id_ed25519")
            login = _run(
                ["ssh", "-i", key, "-p", str(ssh_port), *SSH_OPTS, "127.0.0.1", "true"], 30
            )
            assert login.returncode == 0, login.stderr
            try:
                _up_use_down(root, config, env, dashboard, mlflow_uri, ray, times, sshd)
            finally:
                if _alive(sshd) and "ray down" not in times:  # a failure before ray down
                    _run([str(BIN / "ray"), "down", "-y", str(config)], 180, env=env, cwd=REPO)
            # ray down left no Ray nor MLflow in the namespace, and reached nothing outside it.
            inside = _tree(sshd)
            left = [_cmdline(p) for p in inside]
            assert not [c for c in left if "raylet" in c or "mlflow" in c], left
            assert canary.poll() is None, "ray stop reached outside the namespace"
        assert not {p for p in inside if _alive(p)}, "processes outlived the sshd"
        assert not _port_open(ssh_port) and not _port_open(ports["dashboard-port"])
        # Nothing else either: ssh's control masters ("ssh: CONTROL_PATH [mux]") and nc proxies
        # end with the connection.
        control = str(_ssh_control_dir(cfg["cluster_name"]))
        _wait("the ssh clients to end", lambda: not _mentioning(str(root), control), 30)
    finally:
        for path in state_files:  # the local provider's state, on the `ray up` side
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # ssh's (empty) ControlPath folder of this cluster
            _ssh_control_dir(cfg["cluster_name"]).rmdir()
    times["total"] = time.monotonic() - began
    print("ray up test timings (s): " + json.dumps({k: round(v, 1) for k, v in times.items()}))


def _ssh_control_dir(cluster_name: str) -> Path:
    """Where Ray's SSH command runner keeps its control sockets for ``cluster_name``."""
    user = hashlib.sha256(getpass.getuser().encode()).hexdigest()[:10]
    return Path(f"/tmp/ray_ssh_{user}") / hashlib.sha256(cluster_name.encode()).hexdigest()[:10]


def _mentioning(*texts: str) -> list[str]:
    """Command lines of the live processes on the machine that contain one of ``texts``."""
    found = []
    for pid in (int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()):
        cmd = _cmdline(pid)
        if any(text in cmd for text in texts) and _alive(pid) and pid != os.getpid():
            found.append(cmd)
    return found


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    return ""


def _up_use_down(
    root: Path,
    config: Path,
    env: dict[str, str],
    dashboard: str,
    mlflow_uri: str,
    ray: Any,
    times: dict[str, float],
    sshd: int,
) -> None:
    """ray up, ray exec, a sweep as a job, the token checks, varnext best, ray down."""
    start = time.monotonic()
    with open(root / "ray_up.log", "w") as log:
        up = subprocess.Popen(
            [str(BIN / "ray"), "up", "-y", "--no-config-cache", str(config)],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        # Meanwhile, a tiny dataset in the "shared" folder (a lab's NFS): 64x36 synthetic clips.
        clips = root / "clips"
        write_synthetic(clips, clips=4, frames=48, size=(96, 54), seed=3, bump_probability=0.6)
        ingest(
            [clips],
            root / "shared" / "datasets" / "tiny",
            IngestOptions(size=(64, 36), val=0.2, test=0.2),
        )
        times["dataset (during ray up)"] = time.monotonic() - start
        code = up.wait(timeout=600)
    times["ray up"] = time.monotonic() - start
    assert code == 0, f"ray up failed ({code}):\n{(root / 'ray_up.log').read_text()[-8000:]}"
    status = ray("ray status", "exec", str(config), "ray status")
    assert re.search(r"\b1 local\.cluster\.node", status), status
    assert "2.0 CPU" in status, status

    # Everything on the head listens on 127.0.0.1 only (the node address here is 127.0.0.1).
    listening = _listening(_tree(sshd))
    loopback = re.compile(r"(127\.0\.0\.1|\[::ffff:127\.0\.0\.1\]):\d+")
    assert len(listening) > 5, listening
    assert all(loopback.fullmatch(address) for address in listening), listening
    assert _get(f"{dashboard}/api/jobs/")[0] == 401  # anonymous: refused
    token = (root / "token" / "auth_token").read_text()
    assert _get(f"{dashboard}/api/jobs/", {"Authorization": "Bearer wrong"})[0] == 403
    assert _get(f"{dashboard}/api/jobs/", {"Authorization": f"Bearer {token}"})[0] == 200
    _wait("the head's MLflow server", lambda: _get(f"{mlflow_uri}/health")[0] == 200, 60)

    job = f"onprem-sweep-{uuid.uuid4().hex[:6]}"
    sweep = (
        "varnext sweep --space search_spaces/smoke.json --data $VARNEXT_DATA/tiny"
        " --samples 1 --epochs 1 --workers-per-trial 1 --scheduler fifo --batch-size 8"
        " --val-triplets 24 --rollout-steps 0"
        f" --experiment {EXPERIMENT} --tracking-uri $MLFLOW_TRACKING_URI --storage $VARNEXT_STORAGE"
    )
    submit = ["job", "submit", "--address", dashboard, "--working-dir", ".", "--no-wait"]
    submit += ["--submission-id", job, "--", "bash", "-c", sweep]

    def submitted() -> bool:  # the dashboard agent registers a few seconds after ray start
        said = ray("job submit", *submit, check=False)
        assert not said.startswith("FAILED") or "No available agent" in said, said
        return not said.startswith("FAILED")

    _wait("the job agent", submitted, 60, poll_s=2)
    start = time.monotonic()
    auth = {"Authorization": f"Bearer {token}"}

    def finished() -> str | None:
        code, body = _get(f"{dashboard}/api/jobs/{job}", auth)
        state = json.loads(body).get("status") if code == 200 else None
        return state if state in {"SUCCEEDED", "FAILED", "STOPPED"} else None

    state = _wait(f"job {job}", finished, 600, poll_s=2)
    times["sweep job"] = time.monotonic() - start
    logs = _get(f"{dashboard}/api/jobs/{job}/logs", auth)[1]
    (root / "job.log").write_text(logs)
    assert state == "SUCCEEDED", f"job {job}: {state}\n{logs[-6000:]}"

    start = time.monotonic()
    best = root / "best"
    pull = ["best", "--tracking-uri", mlflow_uri, "--experiment", EXPERIMENT, "--out", str(best)]
    pulled = _run([str(BIN / "varnext"), *pull], 300, env=env)
    times["varnext best"] = time.monotonic() - start
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert (best / "model.safetensors").stat().st_size > 0
    assert json.loads((best / "run.json").read_text())["run_id"]

    # Stop the MLflow server (it outlives `ray down`), as docs/cluster.md says, then ray down.
    ray("stop mlflow", "exec", str(config), "kill -- -$(cat ~/varnext-mlflow/server.pgid)")
    down = ray("ray down", "down", "-y", str(config))
    assert "Stopped all" in down or "Stopped only" in down, down
