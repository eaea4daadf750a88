"""SQL of ``pipeline demo``: the rows ``enqueue()`` refuses to write, and the counts it shows.

Normal rows go through :func:`pipeline.store.outbox.enqueue_async` like any application's; only the
deliberately broken ones (an enum value the worker lacks, invalid payloads) are written here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from pipeline.domain.errors import StoreError
from pipeline.store.outbox import enqueue_async

ADD_KIND_SQL = "ALTER TYPE propagation_kind ADD VALUE IF NOT EXISTS {}"

INSERT_RAW_SQL = """
INSERT INTO pending_propagations (kind, team_id, resource_type, resource_id, payload)
VALUES (%s, %s, %s, %s, %s)
RETURNING id
"""

# "in flight": published, outcome not yet projected. "retrying": waiting for a later attempt.
PROGRESS_SQL = """
SELECT count(*),
       count(*) FILTER (WHERE applied_at IS NULL AND failed_at IS NULL
                        AND published_attempt > attempts),
       count(*) FILTER (WHERE applied_at IS NOT NULL),
       count(*) FILTER (WHERE applied_at IS NULL AND failed_at IS NULL
                        AND attempts > 0 AND published_attempt <= attempts),
       count(*) FILTER (WHERE failed_at IS NOT NULL)
FROM pending_propagations
"""

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
    try:
        conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    except psycopg.Error as exc:
        raise StoreError(f"cannot connect to the demo database: {exc}") from exc
    try:
        yield DemoStore(conn)
    finally:
        await conn.close()


class DemoStore:
    """The demo's queries on one autocommit async connection."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._conn = conn

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        """One transaction around many inserts: one commit and one NOTIFY to the relays."""
        try:
            async with self._conn.transaction():
                yield
        except psycopg.Error as exc:
            raise StoreError(f"enqueue batch failed: {exc}") from exc

    async def enqueue(
        self, kind: str, team_id: str, resource_type: str, resource_id: str, payload: Any
    ) -> int:
        """As an application enqueues: through the outbox's validation."""
        return await enqueue_async(self._conn, kind, team_id, resource_type, resource_id, payload)

    async def add_kind(self, value: str) -> None:
        """Add an enum value, as a newer API release would; it commits at once (autocommit)."""
        try:
            await self._conn.execute(sql.SQL(ADD_KIND_SQL).format(sql.Literal(value)))
        except psycopg.Error as exc:
            raise StoreError(f"cannot add propagation_kind {value!r}: {exc}") from exc

    async def insert_raw(
        self, kind: str, team_id: str, resource_type: str, resource_id: str, payload: Any
    ) -> int:
        """Insert a row without enqueue()'s validation: a bad row written by other means."""
        try:
            cur = await self._conn.execute(
                INSERT_RAW_SQL, (kind, team_id, resource_type, resource_id, Jsonb(payload))
            )
            row = await cur.fetchone()
        except psycopg.Error as exc:
            raise StoreError(f"raw insert failed: {exc}") from exc
        assert row is not None
        return int(row[0])

    async def progress(self) -> Progress:
        try:
            cur = await self._conn.execute(PROGRESS_SQL)
            row = await cur.fetchone()
        except psycopg.Error as exc:
            raise StoreError(f"progress query failed: {exc}") from exc
        assert row is not None
        return Progress(*(int(v) for v in row))

    async def path_states(self) -> list[tuple[str, str, int, int]]:
        try:
            cur = await self._conn.execute(PATH_STATES_SQL)
            rows = await cur.fetchall()
        except psycopg.Error as exc:
            raise StoreError(f"summary query failed: {exc}") from exc
        return [(str(p), str(s), int(a), int(n)) for p, s, a, n in rows]
