"""A rebuild never undoes an operator's retry (issue 13 review).

``pipeline retry`` reopens a dead-lettered row (failed_at cleared, attempts kept) and the relay
publishes its next attempt. The log still says that row dead-lettered, so a rebuild that
refolds it alone makes it terminal again: the retry is silently lost, and the outcome of the
attempt already in flight can no longer fold (the fold skips terminal rows) -- the effect is
executed while the row reads dead-lettered, inviting a second retry and a second execution.
Postgres only: the rebuild's own store calls, in the Replayer's order, on real tables.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from factories import outcome_event

from pipeline.domain.codec import Located
from pipeline.domain.events import DeadLetterReason, Outcome, iso, utcnow
from pipeline.store import status as status_store
from pipeline.store.migrate import migrate
from pipeline.store.projection import ProjectionStore
from pipeline.store.replay import ReplayStore

pytestmark = pytest.mark.integration

TOPIC = "rv-propagation-outcomes"
ROW = "attempts, applied_at, failed_at, last_outcome, next_attempt_at, published_attempt"


def _outcome(pid: int, attempt: int, outcome: Outcome, offset: int) -> Located:
    now = utcnow()
    event = outcome_event(
        pid,
        attempt,
        outcome,
        event_id=str(uuid.uuid4()),
        timestamp=iso(now),
        occurred_at=iso(now - timedelta(minutes=10 - attempt)),
        error="boom",
        next_attempt_at=iso(now - timedelta(minutes=9)) if outcome is Outcome.RETRYING else None,
        dead_letter_reason=DeadLetterReason.MAX_ATTEMPTS
        if outcome is Outcome.DEAD_LETTERED
        else None,
    )
    return Located(event, TOPIC, 0, offset)


# Attempts 1 and 2 at offsets 0 and 1; after the retry, attempt 3 at offset 2.
LOG = [Outcome.RETRYING, Outcome.DEAD_LETTERED, Outcome.DEAD_LETTERED]


def _events(pid: int, start: int, end: int) -> list[Located]:
    return [_outcome(pid, i + 1, LOG[i], i) for i in range(start, end)]


async def _fold(url: str, items: list[Located]) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await ProjectionStore(conn, "p").fold_batch(items, {(TOPIC, 0): items[-1].offset + 1})


async def _rebuild(url: str, pid: int, end: int) -> tuple[int, list[int]]:
    """What ``pipeline replay --rebuild`` does with the log [0, end) of partition 0."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        rstore = ReplayStore(conn, "p")
        async with conn.transaction():
            read = {0: (0, end)}
            assert await rstore.classify(TOPIC, read) == {"in_range": 1}
            assert await rstore.begin_rebuild(TOPIC, read) == 1
            await ProjectionStore(conn, "p#replay").fold_batch(
                _events(pid, 0, end), {(TOPIC, 0): end}
            )
            return await rstore.finish_rebuild()


def _row(url: str, pid: int) -> tuple[Any, ...]:
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT {ROW} FROM pending_propagations WHERE id = %s", (pid,))
        found = row.fetchone()
    assert found is not None
    return tuple(found)


def test_rebuild_keeps_a_row_an_operator_retried(database_url: str) -> None:
    url = database_url
    migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        found = conn.execute(
            "INSERT INTO pending_propagations (kind, team_id, resource_type, resource_id)"
            " VALUES ('tier_elevation', 't', 'postgres', 'r') RETURNING id"
        ).fetchone()
        assert found is not None
        pid = int(found[0])
        conn.execute("UPDATE pending_propagations SET published_attempt = 2 WHERE id = %s", (pid,))
    asyncio.run(_fold(url, _events(pid, 0, 2)))
    dead = _row(url, pid)
    assert (dead[0], dead[1] is None, dead[2] is not None, dead[3]) == (
        2,
        True,
        True,
        "dead_lettered",
    )

    with psycopg.connect(url, autocommit=True) as conn:
        status_store.retry(conn, pid, reason="fixed upstream", actor="review", force=False)
        # The relay published attempt 3 (the retry) with its rescue lease: it is in flight.
        conn.execute(
            "UPDATE pending_propagations SET published_attempt = 3,"
            " next_attempt_at = now() + interval '25 minutes' WHERE id = %s",
            (pid,),
        )
    retried = _row(url, pid)
    assert (retried[0], retried[2], retried[3], retried[5]) == (2, None, None, 3)

    kept, differing = asyncio.run(_rebuild(url, pid, 2))
    # The row is still open with its lease: the outcome of attempt 3 will fold when it comes.
    assert _row(url, pid) == retried
    assert (kept, differing) == (1, [])

    # Attempt 3 dead-letters too. The log's refold stops at attempt 2 (terminal); the row
    # keeps attempt 3, or the next retry would publish attempt 3 a second time.
    asyncio.run(_fold(url, _events(pid, 2, 3)))
    again = _row(url, pid)
    assert (again[0], again[2] is not None, again[3]) == (3, True, "dead_lettered")
    kept, differing = asyncio.run(_rebuild(url, pid, 3))
    assert _row(url, pid) == again
    assert (kept, differing) == (1, [])
