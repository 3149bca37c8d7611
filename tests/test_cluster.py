"""cluster.yaml and .rayignore, checked offline; then a sweep submitted as a Ray job.

The offline tests run Ray's own cluster-config validator and packaging code (no AWS call, no
credentials). The integration test is the user's flow on one machine: a token-auth Ray head on
loopback, `ray job submit --working-dir` of this repository, an `mlflow server` over HTTP,
then `varnext best` through that server.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

CLUSTER_YAML = REPO / "cluster.yaml"
RAYIGNORE = REPO / ".rayignore"
BIN = Path(sys.executable).parent
INTERNET = {"0.0.0.0/0", "::/0"}


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _all_commands(cfg: dict[str, Any]) -> list[str]:
    keys = (
        "initialization_commands",
        "setup_commands",
        "head_setup_commands",
        "worker_setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
    )
    cmds = [c for k in keys for c in cfg.get(k) or []]
    for node_type in cfg["available_node_types"].values():
        cmds += [c for k in keys for c in node_type.get(k) or []]
    return cmds


def _ray_starts(cfg: dict[str, Any]) -> dict[str, list[str]]:
    """The `ray start` commands of the head and of the workers."""
    return {
        role: [c for c in cfg[f"{role}_start_ray_commands"] if "ray start" in c]
        for role in ("head", "worker")
    }


def _env_before_ray_start(command: str) -> dict[str, str]:
    """The VAR=value assignments that prefix `ray start` in a shell command."""
    words = shlex.split(command.split("ray start")[0].split(";")[-1])
    return dict(w.split("=", 1) for w in words if "=" in w)


# ---- cluster.yaml -----------------------------------------------------------------------------


def test_cluster_yaml_passes_rays_own_validator(raw: dict[str, Any]) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = prepare_config(yaml.safe_load(CLUSTER_YAML.read_text()))
    validate_config(cfg)  # raises on any schema error
    assert cfg["provider"]["type"] == "aws"
    head = raw["available_node_types"][raw["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    gpu = [t for t in raw["available_node_types"].values() if t["resources"].get("GPU", 0) > 0]
    assert len(gpu) == 1 and gpu[0]["min_workers"] == 0 and gpu[0]["max_workers"] >= 1


def test_every_ray_start_uses_token_auth(raw: dict[str, Any]) -> None:
    starts = _ray_starts(raw)
    assert starts["head"] and starts["worker"]
    mount = next(remote for remote in raw["file_mounts"] if "token" in remote)
    for command in starts["head"] + starts["worker"]:
        env = _env_before_ray_start(command)
        assert env.get("RAY_AUTH_MODE") == "token", command
        # The token comes from the file_mounts copy of the laptop's token, not the repo.
        assert env["RAY_AUTH_TOKEN_PATH"].startswith("$HOME/" + mount.removeprefix("~/")), command
    local = raw["file_mounts"][mount]
    assert local.startswith("~/") and not (REPO / local.removeprefix("~/")).exists()


def test_dashboard_and_jobs_api_listen_on_loopback_only(raw: dict[str, Any]) -> None:
    (head,) = _ray_starts(raw)["head"]
    assert "--dashboard-host=127.0.0.1" in head.split()
    assert "--include-dashboard=true" in head.split()  # Train frees placement groups through it
    for command in _all_commands(raw):
        assert "0.0.0.0" not in command and "::/0" not in command, command
    for command in _ray_starts(raw)["worker"]:
        assert "--dashboard-host" not in command  # workers serve no dashboard


def _effective_inbound_rules(extra: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rules `ray up` gives a security group it creates (Ray's code where importable)."""
    try:  # the AWS module needs boto3, which is not a project dependency
        from ray.autoscaler._private.aws.config import _create_default_inbound_rules
    except ImportError:
        same_group = {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": "sg-self"}]}
        ssh = {"FromPort": 22, "ToPort": 22, "IpProtocol": "tcp"}
        return [same_group, ssh | {"IpRanges": [{"CidrIp": "0.0.0.0/0"}]}, *extra]
    return _create_default_inbound_rules({"sg-self"}, extra)


def test_security_group_opens_only_ssh_to_the_internet(raw: dict[str, Any]) -> None:
    group = raw["provider"]["security_group"]
    assert group["GroupName"]  # created by `ray up` with the rules below
    rules = _effective_inbound_rules(group.get("IpPermissions", []))
    open_to_internet = [
        r
        for r in rules
        if {i["CidrIp"] for i in r.get("IpRanges", [])} & INTERNET
        or {i["CidrIpv6"] for i in r.get("Ipv6Ranges", [])} & INTERNET
    ]
    assert open_to_internet, "expected SSH to be reachable"
    for rule in open_to_internet:
        assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 22, 22), rule
    # Everything else is between members of the group (node-to-node traffic).
    others = [r for r in rules if r not in open_to_internet]
    assert others and all(r.get("UserIdGroupPairs") and not r.get("IpRanges") for r in others)
    for node_type in raw["available_node_types"].values():
        assert "SecurityGroupIds" not in node_type["node_config"]


def test_image_is_ray_2_60_not_ray_ml(raw: dict[str, Any]) -> None:
    docker = raw["docker"]
    images = [docker[k] for k in ("image", "head_image", "worker_image") if k in docker]
    for node_type in raw["available_node_types"].values():
        images += [v for k, v in node_type.get("docker", {}).items() if k.endswith("image")]
    assert images
    for image in images:
        assert re.fullmatch(r"rayproject/ray:2\.60\.0-py3\d+-(gpu|cu\d+|cpu)", image), image
    assert "ray-ml" not in json.dumps(raw)
    assert any("pip install" in c and "~/varnext" in c for c in raw["setup_commands"])
    assert raw["file_mounts"]["~/varnext"] == "."  # the repository, on every node


def _mlflow_command(raw: dict[str, Any]) -> str:
    (command,) = [c for c in _all_commands(raw) if "mlflow server" in c]
    return command


def test_mlflow_server_is_private_with_a_database_and_s3_artifacts(raw: dict[str, Any]) -> None:
    command = _mlflow_command(raw)
    assert command in raw["head_start_ray_commands"]  # on the head only
    args = shlex.split(command.split("mlflow server", 1)[1].split(")")[0])
    opts = dict(zip(args[::2], args[1::2], strict=True))
    assert opts["--host"] in ("127.0.0.1", "$VARNEXT_HEAD_IP"), opts["--host"]
    assert opts["--backend-store-uri"].startswith("sqlite:////home/ray/mlflow/")
    # ... on the head's EBS volume, mounted into the container.
    assert (
        "--volume=/home/ubuntu/varnext-mlflow:/home/ray/mlflow" in raw["docker"]["head_run_options"]
    )
    assert opts["--artifacts-destination"].startswith("$VARNEXT_S3/")
    # The SSH tunnel's end (`ray attach -p 5000` forwards to the head's localhost:5000).
    assert "TCP-LISTEN:5000,bind=127.0.0.1," in command


def _run_env_setup(raw: dict[str, Any], home: Path) -> dict[str, str]:
    """Runs the setup commands that write ~/varnext.env, as Ray does, and returns that env."""
    home.mkdir()
    env = {"HOME": str(home), "PATH": os.environ["PATH"]}
    for command in raw["setup_commands"]:
        if "varnext.env" in command:
            subprocess.run(["bash", "-c", command], env=env, check=True)
    shown = subprocess.run(
        ["bash", "-c", "source ~/.bashrc && env -0"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(line.split("=", 1) for line in shown.split("\0") if "=" in line)


def test_storage_is_set_in_one_place_for_every_node(raw: dict[str, Any], tmp_path: Path) -> None:
    commands = _all_commands(raw)
    s3 = [m for c in commands for m in re.findall(r"s3://[^\s'\"]*", c)]
    assert len(s3) == 1, f"the bucket is named once, got {s3}"
    assert sum("VARNEXT_STORAGE=" in c for c in commands) == 1
    env = _run_env_setup(raw, tmp_path / "home")
    assert env["VARNEXT_S3"] == s3[0]
    assert env["VARNEXT_STORAGE"] == s3[0] + "/ray"
    assert env["VARNEXT_AUTOSCALING"] == "1"  # varnext skips its resource pre-check
    assert env["RAY_AUTH_MODE"] == "token"  # every shell on the cluster is a token client
    assert env["RAY_AUTH_TOKEN_PATH"] == str(tmp_path / "home/.varnext/cluster-token/auth_token")
    assert ".rayignore" in raw["rsync_filter"]  # `ray up` syncs what the job upload sends


# ---- .rayignore -------------------------------------------------------------------------------

KEPT = [
    "varnext_ray/__init__.py",
    "search_spaces/smoke.json",
    "configs/smoke_64x36.json",
    "benchmarks/data_path.py",
    "pyproject.toml",
    "cluster.yaml",
]
DROPPED = [
    "runs/dataset/dataset.json",
    "runs/dataset/train-0000.parquet",
    "runs/ray/sweep-x/trials/trial-1/checkpoint_000001/model.safetensors",
    "data/clip.mp4",
    "datasets/street/frames.parquet",
    "footage/cam1.avi",
    "mlflow.db",
    "mlruns/1/meta.yaml",
    "benchmarks/mlruns/1/meta.yaml",
    "mlartifacts/1/abc/artifacts/checkpoint/meta.json",
    "benchmarks/results/train_overhead.json",
    ".git/HEAD",
    "varnext_ray/__pycache__/cli.cpython-311.pyc",
    ".pytest_cache/v/cache/lastfailed",
    ".ruff_cache/CACHEDIR.TAG",
    ".hypothesis/examples/x",
    "varnext_ray.egg-info/PKG-INFO",
    "auth_token",
]


def test_rayignore_keeps_code_and_drops_data_results_and_caches(tmp_path: Path) -> None:
    from ray._private.runtime_env.packaging import create_package

    tree = tmp_path / "repo"
    for name in KEPT + DROPPED:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text("x")
    (tree / ".rayignore").write_text(RAYIGNORE.read_text())
    package = tmp_path / "package.zip"
    # What `ray job submit --working-dir` uploads, with .gitignore switched off: .rayignore alone.
    create_package(str(tree), package, include_gitignore=False)
    uploaded = set(zipfile.ZipFile(package).namelist())
    assert set(KEPT) <= uploaded
    assert not uploaded & set(DROPPED), sorted(uploaded & set(DROPPED))


def test_this_repository_uploads_only_code_and_docs() -> None:
    from ray._private.runtime_env import packaging

    files: list[Path] = []
    packaging._dir_travel(
        REPO,
        [packaging._get_excludes(REPO, [])],
        lambda p: files.append(p) if p.is_file() else None,
        include_gitignore=False,
    )
    rel = [f.relative_to(REPO) for f in files]
    tops = {p.parts[0] for p in rel}
    assert not tops & {".git", "runs", "mlruns", "mlartifacts", "mlflow.db", ".pytest_cache"}
    assert not [p for p in rel if p.parts[:2] == ("benchmarks", "results")]
    assert sum(f.stat().st_size for f in files) < 20 * 2**20  # far below Ray's 512 MiB cap


# ---- a sweep as a Ray job, on a local token-auth head -----------------------------------------


def _ray(
    head: dict[str, Any], *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "ray"), *args],
        env=env or head["env"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _submit(head: dict[str, Any], submission_id: str, entrypoint: list[str]) -> None:
    cmd = ["job", "submit", "--address", head["dashboard"], "--working-dir", str(REPO)]
    cmd += ["--no-wait", "--submission-id", submission_id, "--", *entrypoint]
    deadline = time.monotonic() + 60
    while True:
        done = _ray(head, *cmd)
        if done.returncode == 0:
            return
        # The agent registers a few seconds after its port opens.
        if "No available agent" not in done.stderr or time.monotonic() > deadline:
            raise AssertionError(f"ray job submit failed:\n{done.stdout}\n{done.stderr}")
        time.sleep(2)


def _wait_for_job(head: dict[str, Any], submission_id: str, timeout_s: float) -> str:
    """The job's final state, polled with `ray job status` (or TIMEOUT)."""
    final = {"succeeded": "SUCCEEDED", "failed": "FAILED", "was stopped": "STOPPED"}
    pattern = re.compile(rf"Job '{re.escape(submission_id)}' ({'|'.join(final)})")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = _ray(head, "job", "status", "--address", head["dashboard"], submission_id)
        state = pattern.search(done.stdout + done.stderr)
        if state:
            return final[state.group(1)]
        time.sleep(3)
    return "TIMEOUT"


def _get(url: str, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.mark.cluster
@pytest.mark.slow
def test_sweep_as_a_ray_job_then_best_checkpoint_over_http(
    ray_head: dict[str, Any], mlflow_server: str, dataset_dir: Path, tmp_path: Path
) -> None:
    import mlflow

    from varnext_ray.checkpoint_load import load_checkpoint

    job = f"varnext-sweep-{uuid.uuid4().hex[:8]}"
    sweep = ["varnext", "sweep", "--space", "search_spaces/smoke.json"]  # from the working dir
    sweep += ["--data", str(dataset_dir), "--samples", "2", "--epochs", "1"]
    sweep += ["--scheduler", "fifo", "--batch-size", "8", "--val-triplets", "24"]
    sweep += ["--experiment", "jobs", "--tracking-uri", mlflow_server]
    sweep += ["--storage", str(tmp_path / "ray")]
    _submit(ray_head, job, sweep)
    state = _wait_for_job(ray_head, job, timeout_s=480)
    logs = _ray(ray_head, "job", "logs", "--address", ray_head["dashboard"], job).stdout
    assert state == "SUCCEEDED", f"job {job}: {state}\n{logs[-6000:]}"
    assert "MLflow parent run" in logs

    # The sweep's runs, read over HTTP from the tracking server.
    client = mlflow.MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("jobs").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("varnext.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("varnext.kind") == "trial"]
    assert parent.info.status == "FINISHED" and len(children) == 2
    for run in children:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED" and "best_extrap_psnr_motion" in run.data.metrics

    # The laptop's step: pull the best checkpoint through the server, then load it.
    best = tmp_path / "best"
    pull = ["best", "--tracking-uri", mlflow_server, "--experiment", "jobs", "--out", str(best)]
    pulled = subprocess.run(
        [str(BIN / "varnext"), *pull],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    checkpoint = load_checkpoint(best)
    assert checkpoint.arch.latent_dim > 0
    run = json.loads((best / "run.json").read_text())
    assert run["run_id"] in {r.info.run_id for r in children}

    # The Jobs API answers only with the cluster's token.
    token = _ray(ray_head, "get-auth-token").stdout.strip()
    url = f"{ray_head['dashboard']}/api/jobs/"
    assert _get(url, {})[0] == 401
    assert _get(url, {"Authorization": "Bearer not-the-token"})[0] == 403
    status, body = _get(url, {"Authorization": f"Bearer {token}"})
    assert status == 200 and job in {j["submission_id"] for j in json.loads(body)}
    # ... and a client without token mode (no Authorization header) cannot submit.
    refused = _ray(
        ray_head,
        "job",
        "submit",
        "--address",
        ray_head["dashboard"],
        "--",
        "echo",
        "hi",
        env=ray_head["env"] | {"RAY_AUTH_MODE": "disabled"},
    )
    assert refused.returncode != 0
    said = refused.stderr + refused.stdout
    assert any(word in said for word in ("401", "nauthorized", "nauthenticated")), said


# ---- varnext_ray.cluster: what a run asks of the cluster (offline) --------------------------


def test_cpus_per_worker_share_leaves_one_cpu_and_the_trial_drivers() -> None:
    from varnext_ray.cluster import Resources

    assert Resources(workers=2).cpus(2) == 0.5  # (2 - 1) / 2
    assert Resources(workers=2).cpus(16) == 1.0  # at most one each
    assert Resources(workers=4).cpus(1) == 0.1  # at least 0.1
    assert Resources(workers=2).cpus(4, runs=2, driver_cpus=0.1) == 0.7  # (4-1-0.2) / 4
    assert Resources(workers=2, gpus_per_worker=1).cpus(2) == 1.0
    assert Resources(workers=2, cpus_per_worker=3).cpus(2) == 3
    assert Resources(workers=1, gpus_per_worker=0.5).per_worker(1.0) == {"CPU": 1.0, "GPU": 0.5}
    assert Resources(workers=1).per_worker(0.5) == {"CPU": 0.5}


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        ({"workers": 3, "cpus_per_worker": 1}, r"3 workers x 1 CPU need 3 CPUs; the cluster has 2"),
        ({"workers": 2, "gpus_per_worker": 1}, r"2 workers x 1 GPU need 2 GPUs; the cluster has 0"),
    ],
)
def test_a_cluster_too_small_is_a_clear_error_unless_autoscaling(
    resources: dict[str, Any], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    from varnext_ray.cluster import Resources, check_resources
    from varnext_ray.errors import UserError

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.delenv("VARNEXT_AUTOSCALING", raising=False)
    asked = Resources(**resources)
    with pytest.raises(UserError, match=expected):
        check_resources(asked, asked.cpus(2))
    monkeypatch.setenv("VARNEXT_AUTOSCALING", "1")  # nodes may still be coming
    check_resources(asked, asked.cpus(2))
    check_resources(Resources(workers=2, cpus_per_worker=1), 1.0)  # fits


def test_an_address_nobody_answers_is_refused_in_bounded_time() -> None:
    import socket
    import time

    from varnext_ray.cluster import _check_answers
    from varnext_ray.errors import UserError

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(UserError, match=r"no Ray cluster answers there after 1 s"):
        _check_answers(f"127.0.0.1:{port}", timeout_s=1.0)
    assert time.monotonic() - start < 10
    with pytest.raises(UserError, match="a Ray address is HOST:PORT"):
        _check_answers("127.0.0.1")
    with socket.socket() as server:  # accepts (the kernel does), and never says a word
        server.bind(("127.0.0.1", 0))
        server.listen()
        with pytest.raises(UserError, match=r"no Ray cluster answers there after 1 s"):
            _check_answers(f"ray://127.0.0.1:{server.getsockname()[1]}", timeout_s=1.0)


def test_an_address_that_is_no_ray_cluster_is_refused_and_a_real_gcs_passes(ray_head) -> None:
    """A web server's port was taken for a cluster's: ray.init then retried it for ever (the
    command hung, and Ray swapped 127.0.0.1 for the machine's address in its messages)."""
    import http.server
    import threading

    from varnext_ray.cluster import _check_answers
    from varnext_ray.errors import UserError

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        for form in ("", "ray://"):
            with pytest.raises(UserError, match="something answers there, but not a Ray cluster"):
                _check_answers(f"{form}127.0.0.1:{server.server_address[1]}", timeout_s=5.0)
    finally:
        server.shutdown()
        server.server_close()
    _check_answers(ray_head["address"], timeout_s=5.0)  # Ray's GCS, with token auth


@pytest.mark.parametrize(
    ("address", "said"),
    [
        ("http://127.0.0.1:8265", "the Ray dashboard's"),  # what `ray job submit` takes
        ("https://head:8265", "the Ray dashboard's"),
        ("gcs://127.0.0.1:6379", "unknown scheme 'gcs'"),
        ("127.0.0.1:6379,127.0.0.1:6380", "a Ray address is HOST:PORT"),
        ("me@127.0.0.1:6379", "a Ray address is HOST:PORT"),
        ("127.0.0.1:6379/x", "a Ray address is HOST:PORT"),
        ("::1:6379", "a Ray address is HOST:PORT"),  # IPv6 needs its brackets
    ],
)
def test_an_address_of_another_form_is_refused_before_any_connection(
    address: str, said: str
) -> None:
    """Only the host:port part was read, so the dashboard's URL (something answers there)
    reached ``ray.init`` (exit 1) and a list of addresses waited for an answer."""
    from varnext_ray.cluster import _check_answers
    from varnext_ray.errors import UserError

    with pytest.raises(UserError, match=re.escape(said)):
        _check_answers(address, timeout_s=30.0)


def test_an_ipv6_address_in_brackets_is_taken() -> None:
    import socket
    import threading

    from varnext_ray.cluster import _check_answers

    try:
        server = socket.socket(socket.AF_INET6)
        server.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with server:
        server.listen()

        def answer_as_http2() -> None:  # the server preface of an HTTP/2 server: SETTINGS
            connection, _ = server.accept()
            with connection:
                connection.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
                connection.recv(64)

        threading.Thread(target=answer_as_http2, daemon=True).start()
        _check_answers(f"[::1]:{server.getsockname()[1]}", timeout_s=1.0)


def test_auto_is_the_recorded_cluster_and_a_stale_record_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed ``ray start`` leaves its address recorded; Ray's ``auto`` retried it for ever.

    Ray also takes any GCS process running on the machine for ``auto``; the test suite runs
    its own, so that scan is made to find none here. The record is Ray's real file, read by
    Ray's own lookup from the temp folder that RAY_TMPDIR names.
    """
    import socket

    from ray._private import services

    from varnext_ray.cluster import _check_answers
    from varnext_ray.errors import UserError

    monkeypatch.setattr(services, "find_gcs_addresses", lambda: [])
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(UserError, match="no running Ray cluster was found on this machine"):
        _check_answers("auto", timeout_s=1.0)
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    record = tmp_path / "ray" / "ray_current_cluster"
    record.parent.mkdir()
    record.write_text(f"127.0.0.1:{port}")
    assert services.find_bootstrap_address(None) == f"127.0.0.1:{port}"  # where Ray looks
    with pytest.raises(UserError, match=f"no Ray cluster answers there.*127.0.0.1:{port}"):
        _check_answers("auto", timeout_s=1.0)


@pytest.mark.timeout(60)
def test_auto_refuses_a_record_that_is_no_file_instead_of_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray's lookup opens the record and reads it whole: a FIFO there hung ``auto`` (and a
    folder was "unexpected IsADirectoryError")."""
    from varnext_ray.cluster import _check_answers
    from varnext_ray.errors import UserError

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    record = tmp_path / "ray" / "ray_current_cluster"
    record.parent.mkdir()
    os.mkfifo(record)
    with pytest.raises(UserError, match="latest cluster is not a regular file") as refused:
        _check_answers("auto", timeout_s=1.0)
    assert refused.value.where == str(record)
    record.unlink()
    record.mkdir()
    with pytest.raises(UserError, match="latest cluster is not a regular file"):
        _check_answers("auto", timeout_s=1.0)


def _immutable(folder: Path) -> Path:
    """``folder``, made immutable (no one may add to it, root included), or a skip."""
    folder.mkdir()
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not allowed here")
    return folder


@pytest.mark.parametrize(
    ("make", "said"),
    [
        (lambda tmp: (tmp / "a-file").write_text("") and tmp / "a-file", "is not a folder"),
        (lambda tmp: tmp / "a-file" / "below", "is not a folder"),
        (lambda tmp: tmp / ("t" * 40), "too long for its sockets' paths"),
        (lambda tmp: _immutable(tmp / "locked"), "Ray cannot write its temp folder"),
        (lambda tmp: tmp / "new" / "folders", None),  # Ray makes what is missing
        (lambda tmp: tmp, None),
    ],
    ids=["file", "below-a-file", "too-long", "immutable", "missing", "good"],
)
def test_a_temp_folder_ray_cannot_use_is_refused_before_it_starts(
    monkeypatch: pytest.MonkeyPatch, make: Any, said: str | None
) -> None:
    """Ray keeps its sessions in $RAY_TMPDIR or $TMPDIR with no fallback: ``ray.init`` failed
    with NotADirectoryError, PermissionError or "AF_UNIX path length cannot exceed 107 bytes"
    (an "unexpected" exit 1, session folders left behind)."""
    import shutil
    import tempfile

    from varnext_ray.cluster import check_ray_temp
    from varnext_ray.errors import UserError

    base = Path(tempfile.mkdtemp(dir="/tmp", prefix="vt"))  # short: tmp_path is too long
    (base / "a-file").write_text("")
    folder = make(base)
    monkeypatch.delenv("RAY_TMPDIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(folder))
    try:
        if said is None:
            check_ray_temp()
        else:
            with pytest.raises(UserError, match=said):
                check_ray_temp()
    finally:
        subprocess.run(["chattr", "-i", str(base / "locked")], capture_output=True)
        shutil.rmtree(base)


def test_a_home_whose_name_is_too_long_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``~/.ray/auth_token`` under a HOME with a 300-byte name: ``Path.exists`` raised
    ENAMETOOLONG ("unexpected OSError")."""
    from varnext_ray.cluster import secure_token_file
    from varnext_ray.errors import UserError

    monkeypatch.setenv("HOME", str(tmp_path / ("h" * 300)))
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    with pytest.raises(UserError, match=r"token file's path is unusable \(File name too long"):
        secure_token_file()


def test_the_ray_token_is_kept_readable_by_its_owner_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from varnext_ray.cluster import secure_token_file, token_path

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    token = tmp_path / ".ray" / "auth_token"
    assert token_path() == token
    token.parent.mkdir(mode=0o755)
    token.write_text("secret")
    token.chmod(0o644)  # as Ray writes it under the usual umask
    secure_token_file()
    assert token.stat().st_mode & 0o777 == 0o600
    assert token.parent.stat().st_mode & 0o777 == 0o700
    assert token.read_text() == "secret"
    # A folder the user chose (it may be shared) is not changed; the file is.
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    (shared / "token").write_text("secret")
    (shared / "token").chmod(0o644)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(shared / "token"))
    secure_token_file()
    assert (shared / "token").stat().st_mode & 0o777 == 0o600
    assert shared.stat().st_mode & 0o777 == 0o755


@pytest.mark.parametrize(
    "kind, problem",
    [
        ("script", "more than one word or line"),
        ("folder", "a folder or a device"),
        ("empty", "it is empty"),
        ("missing", "no such file"),
        ("binary", "not text"),
    ],
)
def test_a_token_path_that_is_no_token_file_is_refused_and_left_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, problem: str
) -> None:
    from varnext_ray.cluster import secure_token_file
    from varnext_ray.errors import UserError

    path = tmp_path / kind
    if kind == "script":
        path.write_text("#!/bin/sh\necho hello\n")
    elif kind == "folder":
        path.mkdir()
    elif kind == "empty":
        path.write_text("")
    elif kind == "binary":
        path.write_bytes(bytes(range(200, 256)))
    if path.exists():
        path.chmod(0o755)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    with pytest.raises(UserError, match=f"does not name a Ray token file .*{problem}"):
        secure_token_file()
    if path.exists():
        assert path.stat().st_mode & 0o777 == 0o755  # not made private: it is not the token


def test_a_local_rays_tasks_and_actors_get_the_jobs_variables(ray_local) -> None:
    """connect_ray hands the job's variables to the local node's processes through their
    environment (no runtime env): every task and actor sees them, the driver keeps its own."""
    import ray

    from varnext_ray.cluster import LOCAL_TRAIN_ENV, TRAIN_ENV

    keys = ("RAY_ADDRESS", *TRAIN_ENV, *LOCAL_TRAIN_ENV)

    @ray.remote(num_cpus=0.1)
    def task_env() -> dict[str, str | None]:
        return {key: os.environ.get(key) for key in keys}

    @ray.remote(num_cpus=0.1)
    class Actor:
        def env(self) -> dict[str, str | None]:
            return {key: os.environ.get(key) for key in keys}

    gcs = ray.get_runtime_context().gcs_address
    expected = {"RAY_ADDRESS": gcs} | TRAIN_ENV | LOCAL_TRAIN_ENV
    actor = Actor.remote()
    assert ray.get(task_env.remote()) == expected
    assert ray.get(actor.env.remote()) == expected
    ray.kill(actor)
    assert "RAY_ADDRESS" not in os.environ and "RAY_GCS_SERVER_PORT" not in os.environ


LOOPBACK_PROBE = """
import json

import ray  # imported before connecting, as the CLI's own checks may do
import psutil
from varnext_ray.cluster import connect_ray

connect_ray()
try:
    @ray.remote(num_cpus=0.1)
    def node_ip():
        return ray.util.get_node_ip_address()

    seen = {ray.util.get_node_ip_address(), ray.get(node_ip.remote())}
    seen.add(ray.get_runtime_context().gcs_address.rsplit(":", 1)[0])
    for proc in psutil.Process().children(recursive=True):
        try:
            connections = proc.net_connections(kind="inet")
        except psutil.Error:
            continue
        seen.update(c.laddr.ip for c in connections if c.status == psutil.CONN_LISTEN)
    print(json.dumps(sorted(seen)))
finally:
    ray.shutdown()
"""


def test_a_local_ray_keeps_to_loopback_even_when_ray_was_imported_first() -> None:
    """Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, at import; a process that imported it
    without the variable (the CLI, unlike this test session) still gets a node on 127.0.0.1,
    and none of its processes listens on the machine's network address (it did: the GCS,
    raylet and agents listened on every interface and the node was the routable address)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run(
        [sys.executable, "-c", LOOPBACK_PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    addresses = json.loads(out.stdout.strip().splitlines()[-1])
    assert "127.0.0.1" in addresses
    assert set(addresses) <= {"127.0.0.1", "::1", "::ffff:127.0.0.1"}, addresses


@pytest.mark.parametrize("mode", ["bogus", "", "tokens"])
def test_an_auth_mode_ray_would_read_as_disabled_is_refused(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``RAY_AUTH_MODE=bogus``: Ray reads any value but "token" as disabled, so a typo ran the
    local Ray without token auth, and a training ran (exit 0)."""
    from varnext_ray.cluster import check_auth_mode
    from varnext_ray.errors import UserError

    monkeypatch.setenv("RAY_AUTH_MODE", mode)
    with pytest.raises(UserError, match=r"is neither 'token' nor 'disabled' \(Ray would read"):
        check_auth_mode()
    for taken in ("token", "TOKEN", "disabled"):
        monkeypatch.setenv("RAY_AUTH_MODE", taken)
        check_auth_mode()
    monkeypatch.delenv("RAY_AUTH_MODE")
    check_auth_mode()
