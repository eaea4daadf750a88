"""What ``pipeline replay`` is asked (options) and answers (its JSON report), its progress
(a bar per partition on a terminal, JSON lines elsewhere)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pipeline.ops.tail import StartPoint
from pipeline.runtime import logs

if TYPE_CHECKING:
    from pipeline.ops.tail import LogReader

_log = logs.get("replay")


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    start: StartPoint = field(default_factory=StartPoint)
    rebuild: bool = False
    dry_run: bool = False
    wait: bool = False
    restart: bool = False
    covered_only: bool = False  # rebuild: keep rows whose history the log lacks, not refuse
    batch_size: int = 2000
    max_rate: float | None = None  # events per second, to spare a busy database
    progress_interval: float = 5.0


@dataclass(slots=True)
class ReplayReport:
    mode: str
    dry_run: bool
    events_read: int = 0
    events_folded: int = 0
    invalid_skipped: int = 0
    rows_changed: int = 0  # events whose fold changed a propagation row
    audit_rows_added: int = 0
    rows_differing: int | None = None  # rebuild: rows unlike before it (0: nothing drifted)
    differing_ids: list[int] = field(default_factory=list)  # rebuild: the first 100 of them
    rows_reset: int | None = None  # rebuild: rows reset and refolded from the range read
    rows_kept: int | None = None  # rebuild: rows with history that kept their projection
    kept_reasons: dict[str, int] = field(default_factory=dict)  # why, by reason
    resumed: bool = False
    interrupted: bool = False
    committed: bool = False
    partitions: dict[int, list[int]] = field(default_factory=dict)  # p -> [start, end]
    seconds: float = 0.0
    events_per_second: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["partitions"] = {str(p): v for p, v in self.partitions.items()}  # JSON keys
        return doc


class Progress(Protocol):
    def update(self, reader: LogReader) -> None: ...
    def close(self, reader: LogReader) -> None: ...


class LogProgress:
    """Not a terminal: one JSON log line per interval, with per-partition counts."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._t0 = self._last = time.monotonic()

    def update(self, reader: LogReader) -> None:
        if time.monotonic() - self._last >= self._interval:
            self._emit(reader, "replay_progress")

    def close(self, reader: LogReader) -> None:
        self._emit(reader, "replay_progress_final")

    def _emit(self, reader: LogReader, name: str) -> None:
        self._last = time.monotonic()
        done = sum(reader.done(p) for p in reader.starts)
        eps = done / max(self._last - self._t0, 1e-9)
        total = reader.total
        logs.event(
            _log,
            name,
            done=done,
            total=total,
            events_per_second=round(eps, 1),
            eta_s=round((total - done) / eps, 1) if eps > 0 else None,
            partitions={
                str(p): [reader.done(p), reader.ends[p] - reader.starts[p]] for p in reader.starts
            },
        )


class RichProgress:
    """A terminal: one bar per partition and one for the total, with events/s and ETA."""

    def __init__(self, reader: LogReader) -> None:
        import rich.progress as rp
        from rich.console import Console
        from rich.text import Text

        class Speed(rp.ProgressColumn):
            def render(self, task: Any) -> Text:
                return Text(f"{task.speed or 0:>9,.0f} ev/s")

        cols = (rp.BarColumn(), rp.MofNCompleteColumn(), Speed(), rp.TimeRemainingColumn())
        self._bars = rp.Progress(
            rp.TextColumn("{task.description}"), *cols, console=Console(stderr=True)
        )
        self._tasks = {
            p: self._bars.add_task(f"partition {p}", total=reader.ends[p] - reader.starts[p])
            for p in sorted(reader.starts)
        }
        self._total = self._bars.add_task("total", total=reader.total)
        self._bars.start()

    def update(self, reader: LogReader) -> None:
        for p, task in self._tasks.items():
            self._bars.update(task, completed=reader.done(p))
        self._bars.update(self._total, completed=sum(reader.done(p) for p in self._tasks))

    def close(self, reader: LogReader) -> None:
        self.update(reader)
        self._bars.stop()
