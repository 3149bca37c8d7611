"""Inputs of ``varnext train`` and ``varnext sweep`` refused before Ray: run and space names,
the sweep's training flags, search-space values, input channels, Parquet columns, and a run
resumed with another architecture.

Ray cases pass ``--address 127.0.0.1:1`` (a closed port): reaching the Ray connect step would
fail with "no Ray cluster answers there", not with the message asserted. The one test that
trains (a real finished run to resume) runs last, on the session's local Ray.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO
from varnext_ray.arch import load_arch
from varnext_ray.cli import main
from varnext_ray.errors import UserError
from varnext_ray.run_records import RUN_FILE
from varnext_ray.train import ARCH_FILE, check_run_folder, check_same_arch

SMOKE = REPO / "configs" / "smoke_64x36.json"
CLOSED = ["--address", "127.0.0.1:1"]


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str], expect: str) -> str:
    """Runs the CLI; asserts exit 2 and one ``error:`` line holding ``expect``."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert expect in lines[0], lines[0]
    assert "no Ray cluster answers there" not in lines[0]
    return lines[0]


def _train_argv(data: Path, tmp: Path, *extra: str, config: Path = SMOKE) -> list[str]:
    return [
        "train",
        *("--config", str(config), "--data", str(data)),
        *("--storage", str(tmp / "storage" / "inner")),
        *("--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}"),
        *("--workers", "1", "--epochs", "1", "--steps", "2", "--batch-size", "4"),
        *("--val-triplets", "4"),
        *extra,
    ]


def _sweep_argv(space: Path, data: Path, tmp: Path, *extra: str) -> list[str]:
    return [
        "sweep",
        *("--space", str(space), "--data", str(data)),
        *("--storage", str(tmp / "storage" / "inner")),
        *("--tracking-uri", f"sqlite:///{tmp / 'mlflow.db'}"),
        *("--workers-per-trial", "1", "--samples", "1"),
        *CLOSED,
        *extra,
    ]


def _space(tmp: Path, **fields: object) -> Path:
    data = {"name": "t", "base": str(SMOKE), "latent_channels": [4, 8]} | fields
    path = tmp / "space.json"
    path.write_text(json.dumps(data).replace('"1e999"', "1e999"))  # a literal, read as inf
    return path


@pytest.mark.parametrize("name", ["../../escaped", "", "/etc", "..", "a/b", "x" * 101])
def test_a_run_name_must_be_one_directory_under_storage(
    name: str, dataset_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _refused(_train_argv(dataset_dir, tmp_path, "--name", name, *CLOSED), capsys, "--name")
    assert not (tmp_path / "storage").exists() and not (tmp_path / "escaped").exists()


def test_a_run_name_naming_something_else_under_storage_is_refused(
    dataset_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--storage`` the dataset's parent and ``--name`` the dataset (or a checkpoint, or a
    file) passed every check: the run's lock, records and checkpoints went among its files."""
    storage = tmp_path / "storage" / "inner"
    (storage / "mine").mkdir(parents=True)
    (storage / "mine" / "notes.txt").write_text("the user's")
    (storage / "a.png").write_bytes(b"the user's picture")
    (storage / "empty").mkdir()
    shutil.copytree(dataset_dir, storage / "ds")
    before = sorted(str(p.relative_to(storage)) for p in storage.rglob("*"))
    for name, said in [("ds", "(it holds dataset.json, "), ("mine", "(it holds notes.txt)")]:
        line = _refused(_train_argv(dataset_dir, tmp_path, "--name", name, *CLOSED), capsys, said)
        assert f"--name {name!r} names a folder in --storage that is not a varnext run" in line
    line = _refused(_train_argv(storage / "ds", tmp_path, "--name", "ds", *CLOSED), capsys, "")
    assert "not a varnext run" in line  # the dataset read is the run's folder: refused too
    _refused(_train_argv(dataset_dir, tmp_path, "--name", "a.png", *CLOSED), capsys, "a file")
    assert sorted(str(p.relative_to(storage)) for p in storage.rglob("*")) == before
    check_run_folder(storage, "empty")  # an empty folder, a new name, a run's folder: all pass
    check_run_folder(storage, "new")
    (storage / "empty" / RUN_FILE).write_text("{}")
    check_run_folder(storage, "empty")


def test_a_sweep_that_exists_is_refused_before_ray(
    dataset_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Started again without --resume, a sweep was refused only once Ray had started."""
    folder = tmp_path / "storage" / "inner" / "sweep-varnext-sweep-t"
    folder.mkdir(parents=True)
    (folder / "x").write_text("kept")
    line = _refused(_sweep_argv(_space(tmp_path), dataset_dir, tmp_path), capsys, "")
    assert "a sweep of this experiment and space already exists" in line and "--resume" in line
    assert [p.name for p in folder.iterdir()] == ["x"]


@pytest.mark.parametrize("name", ["../../../tmp/hostile/spescape", "", "/etc", "."])
def test_a_space_name_must_be_one_directory_under_storage(
    name: str, dataset_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _refused(_sweep_argv(_space(tmp_path, name=name), dataset_dir, tmp_path), capsys, "")
    assert "name: must be one path component" in line


def test_an_experiment_with_a_slash_cannot_name_the_sweep_directory(
    dataset_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _sweep_argv(_space(tmp_path), dataset_dir, tmp_path, "--experiment", "../../up")
    _refused(argv, capsys, "--experiment")


@pytest.mark.parametrize(
    ("flag", "value", "expect"),
    [
        ("--batch-size", "0", "--batch-size must be >= 1"),
        ("--batch-size", "100000000", "--batch-size must be at most"),
        ("--val-triplets", "0", "--val-triplets must be >= 1"),
        ("--steps", "-3", "--steps must be from 1"),
        ("--rollout-steps", "-1", "--rollout-steps must be >= 0"),
        ("--epochs", "1000000000000", "epochs must be at most"),
        ("--epochs", "0", "epochs must be >= 1"),
    ],
)
def test_sweep_training_flags_are_checked_before_ray(
    flag: str,
    value: str,
    expect: str,
    dataset_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = _sweep_argv(_space(tmp_path), dataset_dir, tmp_path, flag, value)
    _refused(argv, capsys, expect)


@pytest.mark.parametrize(
    ("fields", "expect"),
    [
        ({"lr": [0.0]}, "lr: must be > 0"),
        ({"lr": [-1.0]}, "lr: must be > 0"),
        ({"lr": {"low": 0.001, "high": "1e999"}}, "lr: must be a finite number (got Infinity)"),
        ({"batch_size": [0]}, "batch_size: must be >= 1"),
        ({"batch_size": [-4]}, "batch_size: must be >= 1"),
        ({"batch_size": [10**12]}, "batch_size: must be <="),
        ({"latent_channels": [0]}, "latent_channels: must be >= 1"),
        ({"latent_channels": {"low": -2, "high": 4}}, "latent_channels: must be >= 1"),
        ({"latent_dim": [0], "latent_kind": ["flat"]}, "latent_dim: must be >= 1"),
        ({"beta": [-0.5]}, "beta: must be >= 0"),
        ({"beta": {"low": 0.0, "high": "1e999"}}, "beta: must be a finite number (got Infinity)"),
        ({"linearity_weight": [-1.0]}, "linearity_weight: must be >= 0"),
        ({"linear": [[-5]]}, "linear: must be >= 1"),
        ({"epochs": 10**12}, "epochs: must be <="),
        ({"encoder": {"channels": [2**40]}}, "encoder.channels: must be <="),
    ],
)
def test_search_space_values_are_bounded_like_their_fields(
    fields: dict,
    expect: str,
    dataset_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _refused(_sweep_argv(_space(tmp_path, **fields), dataset_dir, tmp_path), capsys, expect)


def _batch_norm_base(tmp: Path) -> Path:
    """The smoke architecture with batch norm on every layer: 6 layers of stride 2 bring its
    64x36 input to a 1x1 map, 5 to 2x2."""
    arch = json.loads(SMOKE.read_text())
    arch["encoder"]["conv"] = [{**layer, "norm": "batch"} for layer in arch["encoder"]["conv"]]
    path = tmp / "bn_base.json"
    path.write_text(json.dumps(arch))
    return path


def test_a_sweep_on_batches_of_one_is_refused_where_every_point_has_batch_norm_on_1x1(
    dataset_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each trial started a worker group and failed with PyTorch's "Expected more than 1 value
    per channel when training"; the sweep ended with no trial finished."""
    base = str(_batch_norm_base(tmp_path))
    space = _space(tmp_path, base=base, encoder={"depth": {"low": 6, "high": 7}})
    argv = _sweep_argv(space, dataset_dir, tmp_path, "--batch-size", "1")
    line = _refused(argv, capsys, "points drawn from the space can train on batches of one")
    assert "encoder.conv[5]: batch norm on a 1x1 map" in line
    assert line.endswith("(--batch-size): pass --batch-size 2 or more"), line
    assert not (tmp_path / "storage").exists() and not (tmp_path / "mlflow.db").exists()


def test_batches_of_one_are_refused_only_where_every_drawn_point_has_batch_norm_on_1x1(
    tmp_path: Path,
) -> None:
    """Where only some points have one (depth 6 of 5-6), the sweep is not refused: those
    trials fail alone (``sweep_trial`` runs the same check before its worker group starts)."""
    from varnext_ray.search_space import load_space
    from varnext_ray.settings import TrainSettings
    from varnext_ray.sweep import check_batch_of_one

    path = str(_batch_norm_base(tmp_path))
    space, base = load_space(_space(tmp_path, base=path, encoder={"depth": {"low": 5, "high": 6}}))
    check_batch_of_one(space, base, TrainSettings(batch_size=1))
    deep, _ = load_space(_space(tmp_path, base=path, encoder={"depth": {"low": 6, "high": 6}}))
    with pytest.raises(UserError, match=r"encoder.conv\[5\]: batch norm on a 1x1 map"):
        check_batch_of_one(deep, base, TrainSettings(batch_size=1))
    check_batch_of_one(deep, base, TrainSettings(batch_size=2))  # two frames normalise
    searched, _ = load_space(_space(tmp_path, base=path, encoder={"depth": [6]}, batch_size=[1, 4]))
    check_batch_of_one(searched, base, TrainSettings(batch_size=1))  # the points choose
    only_one, _ = load_space(_space(tmp_path, base=path, encoder={"depth": [6]}, batch_size=[1]))
    with pytest.raises(UserError, match=r"encoder.conv\[5\]: batch norm on a 1x1 map"):
        check_batch_of_one(only_one, base, TrainSettings(batch_size=8))


@pytest.mark.parametrize("command", ["train", "sweep"])
@pytest.mark.parametrize("place", ["database", "artifacts"])
def test_a_sqlite_store_writing_inside_the_dataset_is_refused_before_ray(
    command: str, place: str, dataset_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``mlflow.db`` and ``mlartifacts/`` (the checkpoints) were written among the dataset's
    files, where ``--storage`` inside the dataset was already refused."""
    data = tmp_path / "ds"
    shutil.copytree(dataset_dir, data)
    if place == "database":  # the store's file in the dataset
        uri = f"sqlite:///{data / 'mlflow.db'}"
    else:  # the store's artifacts folder beside it, a link to the dataset
        (tmp_path / "mlartifacts").symlink_to(data)
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    before = sorted(p.name for p in data.rglob("*"))
    if command == "train":
        argv = _train_argv(data, tmp_path, *CLOSED)
    else:
        argv = _sweep_argv(_space(tmp_path), data, tmp_path)
    argv[argv.index("--tracking-uri") + 1] = uri
    line = _refused(argv, capsys, "--tracking-uri lies inside the dataset (--data)")
    assert str(data) in line, line
    assert sorted(p.name for p in data.rglob("*")) == before
    assert not (tmp_path / "mlflow.db").exists()


def test_an_architecture_reading_one_channel_is_refused_on_rgb_frames(
    dataset_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = json.loads(SMOKE.read_text())
    config["input"]["channels"] = 1
    path = tmp_path / "gray.json"
    path.write_text(json.dumps(config))
    line = _refused(_train_argv(dataset_dir, tmp_path, *CLOSED, config=path), capsys, "channels")
    assert "reads 1" in line and "input.channels" in line


@pytest.fixture
def wrong_columns(dataset_dir: Path, tmp_path: Path) -> Path:
    """A copy of the dataset whose Parquet files keep their row counts but hold only ``foo``."""
    copy = tmp_path / "ds"
    shutil.copytree(dataset_dir, copy)
    for file in copy.rglob("*.parquet"):
        rows = pq.read_metadata(file).num_rows
        pq.write_table(pa.table({"foo": list(range(rows))}), file)
    return copy


def test_parquet_files_without_the_columns_are_refused(
    wrong_columns: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _refused(_train_argv(wrong_columns, tmp_path, *CLOSED), capsys, "no column 'clip_id'")
    assert ".parquet" in line
    _refused(["data", "info", str(wrong_columns)], capsys, "no column 'clip_id'")


def test_a_mistyped_column_is_named(
    dataset_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "ds"
    shutil.copytree(dataset_dir, copy)
    file = next(copy.rglob("*.parquet"))
    table = pq.read_table(file)
    index = table.schema.get_field_index("frame_index")
    table = table.set_column(index, "frame_index", table.column(index).cast(pa.string()))
    pq.write_table(table, file)
    _refused(_train_argv(copy, tmp_path, *CLOSED), capsys, "column 'frame_index' is string")


def _other_arch(tmp: Path) -> Path:
    """The smoke architecture with other latent channels, under the same file stem."""
    config = json.loads(SMOKE.read_text())
    config["latent"]["channels"] = config["latent"]["channels"] * 2
    path = tmp / "edited" / SMOKE.name
    path.parent.mkdir()
    path.write_text(json.dumps(config))
    return path


@pytest.mark.cluster
@pytest.mark.slow
def test_a_run_of_another_architecture_is_not_resumed(
    ray_local, dataset_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(_train_argv(dataset_dir, tmp_path)) == 0  # a finished run, smoke_64x36-ds
    capsys.readouterr()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (run,) = mlflow.MlflowClient(uri).search_runs(
        [mlflow.MlflowClient(uri).get_experiment_by_name("varnext").experiment_id]
    )
    storage = tmp_path / "storage" / "inner"
    edited = _other_arch(tmp_path)
    argv = _train_argv(dataset_dir, tmp_path, *CLOSED, config=edited)
    line = _refused(argv, capsys, "holds another architecture")
    assert "pass another --name, or the config it was trained with" in line
    assert mlflow.MlflowClient(uri).get_run(run.info.run_id).info.status == "FINISHED"
    # A run from before the digest file: its checkpoints' arch.json decide.
    (storage / "smoke_64x36-ds" / ARCH_FILE).unlink()
    with pytest.raises(UserError, match="holds another architecture"):
        check_same_arch(storage, "smoke_64x36-ds", load_arch(edited))
    check_same_arch(storage, "smoke_64x36-ds", load_arch(SMOKE))  # the same one resumes


@pytest.mark.parametrize(("damage", "said"), [("short", "has 100 bytes"), ("null", "is missing")])
def test_a_damaged_frame_in_a_shard_is_one_line_and_its_run_is_failed(
    ray_local,
    dataset_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damage: str,
    said: str,
) -> None:
    """A frame cut short (or missing) inside a Parquet shard is found only when Ray Data
    decodes it: its UserError used to reach the CLI wrapped in Ray Data's UserCodeException
    (exit 1, "unexpected ... this is a bug"), and the MLflow run stayed RUNNING."""
    data = Path(shutil.copytree(dataset_dir, tmp_path / "ds"))
    shard = sorted((data / "train").glob("*.parquet"))[0]
    table = pq.read_table(shard)
    images = table.column("image").to_pylist()
    images[1] = images[1][:100] if damage == "short" else None
    at = table.column_names.index("image")
    pq.write_table(table.set_column(at, "image", pa.array(images, pa.binary())), shard)
    assert main(_train_argv(data, tmp_path)) == 2
    err = capsys.readouterr().err  # Ray's own warnings (no free CPU, ...) may come first
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"a stored frame {said}" in errors[0], err
    assert "re-run 'varnext ingest'" in errors[0] and "Traceback" not in err
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("varnext").experiment_id])
    assert run.info.status == "FAILED" and said in run.data.tags["failure_reason"]


def test_an_unknown_objective_names_its_flag(
    dataset_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It named "(objective)", neither the flag nor the space's field."""
    argv = _train_argv(dataset_dir, tmp_path, "--objective", "extrap_psnr_h1", *CLOSED)
    line = _refused(argv, capsys, "unknown objective metric 'extrap_psnr_h1'")
    assert "(--objective, or a search space's objective)" in line, line
