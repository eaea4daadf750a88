"""CPU seconds and peak RSS of processes, sampled with psutil while the bench runs."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import psutil


@dataclass
class _Tracked:
    proc: psutil.Process
    tree: bool = False  # also count the children (Postgres: one backend per connection)
    peak_rss: int = 0
    cpu_mark: float = 0.0
    cpu_phase: float = 0.0
    cpu_last: float = 0.0  # the latest reading: what a process that died had used
    cpu_carried: float = 0.0  # this phase's CPU of the processes this name replaced


@dataclass
class ProcSampler:
    """Samples the RSS of named pids every ``interval`` s; CPU is read at phase boundaries."""

    interval: float = 0.2
    _tracked: dict[str, _Tracked] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    def track(self, name: str, pid: int, *, tree: bool = False) -> None:
        """Track ``pid`` under ``name``; a restarted process replaces its predecessor, whose
        CPU in the current phase (up to its last sample) still counts. ``tree`` adds the
        CPU of its children alive at each reading (a backend that exits mid-phase is lost,
        so a tree's figure is a lower bound)."""
        old = self._tracked.get(name)
        new = _Tracked(psutil.Process(pid), tree)
        if old is not None:
            new.cpu_carried = old.cpu_carried + max(old.cpu_last - old.cpu_mark, 0.0)
        self._tracked[name] = new
        self._sample_one(new)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for t in self._tracked.values():
            self._sample_one(t)

    def mark(self) -> None:
        """Start a CPU phase: remember every process's CPU time now."""
        for t in self._tracked.values():
            t.cpu_mark = _cpu(t.proc, t.tree)
            t.cpu_carried = 0.0

    def end_phase(self) -> None:
        for t in self._tracked.values():
            cpu = _cpu(t.proc, t.tree)
            t.cpu_phase = t.cpu_carried + max((cpu or t.cpu_last) - t.cpu_mark, 0.0)
            self._sample_one(t)

    def cpu_seconds(self, name: str) -> float:
        return self._tracked[name].cpu_phase

    def peak_rss_mb(self, name: str) -> float:
        return self._tracked[name].peak_rss / (1024 * 1024)

    def names(self) -> list[str]:
        return list(self._tracked)

    async def _loop(self) -> None:
        while True:
            for t in self._tracked.values():
                self._sample_one(t)
            await asyncio.sleep(self.interval)

    @staticmethod
    def _sample_one(t: _Tracked) -> None:
        with contextlib.suppress(psutil.Error):
            t.peak_rss = max(t.peak_rss, int(t.proc.memory_info().rss))
            t.cpu_last = _cpu(t.proc, t.tree) or t.cpu_last


def _cpu(proc: psutil.Process, tree: bool = False) -> float:
    try:
        times = proc.cpu_times()
    except psutil.Error:
        return 0.0
    total = float(times.user + times.system)
    if tree:
        with contextlib.suppress(psutil.Error):
            for child in proc.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child_times = child.cpu_times()
                    total += float(child_times.user + child_times.system)
    return total
