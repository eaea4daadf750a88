"""SQL of ``pipeline demo``: the rows ``enqueue()`` refuses to write, and the counts it shows.

Normal rows go through :func:`pipeline.store.outbox.enqueue_async` like any application's; only the
deliberately broken ones (an enum value the worker lacks, invalid payloads) are written here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from pipeline.domain.rowstate import STATES
from pipeline.store.db import AsyncConn, connect_async, fetchall, fetchone, translated
from pipeline.store.outbox import INSERT_SQL, enqueue_async
from pipeline.store.rowstate import STATE_SQL

ADD_KIND_SQL = "ALTER TYPE propagation_kind ADD VALUE IF NOT EXISTS {}"

# Counted by the one row-state rule (``pipeline status`` counts the same way).
PROGRESS_SQL = f"SELECT {STATE_SQL} AS state, count(*) FROM pending_propagations GROUP BY 1"

# The demo's resource ids are "<path>-<n>": the summary groups by that prefix.
PATH_STATES_SQL = """
SELECT split_part(resource_id, '-', 1) AS path,
       CASE WHEN applied_at IS NOT NULL THEN 'applied'
            WHEN failed_at IS NOT NULL THEN coalesce(last_outcome, 'failed')
            ELSE 'open' END AS state,
       attempts,
       count(*)
FROM pending_propagations
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
"""


@dataclass(frozen=True, slots=True)
class Progress:
    enqueued: int
    in_flight: int
    applied: int
    retrying: int
    dead_lettered: int

    @property
    def terminal(self) -> int:
        return self.applied + self.dead_lettered


@asynccontextmanager
async def open_store(database_url: str) -> AsyncIterator[DemoStore]:
    conn = await connect_async(database_url, what="cannot connect to the demo database")
    try:
        yield DemoStore(conn)
    finally:
        await conn.close()


class DemoStore:
    """The demo's queries on one autocommit async connection."""

    def __init__(self, conn: AsyncConn) -> None:
        self._conn = conn

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        """One transaction around many inserts: one commit and one NOTIFY to the relays."""
        with translated("enqueue batch failed"):
            async with self._conn.transaction():
                yield

    async def enqueue(
        self, kind: str, team_id: str, resource_type: str, resource_id: str, payload: Any
    ) -> int:
        """As an application enqueues: through the outbox's validation."""
        return await enqueue_async(self._conn, kind, team_id, resource_type, resource_id, payload)

    async def add_kind(self, value: str) -> None:
        """Add an enum value, as a newer API release would; it commits at once (autocommit)."""
        with translated(f"cannot add propagation_kind {value!r}"):
            await self._conn.execute(sql.SQL(ADD_KIND_SQL).format(sql.Literal(value)))

    async def insert_raw(
        self, kind: str, team_id: str, resource_type: str, resource_id: str, payload: Any
    ) -> int:
        """Insert a row without enqueue()'s validation: a bad row written by other means."""
        params = (kind, team_id, resource_type, resource_id, Jsonb(payload))
        row = await fetchone(self._conn, INSERT_SQL, params, what="raw insert failed")
        assert row is not None
        return int(row[0])

    async def progress(self) -> Progress:
        rows = await fetchall(self._conn, PROGRESS_SQL, what="progress query failed")
        by_state = dict.fromkeys(STATES, 0) | {str(s): int(n) for s, n in rows}
        return Progress(
            enqueued=sum(by_state.values()),
            in_flight=by_state["in_flight"],
            applied=by_state["applied"],
            retrying=by_state["retrying"],
            dead_lettered=by_state["dead_lettered"],
        )

    async def path_states(self) -> list[tuple[str, str, int, int]]:
        rows = await fetchall(self._conn, PATH_STATES_SQL, what="summary query failed")
        return [(str(p), str(s), int(a), int(n)) for p, s, a, n in rows]
