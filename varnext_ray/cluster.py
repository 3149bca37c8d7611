"""The Ray cluster: connecting to it, what a run asks of it, and whether it can ever fit.

Example:
    >>> connect_ray()  # RAY_ADDRESS, or a new local Ray on loopback
    >>> resources = Resources(workers=2)
    >>> check_resources(resources, resources.cpus(cluster_cpus()))
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import signal
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from varnext_ray import console
from varnext_ray.errors import UserError

log = logging.getLogger(__name__)


MIN_SHARE = 0.0001  # the finest fraction of a CPU or GPU Ray schedules


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

    def check(self) -> None:
        """Raises a UserError for a worker count or share no cluster can honour."""
        if self.workers < 1:
            raise UserError(
                f"workers must be >= 1 (got {self.workers})", "--workers", "pass 1 or more"
            )
        for flag, value in (
            ("--gpus-per-worker", self.gpus_per_worker),
            ("--cpus-per-worker", self.cpus_per_worker),
        ):
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise UserError(
                    f"{flag} must be a finite number >= 0 (got {value})",
                    flag,
                    "pass e.g. 0.5 or 1",
                )
        for flag, value in (
            ("--gpus-per-worker", self.gpus_per_worker),
            ("--cpus-per-worker", self.cpus_per_worker),
        ):
            if value and value < MIN_SHARE:  # Ray refuses finer shares, after it has started
                raise UserError(
                    f"{flag} must be 0 or at least {MIN_SHARE} (got {value:g})",
                    flag,
                    f"pass e.g. 0.5, or at least {MIN_SHARE}",
                )
        _autoscaling()  # an unclear VARNEXT_AUTOSCALING is refused here, before Ray
        if self.cpus_per_worker == 0 and not self.gpus_per_worker:
            raise UserError(
                "a worker needs some CPU or GPU (--cpus-per-worker 0 without GPUs)",
                "--cpus-per-worker",
                "pass a positive share such as 0.5",
            )

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
    """True on a cluster started by the launcher (``VARNEXT_AUTOSCALING=1``), whose nodes may
    still be coming (:func:`console.env_flag`'s values)."""
    return console.env_flag(
        "VARNEXT_AUTOSCALING",
        "set it to 1 on a cluster whose nodes the autoscaler adds, else unset it",
    )


def object_store_fits(nbytes: int, share: float = 0.25) -> bool:
    """Whether ``nbytes`` take at most ``share`` of the cluster's object store.

    Training materialises the splits that fit (train_data.py): Ray Data otherwise re-reads and
    decodes them every epoch (benchmarks/train_overhead.py measured that as the main gap
    between Ray Train and a plain loop).
    """
    import ray

    return nbytes <= share * ray.cluster_resources().get("object_store_memory", 0)


CONNECT_TIMEOUT_S = 15.0  # how long an address that does not answer is tried
# Ray Train settings of every job (a value in the caller's environment wins): the controller
# polls its worker group every 0.5 s, not 2 s, so a run starts and ends sooner at each of its
# state changes (issue #18: fixed costs per trial). A poll is one small actor call per worker;
# one that takes longer is awaited at the next poll, not counted as a failure.
TRAIN_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5"}
# ... and of a local Ray only (these win over the above): one machine of its own is never a
# preemptible cloud node, so Train's PreemptionWatcher (one more actor process per run) has
# nothing to watch; and its few workers are polled every 0.2 s. An empty Train run of 2
# workers here took 13.0 s at 2 s, 10.1 s at 0.5 s and 9.0 s at 0.2 s. A cluster keeps 0.5 s:
# its controllers may poll dozens of workers each, and its epochs dwarf a second per run.
LOCAL_TRAIN_ENV = {
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
}


# A local Ray's processes keep to 127.0.0.1 (see _loopback): nothing listens on, or is sent to,
# the machine's network address.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
_OURS: list[bool] = []  # [True] once connect_ray began this process's Ray session


def _job_env(*defaults: dict[str, str]) -> dict[str, str]:
    """Environment variables for every worker of the job: ``defaults`` unless the caller's
    environment sets them, and Ray's INFO chatter off unless ``varnext -v``."""
    env = {key: os.environ.get(key, value) for d in defaults for key, value in d.items()}
    return env | console.ray_env_vars()


def check_auth_mode() -> None:
    """Refuses a ``RAY_AUTH_MODE`` that is neither ``token`` nor ``disabled``: Ray reads any
    other value (a typo, or an empty one) as "disabled", and a new local Ray would then run
    without token auth while the user asked for a mode."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None and mode.lower() not in ("token", "disabled"):
        raise UserError(
            f"RAY_AUTH_MODE={mode!r} is neither 'token' nor 'disabled' (Ray would read it as "
            "disabled: no token auth)",
            "the environment",
            "set RAY_AUTH_MODE=token, or unset it (a new local Ray then uses token auth)",
        )


def connect_ray(address: str | None = None, num_cpus: float | None = None) -> None:
    """Connects to ``address`` or ``RAY_ADDRESS``; with neither, starts a local Ray on loopback.

    The local instance keeps the dashboard on (Train frees finished workers' placement groups
    through it) and binds to 127.0.0.1. Every worker of the job gets ``RAY_ADDRESS`` set to this
    cluster's GCS address: Train's PlacementGroupCleaner looks the cluster up by that, and
    without it fails ("Found multiple active Ray instances") whenever another Ray runs on the
    same machine, leaving finished trials' workers reserved and the next trial waiting forever.

    An address that does not answer within :data:`CONNECT_TIMEOUT_S` is a UserError (Ray
    itself would retry for minutes). Joining a cluster without token auth logs a warning, and
    the token file is kept readable by its owner only (see :func:`secure_token_file`).
    """
    import ray

    if ray.is_initialized():
        return
    _OURS[:] = [True]  # set before ray.init: a signal during it still stops what it started
    check_auth_mode()
    address = address or os.environ.get("RAY_ADDRESS")
    token_auth = os.environ.get("RAY_AUTH_MODE", "").lower() == "token"
    if address:
        _check_answers(address)
        if not token_auth:
            log.warning(
                "joining the Ray cluster at %s without token auth (RAY_AUTH_MODE=token is "
                "not set): anyone who can reach that cluster can run code on it and read its "
                "data; see docs/cluster.md",
                address,
            )
        secure_token_file()
        env = {"RAY_ADDRESS": address} if _is_gcs_address(address) else {}
        env |= _job_env(TRAIN_ENV)
        try:
            with _keep_sigterm_handler():
                ray.init(
                    address=address,
                    log_to_driver=True,
                    logging_level=console.quiet_ray_driver(),
                    runtime_env={"env_vars": env},
                )
        except (ConnectionError, RuntimeError) as err:
            raise UserError(
                f"could not join the Ray cluster ({str(err).strip().splitlines()[0][:200]})",
                address,
                "check the address and, with token auth, RAY_AUTH_MODE=token and the token file",
            ) from None
        secure_token_file()
        return
    secure_token_file()
    check_ray_temp()
    port = _free_port()
    # The local node's processes inherit the job's variables from this process while
    # ray.init starts them (RAY_GCS_SERVER_PORT is read by the node itself), rather than
    # through a runtime environment: with one, every worker process starts as setup_worker.py,
    # a second interpreter that applies it and execs the real worker (0.2-0.7 s per process
    # here, and a sweep trial starts about a dozen of them).
    env = {"RAY_GCS_SERVER_PORT": str(port), "RAY_ADDRESS": f"127.0.0.1:{port}"}
    with (
        _environment(env | LOOPBACK_ENV | _job_env(TRAIN_ENV, LOCAL_TRAIN_ENV)),
        _loopback(),
        _keep_sigterm_handler(),
    ):
        ray.init(
            address="local",  # a new instance, never one that `ray start` left recorded in /tmp
            num_cpus=num_cpus,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            _node_ip_address="127.0.0.1",
            log_to_driver=True,
            logging_level=console.quiet_ray_driver(),
        )
    secure_token_file()


def stop_ray_work() -> None:
    """Ends this process's Ray session when :func:`connect_ray` began it, so that a run
    stopped by a signal is stopped before its MLflow run is closed: Ray Train's workers went
    on training for seconds after the driver's "is KILLED" line, logged an epoch into the
    closed run and wrote its checkpoint (a resume then logged that epoch twice). A local Ray
    ends with its workers; a cluster's Train controller and workers, owned by this driver, are
    ended by Ray when it leaves. A session begun by the caller is left alone."""
    import ray

    if _OURS and ray.is_initialized():
        with contextlib.suppress(Exception):  # a cluster already gone must not hide the signal
            ray.shutdown()


@contextlib.contextmanager
def _keep_sigterm_handler() -> Iterator[None]:
    """The process's Python SIGTERM handler (the CLI's: :func:`errors.sigterm_raises`) stays
    in place across ``ray.init``, which installs its own and, through its core worker, a C++
    one that prints a stack dump and aborts (exit 134, the MLflow run left RUNNING)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if callable(previous):  # a Python handler; with none (SIG_DFL), Ray's stays
            signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _loopback() -> Iterator[None]:
    """Inside, Ray keeps 127.0.0.1 as this node's address rather than swapping in the machine's
    routable one (``services.resolve_ip_for_localhost``).

    Ray decides that once, when ``ray`` is first imported, from
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``: the variable must be "0" then, which a process that
    imported Ray before connecting (the CLI's own checks do) cannot arrange afterwards. So the
    setting Ray read is overridden for the start of the local node only; the node's processes
    get the variable from :data:`LOOPBACK_ENV` before they import Ray.
    """
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` set in ``os.environ`` inside the block; the previous state restored after."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _check_answers(address: str, timeout_s: float | None = None) -> None:
    """A UserError unless something accepts a TCP connection at a host:port Ray address
    within ``timeout_s`` (default :data:`CONNECT_TIMEOUT_S`), and speaks gRPC there
    (:func:`_speaks_grpc`): Ray's own connection retries an address for ever."""
    import time

    if address == "auto":
        address = _auto_address()
    host, port = _host_port(address)
    timeout_s = CONNECT_TIMEOUT_S if timeout_s is None else timeout_s
    deadline, reason = time.monotonic() + timeout_s, "no answer"
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, int(port)), timeout=min(3.0, timeout_s)) as s:
                if _speaks_grpc(s):
                    return
                raise UserError(
                    "something answers there, but not a Ray cluster (it does not speak gRPC, "
                    "as Ray's GCS and its client server do)",
                    address,
                    "pass the head's GCS address (HOST:6379 by default, `ray status` on the "
                    "head shows it) or ray://HOST:10001, not the dashboard's or another port",
                )
        except OSError as err:
            reason = err.strerror or str(err)
            time.sleep(0.5)
    raise UserError(
        f"no Ray cluster answers there after {timeout_s:g} s ({reason})",
        address,
        "start the cluster (ray start --head, or ray up) or unset RAY_ADDRESS for a local Ray",
    )


_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_HTTP2_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an empty SETTINGS frame
_SETTINGS_TYPE = 0x04


def _speaks_grpc(sock: socket.socket) -> bool:
    """Whether the server on ``sock`` answers an HTTP/2 connection preface (gRPC runs on
    HTTP/2) with a SETTINGS frame, as Ray's GCS and Ray Client's server do; a web server
    answers in HTTP/1 or closes. With TLS (``RAY_USE_TLS``) the check is left to Ray."""
    if os.environ.get("RAY_USE_TLS", "").strip().lower() in ("1", "true"):
        return True
    sock.sendall(_HTTP2_PREFACE + _HTTP2_SETTINGS)
    head = b""
    while len(head) < 9:  # a frame header: length (3 bytes), type, flags, stream id
        chunk = sock.recv(9 - len(head))
        if not chunk:
            break
        head += chunk
    return len(head) == 9 and head[3] == _SETTINGS_TYPE


def _host_port(address: str) -> tuple[str, int]:
    """The host and port of a ``HOST:PORT`` or ``ray://HOST:PORT`` address (a host name or an
    IP address, ``[...]`` around IPv6), or a UserError saying what the forms are."""
    import ipaddress
    import urllib.parse

    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "", address
    problem = ""
    if scheme.lower() in ("http", "https"):
        problem = (
            "an http:// address is the Ray dashboard's (what `ray job submit` takes); "
            "varnext joins the cluster through its GCS"
        )
    elif scheme and scheme != "ray":
        problem = f"unknown scheme {scheme!r}"
    host, port = "", None
    with contextlib.suppress(ValueError):  # urlsplit: a bad port or IPv6 literal
        parts = urllib.parse.urlsplit("//" + rest.rstrip("/"))
        port = parts.port
        host = parts.hostname or ""
        if parts.path or parts.query or parts.fragment or "@" in parts.netloc:
            host = ""
    if host.startswith("[") or ":" in host:
        with contextlib.suppress(ValueError):
            ipaddress.IPv6Address(host.strip("[]"))
            host = host.strip("[]")
    elif not _HOST_NAME.fullmatch(host):
        host = ""
    if problem or not host or not port:
        raise UserError(
            "a Ray address is HOST:PORT (the head's GCS, e.g. 127.0.0.1:6379), "
            "ray://HOST:PORT or auto" + (f"; {problem}" if problem else ""),
            address,
            "pass --address or RAY_ADDRESS in one of those forms",
        )
    return host, port


_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,251}[A-Za-z0-9])?")


def _auto_address() -> str:
    """The cluster that ``auto`` means: the one Ray recorded as this machine's latest (what
    ``ray start`` writes in its temp folder), else any running GCS here.

    Ray looks it up the same way, but then retries a recorded cluster that no longer runs
    (a ``ray start`` that was killed leaves its record) for ever, so the address it finds is
    checked like any other.
    """
    from ray._common.utils import get_ray_address_file
    from ray._private import services  # Ray's own lookup: no public API returns it

    record = get_ray_address_file(None)  # Ray opens and reads it whole: a FIFO hung here
    problem = _not_a_file(record)
    if problem:
        raise UserError(
            f"Ray's record of this machine's latest cluster is {problem}",
            record,
            "remove it (`ray start` writes it again), or pass the cluster's HOST:PORT",
        )
    try:
        found = services.get_ray_address_from_environment("auto", None)
    except ConnectionError:
        found = None
    if not found or found == "auto":
        raise UserError(
            "no running Ray cluster was found on this machine",
            "auto",
            "start one (ray start --head), pass its HOST:PORT, or unset RAY_ADDRESS for a "
            "local Ray",
        )
    return found


def _not_a_file(path: str) -> str | None:
    """What ``path`` is when it exists and is not a regular file (or cannot be looked at)."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as err:
        return f"unusable ({err.strerror})"
    return None if stat.S_ISREG(mode) else "not a regular file (a folder, FIFO or device)"


# A Ray session's sockets lie in <temp>/ray/session_<date>_<time>_<us>_<pid>/sockets/: the
# folder's name takes up to 42 bytes and the longest socket name ("/sockets/plasma_store") 21,
# and a Unix socket's path holds at most 107 bytes (Ray's validate_socket_filename).
_SOCKET_PATH_MAX = 107
_SESSION_SOCKET_BYTES = 1 + 42 + 21
_TEMP_FIX = "set TMPDIR (or RAY_TMPDIR) to a short folder you can write, such as /tmp"


def check_ray_temp() -> None:
    """Refuses, before a local Ray starts, a temp folder it cannot use: Ray keeps its sessions
    in ``$RAY_TMPDIR`` or ``$TMPDIR`` (``/ray``) with no fallback, and ``ray.init`` failed with a
    NotADirectoryError, a PermissionError or a socket path "longer than 107 bytes" (leaving
    session folders behind)."""
    from ray._common.utils import get_default_ray_temp_dir

    folder = get_default_ray_temp_dir()
    if len(os.fsencode(folder)) + _SESSION_SOCKET_BYTES > _SOCKET_PATH_MAX:
        most = _SOCKET_PATH_MAX - _SESSION_SOCKET_BYTES - len("/ray")
        raise UserError(
            f"Ray's temp folder is too long for its sockets' paths (a temp folder of at most "
            f"{most} bytes is needed)",
            os.path.dirname(folder),
            _TEMP_FIX,
        )
    path = folder  # Ray creates what is missing of it (os.makedirs): the first that exists
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise UserError("Ray's temp folder is not a folder", path, _TEMP_FIX)
    if not os.access(path, os.W_OK | os.X_OK):  # also an immutable one, even for root
        raise UserError("Ray cannot write its temp folder", path, _TEMP_FIX)


def token_path() -> Path:
    """The Ray auth token file that Ray reads: ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``."""
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


MAX_TOKEN_BYTES = 4096  # Ray's tokens are 64 hex digits (ray get-auth-token --generate)


def _token_problem(path: Path) -> str | None:
    """Why ``path`` is not a Ray token file, or None: it must be a regular file holding one
    line of printable characters without spaces, at most :data:`MAX_TOKEN_BYTES`."""
    import stat

    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            return "it is a folder or a device, not a file"
        if st.st_size > MAX_TOKEN_BYTES:
            return f"it holds {st.st_size:,} bytes; a token is one short line"
        text = path.read_bytes().decode("ascii").strip()
    except FileNotFoundError:
        return "no such file"
    except OSError as err:
        return f"it cannot be read ({err.strerror})"
    except UnicodeDecodeError:
        return "it is not text"
    if not text:
        return "it is empty"
    if not text.isprintable() or any(c.isspace() for c in text):
        return "it holds more than one word or line; a token is one"
    return None


def secure_token_file() -> None:
    """Keeps the Ray token readable by its owner only: the file 0600 in a 0700 folder.

    Ray writes ``~/.ray/auth_token`` with the default umask (world-readable on most systems),
    and a readable token lets any local user submit jobs. Files of another owner are left alone
    (with a warning when others can read them). A file that ``RAY_AUTH_TOKEN_PATH`` names is
    first checked to be a token file (Ray reads it whenever the variable is set): anything else
    (a script, a folder, /dev/null) is a UserError and is left as it was.
    """
    path = token_path()
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        problem = _token_problem(path)
        if problem:
            raise UserError(
                f"RAY_AUTH_TOKEN_PATH does not name a Ray token file ({problem})",
                str(path),
                "point it at the file that `ray get-auth-token --generate` writes, or unset it",
            )
    else:
        problem = _not_a_file(str(path))
        if problem and problem.startswith("unusable"):  # HOME's name too long, say
            raise UserError(
                f"the Ray token file's path is {problem}",
                str(path),
                "set HOME to your home folder, or RAY_AUTH_TOKEN_PATH to the token file",
            )
        if problem:
            return  # not Ray's file: left alone
    # Ray's own folder is tightened; a folder the user chose (it may be shared, such as /tmp)
    # only gets a warning.
    own_folder = path.parent == Path.home() / ".ray"
    for item, mode in ((path.parent, 0o700), (path, 0o600)):
        try:
            st = item.stat()
        except OSError:
            continue
        if st.st_mode & 0o077 == 0:
            continue
        if st.st_uid != os.geteuid() or (item == path.parent and not own_folder):
            log.warning("the Ray token path %s can be read by other users", item)
            continue
        try:
            item.chmod(mode)
        except OSError as err:
            log.warning("could not restrict %s to its owner (%s)", item, err.strerror)


def _is_gcs_address(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit() and "://" not in address


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
