"""Helpers shared by the benchmark scripts: docs sections and CPU-contention accounting.

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

import json
import os
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any


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
