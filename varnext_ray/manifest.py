"""A frame dataset's manifest (``dataset.json``): its schema, loading it, and what it indexes.

:func:`load_manifest` reads and validates the manifest key by key and has its Parquet files
checked (:mod:`varnext_ray.manifest_files`); a :class:`Manifest` lists a split's clips and
files, and :func:`sequence_index` the (clip, t) anchors of frame triplets and sequences.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from varnext_ray.config_errors import problems_from_validation
from varnext_ray.errors import UserError, list_problems
from varnext_ray.manifest_files import MANIFEST_FIX, check_clip_files, check_clip_keys
from varnext_ray.safe_io import MANIFEST_LIMIT, kind_of, path_stat, read_json

MANIFEST = "dataset.json"
FORMAT_VERSION = 1
ENCODINGS = ("raw", "png", "jpeg")
SPLITS = ("train", "val", "test")


# ---- the manifest's schema: what readers rely on (other keys are kept, not checked) ----------

_COUNT = Annotated[int, Field(ge=0, le=10**10)]
_SIDE = Annotated[int, Field(ge=1, le=8192)]
_INDEX = Annotated[int, Field(ge=0, lt=2**63)]
Split = Literal["train", "val", "test"]


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, frozen=True)


class _ClipRecord(_Loose):
    id: Annotated[str, Field(min_length=1, max_length=400)]
    split: Split
    frames: _COUNT
    files: list[Annotated[str, Field(min_length=1, max_length=4096)]]
    # provenance, which ingest always writes: the clip's source (an index into ``sources``) and
    # the source frame numbers of its first and last frame
    source: Annotated[int, Field(ge=0)] | None = None
    source_frames: Annotated[list[_INDEX], Field(min_length=2, max_length=2)] | None = None

    @model_validator(mode="after")
    def _in_order(self) -> _ClipRecord:
        if self.source_frames is not None and self.source_frames[0] > self.source_frames[1]:
            first, last = self.source_frames
            raise PydanticCustomError(
                "arch", f"run backwards ({first} > {last})", {"field": "source_frames"}
            )
        return self


class _SplitRecord(_Loose):
    policy: Literal["clips", "time_blocks"]  # printed by data info: never free text
    seed: Annotated[int, Field(ge=0, lt=2**63)]  # ingest's --seed


class _ManifestSchema(_Loose):
    size: Annotated[list[_SIDE], Field(min_length=2, max_length=2)]
    encoding: Literal["raw", "png", "jpeg"]
    channels: Literal[3] | None = None  # frames are RGB: readers decode 3 channels
    every: Annotated[int, Field(ge=1, le=10**6)] | None = None  # ingest's --every
    frames: _COUNT
    splits: dict[Split, _COUNT]
    clips: list[_ClipRecord]
    sources: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    split: _SplitRecord
    bytes: _COUNT | None = None

    @field_validator("channels", mode="before")
    @classmethod
    def _an_integer(cls, value: Any) -> Any:
        """``Literal[3]`` compares by ``==``, so it took ``3.0`` even in strict mode."""
        if value is not None and type(value) is not int:
            raise PydanticCustomError("int_type", "must be an integer")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> _ManifestSchema:
        total = sum(c.frames for c in self.clips)
        if total != self.frames:
            raise PydanticCustomError(
                "arch",
                f"is {self.frames} but the clips hold {total} frames",
                {"field": "frames"},
            )
        for split in SPLITS:
            held = sum(c.frames for c in self.clips if c.split == split)
            if self.splits.get(split, 0) != held:
                raise PydanticCustomError(
                    "arch",
                    f"says {self.splits.get(split, 0)} but its clips hold {held} frames",
                    {"field": f"splits.{split}"},
                )
        for i, clip in enumerate(self.clips):
            if clip.source is not None and clip.source >= len(self.sources):
                raise PydanticCustomError(
                    "arch",
                    f"names source {clip.source} of the {len(self.sources)} in sources",
                    {"field": f"clips[{i}].source"},
                )
        seen: set[str] = set()
        for clip in self.clips:
            if clip.id in seen:
                dup = clip.id
                raise PydanticCustomError("arch", f"repeat the id {dup!r}", {"field": "clips"})
            seen.add(clip.id)
        return self


def validate_manifest(data: Any, where: str) -> _ManifestSchema:
    """Checks a decoded ``dataset.json`` against what readers rely on (UserError naming the key)."""
    try:
        return _ManifestSchema.model_validate(data)
    except ValidationError as err:
        problems = problems_from_validation(err, {(): _ManifestSchema})
        what = list_problems("invalid manifest", problems)
        raise UserError(what, where, MANIFEST_FIX) from None


@dataclass(frozen=True)
class Manifest:
    """The parsed ``dataset.json`` of a frame dataset."""

    root: Path
    data: dict[str, Any]

    @property
    def size(self) -> tuple[int, int]:
        """(W, H) of every frame."""
        return tuple(self.data["size"])  # type: ignore[return-value]

    @property
    def encoding(self) -> str:
        return self.data["encoding"]

    def clips(self, split: str | None = None) -> list[dict]:
        """The clip records, optionally of one split."""
        return [c for c in self.data["clips"] if split is None or c["split"] == split]

    def frames(self, split: str) -> int:
        """The split's frames (``splits`` may leave out a split that has none: validated to
        add up with the clips when loaded)."""
        return int(self.data["splits"].get(split, 0))

    def files(self, split: str) -> list[str]:
        """Absolute paths of the split's Parquet files."""
        return [str(self.root / f) for c in self.clips(split) for f in c["files"]]


def load_manifest(
    path: str | Path, *, check_files: bool = True, check_keys: bool = False
) -> Manifest:
    """Reads a dataset's manifest, with a UserError for anything that is not a dataset.

    The manifest is read bounded (64 MiB), validated key by key (types, counts that add up)
    and, with ``check_files``, its Parquet files are checked to exist inside the dataset and to
    hold as many rows as it says (their footers only); with ``check_keys`` (once per command,
    before Ray: ``data info``, the training checks) their clip ids and frame indices are read
    and compared with the manifest's clips too.
    """
    fix = "pass a directory written by 'varnext ingest'"
    st = path_stat(path, "dataset", fix)
    if st is None or not stat.S_ISDIR(st.st_mode):
        what = "dataset not found" if st is None else f"dataset is {kind_of(st.st_mode)}"
        what += ", not a directory" if st is not None else ""
        raise UserError(what, str(path), fix)
    try:
        root = Path(path).resolve(strict=True)
    except (OSError, RuntimeError) as err:
        raise UserError(f"dataset path does not resolve ({err})", str(path), fix) from None
    file = root / MANIFEST
    if path_stat(file, "manifest", fix) is None and not os.path.islink(file):
        raise UserError(
            f"not a frame dataset (no {MANIFEST})",
            str(path),
            "pass a directory written by 'varnext ingest' (an interrupted ingest leaves none)",
        )
    try:
        data = read_json(file, what="manifest", limit=MANIFEST_LIMIT, fix=MANIFEST_FIX)
    except UserError as err:
        raise UserError(f"unreadable manifest: {err.what}", str(file), MANIFEST_FIX) from None
    version = data.get("format_version") if isinstance(data, dict) else None
    if type(version) is not int or version != FORMAT_VERSION:  # not `true`, which == 1
        raise UserError(
            f"unsupported dataset format {str(version)[:40]!r}"
            if isinstance(data, dict)
            else "manifest is not a JSON object",
            str(file),
            f"re-ingest with this version (format {FORMAT_VERSION})",
        )
    schema = validate_manifest(data, str(file))
    if check_files or check_keys:
        check_clip_files(root, schema, str(file))
    if check_keys:
        check_clip_keys(root, schema, str(file))
    return Manifest(root, data)


def triplet_index(manifest: Manifest, split: str, stride: int = 1) -> list[tuple[str, int]]:
    """Every (clip_id, t) whose frames t, t+s, t+2s lie in one clip of the split."""
    return sequence_index(manifest, split, stride, length=3)


def sequence_index(
    manifest: Manifest, split: str, stride: int = 1, length: int = 3
) -> list[tuple[str, int]]:
    """Every (clip_id, t) whose frames t, t+s, ..., t+(length-1)s lie in one clip of the split."""
    if stride < 1:
        raise UserError(f"triplet stride must be >= 1 (got {stride})", "stride", "use 1 or more")
    reach = (length - 1) * stride
    clips = manifest.clips(split)
    return [(clip["id"], t) for clip in clips for t in range(clip["frames"] - reach)]


def sequence_count(manifest: Manifest, split: str, stride: int = 1, length: int = 3) -> int:
    """``len(sequence_index(...))`` without building the list."""
    if stride < 1:
        raise UserError(f"triplet stride must be >= 1 (got {stride})", "stride", "use 1 or more")
    reach = (length - 1) * stride
    return sum(max(0, clip["frames"] - reach) for clip in manifest.clips(split))


def info(manifest: Manifest, stride: int = 1) -> dict[str, Any]:
    """A summary for ``varnext data info``: frames, clips, splits, size, skipped and more."""
    data = manifest.data
    return {
        "path": str(manifest.root),
        "frames": data["frames"],
        "clips": len(data["clips"]),
        "splits": {s: manifest.frames(s) for s in SPLITS},
        "clips_per_split": {s: len(manifest.clips(s)) for s in SPLITS},
        "triplets": {s: sequence_count(manifest, s, stride) for s in SPLITS},
        "stride": stride,
        "size": list(manifest.size),
        "encoding": manifest.encoding,
        "sources": len(data["sources"]),
        "skipped": len(data["skipped"]),
        "skipped_inputs": data["skipped"],
        "split_policy": data["split"]["policy"],
        "seed": data["split"]["seed"],
        "bytes": data.get("bytes"),
    }
