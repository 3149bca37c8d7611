"""A ``file://`` storage URI gets every check its local path gets (storage_checks), before Ray.

Found by a hostile pass: ``--storage file:///.../dataset/train`` wrote checkpoints among the
dataset's shards, and ``sweep --resume --storage file:///...`` unpickled Tune's state from a
folder anyone could write, while the plain paths were refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from varnext_ray.errors import UserError
from varnext_ray.storage_checks import (
    check_storage_writable,
    check_trusted_storage,
    local_storage,
)

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "configs" / "smoke_64x36.json"
SMOKE_SPACE = REPO / "search_spaces" / "smoke.json"


class RayStarted(Exception):
    """Ray was started before the bad input was refused."""


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting or joining Ray raises RayStarted: the checks must come first."""
    import ray

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RayStarted("Ray started before the bad input was refused")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("given", "local"),
    [
        ("file:///srv/ray/runs", "/srv/ray/runs"),
        ("file:///srv/a%20b/%72uns", "/srv/a b/runs"),  # decoded, as pyarrow (so Ray) opens it
        ("local:///srv/runs", "/srv/runs"),
        ("file:/srv/runs", "/srv/runs"),  # RFC 8089's one slash: was the folder ./file:/srv/runs
        ("s3://bucket/runs", "s3://bucket/runs"),  # remote: unchanged
        ("runs/ray", "runs/ray"),
    ],
)
def test_a_file_uri_is_its_local_path(given: str, local: str) -> None:
    assert str(local_storage(given)) == local


@pytest.mark.parametrize("uri", ["file://otherhost/srv/runs", "file:runs", "FILE:/srv/runs"])
def test_a_file_uri_pyarrow_does_not_open_is_refused(uri: str) -> None:
    with pytest.raises(UserError, match="cannot open the storage URI"):
        check_storage_writable(uri)


def test_a_file_uri_blocked_by_a_file_is_refused_as_its_path_is(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    for storage in (f"{tmp_path}/notes.txt/runs", f"file://{tmp_path}/notes.txt/runs"):
        with pytest.raises(UserError, match=r"notes\.txt is a file, not a folder"):
            check_storage_writable(storage)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def world_writable(tmp_path: Path) -> Path:
    storage = tmp_path / "ww" / "st"
    storage.mkdir(parents=True)
    for folder in (tmp_path, tmp_path / "ww"):
        folder.chmod(0o755)
    storage.chmod(0o777)  # anyone could plant a pickle in the sweep's state
    return storage


def test_resume_refuses_a_file_uri_other_users_can_write(tmp_path: Path) -> None:
    from varnext_ray.sweep import sweep_path

    storage = world_writable(tmp_path)
    path = sweep_path(f"file://{storage}", "e", "smoke")
    assert path == f"{storage}/sweep-e-smoke"  # the local folder, as the plain path gives
    for sweep in (path, f"file://{storage}/sweep-e-smoke", f"file://{tmp_path}/ww/%73t/sweep"):
        with pytest.raises(UserError, match="other users can write"):
            check_trusted_storage(sweep)


def test_sweep_resume_from_a_world_writable_file_uri_is_one_line_before_ray(
    tmp_path: Path,
    dataset_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_ray: None,
) -> None:
    from varnext_ray.cli import main

    storage = world_writable(tmp_path)
    monkeypatch.chdir(tmp_path)
    argv = ["sweep", "--space", str(SMOKE_SPACE), "--data", str(dataset_dir), "--resume"]
    argv += ["--storage", f"file://{storage}", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume reads Ray Tune's pickled state" in err[0], err
    assert list(storage.iterdir()) == [] and not (tmp_path / "m.db").exists()


def _train(dataset: Path, storage: str, uri: str) -> None:
    from varnext_ray.arch import load_arch
    from varnext_ray.cluster import Resources
    from varnext_ray.settings import TrainSettings
    from varnext_ray.train import train

    train(
        arch=load_arch(SMOKE),
        data=dataset,
        settings=TrainSettings(epochs=1),
        resources=Resources(1, 0, 1),
        experiment="e",
        tracking_uri=uri,
        storage=storage,
        name="r",
    )


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_train_refuses_a_file_uri_inside_the_dataset_before_ray(
    tmp_path: Path, dataset_dir: Path, no_ray: None
) -> None:
    before = _files(dataset_dir)
    for storage in (f"file://{dataset_dir}/train", f"file://{dataset_dir}"):
        with pytest.raises(UserError, match="--storage lies inside the dataset"):
            _train(dataset_dir, storage, f"sqlite:///{tmp_path}/m.db")
    assert _files(dataset_dir) == before and not (tmp_path / "m.db").exists()


def test_run_sweep_refuses_a_file_uri_inside_the_dataset_before_ray(
    tmp_path: Path, dataset_dir: Path, no_ray: None
) -> None:
    from varnext_ray.search_space import load_space
    from varnext_ray.sweep import SweepOptions, run_sweep

    space, base = load_space(SMOKE_SPACE)
    before = _files(dataset_dir)
    with pytest.raises(UserError, match="--storage lies inside the dataset"):
        run_sweep(
            space=space,
            base=base,
            data=dataset_dir,
            options=SweepOptions(samples=1, workers_per_trial=1),
            experiment="e",
            tracking_uri=f"sqlite:///{tmp_path}/m.db",
            storage=f"file://{dataset_dir}/val",
        )
    assert _files(dataset_dir) == before and not (tmp_path / "m.db").exists()


@pytest.mark.parametrize("form", ["file://", "file:"])
def test_train_cli_refuses_a_file_uri_inside_the_dataset_before_ray(
    form: str,
    tmp_path: Path,
    dataset_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_ray: None,
) -> None:
    import tempfile

    from varnext_ray.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the traceback file of exit 1
    before = _files(dataset_dir)
    argv = ["train", "--config", str(SMOKE), "--data", str(dataset_dir)]
    argv += ["--storage", f"{form}{dataset_dir}/train"]
    argv += ["--tracking-uri", f"sqlite:///{tmp_path}/m.db"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--storage lies inside the dataset" in err[0], err
    assert _files(dataset_dir) == before
    assert not (tmp_path / "file:").exists()  # file:/abs was the relative folder ./file:/abs
