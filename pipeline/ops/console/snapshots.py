"""The overview's numbers, measured in the background like the lag, not per page view.

``pipeline status``'s counts scan the whole outbox (about a second for a million rows on a busy
machine) and the chart aggregates the last hour of audit rows. Done per request, every open
browser would repeat that every refresh; here one task measures on an interval that stretches
to twice the last measurement's duration (a slow database is never hammered), and pages
render the latest snapshot in milliseconds, with its age shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg_pool import ConnectionPool

from pipeline.domain.errors import PipelineError
from pipeline.domain.events import utcnow
from pipeline.runtime import logs
from pipeline.store import console as console_store
from pipeline.store import status as status_store
from pipeline.store.db import pooled

_log = logs.get("ui.snapshots")
DB_WAIT_SECONDS = 5.0  # how long a page or a measurement waits for a database connection


@dataclass(frozen=True, slots=True)
class Snapshot:
    status: status_store.StatusReport
    outcomes: console_store.OutcomeSeries
    taken_at: datetime
    seconds: float  # how long the queries took


class Snapshotter:
    def __init__(self, pool: ConnectionPool[Any], interval: float) -> None:
        self._pool = pool
        self._interval = interval
        self.last: Snapshot | None = None
        self.failing = False  # the latest attempt failed (the snapshot shown is older)

    def take(self) -> Snapshot:
        """One measurement (blocking): what ``pipeline status`` shows, plus the chart."""
        started = time.perf_counter()
        with pooled(self._pool, timeout=DB_WAIT_SECONDS, what="overview snapshot failed") as conn:
            report = status_store.status(conn)
            series = console_store.outcomes_per_minute(conn)
        snap = Snapshot(report, series, utcnow(), time.perf_counter() - started)
        self.last, self.failing = snap, False
        return snap

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            pause = self._interval
            try:
                snap = await asyncio.to_thread(self.take)
                pause = max(pause, 2 * snap.seconds)
            except PipelineError as exc:
                self.failing = True
                logs.event(_log, "snapshot_failed", error=str(exc)[:500])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=pause)
