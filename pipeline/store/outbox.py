"""The outbox: SQL for enqueueing, claiming and stamping propagations (and nothing else).

``enqueue``/``enqueue_async`` run on the caller's connection, inside the caller's own
transaction: the plan change and the request to regrade commit together or not at all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from pipeline.domain.errors import InvalidPropagation, StoreError
from pipeline.domain.events import OutboxRow
from pipeline.domain.payloads import payload_problem
from pipeline.store.db import (
    AsyncConn,
    Conn,
    Refine,
    Tx,
    fetchall,
    fetchone,
    session,
    transaction,
    translated,
)

_MAX_TEXT = 256
NOTIFY_CHANNEL = "pending_propagations"  # the enqueue trigger's pg_notify channel

INSERT_SQL = """
INSERT INTO pending_propagations (kind, team_id, resource_type, resource_id, payload)
VALUES (%s, %s, %s, %s, %s)
RETURNING id
"""

# Due rows, oldest first. A row is due when its next attempt time has passed: the relay
# pushes next_attempt_at forward by rescue_stuck_after when it publishes, so an attempt
# without a projected outcome simply becomes due again (the rescue), with no second scan.
# An open earlier row for the same resource holds later ones back: per-resource order.
#
# The plan is fixed on purpose: walk the due index in order, probe the open-resource index
# once per candidate, stop at the limit. That costs about 1 ms per 500 rows at any backlog.
# ``OFFSET 0`` keeps the check a per-row subplan; CLAIM_PLAN_SQL rules out the sort and the
# bitmap scan that would run it for every due row. Left to the statistics, after a burst of
# inserts the planner picked a nested-loop anti-join rescanning every open row per claimed row
# (1 s per 500 rows at 20k open), or a hash or merge anti-join, or a bitmap scan and sort over
# every due row (20-35 ms per claim at 20k open): the bench's largest Postgres cost (issue 16).
CLAIM_SQL = """
SELECT p.id, p.kind::text, p.team_id, p.resource_type, p.resource_id, p.payload,
       p.attempts + 1 AS attempt, p.published_attempt > p.attempts AS rescued,
       p.attempt_budget_base
FROM pending_propagations p
WHERE p.applied_at IS NULL AND p.failed_at IS NULL
  AND p.next_attempt_at <= now()
  AND NOT EXISTS (
      SELECT 1 FROM pending_propagations e
      WHERE e.team_id = p.team_id AND e.resource_type = p.resource_type
        AND e.resource_id = p.resource_id AND e.id < p.id
        AND e.applied_at IS NULL AND e.failed_at IS NULL
      OFFSET 0)
ORDER BY p.next_attempt_at, p.id
LIMIT %s
FOR UPDATE OF p SKIP LOCKED
"""

# One statement each: the relay's transaction is pipelined, and a pipelined query is one
# statement.
CLAIM_PLAN_SQL = ("SET LOCAL enable_sort = off", "SET LOCAL enable_bitmapscan = off")
ANALYZE_SQL = "ANALYZE pending_propagations"

STAMP_SQL = """
UPDATE pending_propagations AS p
SET published_attempt = p.attempts + 1,
    published_at = now(),
    next_attempt_at = now() + %s
WHERE p.id = ANY(%s)
"""

NEXT_DUE_SQL = """
SELECT min(next_attempt_at) FROM pending_propagations
WHERE applied_at IS NULL AND failed_at IS NULL
"""

BACKLOG_SQL = """
SELECT count(*), coalesce(extract(epoch FROM now() - min(next_attempt_at)), 0)
FROM pending_propagations
WHERE applied_at IS NULL AND failed_at IS NULL
  AND next_attempt_at <= now() AND published_attempt <= attempts
"""

ENUM_VALUES_SQL = "SELECT unnest(enum_range(NULL::propagation_kind))::text"


def _check(kind: str, team_id: str, resource_type: str, resource_id: str, payload: Any) -> None:
    for name, value in (
        ("kind", kind),
        ("team_id", team_id),
        ("resource_type", resource_type),
        ("resource_id", resource_id),
    ):
        if not isinstance(value, str) or not value.strip():
            raise InvalidPropagation(f"{name} must be a non-empty string")
        if len(value) > _MAX_TEXT:
            raise InvalidPropagation(f"{name} longer than {_MAX_TEXT} characters")
    problem = payload_problem(kind, payload)
    if problem:
        raise InvalidPropagation(f"payload for {kind}: {problem}")


def _unknown_kind(kind: str) -> Refine:
    # Postgres refusing the kind's enum value is the caller's mistake, not a store failure.
    def refine(exc: psycopg.Error) -> InvalidPropagation | None:
        if isinstance(exc, psycopg.errors.InvalidTextRepresentation):
            return InvalidPropagation(f"unknown kind {kind!r}: {exc.diag.message_primary}")
        return None

    return refine


def _insert_params(
    kind: str, team_id: str, resource_type: str, resource_id: str, payload: Any
) -> tuple[Any, ...]:
    payload = {} if payload is None else payload
    _check(kind, team_id, resource_type, resource_id, payload)
    return (kind, team_id, resource_type, resource_id, Jsonb(payload))


def enqueue(
    conn: Conn,
    kind: str,
    team_id: str,
    resource_type: str,
    resource_id: str,
    payload: dict[str, Any] | None = None,
) -> int:
    """Insert one propagation on ``conn`` without committing; returns its id."""
    params = _insert_params(kind, team_id, resource_type, resource_id, payload)
    with translated("enqueue failed", _unknown_kind(kind)):
        row = conn.execute(INSERT_SQL, params).fetchone()
    assert row is not None
    return int(row[0])


async def enqueue_async(
    conn: AsyncConn,
    kind: str,
    team_id: str,
    resource_type: str,
    resource_id: str,
    payload: dict[str, Any] | None = None,
) -> int:
    params = _insert_params(kind, team_id, resource_type, resource_id, payload)
    with translated("enqueue failed", _unknown_kind(kind)):
        cur = await conn.execute(INSERT_SQL, params)
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


@dataclass(frozen=True, slots=True)
class Backlog:
    due_unpublished: int
    oldest_age_seconds: float


class OutboxStore:
    """The relay's view of the outbox, on one async connection it owns."""

    def __init__(self, conn: AsyncConn) -> None:
        self._conn = conn

    def transaction(self) -> AbstractAsyncContextManager[Tx]:
        """The claim-publish-stamp transaction (``claim`` and ``stamp_published`` run in it).

        Pipelined: BEGIN, the plan settings and the claim go in one round trip, the stamp
        and COMMIT in another (five round trips before, issue 16).
        """
        return transaction(self._conn, what="relay transaction failed", pipelined=True)

    async def claim(self, limit: int) -> list[OutboxRow]:
        """Lock up to ``limit`` due rows in a transaction the caller has opened."""
        with translated("claim failed"):
            for setting in CLAIM_PLAN_SQL:
                await self._conn.execute(setting)
        rows = await fetchall(self._conn, CLAIM_SQL, (limit,), what="claim failed")
        return [OutboxRow(*r) for r in rows]

    async def stamp_published(self, ids: Sequence[int], rescue_after: timedelta) -> None:
        with translated("stamp failed"):
            await self._conn.execute(STAMP_SQL, (rescue_after, list(ids)))

    async def analyze(self) -> bool:
        """Refresh the planner's statistics; False when this role may not (not the owner)."""
        try:
            with translated("analyze failed"):
                await self._conn.execute(ANALYZE_SQL)
        except StoreError:
            return False
        return True

    async def next_due_at(self) -> datetime | None:
        row = await fetchone(self._conn, NEXT_DUE_SQL, what="next-due query failed")
        return row[0] if row else None

    async def backlog(self) -> Backlog:
        row = await fetchone(self._conn, BACKLOG_SQL, what="backlog query failed")
        assert row is not None
        return Backlog(int(row[0]), float(row[1]))


async def notifications(url: str) -> AsyncIterator[None]:
    """Yields once per NOTIFY on the outbox's channel (an enqueue's trigger sends one)."""
    async with session(url, what="listen failed") as conn:
        with translated("listen failed"):
            await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            async for _ in conn.notifies():
                yield


def kind_enum_values(conn: Conn) -> list[str]:
    with translated("reading propagation_kind failed"):
        return [r[0] for r in conn.execute(ENUM_VALUES_SQL).fetchall()]
