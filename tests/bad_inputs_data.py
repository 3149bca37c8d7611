"""Bad inputs of the data and file side, added to the corpus of tests/test_bad_inputs.py.

Grouped by cause, each group fixed once at the edge that reads the input
(``varnext_ray.safe_io`` for files and JSON, ``sources`` for images and videos, ``dataset``
for manifests, ``checkpoint`` for checkpoints, ``arch`` for size bounds):

- file kinds: a directory, a FIFO (never opened: opening one blocks), ``/dev/null``, a path
  under a file, a symlink loop, a dangling symlink, wherever a file is read;
- hostile JSON: nested 100,000 deep, a 5,000-digit integer, over the size cap (sparse files:
  refused from their size, never read), not UTF-8, ``NaN``;
- hand-edited manifests and checkpoint metadata: a key missing or of the wrong type, counts
  that do not add up, files outside the dataset, a Parquet file that is not one;
- images and videos: decompression bombs, over-large images, undecodable single images,
  crops that keep no pixels, absurd ``--size`` and NaN / out-of-range options;
- size bounds: architectures whose parameters or activations would exhaust memory, checked
  before any tensor (also for a checkpoint's arch.json, against its safetensors header);
- one line: a path with a newline or an escape sequence cannot forge a second line;
- nothing left behind: a failing ingest into new parent folders leaves none of them;
- outputs never destroyed: ``report``/``predict --out`` naming the MLflow database or an input
  (even with ``--overwrite``), or an existing file (without it); ``predict --steps`` 1e9;
- tracking URIs that are no usable store, for train, sweep, best and report;
- Ray addresses that do not answer (1 s in the corpus) or are malformed;
- what train and sweep check before Ray: frame size, resources, NaN/inf settings, --resume.

Each value is ``(argv, expected, setup[, env])`` as in :class:`tests.test_bad_inputs.Case`.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shutil
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from tests.conftest import REPO

# A small flat-latent architecture written out here (not read from configs/, whose schema may
# grow), so each case changes exactly one thing of a valid file.
SMOKE_DATA: dict[str, Any] = {
    "input": {"channels": 3, "height": 36, "width": 64},
    "encoder": {
        "conv": [
            {"out_channels": 8, "kernel_size": 3, "stride": 2, "padding": 1},
            {"out_channels": 16, "kernel_size": 3, "stride": 2, "padding": 1},
            {"out_channels": 16, "kernel_size": 3, "stride": 2, "padding": 1},
        ],
        "linear": [],
    },
    "latent_dim": 8,
    "decoder": "mirror",
    "output_activation": "sigmoid",
    "loss": {"reconstruction": "mse", "beta": 1.0},
}
DEEP = "[" * 100_000 + "]" * 100_000
LONG_INT = '{"latent_dim": ' + "7" * 5000 + "}"
Setup = Callable[[Path, dict], str]
Raw = tuple[str, str, Setup | None] | tuple[str, str, Setup | None, dict[str, str]]


# ---- setups -----------------------------------------------------------------------------------


def _write(tmp: Path, name: str, data: bytes | str) -> Path:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def file(name: str, data: bytes | str) -> Setup:
    return lambda tmp, inputs: str(_write(tmp, name, data))


def sparse(name: str, size: int) -> Setup:
    """A file of ``size`` bytes that takes no disk (refused from its size alone)."""

    def make(tmp: Path, inputs: dict) -> str:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        with open(tmp / name, "wb") as f:
            f.write(b"{")
            f.truncate(size)
        return str(tmp / name)

    return make


def folder(name: str) -> Setup:
    def make(tmp: Path, inputs: dict) -> str:
        (tmp / name).mkdir(parents=True)
        return str(tmp / name)

    return make


def _unblock_later(path: Path) -> None:
    """If a regression opens the FIFO for reading, a writer appears after 20 s so the test fails
    on its time limit instead of hanging (with no reader, this open fails and does nothing)."""

    def poke() -> None:
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))

    timer = threading.Timer(20, poke)
    timer.daemon = True
    timer.start()


def fifo(name: str) -> Setup:
    def make(tmp: Path, inputs: dict) -> str:
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(path)
        _unblock_later(path)
        return str(path)

    return make


def symlink(name: str, target: str) -> Setup:
    def make(tmp: Path, inputs: dict) -> str:
        (tmp / name).symlink_to(tmp / target)
        return str(tmp / name)

    return make


def arch(change: Callable[[dict], None]) -> Setup:
    def make(tmp: Path, inputs: dict) -> str:
        data = copy.deepcopy(SMOKE_DATA)
        change(data)
        return str(_write(tmp, "arch.json", json.dumps(data)))

    return make


def space(**fields: Any) -> Setup:
    return file("space.json", json.dumps({"name": "bad", "base": SMOKE_DATA} | fields))


def png_header(name: str, width: int, height: int) -> Setup:
    """A PNG that claims ``width`` x ``height`` (1-bit) and holds no pixel data: what a
    decompression bomb looks like to a reader that checks the size before decoding."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body).to_bytes(4, "big")
        return len(body).to_bytes(4, "big") + kind + body + crc

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")
    return file(name, data)


def dataset(change: Callable[[Path, dict], None]) -> Setup:
    """A copy of the good dataset with its manifest (dict) and files changed."""

    def make(tmp: Path, inputs: dict) -> str:
        root = Path(shutil.copytree(inputs["dataset"], tmp / "ds"))
        manifest = json.loads((root / "dataset.json").read_text())
        change(root, manifest)
        if manifest is not None:
            (root / "dataset.json").write_text(json.dumps(manifest))
        return str(root)

    return make


def manifest_text(text: str | bytes) -> Setup:
    def make(tmp: Path, inputs: dict) -> str:
        root = Path(shutil.copytree(inputs["dataset"], tmp / "ds"))
        _write(root, "dataset.json", text)
        return str(root)

    return make


def checkpoint(change: Callable[[Path], None], rehash: bool = True) -> Setup:
    """A copy of the good checkpoint, changed, with meta.json's sha256 table updated to match
    (so the change is seen by the check behind the hashes, not by the hashes)."""

    def make(tmp: Path, inputs: dict) -> str:
        path = Path(shutil.copytree(inputs["ckpt"], tmp / "ckpt"))
        change(path)
        if rehash and (path / "meta.json").is_file():
            meta = json.loads((path / "meta.json").read_text())
            for name in meta["files"]:
                if (path / name).is_file():
                    meta["files"][name] = hashlib.sha256((path / name).read_bytes()).hexdigest()
            (path / "meta.json").write_text(json.dumps(meta))
        return str(path)

    return make


# ---- changes ----------------------------------------------------------------------------------


def set_key(value: Any, *keys: str | int) -> Callable[[dict], None]:
    def change(data: dict) -> None:
        for key in keys[:-1]:
            data = data[key]
        data[keys[-1]] = value

    return change


def manifest_set(value: Any, *keys: str | int) -> Callable[[Path, dict], None]:
    return lambda root, manifest: set_key(value, *keys)(manifest)


def manifest_drop(key: str) -> Callable[[Path, dict], None]:
    return lambda root, manifest: manifest.pop(key)


def _truncate_parquet(root: Path, manifest: dict) -> None:
    path = root / manifest["clips"][0]["files"][0]
    path.write_bytes(path.read_bytes()[:100])


def _remove_parquet(root: Path, manifest: dict) -> None:
    (root / manifest["clips"][0]["files"][0]).unlink()


def _link_out_of_dataset(root: Path, manifest: dict) -> None:
    """The first clip file moved beside the dataset, a symlink to it left in its place."""
    path = root / manifest["clips"][0]["files"][0]
    outside = root.parent / "outside.parquet"
    path.rename(outside)
    path.symlink_to(outside)


def _duplicate_clip(root: Path, manifest: dict) -> None:
    manifest["clips"][1]["id"] = manifest["clips"][0]["id"]


def _arch_json(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        data = json.loads((path / "arch.json").read_text())
        change(data)
        (path / "arch.json").write_text(json.dumps(data))

    return edit


def _meta(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        data = json.loads((path / "meta.json").read_text())
        change(data)
        (path / "meta.json").write_text(json.dumps(data))

    return edit


def _model_bytes(change: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        model = path / "model.safetensors"
        model.write_bytes(change(model.read_bytes()))

    return edit


def _replace_with_dir(name: str) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        (path / name).unlink()
        (path / name).mkdir()

    return edit


def _replace_with_fifo(name: str) -> Callable[[Path], None]:
    def edit(path: Path) -> None:
        (path / name).unlink()
        os.mkfifo(path / name)
        _unblock_later(path / name)

    return edit


def _enlarge_input(data: dict) -> None:
    """A checkpoint's arch.json claiming 18432x32768 frames (the weights are for 36x64)."""
    if "latent" in data:  # a spatial latent's size follows the input: latent_dim is derived
        data.pop("latent_dim", None)
    data["input"] = {"channels": 3, "height": 36 * 512, "width": 64 * 512}


def _huge_activations(data: dict) -> None:
    """Few parameters (one 64x64 stride-64 conv), but 16384x16384 frames: 6 GiB per frame."""
    data["input"] = {"height": 16384, "width": 16384}
    data["encoder"] = {"conv": [{"out_channels": 1, "kernel_size": 64, "stride": 64}]}
    data["latent_dim"] = 2


def _group_norm_prime(data: dict) -> None:
    layer = data["encoder"]["conv"][0]
    layer.update(norm="group", groups=2, out_channels=2_147_483_647)


def _wide_strip(tmp: Path, inputs: dict) -> str:
    """A 1000x8 image: at --size 8x128 its centre crop would be 0 pixels wide."""
    Image.new("RGB", (1000, 8), (10, 20, 30)).save(tmp / "strip.png")
    return str(tmp / "strip.png")


def _frames_with_newline(tmp: Path, inputs: dict) -> str:
    """A folder whose only frames lie in a subfolder named with a newline, and are empty."""
    sub = tmp / "cam" / "x\nerror: forged line"
    sub.mkdir(parents=True)
    (sub / "f_1.png").write_bytes(b"")
    return str(tmp / "cam")


def _corrupt_frames(tmp: Path, inputs: dict) -> str:
    (tmp / "frames").mkdir()
    for i in range(3):
        (tmp / "frames" / f"f_{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    return str(tmp / "frames")


def _thumbnails(tmp: Path, inputs: dict) -> str:
    """A folder of 1x1 frames: they decode, and are far too small for any --size."""
    (tmp / "thumbs").mkdir()
    for i in range(3):
        Image.new("RGB", (1, 1), (i, 20, 30)).save(tmp / "thumbs" / f"f_{i}.png")
    return str(tmp / "thumbs")


def _self_loop(tmp: Path, inputs: dict) -> str:
    (tmp / "loop").mkdir()
    (tmp / "loop" / "again").symlink_to(tmp / "loop")
    return str(tmp / "loop")


def _nonempty(tmp: Path, inputs: dict) -> str:
    (tmp / "taken").mkdir()
    (tmp / "taken" / "keep.txt").write_text("mine")
    return str(tmp / "taken")


# ---- the cases --------------------------------------------------------------------------------

INGEST = "ingest {f} --out {out}"
INGEST_VIDEO = "ingest {video} --out {out} --size 64x36"
ARCH_CHECK = "arch check {f}"
SWEEP = "sweep --space {f} --data {dataset} {track}"
INFO = "data info {f}"
PREDICT = "predict --checkpoint {f} --out {tmp}/p.png {a} {a}"
NESTED = "nested more than 64 levels deep"
DIGITS = "a number with too many digits"
FIFO = "named pipe (FIFO)"
MANIFEST = "invalid manifest"

FILE_KINDS: dict[str, Raw] = {
    "kind-arch-directory": (ARCH_CHECK, "architecture file is a directory", folder("a.json")),
    "kind-arch-fifo": (ARCH_CHECK, FIFO, fifo("arch.json")),
    "kind-arch-dev-null": ("arch check /dev/null", "is a character device", None),
    "kind-arch-under-a-file": ("arch check {a}/arch.json", "is a file, not a folder", None),
    "kind-arch-symlink-loop": (ARCH_CHECK, "a symlink loop", symlink("x.json", "x.json")),
    "kind-arch-dangling-symlink": (
        ARCH_CHECK,
        "architecture file not found",
        symlink("x.json", "gone.json"),
    ),
    "kind-train-config-fifo": (
        "train --config {f} --data {dataset} {track}",
        FIFO,
        fifo("arch.json"),
    ),
    "kind-space-directory": (SWEEP, "search space file is a directory", folder("s.json")),
    "kind-space-fifo": (SWEEP, FIFO, fifo("space.json")),
    "kind-ingest-fifo": (INGEST, FIFO, fifo("clip.mp4")),
    "kind-ingest-dev-zero": ("ingest /dev/zero --out {out}", "is a character device", None),
    "kind-ingest-out-is-a-file": (
        "ingest {video} --out {f}",
        "output already exists",
        file("taken", "mine"),
    ),
    "kind-ingest-out-not-empty": (
        "ingest {video} --out {f}",
        "output already exists and is not empty",
        _nonempty,
    ),
    "kind-ingest-out-under-a-file": (
        "ingest {video} --out {f}/ds",
        "is a file, not a folder",
        file("plain", "x"),
    ),
    "kind-ingest-out-dangling-symlink": (
        "ingest {video} --out {f}",
        "output already exists (a symlink to nothing)",
        symlink("out", "nowhere"),
    ),
    "kind-ingest-symlink-loop": (INGEST, "no videos or images found", _self_loop),
    "kind-info-on-a-file": (INFO, "dataset is a file, not a directory", file("ds", "x")),
    "kind-checkpoint-is-a-file": (PREDICT, "checkpoint is a file, not a directory", file("c", "x")),
    "kind-checkpoint-meta-fifo": (
        PREDICT,
        FIFO,
        checkpoint(_replace_with_fifo("meta.json"), rehash=False),
    ),
    "kind-checkpoint-weights-directory": (
        PREDICT,
        "checkpoint file is a directory",
        checkpoint(_replace_with_dir("model.safetensors"), rehash=False),
    ),
}


def _no_manifest_rewrite(replace: Callable[[Path], None]) -> Setup:
    def make(tmp: Path, inputs: dict) -> str:
        root = Path(shutil.copytree(inputs["dataset"], tmp / "ds"))
        replace(root / "dataset.json")
        return str(root)

    return make


def _to_dir(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _to_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)
    _unblock_later(path)


FILE_KINDS["kind-info-manifest-directory"] = (
    INFO,
    "manifest is a directory",
    _no_manifest_rewrite(_to_dir),
)
FILE_KINDS["kind-info-manifest-fifo"] = (INFO, FIFO, _no_manifest_rewrite(_to_fifo))

HOSTILE_JSON: dict[str, Raw] = {
    "json-arch-nested-100000": (ARCH_CHECK, NESTED, file("a.json", DEEP)),
    "json-arch-5000-digits": (ARCH_CHECK, DIGITS, file("a.json", LONG_INT)),
    "json-arch-over-1-mib": (ARCH_CHECK, "larger than the 1 MiB limit", sparse("a.json", 2**21)),
    "json-arch-not-utf8": (ARCH_CHECK, "not UTF-8 text", file("a.json", b'{"input": "\xff"}')),
    "json-arch-utf16": (ARCH_CHECK, "not UTF-8 text", file("a.json", '{"a": 1}'.encode("utf-16"))),
    # without its byte-order mark, UTF-16 of ASCII decodes as UTF-8 ("Expecting property name")
    "json-arch-utf16-no-bom": (
        ARCH_CHECK,
        "not UTF-8 JSON: it holds a NUL byte (at offset 1), as UTF-16 text does",
        file("a.json", '{"a": 1}'.encode("utf-16-le")),
    ),
    "json-arch-raw-control-character": (  # Python's message ends in "at": it was said twice
        ARCH_CHECK,
        "invalid JSON: Invalid control character at line 1 column 12",
        file("a.json", b'{"name": "a\x01b"}'),
    ),
    "json-arch-empty": (ARCH_CHECK, "invalid JSON: Expecting value", file("a.json", "")),
    "json-arch-top-level-list": (
        ARCH_CHECK,
        "must be a JSON object (got a list)",
        file("a.json", "[]"),
    ),
    "json-arch-nan": (
        ARCH_CHECK,
        "loss.beta: must be a finite number",
        file("a.json", json.dumps(SMOKE_DATA).replace('"beta": 1.0', '"beta": NaN')),
    ),
    "json-arch-underflow": (  # read as 0 before: a beta of 1e-400 was beta 0, silently
        ARCH_CHECK,
        "invalid JSON: 1e-400 is too small for a number: it reads as 0",
        file("a.json", json.dumps(SMOKE_DATA).replace('"beta": 1.0', '"beta": 1e-400')),
    ),
    "json-space-subnormal": (
        SWEEP,
        "invalid JSON: 1e-320 is too small for a number: it reads as 1e-320, losing precision",
        file("space.json", '{"name": "x", "base": "a.json", "lr": [1e-320]}'),
    ),
    "json-space-nested-100000": (SWEEP, NESTED, file("space.json", DEEP)),
    "json-space-5000-digits": (SWEEP, DIGITS, file("space.json", LONG_INT)),
    "json-space-over-1-mib": (SWEEP, "larger than the 1 MiB limit", sparse("space.json", 2**21)),
    "json-space-not-utf8": (SWEEP, "not UTF-8 text", file("space.json", b"\xfe\xff{}")),
    "json-space-nan": (  # named by the field, as architectures are
        SWEEP,
        "lr: must be a finite number (got NaN)",
        file("space.json", '{"name": "x", "base": "a.json", "lr": [NaN]}'),
    ),
    "json-space-duplicate-key": (
        SWEEP,
        'duplicate key "latent_dim" in one object',
        file("space.json", '{"name": "x", "base": "a.json", "latent_dim": [8], "latent_dim": []}'),
    ),
    "json-space-base-nested": (
        SWEEP,
        NESTED,
        lambda tmp, inputs: (
            _write(tmp, "deep.json", DEEP),
            str(_write(tmp, "space.json", json.dumps({"name": "x", "base": "deep.json"}))),
        )[1],
    ),
    "json-manifest-nested-100000": (INFO, NESTED, manifest_text(DEEP)),
    "json-manifest-5000-digits": (INFO, DIGITS, manifest_text(LONG_INT)),
    "json-manifest-over-64-mib": (
        INFO,
        "larger than the 64 MiB limit",
        lambda tmp, inputs: str(Path(sparse("ds/dataset.json", 65 * 2**20)(tmp, inputs)).parent),
    ),
    "json-manifest-not-utf8": (INFO, "not UTF-8 text", manifest_text(b"\xff\xfe{}")),
    "json-manifest-nan": (
        INFO,
        "NaN is not valid JSON",
        manifest_text('{"format_version": 1, "frames": NaN}'),
    ),
    "json-meta-nested-100000": (
        PREDICT,
        NESTED,
        checkpoint(lambda p: (p / "meta.json").write_text(DEEP), rehash=False),
    ),
    "json-meta-5000-digits": (
        PREDICT,
        DIGITS,
        checkpoint(lambda p: (p / "meta.json").write_text(LONG_INT), rehash=False),
    ),
    "json-meta-over-16-mib": (
        PREDICT,
        "larger than the 16 MiB limit",
        checkpoint(
            lambda p: ((p / "meta.json").unlink(), sparse("meta.json", 17 * 2**20)(p, {})),
            rehash=False,
        ),
    ),
    "json-checkpoint-arch-nested": (
        PREDICT,
        NESTED,
        checkpoint(lambda p: (p / "arch.json").write_text(DEEP)),
    ),
}

MANIFEST_KEYS: dict[str, Raw] = {
    # provenance keys that no reader used, and so were never checked: a dataset said it held
    # 4-channel frames, or a clip came from a source that is not there, and trained anyway
    "manifest-channels-4": (
        INFO,
        "channels: must be 3 (got 4)",
        dataset(manifest_set(4, "channels")),
    ),
    "manifest-channels-float": (  # Literal[3] compares with ==: 3.0 passed
        INFO,
        "channels: must be an integer (got 3.0)",
        dataset(manifest_set(3.0, "channels")),
    ),
    "manifest-every-0": (INFO, "every: must be >= 1 (got 0)", dataset(manifest_set(0, "every"))),
    "manifest-clip-source-missing": (
        INFO,
        "clips[0].source: names source 99 of the",
        dataset(manifest_set(99, "clips", 0, "source")),
    ),
    "manifest-clip-source-a-bool": (
        INFO,
        "clips[0].source: must be an integer (got true)",
        dataset(manifest_set(True, "clips", 0, "source")),
    ),
    "manifest-source-frames-backwards": (
        INFO,
        "clips[0].source_frames: run backwards",
        dataset(lambda root, m: m["clips"][0].__setitem__("source_frames", [9, 0])),
    ),
    "manifest-clips-missing": (
        INFO,
        "clips: must be given (missing)",
        dataset(manifest_drop("clips")),
    ),
    "manifest-frames-misspelled": (  # said only "frames: must be given (missing)"
        INFO,
        'frames: must be given (missing; is "Frames " it?)',
        dataset(lambda root, m: m.__setitem__("Frames ", m.pop("frames"))),
    ),
    "manifest-split-missing": (
        INFO,
        "split: must be given (missing)",
        dataset(manifest_drop("split")),
    ),
    "manifest-clips-not-a-list": (
        INFO,
        'clips: must be a list [...] (got "x")',
        dataset(manifest_set("x", "clips")),
    ),
    "manifest-size-a-string": (
        INFO,
        "size: must be a list",
        dataset(manifest_set("64x36", "size")),
    ),
    "manifest-size-zero": (INFO, "size[0]: must be >= 1", dataset(manifest_set([0, 36], "size"))),
    # as many pixels: raw frames' byte counts still matched, and every frame read scrambled
    "manifest-size-swapped": (
        INFO,
        "holds frames of 64x36 raw, but size and encoding say 36x64 raw",
        dataset(manifest_set([36, 64], "size")),
    ),
    "manifest-encoding-unknown": (
        INFO,
        "encoding: must be",
        dataset(manifest_set("webp", "encoding")),
    ),
    "manifest-frames-a-string": (
        INFO,
        "frames: must be an integer",
        dataset(manifest_set("48", "frames")),
    ),
    "manifest-frames-do-not-add-up": (
        INFO,
        "but the clips hold",
        dataset(lambda root, m: m.__setitem__("frames", m["frames"] + 1)),
    ),
    "manifest-splits-do-not-add-up": (
        INFO,
        "splits.train: says",
        dataset(lambda root, m: m["splits"].__setitem__("train", m["splits"]["train"] + 5)),
    ),
    "manifest-clip-frames-huge": (  # used to build a 10**12-long triplet list: a hang
        INFO,
        "clips[0].frames: must be <=",
        dataset(manifest_set(10**12, "clips", 0, "frames")),
    ),
    "manifest-clip-split-unknown": (
        INFO,
        "clips[0].split: must be",
        dataset(manifest_set("holdout", "clips", 0, "split")),
    ),
    "manifest-split-policy-text": (  # data info printed it: a newline forged an error line
        INFO,
        "split.policy: must be",
        dataset(manifest_set("clips\nerror: forged", "split", "policy")),
    ),
    "manifest-split-seed-negative": (
        INFO,
        "split.seed: must be >= 0",
        dataset(manifest_set(-5, "split", "seed")),
    ),
    "manifest-skipped-null": (
        INFO,
        "skipped: must be a list",
        dataset(manifest_set(None, "skipped")),
    ),
    "manifest-duplicate-clip-id": (INFO, "repeat the id", dataset(_duplicate_clip)),
    "manifest-file-absolute": (
        INFO,
        "is not a path inside the dataset",
        dataset(manifest_set(["/etc/passwd"], "clips", 0, "files")),
    ),
    "manifest-file-escapes": (
        INFO,
        "is not a path inside the dataset",
        dataset(manifest_set(["../../secret.parquet"], "clips", 0, "files")),
    ),
    "manifest-file-links-out": (
        INFO,
        "is a link to a file outside the dataset",
        dataset(_link_out_of_dataset),
    ),
    "manifest-file-missing": (INFO, "is missing", dataset(_remove_parquet)),
    "manifest-file-not-parquet": (
        INFO,
        "is not a readable Parquet file",
        dataset(_truncate_parquet),
    ),
    "manifest-a-list": (INFO, "manifest is not a JSON object", manifest_text("[]")),
    "manifest-format-unknown": (
        INFO,
        "unsupported dataset format",
        dataset(manifest_set(99, "format_version")),
    ),
    "manifest-edited-train": (
        "train --config {smoke} --data {f} {track}",
        MANIFEST,
        dataset(manifest_drop("clips")),
    ),
    "manifest-edited-sweep": (
        f"sweep --space {REPO / 'search_spaces' / 'smoke.json'} --data {{f}} {{track}}",
        MANIFEST,
        dataset(manifest_set("x", "splits")),
    ),
}

CHECKPOINT_META: dict[str, Raw] = {
    "meta-hash-not-hex": (
        PREDICT,
        "files.arch.json must be a sha256 hex digest",
        checkpoint(_meta(set_key(5, "files", "arch.json")), rehash=False),
    ),
    "meta-epoch-a-string": (
        PREDICT,
        "epoch must be an integer >= 0",
        checkpoint(_meta(set_key("1", "epoch")), rehash=False),
    ),
    "meta-metrics-a-list": (
        PREDICT,
        "metrics must be an object",
        checkpoint(_meta(set_key([], "metrics")), rehash=False),
    ),
    "meta-best-past-float-range": (  # an integer JSON allows and a float cannot hold
        PREDICT,
        "extra.best must be a finite number or null",
        checkpoint(_meta(set_key(10**309, "extra", "best")), rehash=False),
    ),
    "meta-metric-past-float-range": (
        PREDICT,
        "metrics.loss must be a number",
        checkpoint(_meta(set_key(-(10**400), "metrics", "loss")), rehash=False),
    ),
    "meta-image-size-bad": (
        PREDICT,
        "image_size must be [width, height]",
        checkpoint(_meta(set_key("64x36", "image_size")), rehash=False),
    ),
    "meta-a-list": (
        PREDICT,
        "not a varnext checkpoint",
        checkpoint(lambda p: (p / "meta.json").write_text("[]"), rehash=False),
    ),
    "meta-not-utf8": (
        PREDICT,
        "not UTF-8 text",
        checkpoint(lambda p: (p / "meta.json").write_bytes(b"\xff{}"), rehash=False),
    ),
}

IMAGES_AND_OPTIONS: dict[str, Raw] = {
    "image-decompression-bomb": (
        INGEST,
        "decompression bomb",
        png_header("bomb.png", 20_000, 20_000),
    ),
    "image-over-the-pixel-limit": (
        INGEST,
        "over the limit of 67,108,864 pixels",
        png_header("big.png", 9000, 9000),
    ),
    "image-truncated-alone": (
        INGEST,
        "cannot read as an image",
        lambda tmp, inputs: str(_write(tmp, "t.png", Path(inputs["a"]).read_bytes()[:60])),
    ),
    "image-png-magic-only": (
        INGEST,
        "cannot read as an image",
        file("m.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 50),
    ),
    "image-text-named-jpg": (INGEST, "cannot read as an image", file("notes.jpg", "hello\n")),
    "image-folder-of-corrupt-frames": (INGEST, "no decodable frame", _corrupt_frames),
    "image-folder-of-1x1-frames": (
        INGEST,
        "no usable frame in any source (640x360 would enlarge",
        _thumbnails,
    ),
    "every-keeps-under-a-triplet": (
        INGEST_VIDEO + " --every 100000000000000000000",
        "no clip keeps 3 frames (the longest keeps 1 with --every",
        None,
    ),
    "max-params-env-negative": (
        ARCH_CHECK,
        "VARNEXT_MAX_PARAMS must be a number >= 1 or 'inf' (got '-1')",
        arch(lambda data: None),
        {"VARNEXT_MAX_PARAMS": "-1"},
    ),
    "max-params-env-fraction": (
        ARCH_CHECK,
        "VARNEXT_MAX_PARAMS must be a number >= 1 or 'inf' (got '0.5')",
        arch(lambda data: None),
        {"VARNEXT_MAX_PARAMS": "0.5"},
    ),
    "crop-keeps-no-pixels": (
        "ingest {f} --out {out} --size 8x128",
        "keeps no pixels",
        _wide_strip,
    ),
    "size-absurd-aspect": (
        "ingest {video} --out {out} --size 8192x8",
        "aspect ratio beyond 16:1",
        None,
    ),
    "size-upscale-128-times": (  # 64x36 frames to 8192x4608: 113 MB of blur per frame
        "ingest {video} --out {tmp}/new/ds --size 8192x4608",
        "would enlarge the 64x36 centre crop of 64x36 frames 128 times",
        None,
    ),
    "size-5000-digits": (
        "ingest {video} --out {out} --size " + "9" * 5000 + "x8",
        "size must be WxH",
        None,
    ),
    "size-unicode-digits": (
        "ingest {video} --out {out} --size \u0666\u0664x\u0663\u0666",
        "size must be WxH",
        None,
    ),
    "option-cut-threshold-nan": (
        INGEST_VIDEO + " --cut-threshold nan",
        "argument --cut-threshold: nan is not a number (pass a finite number)",
        None,
    ),
    "option-cut-ratio-1": (  # its (where) named --cut-threshold
        INGEST_VIDEO + " --cut-ratio 0.5",
        "cut detection needs --cut-ratio > 1 (got 0.5) (--cut-ratio)",
        None,
    ),
    "option-cut-ratio-inf": (
        INGEST_VIDEO + " --cut-ratio inf",
        "argument --cut-ratio: inf is not a finite number (pass a finite number)",
        None,
    ),
    "option-val-nan": (INGEST_VIDEO + " --val nan", "argument --val: nan is not a number", None),
    "option-test-inf": (
        INGEST_VIDEO + " --test=-inf",
        "argument --test: -inf is not a finite number",
        None,
    ),
    "option-seed-negative": (INGEST_VIDEO + " --seed -1", "--seed must be in 0..2**63-1", None),
    "option-seed-huge": (
        INGEST_VIDEO + " --seed 99999999999999999999999",
        "--seed must be in 0..2**63-1",
        None,
    ),
}

BOUNDS: dict[str, Raw] = {
    "bound-latent-1e9": (
        ARCH_CHECK,
        "parameters, over the limit of 1,000,000,000",
        arch(set_key(10**9, "latent_dim")),
    ),
    "bound-linear-1e9": (
        ARCH_CHECK,
        "parameters, over the limit",
        arch(set_key([10**9], "encoder", "linear")),
    ),
    "bound-activations": (
        ARCH_CHECK,
        "of activations per frame (float32), over the limit of 4 GiB",
        arch(_huge_activations),
    ),
    "bound-flag-lowers-the-limit": (
        ARCH_CHECK + " --max-params 1000",
        "23,427 parameters, over the limit of 1,000",
        arch(lambda data: None),
    ),
    "bound-flag-nan": (
        ARCH_CHECK + " --max-activation-bytes nan",
        "argument --max-activation-bytes: must be a number >= 1 or 'inf' such as 2e9 (got 'nan')",
        arch(lambda data: None),
    ),
    "bound-train-latent-1e9": (
        "train --config {f} --data {dataset} {track}",
        "parameters, over the limit",
        arch(set_key(10**9, "latent_dim")),
    ),
    "bound-group-norm-prime": (  # the divisor hint used to loop 2**31 times
        ARCH_CHECK,
        "must divide out_channels 2147483647 for group norm (got 2); use one of 1, 2147483647",
        arch(_group_norm_prime),
    ),
    "bound-channels-over-int32": (
        ARCH_CHECK,
        "out_channels: must be <= 2147483647",
        arch(set_key(2**31, "encoder", "conv", 0, "out_channels")),
    ),
    "bound-stride-1e30": (
        ARCH_CHECK,
        "stride: must be <= 2147483647",
        arch(set_key(10**30, "encoder", "conv", 0, "stride")),
    ),
    "bound-space-base-latent-1e9": (
        SWEEP,
        "parameters, over the limit",
        space(base=SMOKE_DATA | {"latent_dim": 10**9}),
    ),
    "bound-space-every-point-too-large": (
        SWEEP,
        "even the smallest architecture of the space is too large",
        space(latent_dim={"low": 10**9, "high": 2 * 10**9}),
    ),
    "space-depth-negative": (
        SWEEP,
        "encoder.depth: must be >= 0 (got -2)",
        space(encoder={"depth": {"low": -2, "high": 2}}),
    ),
    "space-depth-1e9": (  # used to build 10**9 layer dicts per trial
        SWEEP,
        "encoder.depth: must be <= 64 conv layers (got 1000000000)",
        space(encoder={"depth": [10**9]}),
    ),
    "space-varies-layers-of-a-base-without-any": (
        SWEEP,
        "encoder.depth: the base architecture has no conv layer to vary",
        space(
            base={"input": {"height": 36, "width": 64}, "latent_dim": 4},
            encoder={"depth": [1, 2]},
        ),
    ),
    "bound-checkpoint-arch-huge-input": (  # a 1 KB arch.json must not allocate 29 GB
        PREDICT,
        "over the limit",
        checkpoint(_arch_json(_enlarge_input)),
    ),
    "header-checkpoint-arch-channels-changed": (  # refused from the header, before building
        PREDICT,
        "weights do not match arch.json: size mismatch for",
        checkpoint(_arch_json(set_key(9, "encoder", "conv", 0, "out_channels"))),
    ),
    "header-length-absurd": (
        PREDICT,
        "not a safetensors file (header length",
        checkpoint(_model_bytes(lambda data: (2**60).to_bytes(8, "little") + data[8:])),
    ),
    "header-truncated-weights": (
        PREDICT,
        "not a safetensors file",
        checkpoint(_model_bytes(lambda data: data[: len(data) // 2])),
    ),
    "header-not-json": (
        PREDICT,
        "not a safetensors file (header: not UTF-8",
        checkpoint(_model_bytes(lambda data: data[:8] + b"\xff" * 16 + data[24:])),
    ),
    "header-tiny-file": (
        PREDICT,
        "not a safetensors file (3 bytes)",
        checkpoint(_model_bytes(lambda data: b"abc")),
    ),
}

ONE_LINE: dict[str, Raw] = {
    "line-newline-in-a-found-path": (INGEST, "x\\nerror: forged line", _frames_with_newline),
    "line-newline-in-a-space-base": (
        SWEEP,
        "x\\nerror: forged.json",
        file("space.json", json.dumps({"name": "x", "base": "x\nerror: forged.json"})),
    ),
    "line-escape-sequence-in-a-path": (
        "arch check {tmp}/a\x1b[2Kb.json",
        "a\\x1b[2Kb.json",
        None,
    ),
    "line-newline-in-an-arch-value": (
        ARCH_CHECK,
        "must be one of",
        arch(set_key("relu\nerror: forged", "encoder", "conv", 0, "activation")),
    ),
}

LEFT_BEHIND: dict[str, Raw] = {
    "leave-nothing-new-parents-failed-ingest": (
        "ingest {f} --out {tmp}/new/deeper/ds",
        "no decodable frame",
        _corrupt_frames,
    ),
    "leave-nothing-crop-failure-midway": (
        "ingest {f} --out {tmp}/made/ds --size 8x128",
        "keeps no pixels",
        _wide_strip,
    ),
}


# ---- the job side: outputs, tracking stores, Ray addresses, checks before Ray -------------------


def copy_of(key: str, name: str) -> Setup:
    """A copy in the test's folder of the shared input ``key`` (a path, or a sqlite:/// URI)."""

    def make(tmp: Path, inputs: dict) -> str:
        return str(shutil.copyfile(inputs[key].removeprefix("sqlite:///"), tmp / name))

    return make


def _open_storage(tmp: Path, inputs: dict) -> str:
    """A sweep storage folder any user can write (an interrupted sweep's state inside)."""
    (tmp / "ray" / "sweep-varnext-sweep-smoke").mkdir(parents=True)
    (tmp / "ray").chmod(0o777)
    return str(tmp / "ray")


REPORT = "report --experiment exists --tracking-uri {uri} --out {f}"
PREDICT_OUT = "predict --checkpoint {ckpt} --out {f}"
SMOKE_SPACE = REPO / "search_spaces" / "smoke.json"
TRACKED = {  # a command, with --tracking-uri last
    "train": "train --config {smoke} --data {dataset} --storage {tmp}/ray --tracking-uri",
    "sweep": f"sweep --space {SMOKE_SPACE} --data {{dataset}} --storage {{tmp}}/ray --tracking-uri",
    "best": "best --experiment exists --out {tmp}/best --tracking-uri",
    "report": "report --experiment exists --out {tmp}/r.html --tracking-uri",
}
NO_DB = "no MLflow database at this path"  # best and report read a store: it must exist
TRACKING_URIS: dict[str, tuple[str, str, str, Setup | None]] = {
    # name: (URI, train and sweep's message, best and report's message, setup)
    "unknown-scheme": ("foo://x", "unsupported MLflow tracking URI: scheme 'foo'", "", None),
    "file-store": (
        "file:///tmp/mlruns",
        "unsupported MLflow tracking URI: scheme 'file'",
        "",
        None,
    ),
    "bare-path": ("{tmp}/mlruns", "no scheme (a plain path)", "", None),
    "sqlite-relative": ("sqlite://", "needs an absolute path (four slashes)", "", None),
    "sqlite-directory": ("sqlite:///{tmp}", "database path is not a regular file", "", None),
    "sqlite-text-file": (  # must be left as it is (no migration into an MLflow schema)
        "sqlite:///{f}",
        "this file is not a SQLite database",
        "",
        file("notes.db", "my notes\n"),
    ),
    "sqlite-missing-folder": (
        "sqlite:///{tmp}/typo/m.db",
        "the folder of the MLflow database does not exist",
        NO_DB,
        None,
    ),
    "server-bad-port": ("http://127.0.0.1:notaport", "the tracking URI has a bad port", "", None),
    "server-password-hidden": (  # nothing listens on port 9 here; the password is never shown
        "http://user:secret@127.0.0.1:9/",
        "(http://user:***@127.0.0.1:9/)",
        "",
        None,
    ),
}
TRAIN = "train --config {smoke} --data {dataset} {track}"
SWEEP_SMOKE = f"sweep --space {SMOKE_SPACE} --data {{dataset}} {{track}}"
CLOSED = "no Ray cluster answers there"

OUTPUTS: dict[str, Raw] = {
    "out-report-over-its-mlflow-db": (  # even with --overwrite: the runs it reports on
        "report --experiment exists --tracking-uri sqlite:///{f} --out {f} --overwrite",
        "the output would overwrite a file it must keep",
        copy_of("uri", "mlflow.db"),
    ),
    "out-report-exists": (REPORT, "the output file already exists", file("r.html", "mine")),
    "out-predict-over-an-input-frame": (
        PREDICT_OUT + " {f} {a} --overwrite",
        "its own input",
        copy_of("a", "a.png"),
    ),
    "out-predict-over-the-input-video": (
        PREDICT_OUT + " --video {f} --overwrite",
        "its own input",
        copy_of("video", "clip.mp4"),
    ),
    "out-predict-exists": (
        PREDICT_OUT + " {a} {a}",
        "the output file already exists",
        file("p.png", "mine"),
    ),
    "out-predict-steps-1e9": (
        "predict --checkpoint {ckpt} --out {tmp}/p.png {a} {a} --steps 1000000000",
        "would write 1000000000 frames (the limit is",
        None,
    ),
}

TRACKING: dict[str, Raw] = {
    f"tracking-{command}-{name}": (
        f"{argv} {uri}",
        message if command in ("train", "sweep") else reader_message or message,
        setup,
    )
    for name, (uri, message, reader_message, setup) in TRACKING_URIS.items()
    for command, argv in TRACKED.items()
}

RAY_ADDRESS: dict[str, Raw] = {
    "address-train-closed-port": (TRAIN + " --address 127.0.0.1:{port}", CLOSED, None),
    "address-sweep-closed-port": (SWEEP_SMOKE + " --address 127.0.0.1:{port}", CLOSED, None),
    "address-train-env-closed-port": (TRAIN, CLOSED, None, {"RAY_ADDRESS": "127.0.0.1:{port}"}),
    "address-sweep-env-closed-port": (
        SWEEP_SMOKE,
        CLOSED,
        None,
        {"RAY_ADDRESS": "127.0.0.1:{port}"},
    ),
    "address-train-no-port": (TRAIN + " --address localhost", "a Ray address is HOST:PORT", None),
    "address-sweep-port-out-of-range": (
        SWEEP_SMOKE + " --address 127.0.0.1:99999",
        "a Ray address is HOST:PORT",
        None,
    ),
}

BEFORE_RAY: dict[str, Raw] = {
    "preflight-train-frame-size": (  # a 128x72 architecture on the 64x36 dataset
        TRAIN.replace("{smoke}", "{f}"),
        "the dataset's frames are 64x36 but the architecture reads 128x72",
        arch(set_key({"channels": 3, "height": 72, "width": 128}, "input")),
    ),
    "preflight-train-workers-0": (TRAIN + " --workers 0", "workers must be >= 1 (got 0)", None),
    # found by a hostile pass: each reached Ray (or MLflow) before it failed, with exit 1
    "preflight-train-cpus-finer-than-ray": (
        TRAIN + " --cpus-per-worker 1e-9",
        "--cpus-per-worker must be 0 or at least 0.0001 (got 1e-09)",
        None,
    ),
    "preflight-train-seed-negative": (TRAIN + " --seed -1", "--seed must be in 0..", None),
    "preflight-train-seed-huge": (TRAIN + " --seed " + "9" * 23, "--seed must be in 0..", None),
    "preflight-train-experiment-long": (
        TRAIN + " --experiment " + "x" * 600,
        "the experiment name is longer than 100 characters (600)",
        None,
    ),
    # sixth pass: checkpoints and Ray's run state were written into the dataset
    "preflight-train-storage-inside-data": (
        TRAIN + " --storage {dataset}/val/runs",
        "--storage lies inside the dataset (--data)",
        None,
    ),
    "preflight-sweep-storage-is-data": (
        SWEEP_SMOKE + " --storage {dataset}",
        "--storage lies inside the dataset (--data)",
        None,
    ),
    "preflight-train-storage-a-file": (
        "train --config {smoke} --data {dataset} --storage {f}/runs "
        "--tracking-uri sqlite:///{tmp}/m.db",
        "notes.txt is a file, not a folder",
        file("notes.txt", "mine"),
    ),
    "preflight-train-storage-unknown-scheme": (
        TRAIN + " --storage bogus://x/y",
        "unknown storage URI scheme 'bogus' in bogus://x/y (--storage)",
        None,
    ),
    "preflight-train-storage-no-bucket": (
        TRAIN + " --storage s3:///runs",
        "the storage URI s3:///runs names no bucket or host (--storage)",
        None,
    ),
    # no credentials here: pyarrow retried GCS for 15 minutes, deaf to SIGTERM (now 10 s)
    "preflight-train-storage-gcs-unreachable": (
        TRAIN + " --storage gs://varnext-no-such-bucket/runs",
        "cannot reach the storage (google::cloud::Status(UNAVAILABLE",
        None,
    ),
    "preflight-train-autoscaling-unclear": (
        TRAIN,
        "VARNEXT_AUTOSCALING must be 1 or 0 (got 'maybe')",
        None,
        {"VARNEXT_AUTOSCALING": "maybe"},
    ),
    "preflight-train-cpus-nan": (
        TRAIN + " --cpus-per-worker nan",
        "argument --cpus-per-worker: nan is not a number",
        None,
    ),
    "preflight-train-cpus-negative": (
        TRAIN + " --cpus-per-worker=-1",
        "--cpus-per-worker must be a finite number >= 0 (got -1",
        None,
    ),
    "preflight-train-lr-nan": (
        TRAIN + " --lr nan",
        "argument --lr: nan is not a number",
        None,
    ),
    "preflight-train-lr-inf": (
        TRAIN + " --lr inf",
        "argument --lr: inf is not a finite number",
        None,
    ),
    "preflight-sweep-workers-per-trial-0": (
        SWEEP_SMOKE + " --workers-per-trial 0",
        "must be >= 1 (got 0)",
        None,
    ),
    "preflight-sweep-resume-open-storage": (
        f"sweep --space {SMOKE_SPACE} --data {{dataset}} --storage {{f}} "
        "--tracking-uri sqlite:///{tmp}/m.db --resume",
        "--resume reads Ray Tune's pickled state",
        _open_storage,
    ),
    # refused before Ray, the MLflow parent run and the data (it made a RUNNING parent run)
    "preflight-sweep-resume-nothing-to-resume": (
        SWEEP_SMOKE + " --resume",
        "no sweep to resume",
        None,
    ),
}

DATA_CASES: dict[str, Raw] = (
    FILE_KINDS
    | HOSTILE_JSON
    | MANIFEST_KEYS
    | CHECKPOINT_META
    | IMAGES_AND_OPTIONS
    | BOUNDS
    | ONE_LINE
    | LEFT_BEHIND
    | OUTPUTS
    | TRACKING
    | RAY_ADDRESS
    | BEFORE_RAY
)
