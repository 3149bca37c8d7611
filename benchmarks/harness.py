"""The harness every benchmark script shares: its environment, machine facts, CPU-contention
accounting and where results go.

- Importing this module sets the environment a benchmark's local Ray needs (loopback only,
  token auth, no usage stats, no progress bars) unless already set, so scripts import it
  before Ray (``# isort: split`` after the import keeps it first).
- :func:`machine_info` records cores, CPU model, load and the versions the numbers depend on.

- :func:`replace_section` writes one ``## Heading`` section of a markdown page (such as
  docs/benchmarks.md), leaving every other section as it was; :func:`publish` prints a
  benchmark's section and writes its JSON results and that section.
- :class:`CpuMeter` measures how much CPU this process tree and every other process on the
  machine used during a measurement, so that a result taken on a busy machine says so.

Example:
    >>> with CpuMeter() as meter:
    ...     run_something()
    >>> meter.result()  # {"wall_s": ..., "cpu_s_ours": ..., "others_share": ..., ...}
    >>> replace_section(Path("docs/benchmarks.md"), "## Training overhead", section_text)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "benchmarks.md"


def begin(argv: Sequence[str] | None) -> tuple[list[str], str, float]:
    """A script's start: its arguments as a list, the UTC start time and a ``perf_counter``
    clock; INFO logging goes to stderr."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    argv = list(sys.argv[1:] if argv is None else argv)
    return argv, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), time.perf_counter()


def default_outputs(args: argparse.Namespace, name: str, *, quick_to_tmp: bool = False) -> None:
    """Fills unset ``args.out`` and ``args.docs``: ``results/<name>.json`` and
    docs/benchmarks.md; with ``--quick`` ``<name>_quick.json`` (in the temp folder if
    ``quick_to_tmp``, so a smoke run never overwrites kept results) and no docs."""
    if args.out is None:
        results = REPO / "benchmarks" / "results"
        folder = Path(tempfile.gettempdir()) if args.quick and quick_to_tmp else results
        args.out = folder / f"{name}{'_quick' if args.quick else ''}.json"
    if args.docs is None and not args.quick:
        args.docs = DOCS


def report_head(benchmark: str, started: str, argv: Sequence[str]) -> dict[str, str]:
    """The first keys of every results JSON: the benchmark, its start time and its command."""
    command = shlex.join(["python", f"benchmarks/{benchmark}.py", *argv])
    return {"benchmark": benchmark, "timestamp": started, "command": command}


def repo_relative(path: str | Path) -> str:
    """``path`` relative to the repository when it is inside it (results record commands)."""
    full = Path(path).resolve()
    return str(full.relative_to(REPO) if full.is_relative_to(REPO) else full)


LOCAL_RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # Ray binds to 127.0.0.1
    "RAY_AUTH_MODE": "token",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
}
for _name, _value in LOCAL_RAY_ENV.items():
    os.environ.setdefault(_name, _value)


def replace_section(path: Path, heading: str, section: str) -> None:
    """Writes ``section`` (starting with ``heading``) into ``path``, replacing only that section.

    A section runs from its ``heading`` line to the next line starting with ``## `` (or the end
    of the page). Without such a section, ``section`` is appended; without the page, a page
    titled ``# Benchmarks`` is created.
    """
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    lines = text.splitlines()
    body = section.rstrip("\n").splitlines()
    if heading in lines:
        start = lines.index(heading)
        end = next(
            (i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)
        )
        tail = lines[end:]
        text = "\n".join(lines[:start] + body + (["", *tail] if tail else [])) + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(body) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def publish(
    report: dict[str, Any], section: str, heading: str, out: Path, docs: Path | None
) -> None:
    """Prints a benchmark's section, writes its JSON results to ``out`` and, with ``docs``,
    replaces its ``heading`` section of that page (:func:`replace_section`)."""
    print(section)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if docs is not None:
        replace_section(docs, heading, section)


def _system_busy_seconds() -> float | None:
    """CPU seconds all CPUs spent not idle since boot (Linux /proc/stat), or None."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


def _processes() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds it used so far) of every process (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:  # the process ended meanwhile
            continue
        fields = text[text.rfind(")") + 2 :].split()  # after "pid (comm) "
        out[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return out


class CpuMeter:
    """Wall time and the CPU used by this process tree and by every other process meanwhile.

    A thread samples every process's CPU time each ``interval_s``: a process counts as ours
    once it is seen below this process (Ray's raylet, workers, Data tasks), and each process
    counts what it used between its first and last sighting (0 at the first if it started
    during the measurement). Processes that live less than ``interval_s`` are missed. The
    sampling costs 1-3 ms per interval. Linux only; elsewhere the CPU fields are
    None.
    """

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._ours: set[int] = {os.getpid()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="CpuMeter", daemon=True)
        self._linux = Path("/proc/self/stat").exists()

    def _sample(self, first: bool = False) -> None:
        procs = _processes()
        for pid, (_, cpu) in procs.items():
            self._first.setdefault(pid, cpu if first else 0.0)
            self._last[pid] = cpu
        frontier = list(self._ours)
        while frontier:  # add the descendants of every process known to be ours
            pid = frontier.pop()
            children = [c for c, (p, _) in procs.items() if p == pid and c not in self._ours]
            self._ours.update(children)
            frontier.extend(children)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def __enter__(self) -> CpuMeter:
        self._wall = time.perf_counter()
        self._busy = _system_busy_seconds()
        if self._linux:
            self._sample(first=True)
            self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.wall_s = time.perf_counter() - self._wall
        busy = _system_busy_seconds()
        self.busy_s = None if busy is None or self._busy is None else busy - self._busy
        if self._linux:
            self._stop.set()
            self._thread.join()
            self._sample()

    def result(self) -> dict[str, Any]:
        """``wall_s``, CPU seconds ``ours`` and ``others``, and shares of all cores' time."""
        cores = os.cpu_count() or 1
        span = self.wall_s * cores
        if not self._linux:
            return dict.fromkeys(
                ("cpu_s_ours", "cpu_s_others", "others_share", "machine_busy_share")
            ) | {"wall_s": round(self.wall_s, 3)}
        used = {pid: max(0.0, self._last[pid] - self._first[pid]) for pid in self._last}
        ours = sum(v for pid, v in used.items() if pid in self._ours)
        others = sum(v for pid, v in used.items() if pid not in self._ours)
        return {
            "wall_s": round(self.wall_s, 3),
            "cpu_s_ours": round(ours, 2),
            "cpu_s_others": round(others, 2),
            "others_share": round(others / span, 3),
            "machine_busy_share": None if self.busy_s is None else round(self.busy_s / span, 3),
        }


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, load and the versions that the numbers depend on."""
    import av
    import numpy as np
    import PIL
    import pyarrow
    import ray
    import torch

    import varnext_ray

    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        model = names[0] if names else model
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": {
            "ray": ray.__version__,
            "torch": torch.__version__,
            "pyarrow": pyarrow.__version__,
            "numpy": np.__version__,
            "pillow": PIL.__version__,
            "av": av.__version__,
            "varnext_ray": varnext_ray.__version__,
        },
    }
