"""The demo's output: live progress while it runs, and the summary table at the end."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from pipeline.store.demo import Progress


def summary_table(
    headers: tuple[str, ...], rows: Sequence[tuple[str, ...]], rich_table: bool
) -> Any:
    if rich_table:
        from rich.table import Table

        table = Table(title="demo summary")
        for h in headers:
            # Only the prose column wraps; counts and verdicts stay on one line each.
            table.add_column(h, overflow="fold", no_wrap=h != "what")
        for row in rows:
            style = "green" if row[-1] == "OK" else "bold red"
            table.add_row(*row[:-1], f"[{style}]{row[-1]}[/{style}]")
        return table
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [row for row in (headers, *rows)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in lines)


class Display:
    """Live progress: a rich progress bar on a terminal, a plain line every few seconds else."""

    PLAIN_EVERY_S = 5.0

    def __init__(
        self, console: Console, say: Callable[[str], None], live: bool, total: int
    ) -> None:
        self._console, self._say, self._live_wanted, self._total = console, say, live, total
        self._t0 = time.monotonic()
        self._last_line = 0.0
        self._live: Any = None
        self.elapsed = 0.0

    async def __aenter__(self) -> Display:
        if self._live_wanted:
            from rich import progress as rp
            from rich.console import Group
            from rich.live import Live
            from rich.text import Text

            columns = (rp.BarColumn(), rp.MofNCompleteColumn(), rp.TimeElapsedColumn())
            self._bar = rp.Progress(rp.TextColumn("terminal"), *columns)
            self._task = self._bar.add_task("demo", total=self._total)
            # Stats on their own lines: they wrap on a narrow terminal instead of being cut.
            self._stats = Text()
            group = Group(self._bar, self._stats)
            self._live = Live(group, console=self._console, refresh_per_second=4)
            self._live.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.close()

    def update(self, p: Progress, lag: str) -> None:
        self.elapsed = time.monotonic() - self._t0
        stats = (
            f"enqueued {p.enqueued}/{self._total} | in flight {p.in_flight} | applied "
            f"{p.applied} | retrying {p.retrying} | dead-lettered {p.dead_lettered} | {lag}"
        )
        if self._live is not None:
            self._bar.update(self._task, completed=p.terminal)
            self._stats.plain = stats
        elif self.elapsed - self._last_line >= self.PLAIN_EVERY_S or p.terminal >= self._total:
            self._last_line = self.elapsed
            self._say(f"{self.elapsed:6.1f}s terminal {p.terminal}/{self._total} | {stats}")

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
