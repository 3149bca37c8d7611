"""Finding frame sources: expanding the paths of a command line into videos and image folders.

A *source* is one video file (any container and codec PyAV decodes) or one folder of images
(PNG/JPEG named as an ffmpeg dump names them, read in natural order: ``frame_2`` before
``frame_10``). A directory given on the command line is searched recursively: every video in it
is a source, and every folder that holds images is one. An animated image (a GIF or an APNG,
whatever its suffix) is a video: its frames are a clip, not one still; among a folder's stills
it leaves a hole that cuts their clip. Where a folder holds one frame in two formats
(``f_1.png`` and ``f_1.jpg``), the PNG is read and the other is skipped with a warning.

A source named on the command line that is a missing path or an empty folder is a
:class:`UserError`. What its search left out is listed in ``ignored``
(:func:`describe_ignored`, :func:`ignored_fixes`).

Paths: files and folders are known by (device, inode), so one reached twice (a symlink loop,
the same path named twice, a symlink to a sibling, a hard link) is read once and the repeat is
listed in ``ignored``; a frame of a folder read already, or that cannot be read (a dangling
symlink), leaves a hole there (``Source.holes``) that cuts the clip, so the frames after it keep
their numbers. FIFOs, devices and sockets are never opened (named ones are a UserError, found
ones are ignored, listed in ``ignored`` and warned about, as is a folder named like a video that
holds none). What a killed varnext run was writing (a hidden ``.<name>.partial-<pid>-<hex>``
folder or ``.<name>.tmp-<hex>`` file) is half written: a search leaves it out and says so;
other hidden entries are searched like any other.

The later stages: :mod:`varnext_ray.frame_decode` decodes a source's frames (images through
:mod:`varnext_ray.image_read`), :mod:`varnext_ray.frame_fit` fits them to a size.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from varnext_ray.errors import UserError
from varnext_ray.image_read import is_animated
from varnext_ray.safe_io import kind_of, os_reason, path_stat

VIDEO_SUFFIXES = frozenset(
    {
        ".mp4",
        ".avi",
        ".mkv",
        ".mov",
        ".webm",
        ".m4v",
        ".mpg",
        ".mpeg",
        ".ts",
        ".wmv",
        ".flv",
        ".gif",
    }
)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
_FOOTAGE_SUFFIXES = VIDEO_SUFFIXES | IMAGE_SUFFIXES


@dataclass(frozen=True)
class Source:
    """One video file or one folder of images."""

    kind: str  # "video" | "images"
    path: Path
    files: tuple[Path, ...] = ()  # the images of an image folder, in natural order
    named: bool = True  # named on the command line (not found inside a directory)
    # Images of a folder left out as another format of a kept frame: (left out, kept).
    duplicates: tuple[tuple[Path, Path], ...] = ()
    # Animated images among ``files``, read as videos of their own: holes that cut the clip.
    animated: frozenset[Path] = frozenset()
    # Places among ``files`` left out (read already, unreadable): holes that cut the clip.
    holes: frozenset[Path] = frozenset()


_DECIMALS = re.compile(r"(\d+)")  # Unicode decimal digits (category Nd): what int() reads


def natural_key(path: Path) -> list:
    """Sort key that orders ``frame_2.png`` before ``frame_10.png``.

    Numbers are runs of decimal digits only: ``str.isdigit`` is also true for ``①`` or ``²``,
    which ``int`` refuses (a name made of them failed the whole ingest); those sort as text.
    """
    parts = _DECIMALS.split(path.name)
    return [int(part) if part.isdecimal() else part.lower() for part in parts]


_SOURCE_FIX = "check the path (videos and image folders are accepted)"
MAX_DEPTH = 32  # folder levels searched below a named folder


REPEAT = "already read (a symlink, hard link or repeat)"
# What varnext names a folder or file it is still writing (atomic_write.hidden_name): a killed
# synth, ingest or predict leaves it, half written. ``.<name>.partial-<pid>-<hex>`` is a staged
# folder, ``.<name>.tmp-<hex>`` (``.mp4``) a file or checkpoint folder before its rename.
_INTERRUPTED = re.compile(r"\..*\.(partial-\d+-[0-9a-f]+|tmp-[0-9a-f]{8}(\.mp4)?)", re.DOTALL)
INTERRUPTED = "an interrupted varnext output (what a killed run was writing)"


def _identity(path: Path, st: os.stat_result) -> tuple[int, int] | str:
    """What a file or folder is, however it is reached (a symlink, a hard link, named twice):
    (device, inode), so each is read once; the real path where a filesystem numbers no inodes."""
    return (st.st_dev, st.st_ino) if st.st_ino else os.path.realpath(path)


@dataclass
class _Search:
    """The state of one discovery: what was read (by :func:`_identity`) and what was left out."""

    ignored: list[dict]
    seen: set[tuple[int, int] | str] = field(default_factory=set)

    def read_before(self, path: Path, st: os.stat_result) -> bool:
        return _identity(path, st) in self.seen

    def first_time(self, path: Path, st: os.stat_result) -> bool:
        """Marks ``path`` read; False (and listed as a repeat) if it was read before."""
        if self.read_before(path, st):
            self.leave_out(path, REPEAT)
            return False
        self.seen.add(_identity(path, st))
        return True

    def leave_out(self, path: Path, reason: str) -> None:
        self.ignored.append({"path": str(path), "reason": reason})


def discover_sources(paths: list[Path]) -> tuple[list[Source], list[dict]]:
    """Expands command-line paths into sources; returns (sources, ignored files).

    A file or folder reached twice (named twice, through a symlink, in a symlink loop) is read
    once. A named path that is missing, unreadable or not a regular file or folder (a FIFO, a
    device) is a UserError; such entries found inside a folder are listed in ``ignored``.
    """
    sources: list[Source] = []
    search = _Search([])
    for path in paths:
        st = path_stat(path, "source", _SOURCE_FIX)
        if st is None:
            raise UserError("no such file or directory", str(path), _SOURCE_FIX)
        if search.read_before(path, st):
            search.leave_out(path, "named twice (read once)")
            continue
        if stat.S_ISREG(st.st_mode):
            search.first_time(path, st)
            if path.suffix.lower() in IMAGE_SUFFIXES and not is_animated(path):
                sources.append(Source("images", path, (path,)))
            else:  # let PyAV decide whether it decodes: any container it knows is welcome
                sources.append(Source("video", path))
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise UserError(
                f"source is {kind_of(st.st_mode)}, not a video, image or folder",
                str(path),
                "pass a video file, an image or a folder of them",
            )
        before = len(search.ignored)
        found = _walk(path, st, search, 0, named=True)
        if not found:
            raise _nothing_found(path, search.ignored[before:])
        sources.extend(found)
    return sources, search.ignored


def _nothing_found(folder: Path, left_out: list[dict]) -> UserError:
    """The error for a named folder with no source in it, saying what its search left out."""
    what = "no videos or images found in the folder"
    fixes = [f"put videos ({', '.join(sorted(VIDEO_SUFFIXES))}) or PNG/JPEG frames in it"]
    if left_out:
        what += f"; its search left out {describe_ignored(left_out)}"
        fixes = [*ignored_fixes(left_out), *fixes]
    return UserError(what, str(folder), "; or ".join(fixes))


class _LeftOut(NamedTuple):
    """A kind of ``ignored`` entry, known by how its reason starts."""

    start: str
    one: str
    many: str
    expected: bool  # False: frames the user meant to ingest are lost, so it is always said
    fix: str = ""


_LEFT_OUT = (
    _LeftOut(
        "deeper than",
        f"folder over {MAX_DEPTH} levels deep",
        f"folders over {MAX_DEPTH} levels deep",
        False,
        f"pass the deep folder itself (a search goes {MAX_DEPTH} folder levels down)",
    ),
    _LeftOut(
        "cannot list",
        "unreadable folder",
        "unreadable folders",
        False,
        "make the folders readable (chmod) or run as a user who can read them",
    ),
    _LeftOut(
        "cannot read",
        "unreadable entry",
        "unreadable entries",
        False,
        "make the entries readable or remove broken links",
    ),
    _LeftOut(  # never footage, but named or placed as if it were: said, not dropped silently
        "not a regular file",
        "entry not a regular file",
        "entries not regular files",
        False,
        "put the videos or images themselves there (FIFOs, sockets and devices are never read)",
    ),
    _LeftOut(
        INTERRUPTED,
        "interrupted varnext output",
        "interrupted varnext outputs",
        False,
        "delete them (half-written files of a killed synth, ingest or predict; run it again)",
    ),
    _LeftOut(
        "not a video or image", "file not a video or image", "files not videos or images", True
    ),
)
_OTHER = _LeftOut("", "other entry", "other entries", True)  # repeats


def _left_out(entry: dict) -> _LeftOut:
    return next((k for k in _LEFT_OUT if entry["reason"].startswith(k.start)), _OTHER)


def unexpected_ignored(ignored: list[dict]) -> list[dict]:
    """The entries of ``ignored`` a user would not expect: folders too deep, unreadable ones."""
    return [entry for entry in ignored if not _left_out(entry).expected]


def describe_ignored(ignored: list[dict]) -> str:
    """``ignored`` counted by reason with one example each, unexpected reasons first, e.g.
    ``1 folder over 32 levels deep (e.g. a/a/...), 2 files not videos or images (e.g. x.txt)``."""
    groups: dict[_LeftOut, list[dict]] = {}
    for entry in sorted(ignored, key=lambda e: _left_out(e).expected):
        groups.setdefault(_left_out(entry), []).append(entry)
    parts = []
    for kind, entries in groups.items():
        example = entries[0]["path"]
        if kind.start in ("cannot list", "cannot read", "not a regular file", ""):  # says more
            example += f": {entries[0]['reason']}"
        parts.append(
            f"{len(entries)} {kind.one if len(entries) == 1 else kind.many} (e.g. {example})"
        )
    return ", ".join(parts)


def ignored_fixes(ignored: list[dict]) -> list[str]:
    """What to do about the unexpected entries of ``ignored``, one fix per reason."""
    return list(dict.fromkeys(_left_out(e).fix for e in unexpected_ignored(ignored)))


def _entries(
    folder: Path, ignored: list[dict], named: bool
) -> list[tuple[Path, os.stat_result | None]]:
    """(entry, stat) of a folder, sorted naturally; an entry that cannot be read (a dangling
    symlink) goes to ``ignored`` and keeps its place with None: a frame's place counts."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as err:
        if named:
            raise UserError(
                f"cannot list the folder ({os_reason(err)})", str(folder), _SOURCE_FIX
            ) from None
        ignored.append({"path": str(folder), "reason": f"cannot list ({os_reason(err)})"})
        return []
    out: list[tuple[Path, os.stat_result | None]] = []
    for name in names:
        entry = folder / name
        try:
            out.append((entry, os.stat(entry)))
        except (OSError, ValueError) as err:
            reason = os_reason(err) if isinstance(err, OSError) else str(err)
            ignored.append({"path": str(entry), "reason": f"cannot read ({reason})"})
            out.append((entry, None))
    return sorted(out, key=lambda item: natural_key(item[0]))


def _walk(
    folder: Path, st: os.stat_result, search: _Search, depth: int, named: bool = False
) -> list[Source]:
    """The sources in ``folder`` and below it: its images (one source), its videos, and what
    its subfolders hold."""
    if not search.first_time(folder, st):
        return []
    if depth > MAX_DEPTH:
        search.leave_out(folder, f"deeper than {MAX_DEPTH} folders")
        return []
    entries = _entries(folder, search.ignored, named)
    images, animated = _image_source(folder, entries, search)
    found = [images] if images else []
    for entry, entry_st in entries:
        found.extend(_entry_sources(entry, entry_st, search, depth, animated))
    return found


def _image_source(
    folder: Path, entries: list[tuple[Path, os.stat_result | None]], search: _Search
) -> tuple[Source | None, frozenset[Path]]:
    """The folder's images as one source (None if it holds no still), and its animated images.

    Every entry named as an image keeps its place in ``files``, so a frame's number is its
    place: one read already (a symlink to a sibling, a frame named on the command line), one
    that cannot be read (a dangling symlink) or is no regular file is a hole that cuts the clip
    (``holes``), as an animated image is (read as a video of its own by the caller).
    """
    stills, animated, holes = [], set(), set()
    for entry, st in entries:
        if entry.suffix.lower() not in IMAGE_SUFFIXES or (st and stat.S_ISDIR(st.st_mode)):
            continue
        if st is None or not stat.S_ISREG(st.st_mode):  # listed by _entries or the caller
            holes.add(entry)
        elif search.read_before(entry, st):
            search.leave_out(entry, REPEAT)
            holes.add(entry)
        elif is_animated(entry):  # its frames are a clip of their own: a video source
            animated.add(entry)
        else:
            search.first_time(entry, st)
            stills.append(entry)
    stills, duplicates = _one_per_stem(stills)
    if not stills:
        return None, frozenset(animated)
    _check_one_image_per_number(folder, stills)
    stems = {still.stem.lower() for still in stills}  # a hole beside its frame in another format
    holes = {hole for hole in holes if hole.stem.lower() not in stems}
    kept = animated.union(stills, holes)
    files = tuple(entry for entry, _ in entries if entry in kept)
    source = Source(
        "images", folder, files, False, duplicates, frozenset(animated), frozenset(holes)
    )
    return source, source.animated


def _entry_sources(
    entry: Path,
    st: os.stat_result | None,
    search: _Search,
    depth: int,
    animated: frozenset[Path],
) -> list[Source]:
    """The sources one entry of a folder gives besides its stills: a video (or an animated
    image), or what a subfolder holds; what it leaves out goes to ``search.ignored``."""
    if st is None:  # listed by _entries
        return []
    suffix = entry.suffix.lower()
    if _INTERRUPTED.fullmatch(entry.name):
        search.leave_out(entry, INTERRUPTED)
    elif stat.S_ISDIR(st.st_mode):
        before = len(search.ignored)
        below = _walk(entry, st, search, depth + 1)
        if not below and len(search.ignored) == before and suffix in _FOOTAGE_SUFFIXES:
            reason = "not a regular file: a folder named as footage, holding none"
            search.leave_out(entry, reason)
        return below
    elif not stat.S_ISREG(st.st_mode):
        search.leave_out(entry, f"not a regular file: {kind_of(st.st_mode)}")
    elif suffix in VIDEO_SUFFIXES or entry in animated:
        if search.first_time(entry, st):
            return [Source("video", entry, named=False)]
    elif suffix not in IMAGE_SUFFIXES:
        search.leave_out(entry, "not a video or image")
    return []


_FORMAT_RANK = {".png": 0, ".jpg": 1, ".jpeg": 1}  # lossless first


def _check_one_image_per_number(folder: Path, stills: list[Path]) -> None:
    """A UserError where two images' names sort as the same frame (``1.png`` and ``01.png``,
    ``f_7.jpg`` and ``F_007.png``): which comes first, and is either a repeat? Both were read,
    one after the other, in the order the folder listed them."""
    seen: dict[tuple, Path] = {}
    for still in stills:
        other = seen.setdefault(tuple(natural_key(Path(still.stem))), still)
        if other is not still:
            raise UserError(
                f"two images name the same frame: {other.name} and {still.name}",
                str(folder),
                "rename or move one of them, so that each frame number names one image",
            )


def _one_per_stem(images: list[Path]) -> tuple[list[Path], tuple[tuple[Path, Path], ...]]:
    """One image per stem (case ignored): ``f_1.png`` and ``f_1.jpg`` are one frame twice.

    Keeps the PNG (lossless), else the first in natural order; returns the kept images in their
    order and the (left out, kept) pairs.
    """
    kept: dict[str, Path] = {}
    for path in images:
        best = kept.setdefault(path.stem.lower(), path)
        if _FORMAT_RANK[path.suffix.lower()] < _FORMAT_RANK[best.suffix.lower()]:
            kept[path.stem.lower()] = path
    chosen = set(kept.values())
    left_out = tuple((p, kept[p.stem.lower()]) for p in images if p not in chosen)
    return [p for p in images if p in chosen], left_out
