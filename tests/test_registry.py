"""MLflow conventions: registered models (best/sweep --register, predict --model, pyfunc that
needs no varnext_ray import and holds no pickle), the experiment kind, dataset inputs, system
metrics, and the quiet-console settings. A real SQLite store; no Ray (the sweep's real runs
are checked in tests/test_sweep.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import REPO, smoke_checkpoint
from varnext_ray import console, mlflow_extras, registry, tracking
from varnext_ray.cli import main
from varnext_ray.errors import UserError

EXP = "registry-test"
MODEL = "reg-vae"
# run name: (best_extrap_psnr, checkpoint seed or None, status)
RUNS = {
    "trial-good": (21.0, 1, "FINISHED"),
    "trial-better": (23.0, 2, "FINISHED"),
    "trial-failed": (30.0, 3, "FAILED"),
    "trial-no-ckpt": (29.0, None, "FINISHED"),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A sweep parent and the trial runs of RUNS, with smoke-model checkpoints."""
    root = tmp_path_factory.mktemp("registry")
    uri = tracking.resolve_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    tracking.client(uri).create_experiment(EXP, artifact_location=str(root / "artifacts"))
    parent = tracking.start_run(uri, EXP, run_name="sweep", tags={"varnext.kind": "sweep"})
    runs = {}
    for name, (psnr, seed, status) in RUNS.items():
        run = tracking.start_run(
            uri, EXP, run_name=name, tags={"varnext.kind": "trial"}, parent_run_id=parent
        )
        metrics = {"best_extrap_psnr": psnr, "extrap_psnr": psnr, "copy_last_psnr": 25.0}
        tracking.log_metrics(uri, run, metrics | {"epoch": 2}, step=2)
        if seed is not None:
            tracking.log_artifact(uri, run, smoke_checkpoint(root, name, seed), "checkpoint")
        tracking.end_run(uri, run, status)
        runs[name] = run
    tracking.end_run(uri, parent)
    return {"uri": uri, "root": root, "parent": parent, "runs": runs}


@pytest.fixture(scope="module")
def registered(store: dict) -> dict:
    """``varnext best --register`` once (module scope: later tests reuse the version)."""
    out = store["root"] / "best"
    argv = ["best", "--experiment", EXP, "--out", str(out), "--tracking-uri", store["uri"]]
    assert main([*argv, "--metric", "extrap_psnr", "--register", MODEL]) == 0
    return {"out": out}


def _frames(tmp: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in (0, 1):  # 96x54: larger than the 64x36 model, another aspect ratio
        path = tmp / f"frame_{i}.png"
        Image.fromarray(rng.integers(0, 255, (54, 96, 3), np.uint8)).save(path)
        paths.append(path)
    return paths[0], paths[1]


# ---- registered models ------------------------------------------------------------------------


def test_best_register_makes_a_champion_version_with_run_metrics_and_arch(
    store: dict, registered: dict
) -> None:
    from varnext_ray.checkpoint_load import load_checkpoint

    client = mlflow.MlflowClient(store["uri"], registry_uri=store["uri"])
    version = client.get_model_version_by_alias(MODEL, "champion")
    best = store["runs"]["trial-better"]  # the failed and checkpoint-less runs score higher
    assert str(version.version) == "1" and version.run_id == best
    assert version.tags["varnext.source_run_id"] == best
    assert version.tags["varnext.source_run_name"] == "trial-better"
    assert version.tags["varnext.selected_by"] == "best_extrap_psnr"
    assert float(version.tags["metric.extrap_psnr"]) == 23.0
    arch = load_checkpoint(registered["out"]).arch
    latent = str(arch.latent_dim)
    assert version.tags["varnext.latent_dim"] == latent
    assert version.tags["varnext.input_size"] == f"{arch.input.width}x{arch.input.height}"
    assert "trial-better" in version.description
    assert f'"latent_dim": {latent}' in version.description  # the architecture JSON
    logged = client.get_logged_model(version.tags["varnext.model_id"])
    assert logged.source_run_id == best and logged.params["arch.latent_dim"] == latent
    assert client.get_run(best).data.tags["varnext.registered_model"] == f"{MODEL}/1"
    assert (registered["out"] / "meta.json").is_file()  # best --out still downloads


def test_registering_again_adds_a_version_and_moves_the_alias(
    store: dict, registered: dict
) -> None:
    good = store["runs"]["trial-good"]
    one = registry.register_run(store["uri"], good, f"{MODEL}-moves")
    two = registry.register_run(store["uri"], good, f"{MODEL}-moves")
    assert (one["version"], two["version"]) == ("1", "2")
    client = mlflow.MlflowClient(store["uri"], registry_uri=store["uri"])
    assert str(client.get_model_version_by_alias(f"{MODEL}-moves", "champion").version) == "2"


def test_a_registration_whose_alias_moved_on_meanwhile_says_so(
    store: dict, registered: dict, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Registrations of one name at once each printed "registered models:/NAME@champion", while
    the alias ended on the last one's version. Here a second registration runs right after the
    first sets its alias (the interleaving that concurrent `best --register` runs produce)."""
    from varnext_ray.cli_jobs import _print_registered

    good, name = store["runs"]["trial-good"], f"{MODEL}-race"
    set_alias = mlflow.MlflowClient.set_registered_model_alias
    second: list[dict] = []

    def and_another_registers(self: mlflow.MlflowClient, *args: object, **kwargs: object) -> None:
        set_alias(self, *args, **kwargs)
        if not second:
            second.append({})
            second[0] = registry.register_run(store["uri"], good, name)

    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", and_another_registers)
    first = registry.register_run(store["uri"], good, name)
    assert (first["version"], second[0]["version"]) == ("1", "2")
    assert first["alias_version"] == "2" and first["model_uri"] == f"models:/{name}/1"
    assert (
        second[0]["alias_version"] == "2" and second[0]["model_uri"] == f"models:/{name}@champion"
    )
    capsys.readouterr()
    _print_registered(first)
    out = capsys.readouterr().out
    assert f"registered models:/{name}/1 (version 1" in out
    assert "its alias champion points at version 2, registered meanwhile" in out


def test_the_logged_model_is_source_and_safetensors_with_no_pickle(
    store: dict, registered: dict, tmp_path: Path
) -> None:
    with registry._tracking_uri(store["uri"]):
        local = Path(
            mlflow.artifacts.download_artifacts(f"models:/{MODEL}@champion", dst_path=str(tmp_path))
        )
    files = [p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()]
    pickles = [f for f in files if f.endswith((".pkl", ".pickle")) or "pickle" in f.lower()]
    assert not pickles, pickles
    assert {"MLmodel", "pyfunc_model.py", "artifacts/checkpoint/model.safetensors"} <= set(files)
    assert "code/varnext_ray/checkpoint.py" in files and "code/varnext_ray/predict.py" in files
    flavor = yaml.safe_load((local / "MLmodel").read_text())
    pyfunc = flavor["flavors"]["python_function"]
    assert pyfunc["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert "python_model" not in pyfunc  # a pickled PythonModel would be named here
    assert '"uint8"' in flavor["signature"]["inputs"] and "steps" in flavor["signature"]["params"]


USER_CODE = """
import json, sys
import mlflow
import numpy as np
assert "varnext_ray" not in sys.modules
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
frames = np.load(sys.argv[3])
one = model.predict(frames)
three = model.predict(frames, params={"steps": 3})
np.save(sys.argv[4], one)
print(json.dumps({"one": [list(one.shape), str(one.dtype)], "three": list(three.shape),
                  "loaded_from": sys.modules["varnext_ray"].__file__}))
"""


def test_pyfunc_predicts_for_code_that_never_imports_varnext_ray(
    store: dict, registered: dict, tmp_path: Path
) -> None:
    from varnext_ray.checkpoint_load import load_checkpoint
    from varnext_ray.predict import load_frame, predict_frames

    a, b = _frames(tmp_path)
    frames = np.stack([load_frame(a), load_frame(b)])  # (2, 54, 96, 3) uint8
    np.save(tmp_path / "frames.npy", frames)
    script = tmp_path / "user.py"
    script.write_text(USER_CODE)
    model_uri = f"models:/{MODEL}@champion"
    done = subprocess.run(
        [sys.executable, str(script), store["uri"], model_uri, str(tmp_path / "frames.npy"),
         str(tmp_path / "out.npy")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["one"] == [[1, 54, 96, 3], "uint8"] and result["three"] == [3, 54, 96, 3]
    # the model runs the package source it carries, not an installed varnext_ray
    assert "/code/varnext_ray/" in result["loaded_from"], result["loaded_from"]
    ckpt = load_checkpoint(registered["out"])
    expected = predict_frames(ckpt, frames[0], frames[1])[0]
    assert np.array_equal(np.load(tmp_path / "out.npy")[0], expected)


def test_predict_from_the_registry(
    store: dict,
    registered: dict,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # MLFLOW_REGISTRY_URI (which best --register does not read) sent the download to another
    # store, where MLflow made its tables in whatever SQLite file it named: the store is the
    # registry, and the variable is set aside.
    foreign = tmp_path / "foreign.db"
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{foreign}")
    a, b = _frames(tmp_path)
    out = tmp_path / "pred.png"
    argv = ["predict", "--model", f"models:/{MODEL}@champion", "--tracking-uri", store["uri"]]
    assert main([*argv, "--out", str(out), str(a), str(b)]) == 0
    assert Image.open(out).size == (96, 54)
    assert "wrote" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
    assert not foreign.exists()


SWEEP_REGISTER = ["sweep", "--space", str(REPO / "search_spaces" / "smoke.json")]
SWEEP_REGISTER += ["--data", "nowhere", "--register"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["predict", "--model", "models:/nope@champion"], "cannot load the registered model"),
        (["predict", "--model", "runs:/abc/model"], "not a registered model URI"),
        (["predict"], "pass --checkpoint DIR or --model"),
        (["best", "--experiment", EXP, "--register", "a/b"], "invalid registered model name"),
        ([*SWEEP_REGISTER, "x:y"], "invalid registered model name"),  # before any Ray
        # MLflow refused it only once the whole sweep had run
        ([*SWEEP_REGISTER, ".."], "invalid registered model name '..'"),
    ],
)
def test_bad_model_inputs_are_one_line_errors(
    argv: list[str],
    expected: str,
    store: dict,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    a, b = _frames(tmp_path)
    full = [*argv, "--tracking-uri", store["uri"]]
    if argv[0] == "best":
        full += ["--out", str(tmp_path / "o")]
    if argv[0] == "predict":
        full += ["--out", str(tmp_path / "o.png"), str(a), str(b)]
    assert main(full) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err


def test_sweep_best_is_registered_from_its_own_trials(store: dict) -> None:
    done = registry.register_sweep_best(
        store["uri"], EXP, store["parent"], f"{MODEL}-sweep", "extrap_psnr"
    )
    assert done is not None and done["run_id"] == store["runs"]["trial-better"]
    assert registry.register_sweep_best(store["uri"], EXP, "0" * 32, "x", "extrap_psnr") is None


# ---- the MLflow conventions of every run ------------------------------------------------------


def test_new_experiments_are_training_runs_and_a_users_kind_is_kept(tmp_path: Path) -> None:
    uri = tracking.resolve_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = tracking.client(uri)
    tracking.start_run(uri, "fresh", run_name="r")
    assert client.get_experiment_by_name("fresh").tags["mlflow.experimentKind"] == (
        "custom_model_development"
    )
    client.create_experiment("mine", tags={"mlflow.experimentKind": "genai_development"})
    tracking.start_run(uri, "mine", run_name="r")
    assert client.get_experiment_by_name("mine").tags["mlflow.experimentKind"] == (
        "genai_development"
    )
    legacy = client.create_experiment("legacy")  # made before this convention
    tracking.start_run(uri, "legacy", run_name="r")
    assert client.get_experiment(legacy).tags["mlflow.experimentKind"] == "custom_model_development"


def test_dataset_inputs_carry_name_digest_source_schema_and_context(
    dataset_dir: Path, tmp_path: Path
) -> None:
    import hashlib

    uri = tracking.resolve_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = tracking.start_run(uri, "inputs", run_name="r")
    mlflow_extras.log_dataset_inputs(uri, run, dataset_dir)
    mlflow_extras.log_dataset_inputs(uri, run, dataset_dir)  # a resumed run: nothing twice
    inputs = tracking.client(uri).get_run(run).inputs.dataset_inputs
    digest = hashlib.sha256((dataset_dir / "dataset.json").read_bytes()).hexdigest()[:32]
    contexts = {}
    for item in inputs:
        ds = item.dataset
        contexts[ds.name] = {t.key: t.value for t in item.tags}["mlflow.data.context"]
        assert ds.digest == digest and ds.source_type == "local"
        assert json.loads(ds.source) == {"uri": str(dataset_dir.resolve())}
        columns = {c["name"] for c in json.loads(ds.schema)["mlflow_colspec"]}
        assert {"clip_id", "frame_index", "split", "image"} <= columns
        assert json.loads(ds.profile)["size"] == [64, 36]
    assert contexts == {"ds/train": "training", "ds/val": "validation"}


def test_system_metrics_are_logged_even_for_a_block_shorter_than_the_interval(
    tmp_path: Path,
) -> None:
    uri = tracking.resolve_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = tracking.start_run(uri, "system", run_name="r")
    with mlflow_extras.system_metrics(uri, run):
        time.sleep(0.2)
    metrics = tracking.client(uri).get_run(run).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(
        metrics
    )


def test_a_sample_is_in_the_store_before_the_report_that_may_end_the_trial(
    tmp_path: Path,
) -> None:
    # ASHA can kill a trial's workers right after an epoch's report: stop() never runs then,
    # so ensure_logged() must leave a sample in the store by itself, and only one.
    uri = tracking.resolve_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = tracking.start_run(uri, "system", run_name="r")
    sampler = mlflow_extras.SystemMetrics(uri, run, interval_s=3600)
    sampler.ensure_logged()
    sampler.ensure_logged()
    history = tracking.client(uri).get_metric_history(run, "system/cpu_utilization_percentage")
    assert len(history) == 1
    sampler.stop()
    assert (
        len(tracking.client(uri).get_metric_history(run, "system/cpu_utilization_percentage")) == 1
    )


def test_system_metrics_start_aside_and_are_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rank 0 builds SystemMetrics right before its first step: the monitor's start (MLflow's
    # import and store) must not hold that step, yet ensure_logged() must wait for it.
    from mlflow.system_metrics import system_metrics_monitor as smm

    gate = threading.Event()
    original = smm.SystemMetricsMonitor.__init__

    def held(self, *args, **kwargs) -> None:
        assert gate.wait(timeout=60)
        original(self, *args, **kwargs)

    monkeypatch.setattr(smm.SystemMetricsMonitor, "__init__", held)
    uri = tracking.resolve_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = tracking.start_run(uri, "system", run_name="r")
    sampler = mlflow_extras.SystemMetrics(uri, run, interval_s=3600)  # returns while held
    gate.set()
    sampler.ensure_logged()
    history = tracking.client(uri).get_metric_history(run, "system/cpu_utilization_percentage")
    assert len(history) == 1
    sampler.stop()


def test_psutil_and_nvml_are_pinned_direct_dependencies() -> None:
    text = (REPO / "pyproject.toml").read_text()
    assert '"psutil==' in text and '"nvidia-ml-py==' in text
    done = subprocess.run(  # importable without Ray's vendored copy on the path
        [sys.executable, "-c", "import psutil, sys; assert 'ray' not in sys.modules"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr


def test_console_is_quiet_by_default_and_verbose_brings_ray_logs_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(console.VERBOSE_ENV, raising=False)
    monkeypatch.delenv("RAY_DATA_LOG_LEVEL", raising=False)
    monkeypatch.delenv("PYTHONWARNINGS", raising=False)
    monkeypatch.delenv("MLFLOW_LOGGING_LEVEL", raising=False)
    assert console.ray_env_vars() == {
        "RAY_DATA_LOG_LEVEL": "WARNING",
        "PYTHONWARNINGS": "ignore::DeprecationWarning",
        "MLFLOW_LOGGING_LEVEL": "WARNING",
    }
    assert console.train_logging_config().log_level == "WARNING"
    monkeypatch.setenv(console.VERBOSE_ENV, "1")
    assert console.ray_env_vars() == {console.VERBOSE_ENV: "1"}
    assert console.train_logging_config().log_level == "INFO"
    assert console.progress_metrics("val_loss")[:3] == [
        "val_loss",
        "best_val_loss",
        "copy_last_psnr",
    ]


# ---- hostile pass 5: the store predict --model reads, and names MLflow refuses ----------------


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` with its size and mtime."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
    }


@pytest.mark.timeout(120)  # a closed port must not hang in MLflow's retries
@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sqlite:///{tmp}/notes.db", "not a SQLite database"),
        ("sqlite:///{tmp}/empty.db", "holds no MLflow store (it is empty)"),
        ("sqlite:///{tmp}/missing.db", "no MLflow database at this path"),
        ("sqlite:///{tmp}/nodir/new.db", "no MLflow database at this path"),
        ("sqlite:///relative.db", "no MLflow database at this path"),
        (None, "no MLflow database at this path"),  # ./mlflow.db
        ("http://127.0.0.1:1", "MLflow tracking server unreachable"),
        ("foo://x", "unsupported MLflow tracking URI"),
        ("file:///{tmp}/mlruns", "unsupported MLflow tracking URI"),
        ("{tmp}/x.db", "no scheme"),
    ],
)
def test_predict_model_reads_an_existing_store_as_best_does(
    uri: str | None,
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """It only resolved the URI: a missing or empty database was created as a new store,
    a file of another kind was an "unexpected DatabaseError", a closed port hung."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.db").write_text("my notes, not a database\n")
    (work / "empty.db").touch()
    a, b = _frames(work)
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    argv = ["predict", "--model", f"models:/{MODEL}/1", "--out", str(work / "p.png"), str(a)]
    argv += [str(b)] + ([] if uri is None else ["--tracking-uri", uri.format(tmp=work)])
    before = _snapshot(work)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert _snapshot(work) == before


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("..", "MLflow refuses it"),
        (".", "MLflow refuses it"),
        ("a\nb", "control character"),
        ("\x1b[31mred", "control character"),
        ("a\u202eb", "control character"),  # a bidi override
        ("a?b", "models:/NAME@champion would not name it"),  # registered, never read back
        ("a" * 300, "longer than MLflow's 256"),
    ],
)
def test_a_model_name_mlflow_refuses_is_refused_before_best_downloads(
    name: str, why: str, store: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """`..` passed, and MLflow refused it after --out was downloaded (left there, with an
    orphaned logged model): exit 1."""
    client = mlflow.MlflowClient(store["uri"], registry_uri=store["uri"])
    models = len(client.search_registered_models())
    logged = len(client.search_logged_models([client.get_experiment_by_name(EXP).experiment_id]))
    out = tmp_path / "o"
    argv = ["best", "--experiment", EXP, "--out", str(out), "--tracking-uri", store["uri"]]
    assert main([*argv, "--metric", "extrap_psnr", "--register", name]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "invalid registered model name" in err[0] and why in err[0], err
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert len(client.search_registered_models()) == models
    exp = client.get_experiment_by_name(EXP).experiment_id
    assert len(client.search_logged_models([exp])) == logged


def test_the_python_api_checks_the_name_too(store: dict, registered: dict) -> None:
    with pytest.raises(UserError, match=r"invalid registered model name '\.\.'"):
        registry.register_checkpoint(
            store["uri"], store["runs"]["trial-good"], registered["out"], ".."
        )


def test_a_model_whose_files_left_the_artifact_store_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """MLflow's "No artifacts found" note came first, then "holds no varnext checkpoint"."""
    import shutil

    from tests.conftest import smoke_checkpoint

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = tracking.start_run(uri, "gone-files", run_name="r", tags={"varnext.kind": "train"})
    registry.register_checkpoint(uri, run, smoke_checkpoint(tmp_path, "ck", 0), "gone")
    shutil.rmtree(tmp_path / tracking.ARTIFACTS_DIR)
    a, b = _frames(tmp_path)
    capsys.readouterr()  # MLflow's notes while the store was made
    argv = ["predict", "--model", "models:/gone/1", "--tracking-uri", uri]
    assert main([*argv, "--out", str(tmp_path / "p.png"), str(a), str(b)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "files are missing from its artifact store" in err[0], err
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("status", ["FAILED_REGISTRATION", "PENDING_REGISTRATION"])
def test_a_version_whose_registration_is_not_ready_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture, status: str
) -> None:
    """A version whose registration failed or is pending was downloaded and predicted from."""
    import sqlite3

    from tests.conftest import smoke_checkpoint

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = tracking.start_run(uri, "not-ready", run_name="r", tags={"varnext.kind": "train"})
    registry.register_checkpoint(uri, run, smoke_checkpoint(tmp_path, "ck", 0), "not-ready")
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        db.execute("UPDATE model_versions SET status = ?", (status,))
    a, b = _frames(tmp_path)
    capsys.readouterr()  # MLflow's notes while the store was made
    for model in ("models:/not-ready@champion", "models:/not-ready/1"):
        argv = ["predict", "--model", model, "--tracking-uri", uri]
        assert main([*argv, "--out", str(tmp_path / "p.png"), str(a), str(b)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"is not ready (its status is {status})" in err[0], err
    assert not (tmp_path / "p.png").exists()


def test_predict_model_checks_out_before_it_downloads(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """An --out that exists (or names no PNG) was found only after the model had downloaded:
    on a remote store, megabytes fetched for a command that could not write its answer. The
    model's files are gone here, so a download would end in another error."""
    import shutil

    from tests.conftest import smoke_checkpoint

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = tracking.start_run(uri, "out-first", run_name="r", tags={"varnext.kind": "train"})
    registry.register_checkpoint(uri, run, smoke_checkpoint(tmp_path, "ck", 0), "out-first")
    shutil.rmtree(tmp_path / tracking.ARTIFACTS_DIR)
    a, b = _frames(tmp_path)
    existing = tmp_path / "p.png"
    existing.write_bytes(b"an earlier prediction")
    capsys.readouterr()  # MLflow's notes while the store was made
    for out, expected in ((existing, "already exists"), (tmp_path / "p.jpg", "unsupported")):
        argv = ["predict", "--model", "models:/out-first/1", "--tracking-uri", uri]
        assert main([*argv, "--out", str(out), str(a), str(b)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
    assert existing.read_bytes() == b"an earlier prediction"


@pytest.mark.slow  # starts an mlflow server unless another test module already did
def test_a_registered_model_downloads_through_an_mlflow_server(
    mlflow_server: str, tmp_path: Path
) -> None:
    """predict --model checks a server as best does (GET /health), then downloads through it."""
    from tests.conftest import smoke_checkpoint
    from varnext_ray.checkpoint_load import load_checkpoint

    run = tracking.start_run(
        mlflow_server, "reg-http", run_name="r", tags={"varnext.kind": "train"}
    )
    registry.register_checkpoint(mlflow_server, run, smoke_checkpoint(tmp_path, "ck", 4), "http")
    out = registry.download_checkpoint(mlflow_server, "models:/http@champion", tmp_path / "o")
    assert load_checkpoint(out).meta["extra"]["name"] == "ck"


@pytest.mark.parametrize(
    "mlmodel",
    [
        b"flavors: {python_function: {artifacts: {checkpoint: {path: 5}}}}",
        b"flavors: {python_function: {artifacts: {checkpoint: {path: [a, b]}}}}",
        b'flavors: {python_function: {artifacts: {checkpoint: {path: "\\0x"}}}}',
        b"flavors: \xff\xfe\n",
        b"flavors: " + b"[" * 20000 + b"]" * 20000,
        b"flavors: {python_function: {artifacts: {checkpoint: {path: c}}}}\n" + b"#" * 2**21,
    ],
    ids=["int", "list", "nul", "not-utf8", "deep", "over-1-MiB"],
)
def test_a_registered_models_odd_mlmodel_is_no_varnext_model(
    tmp_path: Path, mlmodel: bytes
) -> None:
    """A model registered by hand whose MLmodel names its checkpoint oddly ended predict
    --model in "unexpected TypeError/ValueError/UnicodeDecodeError/RecursionError"; a 20 MB
    one took minutes to parse. It is read bounded, and is simply not a varnext model."""
    from varnext_ray.registry import _checkpoint_artifact

    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "meta.json").write_text("{}")
    (tmp_path / "MLmodel").write_bytes(mlmodel)
    assert _checkpoint_artifact(tmp_path) is None
    (tmp_path / "MLmodel").write_bytes(mlmodel.splitlines()[0].replace(b"[a, b]", b"c"))
    if b"path: c" in mlmodel:
        assert _checkpoint_artifact(tmp_path) == (tmp_path / "c").resolve()
