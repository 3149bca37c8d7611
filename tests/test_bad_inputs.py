"""The bad-input corpus: every user mistake exits 2 with one ``error:`` line and writes nothing.

Each case runs the real entry point, ``varnext_ray.cli.main([...])``, from inside the test's
temporary folder (so a relative default such as ``runs/ray`` or ``./mlflow.db`` would land
there too) and checks the contract of DESIGN.md and docs/reliability.md:

- exit status 2 (``SystemExit(2)`` for argparse's usage errors);
- exactly one stderr line, starting ``error: `` and containing the expected text; no traceback;
- nothing new or changed under the test's folder (inputs are made before the snapshot);
- no pickle ran (a payload would create ``PWNED``);
- no Ray: ``ray.init`` is replaced by a function that raises :class:`RayStarted`, so a command
  that would start Ray before noticing the mistake fails at once instead of after a minute;
- no hang: a case that blocks (a FIFO opened by mistake) fails after 60 s.

The data and file side of the corpus (file kinds, hostile JSON, hand-edited manifests and
checkpoints, images and options, size bounds, one-line messages, nothing left behind) lives in
tests/bad_inputs_data.py and is merged into ``CASES`` below.

Neighbouring corpora, not repeated here: tests/test_cli_data.py (ingest and data info basics),
tests/test_predict.py and tests/test_best.py (predict and best arguments), and the validators'
own tests in tests/test_arch.py, tests/test_search_space.py and tests/test_checkpoint.py.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from PIL import Image

from tests.bad_inputs_data import DATA_CASES
from tests.conftest import REPO
from tests.ports import free_port
from varnext_ray.cli import main

SMOKE = REPO / "configs" / "smoke_64x36.json"


class RayStarted(RuntimeError):
    """Raised by the stand-in for ``ray.init``: the command tried to start or join Ray."""


class Payload:
    """Unpickling this creates ``marker``: proof that a loader ran pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, dataset_dir: Path) -> dict[str, str]:
    """Good inputs the cases share (never modified): a real mp4, a dataset with and one without
    validation triplets, a checkpoint, two frame sizes, an MLflow store with one experiment."""
    from varnext_ray import tracking
    from varnext_ray.arch import load_arch
    from varnext_ray.checkpoint import save_checkpoint
    from varnext_ray.ingest import IngestOptions, ingest
    from varnext_ray.model import build_vae
    from varnext_ray.synth import write_synthetic

    root = tmp_path_factory.mktemp("bad_inputs")
    write_synthetic(root / "synth", clips=2, frames=24, size=(64, 36), seed=1)
    ingest([root / "synth"], root / "noval", IngestOptions(size=(64, 36), val=0.0, test=0.0))
    cfg = load_arch(SMOKE)
    save_checkpoint(root / "ckpt", model=build_vae(cfg), arch_cfg=cfg, epoch=0, metrics={})
    Image.new("RGB", (64, 36), (40, 80, 120)).save(root / "a.png")
    Image.new("RGB", (32, 18), (40, 80, 120)).save(root / "small.png")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracking.experiment_id(uri, "exists")
    return {
        "video": str(root / "synth" / "clip_000.mp4"),
        "dataset": str(dataset_dir),
        "noval": str(root / "noval"),
        "ckpt": str(root / "ckpt"),
        "a": str(root / "a.png"),
        "small": str(root / "small.png"),
        "uri": uri,
        "smoke": str(SMOKE),
    }


# ---- what a case's setup may make in the test's folder ----------------------------------------


def _file(name: str, data: bytes | str) -> Callable[[Path, dict], str]:
    def make(tmp: Path, inputs: dict) -> str:
        (tmp / name).write_bytes(data.encode() if isinstance(data, str) else data)
        return str(tmp / name)

    return make


def _folder(name: str, files: dict[str, bytes]) -> Callable[[Path, dict], str]:
    def make(tmp: Path, inputs: dict) -> str:
        (tmp / name).mkdir()
        for file, data in files.items():
            (tmp / name / file).write_bytes(data)
        return str(tmp / name)

    return make


def _truncated_video(keep: Callable[[int], int]) -> Callable[[Path, dict], str]:
    def make(tmp: Path, inputs: dict) -> str:
        data = Path(inputs["video"]).read_bytes()
        (tmp / "cut.mp4").write_bytes(data[: keep(len(data))])
        return str(tmp / "cut.mp4")

    return make


def _arch(change: Callable[[dict], None]) -> Callable[[Path, dict], str]:
    def make(tmp: Path, inputs: dict) -> str:
        data = json.loads(SMOKE.read_text())
        change(data)
        (tmp / "arch.json").write_text(json.dumps(data, indent=2))
        return str(tmp / "arch.json")

    return make


def _space(**fields: Any) -> Callable[[Path, dict], str]:
    return _file("space.json", json.dumps({"name": "bad", "base": str(SMOKE)} | fields))


def _checkpoint(damage: Callable[[Path], None]) -> Callable[[Path, dict], str]:
    def make(tmp: Path, inputs: dict) -> str:
        path = Path(shutil.copytree(inputs["ckpt"], tmp / "ckpt"))
        damage(path)
        return str(path)

    return make


def _set(value: Any, *keys: str | int) -> Callable[[dict], None]:
    def change(data: dict) -> None:
        for key in keys[:-1]:
            data = data[key]
        data[keys[-1]] = value

    return change


def _delete(key: str) -> Callable[[dict], None]:
    return lambda data: data.pop(key)


def _shrinking(data: dict) -> None:
    data["encoder"]["conv"] = [{"out_channels": 8, "kernel_size": 7, "stride": 4}] * 3


def _short_decoder(data: dict) -> None:
    layer = {"out_channels": 3, "kernel_size": 3, "stride": 2, "padding": 1}
    data["decoder"] = {"conv_transpose": [layer]}


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _rehashed_pickle(path: Path) -> None:
    """model.safetensors becomes a pickle payload, with meta.json's sha256 updated to match."""
    data = pickle.dumps(Payload(path.parent / "PWNED"))
    (path / "model.safetensors").write_bytes(data)
    meta = json.loads((path / "meta.json").read_text())
    meta["files"]["model.safetensors"] = hashlib.sha256(data).hexdigest()
    (path / "meta.json").write_text(json.dumps(meta))


# ---- the corpus -------------------------------------------------------------------------------


class Case(NamedTuple):
    """``argv`` is filled in with ``str.format`` and split on spaces: ``{f}`` is what ``setup``
    made in the test's folder ``{tmp}``, ``{out}`` is ``{tmp}/out``, ``{track}`` gives train
    and sweep a Ray storage and an MLflow store there, ``{port}`` is a closed loopback port,
    the rest are :func:`inputs`."""

    argv: str
    expected: str  # text of the one stderr line
    setup: Callable[[Path, dict], str] | None = None
    env: dict[str, str] | None = None  # environment variables, filled in like ``argv``


BROKEN_ARCH = '{\n  "input": {"height": 36, "width": 64},\n  "latent_dim": 8,,\n}\n'
BROKEN_SPACE = '{"name": "bad",\n "latent_dim": [8 16]}'
INGEST = "ingest {f} --out {out}"
ARCH_CHECK = "arch check {f}"
SWEEP = "sweep --space {f} --data {dataset} {track}"
TRAIN = "train --config {f} --data {dataset} {track}"
PREDICT = "predict --checkpoint {f} --out {tmp}/p.png {a} {a}"
SIZE_ERROR = "size must be WxH with each side 8..8192 (got '{}')"

CASES: dict[str, Case] = {
    # ingest: videos. A half mp4 does not open at all here (its moov atom is at the end).
    "truncated-video-half": Case(
        INGEST, "cannot open as a video", _truncated_video(lambda n: n // 2)
    ),
    "truncated-video-200-bytes": Case(
        INGEST, "cannot open as a video", _truncated_video(lambda n: 200)
    ),
    "corrupt-video": Case(INGEST, "cannot open as a video", _file("x.mp4", bytes(range(256)) * 64)),
    "zero-byte-video-in-folder": Case(  # found in a folder: skipped, and then nothing is left
        INGEST, "no decodable frame in any source", _folder("cam", {"clip.mkv": b""})
    ),
    "text-file-named-mp4": Case(INGEST, "cannot open as a video", _file("t.mp4", "notes\n" * 99)),
    "missing-path-after-a-good-one": Case(
        "ingest {video} {tmp}/missing.mp4 --out {out}", "no such file or directory"
    ),
    # ingest: image folders and options
    "zero-byte-png-alone": Case(INGEST, "no decodable frame", _folder("fr", {"f_1.png": b""})),
    "folder-without-frames": Case(
        INGEST, "no videos or images found in the folder", _folder("fr", {"README.txt": b"hi"})
    ),
    **{
        f"size-{size}": Case(
            f"ingest {{video}} --out {{out}} --size {size}", SIZE_ERROR.format(size)
        )
        for size in ("640", "64x", "4x4", "640x360x3", "9000x9000")
    },
    "size-negative": Case(  # said "-64x36 is not an option (a file of that name is written)"
        "ingest {video} --out {out} --size -64x36",
        "argument --size: expected one argument; -64x36 was read as an option: write --size=-64x36",
    ),
    "val-negative-exponent": Case(  # argparse reads "-1" and "-0.5" as numbers, not "-1e-3"
        "ingest {video} --out {out} --val -1e-3",
        "-1e-3 was read as an option: write --val=-1e-3",
    ),
    "every-0": Case("ingest {video} --out {out} --every 0", "--every must be >= 1 (got 0)"),
    "val-underflows": Case(  # read as 0 before: a dataset without validation frames
        "ingest {video} --out {out} --val 1e-400",
        "--val: 1e-400 is too small for a number: it reads as 0",
    ),
    "every-not-int": Case(
        "ingest {video} --out {out} --every x", "argument --every: invalid int value: 'x'"
    ),
    # architectures (train validates the config before anything else)
    "arch-json-syntax": Case(
        TRAIN,
        "invalid JSON: Expecting property name enclosed in double quotes at line 3 column 19",
        _file("arch.json", BROKEN_ARCH),
    ),
    "arch-wrong-type": Case(
        ARCH_CHECK, 'latent_dim: must be an integer (got "8")', _arch(_set("8", "latent_dim"))
    ),
    "arch-wrong-type-nested": Case(
        ARCH_CHECK,
        "encoder.conv[0].kernel_size: must be an integer (got [3, 3])",
        _arch(_set([3, 3], "encoder", "conv", 0, "kernel_size")),
    ),
    "arch-unknown-key": Case(
        ARCH_CHECK,
        "dropout: unknown key; valid keys: decoder, encoder, input, latent, latent_dim, loss, "
        "output_activation",
        _arch(_set(0.1, "dropout")),
    ),
    "arch-unknown-key-typo": Case(
        ARCH_CHECK,
        'loss.betta: unknown key (did you mean "beta"?)',
        _arch(_set(1, "loss", "betta")),
    ),
    "arch-missing-key": Case(  # the smoke config's latent is spatial: neither form is left
        ARCH_CHECK,
        'latent_dim: must be given (missing); or give "latent": {"kind": "spatial"',
        _arch(_delete("latent")),
    ),
    "arch-shrinks-to-nothing": Case(
        TRAIN, "encoder.conv[2]: shrinks the image to nothing", _arch(_shrinking)
    ),
    "arch-decoder-mismatch": Case(
        ARCH_CHECK,
        "decoder: output shape 3x9x15 does not match input shape 3x36x64",
        _arch(_short_decoder),
    ),
    # search spaces: `varnext sweep` refuses them before Ray starts
    "space-empty-choices": Case(
        SWEEP, "latent_dim: must list at least one choice (got [])", _space(latent_dim=[])
    ),
    "space-inverted-range": Case(
        SWEEP,
        "lr: low must be <= high (got low=0.01, high=0.001); swap them",
        _space(lr={"low": 0.01, "high": 0.001, "log": True}),
    ),
    "space-unknown-objective": Case(
        SWEEP,
        'objective: unknown objective metric "psnr"; use one of extrap_gain_db, ',
        _space(objective="psnr"),
    ),
    "space-json-syntax": Case(
        SWEEP,
        "invalid JSON: Expecting ',' delimiter at line 2 column 19",
        _file("space.json", BROKEN_SPACE),
    ),
    "space-inline-base-invalid": Case(
        SWEEP,
        "invalid architecture: latent_dim: must be >= 1 (got 0)",
        _space(base={"input": {"height": 36, "width": 64}, "latent_dim": 0}),
    ),
    "sweep-samples-0": Case(SWEEP + " --samples 0", "--samples must be >= 1 (got 0)", _space()),
    "sweep-samples-huge": Case(
        SWEEP + " --samples 100000000", "--samples must be <= 10,000 (got 100,000,000)", _space()
    ),
    "train-lr-subnormal": Case(  # a float that lost its digits: trained nothing, silently
        "train --config {smoke} --data {dataset} --lr 1e-320 {track}",
        "--lr: 1e-320 is too small for a number: it reads as 1e-320, losing precision",
    ),
    # datasets and training settings
    "dataset-manifest-not-json": Case(
        "data info {f}", "unreadable manifest", _folder("ds", {"dataset.json": b"{oops"})
    ),
    "train-epochs-0": Case(
        "train --config {smoke} --data {dataset} --epochs 0 {track}", "epochs must be >= 1 (got 0)"
    ),
    "train-not-a-dataset": Case(
        "train --config {smoke} --data {f} {track}",
        "not a frame dataset (no dataset.json)",
        _folder("notds", {"a.txt": b"x"}),
    ),
    "sweep-not-a-dataset": Case(
        "sweep --space {f} --data {tmp} {track}", "not a frame dataset (no dataset.json)", _space()
    ),
    "train-no-val-triplets": Case(
        "train --config {smoke} --data {noval} {track}",
        "the dataset has 0 validation triplets of stride 1 for 2 workers",
    ),
    "train-mlflow-unreachable": Case(
        "train --config {smoke} --data {dataset} --storage {tmp}/ray "
        "--tracking-uri http://127.0.0.1:{port}",
        "MLflow tracking server unreachable",
    ),
    # best
    "best-unknown-experiment": Case(
        "best --experiment nope --out {tmp}/best --tracking-uri {uri}", "no experiment named 'nope'"
    ),
    "best-missing-store": Case(
        "best --experiment exists --out {tmp}/best --tracking-uri sqlite:///{tmp}/typo.db",
        "no MLflow database at this path",
    ),
    # predict: damaged checkpoints and mismatched frames
    "predict-checkpoint-file-missing": Case(
        PREDICT,
        "checkpoint file is missing",
        _checkpoint(lambda path: (path / "arch.json").unlink()),
    ),
    "predict-checkpoint-altered": Case(
        PREDICT,
        "file was altered: sha256",
        _checkpoint(lambda path: _flip_a_byte(path / "model.safetensors")),
    ),
    "predict-checkpoint-pickle-payload": Case(
        PREDICT, "not a safetensors file", _checkpoint(_rehashed_pickle)
    ),
    "predict-frames-differ-in-size": Case(
        "predict --checkpoint {ckpt} --out {tmp}/p.png {a} {small}",
        "the frames differ in size (64x36 and 32x18)",
    ),
}
# The data and file side, one group per cause: file kinds, hostile JSON, hand-edited manifests
# and checkpoint metadata, images and options, size bounds, one line, nothing left behind.
assert not set(CASES) & set(DATA_CASES), "a case name is used twice"
CASES |= {name: Case(*raw) for name, raw in DATA_CASES.items()}


# ---- the check --------------------------------------------------------------------------------


def _snapshot(root: Path) -> dict[str, tuple[int, int] | None]:
    """Every path under ``root``: files with (size, mtime), folders with None."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
        for p in root.rglob("*")
    }


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Starting or joining Ray raises RayStarted (even if this process already runs Ray), and
    a Ray address that does not answer is given up after 1 s instead of 15 s."""
    import ray

    from varnext_ray import cluster

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RayStarted("the command started Ray before reporting the bad input")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 1.0)
    for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)


# Cases that show a bug not yet fixed: strict, so the fix makes them fail until removed here.
KNOWN_BUGS: dict[str, str] = {}


@pytest.mark.timeout(60, func_only=True)  # a hang in the case itself (not the shared setup)
@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            c,
            id=i,
            marks=[pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[i])] if i in KNOWN_BUGS else [],
        )
        for i, c in CASES.items()
    ],
)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    case: Case,
    inputs: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_ray: None,
) -> None:
    names = inputs | {
        "tmp": str(tmp_path),
        "out": str(tmp_path / "out"),
        "track": f"--storage {tmp_path}/ray --tracking-uri sqlite:///{tmp_path}/m.db",
        "port": free_port(),
    }
    if case.setup is not None:
        names["f"] = case.setup(tmp_path, inputs)
    argv = case.argv.format(**names).split()
    for name, value in (case.env or {}).items():
        monkeypatch.setenv(name, value.format(**names))
    monkeypatch.chdir(tmp_path)  # relative defaults (runs/ray, ./mlflow.db) would land here
    before = _snapshot(tmp_path)
    started = time.monotonic()
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        code = exit_.code
    elapsed = time.monotonic() - started
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, f"exit {code}\nstdout: {out}\nstderr: {err}"
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert case.expected in lines[0], lines[0]
    assert "Traceback" not in err
    assert _snapshot(tmp_path) == before, "the command wrote something"
    assert not (tmp_path / "PWNED").exists(), "a pickle payload ran"
    assert elapsed < 30, f"took {elapsed:.0f} s: a bad input must be refused quickly"


# The commands that read a user's files or stores (more report cases: tests/test_report.py).
READS_USER_INPUT = {"arch", "best", "data", "ingest", "predict", "report", "sweep", "train"}


def test_every_command_that_reads_user_input_has_bad_inputs() -> None:
    import argparse

    from varnext_ray.cli import build_parser

    parser = build_parser()
    (commands,) = (a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    covered = {case.argv.split()[0] for case in CASES.values()}
    assert covered <= set(commands), f"cases for unknown commands: {covered - set(commands)}"
    assert covered >= READS_USER_INPUT, f"no bad input for {READS_USER_INPUT - covered}"
