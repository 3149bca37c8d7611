"""Ingest: sources -> resized frames -> clips (cut at scene cuts and camera bumps) -> splits
-> a frame dataset on disk (Parquet + ``dataset.json``), written atomically.

Cut detection. Each frame is reduced to a 64-px-wide grayscale signature with its mean removed
(so slow lighting drift and exposure steps do not count), and ``d`` is the mean absolute
difference between consecutive signatures (0..1). A frame starts a new clip when

    d >= cut_threshold  and  d >= cut_ratio * median(d over the previous 15 frames of the clip)

or, at the very start of a clip where there is no history, when ``d >= 5 * cut_threshold``.
Defaults: ``cut_threshold = 0.02``, ``cut_ratio = 4``. Measured on the synthetic scenes, object
motion gives ``d`` up to ~0.01 at 1.3-3x the running median, a camera bump ~0.05 at 6-30x; on the
real overpass clip (heavy traffic) ``d`` peaks at 0.03 but never passes 2.6x its running median.

Split policy: see :mod:`varnext_ray.splits`.

Atomicity. Everything is written into ``.<name>.partial-<pid>`` beside ``--out`` and renamed to
``--out`` only when complete; an interrupted ingest leaves no directory that reads as a dataset.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from varnext_ray import __version__
from varnext_ray.atomic_write import staged_dir
from varnext_ray.errors import UserError
from varnext_ray.frame_codec import encode_image
from varnext_ray.frame_decode import GAP, Skipped, decode_source, frame_size, warnings_after_success
from varnext_ray.frame_fit import MAX_UPSCALE, check_fit, fit_frame
from varnext_ray.manifest import ENCODINGS, FORMAT_VERSION, MANIFEST, SPLITS
from varnext_ray.manifest_files import FRAME_KEY, frame_key
from varnext_ray.output_checks import check_current_folder, check_new_dir, check_not_inside
from varnext_ray.safe_io import json_bytes, os_reason
from varnext_ray.sources import (
    Source,
    describe_ignored,
    discover_sources,
    ignored_fixes,
    unexpected_ignored,
)
from varnext_ray.splits import SplitShares, plan_splits

log = logging.getLogger(__name__)

TRIPLET_FRAMES = 3  # frames t, t+s, t+2s: the least a clip must keep to be of use
ROW_GROUP = 32  # frames per Parquet row group (raw 640x360: ~22 MB before compression)
FILE_FRAMES = 1024  # frames per Parquet file


@dataclass(frozen=True)
class IngestOptions:
    """Settings of one ingest; every field is recorded in the manifest."""

    size: tuple[int, int] = (640, 360)
    every: int = 1
    val: float = 0.1
    test: float = 0.1
    seed: int = 0
    guard: int = 16
    cut_threshold: float = 0.02
    cut_ratio: float = 4.0
    encoding: str = "raw"

    def check(self) -> None:
        """Raises a UserError naming the first bad option (NaN and infinity included)."""
        for name, value in (
            ("--val", self.val),
            ("--test", self.test),
            ("--cut-threshold", self.cut_threshold),
            ("--cut-ratio", self.cut_ratio),
        ):
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UserError(
                    f"{name} must be a finite number (got {value})", name, "pass e.g. 0.1"
                )
        if not 0 <= self.seed < 2**63:
            raise UserError(
                f"--seed must be in 0..2**63-1 (got {self.seed})", "--seed", "use e.g. --seed 0"
            )
        if self.every < 1:
            raise UserError(f"--every must be >= 1 (got {self.every})", "--every", "use 1 or more")
        for name, value in (("--val", self.val), ("--test", self.test)):
            if not 0 <= value < 0.5:
                raise UserError(
                    f"{name} must be in [0, 0.5) (got {value})", name, "pass a fraction such as 0.1"
                )
        if self.guard < 0:
            raise UserError(f"--guard must be >= 0 (got {self.guard})", "--guard", "use 0 or more")
        for flag, value, bound in (
            ("--cut-threshold", self.cut_threshold, 0),
            ("--cut-ratio", self.cut_ratio, 1),
        ):
            if value <= bound:
                raise UserError(
                    f"cut detection needs {flag} > {bound} (got {value})",
                    flag,
                    "use e.g. --cut-threshold 0.02 --cut-ratio 4",
                )
        if self.encoding not in ENCODINGS:
            raise UserError(
                f"unknown encoding {self.encoding!r}",
                "--encoding",
                f"use one of {', '.join(ENCODINGS)}",
            )


class CutDetector:
    """Frame-difference cut detection (see the module docstring for the rule)."""

    HISTORY = 15

    def __init__(self, threshold: float, ratio: float) -> None:
        self.threshold = threshold
        self.ratio = ratio
        self.previous: np.ndarray | None = None
        self.history: list[float] = []

    @staticmethod
    def signature(frame: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> zero-mean grayscale thumbnail, 64 px wide, values in [-1, 1]."""
        h, w = frame.shape[:2]
        thumb = (
            Image.fromarray(frame).convert("L").resize((64, max(1, round(64 * h / w))), Image.BOX)
        )
        g = np.asarray(thumb, np.float32) / 255.0
        return g - g.mean()

    def is_cut(self, frame: np.ndarray) -> bool:
        """Feeds the next frame; True when it starts a new clip."""
        sig = self.signature(frame)
        prev, self.previous = self.previous, sig
        if prev is None:
            return False
        d = float(np.abs(sig - prev).mean())
        if self.history:
            cut = d >= self.threshold and d >= self.ratio * float(np.median(self.history))
        else:
            cut = d >= 5 * self.threshold
        self.history = [] if cut else [*self.history[-(self.HISTORY - 1) :], d]
        return cut

    def reset(self) -> None:
        """Forgets the previous frame (after a gap or at a new source)."""
        self.previous = None
        self.history = []


@dataclass
class StagedClip:
    """A clip as first written, before splitting: a staging Parquet file of its frames."""

    id: str
    source: int
    path: Path
    source_frames: list[int] = field(default_factory=list)


class _ClipWriter:
    """Streams one clip's encoded frames into a staging Parquet file."""

    SCHEMA = pa.schema([("source_frame", pa.int64()), ("image", pa.binary())])

    def __init__(self, clip: StagedClip, encoding: str) -> None:
        self.clip = clip
        self.encoding = encoding
        self.writer = pq.ParquetWriter(_arrow_path(clip.path), self.SCHEMA, compression="none")
        self.pending: list[tuple[int, bytes]] = []

    def add(self, number: int, frame: np.ndarray) -> None:
        self.pending.append((number, encode_image(frame, self.encoding)))
        self.clip.source_frames.append(number)
        if len(self.pending) >= ROW_GROUP:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            numbers, blobs = zip(*self.pending, strict=True)
            self.writer.write_table(
                pa.table({"source_frame": list(numbers), "image": list(blobs)}, schema=self.SCHEMA)
            )
            self.pending = []

    def close(self) -> StagedClip:
        self.flush()
        self.writer.close()
        return self.clip


def stage_source(
    source: Source, index: int, opts: IngestOptions, staging: Path, skipped: Skipped
) -> tuple[list[StagedClip], dict, str | None]:
    """Decodes one source into staged clips; returns them, the source's manifest record and
    why the first frame that decoded but did not fit ``--size`` was left out (None if none)."""
    detector = CutDetector(opts.cut_threshold, opts.cut_ratio)
    clips: list[StagedClip] = []
    writer: _ClipWriter | None = None
    decoded = used = 0
    cuts: list[int] = []
    unfit: str | None = None
    stem = source.path.stem if source.kind == "video" else source.path.name
    for item in decode_source(source, skipped):
        if item is GAP:  # frames were lost: what follows is not the same clip
            detector.reset()
            if writer is not None:
                writer.close()
                writer = None
            continue
        number, raw = item
        decoded += 1
        if number % opts.every:
            continue
        try:
            frame = fit_frame(raw, opts.size, max_upscale=MAX_UPSCALE)
        except UserError as err:
            if source.kind != "images" or len(source.files) < 2:
                if source.kind == "images":  # one picture: --size is wrong for it
                    raise UserError(err.what, str(source.path), err.fix) from None
                raise UserError(  # a video: say from which frame (its size may change)
                    f"{err.what}, from frame {number} on" if number else err.what,
                    str(source.path),
                    f"{err.fix}, or cut the video before frame {number}" if number else err.fix,
                ) from None
            # One odd frame among a folder's (a thumbnail, a banner): skip it, cut the clip.
            skipped.add(source.files[number], err.what)
            unfit = unfit or err.what
            detector.reset()
            if writer is not None:
                writer.close()
                writer = None
            continue
        used += 1
        if detector.is_cut(frame) and writer is not None:
            cuts.append(number)
            writer.close()
            writer = None
        if writer is None:
            clip = StagedClip(
                f"{index:03d}-{_slug(stem)}-{len(clips):03d}",
                index,
                staging / f"{index:03d}-{len(clips):03d}.parquet",
            )
            clips.append(clip)
            writer = _ClipWriter(clip, opts.encoding)
        writer.add(number, frame)
    if writer is not None:
        writer.close()
    record = {
        "path": str(source.path.resolve()),
        "kind": source.kind,
        "frames_decoded": decoded,
        "frames_used": used,
        "clips": len(clips),
        "cuts": cuts,
    }
    return clips, record, unfit


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:40] or "source"


def write_pieces(
    staged: StagedClip,
    pieces: list[tuple[str, int, int]],
    out: Path,
    size: tuple[int, int],
    encoding: str,
) -> list[dict]:
    """Rewrites a staged clip as its final pieces, adding the columns readers need, and the
    frames' size and encoding in each file's metadata
    (:func:`~varnext_ray.manifest_files.frame_key`): raw bytes do not say their width, so a
    manifest edited to another size of as many pixels would read every frame scrambled."""
    table = pq.read_table(_arrow_path(staged.path))
    key = {FRAME_KEY: frame_key(size, encoding)}
    records = []
    for split, start, stop in pieces:
        clip_id = staged.id if len(pieces) == 1 else f"{staged.id}-{split}"
        piece = table.slice(start, stop - start)
        n = piece.num_rows
        files = []
        for part, offset in enumerate(range(0, n, FILE_FRAMES)):
            rows = piece.slice(offset, FILE_FRAMES)
            final = pa.table(
                {
                    "clip_id": pa.array([clip_id] * rows.num_rows, pa.string()),
                    "frame_index": pa.array(range(offset, offset + rows.num_rows), pa.int32()),
                    "source_frame": rows.column("source_frame"),
                    "split": pa.array([split] * rows.num_rows, pa.string()),
                    "image": rows.column("image"),
                }
            ).replace_schema_metadata(key)
            name = f"{split}/{clip_id}-{part:04d}.parquet"
            pq.write_table(
                final, _arrow_path(out / name), row_group_size=ROW_GROUP, compression="zstd"
            )
            files.append(name)
        records.append(
            {
                "id": clip_id,
                "source": staged.source,
                "split": split,
                "frames": n,
                "source_frames": [staged.source_frames[start], staged.source_frames[stop - 1]],
                "files": files,
            }
        )
    staged.path.unlink()
    return records


def ingest(sources: list[Path], out: Path, opts: IngestOptions) -> dict:
    """Builds a frame dataset at ``out`` from videos and image folders; returns the manifest.

    Example:
        >>> ingest([Path("runs/synth")], Path("runs/dataset"), IngestOptions(size=(160, 90)))
    """
    opts.check()
    check_new_dir(out, "--out")  # refuse an unusable --out (non-empty, a file...) early
    _check_utf8_path(out)
    for source in sources:  # a dataset inside a folder it reads: the next ingest reads it too
        if Path(source).is_dir():
            check_not_inside(out, "--out", source, f"the source folder {source}")
    found, ignored = discover_sources(sources)
    _open_named(found, opts.size)
    # Written into .<name>.partial-<pid>-<random> beside --out and renamed when complete (an
    # existing empty folder is replaced; anything else is refused); a failure removes it all.
    with warnings_after_success(), staged_dir(out, "--out") as partial:
        try:
            manifest = _ingest_into(found, partial, opts, ignored)
        except OSError as err:  # disk full, permissions changed under us
            raise UserError(
                f"cannot write the dataset ({os_reason(err)})",
                str(out),
                "free some space or choose another --out; nothing was kept",
            ) from None
    _warn_left_out(ignored)
    return manifest


def _open_named(found: list[Source], size: tuple[int, int]) -> None:
    """Opens each source named on the command line before any is decoded, reading headers
    only: one that can never give a frame (no video stream, frames over the pixel limit or too
    small for ``size``) is refused at once, not after the sources before it were decoded.

    A frame size passes if it fits either way round: a display matrix (or EXIF orientation)
    may turn the frames, and decoding checks every frame as it is shown anyway. A folder of
    several images is not checked here: one odd or damaged image of it is skipped, not fatal.
    """
    for source in found:
        if not source.named or (source.kind == "images" and len(source.files) > 1):
            continue
        w, h = frame_size(source)
        try:
            check_fit((w, h), size, str(source.path), MAX_UPSCALE)
        except UserError:
            if not _fits((h, w), size):
                raise


def _fits(frame_size: tuple[int, int], size: tuple[int, int]) -> bool:
    try:
        check_fit(frame_size, size, max_upscale=MAX_UPSCALE)
    except UserError:
        return False
    return True


def _warn_left_out(ignored: list[dict]) -> None:
    """One warning line for folders the search left out that the user meant to ingest (too
    deep, unreadable): their frames are missing from the dataset, which otherwise looks whole."""
    lost = unexpected_ignored(ignored)
    if lost:
        log.warning(
            "the search left out %s: their frames are not in the dataset (listed under "
            "`ignored` in dataset.json); %s",
            describe_ignored(lost),
            "; or ".join(ignored_fixes(lost)),
        )


def _check_utf8_path(out: Path) -> None:
    """pyarrow writes the shards, and Ray Data reads them, by UTF-8 path: a name holding other
    bytes (a Latin-1 ``\xff``) failed in pyarrow with a UnicodeEncodeError, exit 1.

    The bytes on disk are checked, not Python's text of them: under a non-UTF-8 locale
    (``LC_ALL=C``) a UTF-8 name reads as escaped bytes and is still good (:func:`_arrow_path`
    gives pyarrow its text). A relative ``--out`` counts with the current folder (the dataset is
    read by absolute path), or as given where that folder is too deep to be named.
    """
    check_current_folder(out, "--out")
    try:
        full = os.path.abspath(out)
    except OSError:
        full = os.fspath(out)
    try:
        os.fsencode(full).decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(
            "the dataset's path is not UTF-8 text, which pyarrow and Ray Data need",
            ascii(str(out))[1:-1],
            "choose a --out whose name (and parent folders) use UTF-8 characters only",
        ) from None


def _arrow_path(path: Path) -> str:
    """``path`` as pyarrow takes it: UTF-8 text. Under a non-UTF-8 locale Python holds a UTF-8
    name as escaped bytes ("é" as two lone surrogates), which pyarrow cannot encode; decoded
    here, it names the same bytes (UTF-8, checked by :func:`_check_utf8_path`)."""
    return os.fsencode(path).decode("utf-8")


def _ingest_into(
    found: list[Source], partial: Path, opts: IngestOptions, ignored: list[dict]
) -> dict:
    started = time.perf_counter()
    staging = partial / "_staging"
    staging.mkdir()
    for split in SPLITS:
        (partial / split).mkdir()
    skipped = Skipped()
    staged: list[StagedClip] = []
    records = []
    unusable: list[str] = []  # why sources whose frames decoded kept none
    for index, source in enumerate(found):
        before = len(skipped.items)
        clips, record, unfit = stage_source(source, index, opts, staging, skipped)
        if not clips:
            # Frames that decoded but fit no --size (a folder's 1x1 thumbnails) say why.
            what = f"no usable frame ({unfit})" if unfit else "no decodable frame"
            if unfit:
                unusable.append(what)
            if source.named:
                raise UserError(what, str(source.path), _no_frame_hint(bool(unfit)))
            if not any(item["path"] == str(source.path) for item in skipped.items[before:]):
                skipped.add(source.path, what)  # unless its decoding said why already
        staged.extend(clips)
        records.append(record)
    if not staged:
        what = (
            unusable[0].replace("frame", "frame in any source", 1)
            if unusable
            else "no decodable frame in any source"
        )
        fix = _no_frame_hint(bool(unusable))
        lost = unexpected_ignored(ignored)
        if lost:  # what the search left out may be what the user meant to ingest
            what += f"; the search left out {describe_ignored(lost)}"
            fix = "; or ".join([*ignored_fixes(lost), fix])
        raise UserError(what, ", ".join(str(s.path) for s in found), fix)
    _check_clip_length(staged, records, found, opts)
    shares = SplitShares(val=opts.val, test=opts.test, guard=opts.guard, seed=opts.seed)
    plan = plan_splits([len(c.source_frames) for c in staged], shares)
    _warn_empty_splits(plan, shares)
    clips = [
        rec
        for clip, pieces in zip(staged, plan, strict=True)
        for rec in write_pieces(clip, pieces, partial, opts.size, opts.encoding)
    ]
    staging.rmdir()
    manifest = _manifest(opts, records, clips, skipped, ignored, plan, staged)
    manifest["bytes"] = sum(f.stat().st_size for f in partial.rglob("*.parquet"))
    manifest["ingest_seconds"] = round(time.perf_counter() - started, 3)
    try:
        (partial / MANIFEST).write_bytes(json_bytes(manifest))  # NaN or infinity: never written
    except ValueError as err:
        raise UserError(
            f"a value in the manifest is not finite ({err})", "dataset.json", "report this bug"
        ) from None
    return manifest


def _check_clip_length(
    staged: list[StagedClip], records: list[dict], found: list[Source], opts: IngestOptions
) -> None:
    """A UserError if no clip keeps a triplet's frames, naming what shortened them: ``--every``
    and the scene cuts detected (a tiny ``--cut-threshold`` cuts at every frame), not only the
    footage."""
    longest = max(len(c.source_frames) for c in staged)
    if longest >= TRIPLET_FRAMES:
        return
    cuts = sum(len(r["cuts"]) for r in records)
    why = [f"--every {opts.every}"] if opts.every > 1 else []
    why += [f"{cuts} scene cuts detected"] if cuts else []
    fixes = ["pass longer footage"] + (["a smaller --every"] if opts.every > 1 else [])
    if cuts:
        fixes.append(
            f"a higher --cut-threshold or --cut-ratio (got {opts.cut_threshold:g} and "
            f"{opts.cut_ratio:g}; defaults {IngestOptions.cut_threshold:g} and "
            f"{IngestOptions.cut_ratio:g})"
        )
    raise UserError(
        f"no clip keeps {TRIPLET_FRAMES} frames (the longest keeps {longest}"
        + (f" with {' and '.join(why)}" if why else "")
        + "): a dataset needs three frames in a row to train or evaluate on",
        ", ".join(str(s.path) for s in found),
        ", or ".join(fixes),
    )


def _no_frame_hint(decoded: bool) -> str:
    if decoded:
        return "pass a --size near the frames' own, or remove the frames named"
    return "pass videos that play or folders of PNG/JPEG frames"


def _warn_empty_splits(plan: list[list[tuple[str, int, int]]], shares: SplitShares) -> None:
    """A requested val or test share that no frame went to (clips too short for their blocks
    and the guard between them) is said, not left for ``train`` to find."""
    got = {split for pieces in plan for split, _, _ in pieces}
    for split, share in (("val", shares.val), ("test", shares.test)):
        if share > 0 and split not in got:
            guard = f"with --guard {shares.guard} frames between them" if shares.guard else ""
            fix = "lower --guard or ingest" if shares.guard else "ingest"
            log.warning(
                "no frame went to %s (--%s %g): every clip is too short for its time blocks%s, "
                "so all its frames train; %s longer footage",
                split,
                split,
                share,
                f" {guard}" if guard else "",
                fix,
            )


def _manifest(
    opts: IngestOptions,
    sources: list[dict],
    clips: list[dict],
    skipped: Skipped,
    ignored: list[dict],
    plan: list,
    staged: list[StagedClip],
) -> dict:
    policy = "clips" if all(len(p) == 1 and p[0][1] == 0 for p in plan) else "time_blocks"
    guard_frames = sum(len(c.source_frames) for c in staged) - sum(c["frames"] for c in clips)
    return {
        "format_version": FORMAT_VERSION,
        "varnext_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "size": list(opts.size),
        "channels": 3,
        "encoding": opts.encoding,
        "every": opts.every,
        "cut": {
            "threshold": opts.cut_threshold,
            "ratio": opts.cut_ratio,
            "history": CutDetector.HISTORY,
        },
        "split": {
            "policy": policy,
            "seed": opts.seed,
            "val": opts.val,
            "test": opts.test,
            "guard": opts.guard,
            "guard_frames_dropped": guard_frames,
        },
        "frames": sum(c["frames"] for c in clips),
        "splits": {s: sum(c["frames"] for c in clips if c["split"] == s) for s in SPLITS},
        "sources": sources,
        "clips": clips,
        "skipped": skipped.items,
        "ignored": ignored,
    }
