"""The row-state rule has one SQL form, and status and the demo count by it (issue 14).

Every combination of the columns the rule reads is written to a real table; the SQL
expression must name each row as ``row_state`` does, and ``pipeline status`` and the demo's
progress line must count exactly those states. Postgres only.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from typing import Any

import psycopg
import pytest

from pipeline.domain.events import Outcome
from pipeline.domain.rowstate import STATES, row_state
from pipeline.store import status as status_store
from pipeline.store.demo import open_store
from pipeline.store.migrate import migrate
from pipeline.store.rowstate import STATE_SQL

pytestmark = pytest.mark.integration

INSERT = """
INSERT INTO pending_propagations (kind, team_id, resource_type, resource_id, attempts,
    published_attempt, applied_at, failed_at, last_outcome)
VALUES ('tier_elevation', 't', 'postgres', %s, %s, %s,
    CASE WHEN %s THEN now() END, CASE WHEN %s THEN now() END, %s)
RETURNING id
"""


def _combinations() -> list[dict[str, Any]]:
    out = []
    for (applied, failed), attempts, ahead, last in itertools.product(
        [(False, False), (True, False), (False, True)],  # a row is never both (CHECK)
        [0, 2],
        [0, 1],  # published_attempt - attempts
        [None, *(o.value for o in Outcome)],
    ):
        out.append(
            {
                "applied": applied,
                "failed": failed,
                "attempts": attempts,
                "published_attempt": attempts + ahead,
                "last_outcome": last,
            }
        )
    return out


def test_sql_status_and_demo_agree_with_the_rule(database_url: str) -> None:
    migrate(database_url)
    expected: dict[int, str] = {}
    with psycopg.connect(database_url, autocommit=True) as conn:
        for i, c in enumerate(_combinations()):
            row = conn.execute(
                INSERT,
                (
                    f"r-{i}",
                    c["attempts"],
                    c["published_attempt"],
                    c["applied"],
                    c["failed"],
                    c["last_outcome"],
                ),
            ).fetchone()
            assert row is not None
            expected[int(row[0])] = row_state(**c)
        by_sql = dict(conn.execute(f"SELECT id, {STATE_SQL} FROM pending_propagations").fetchall())
        report = status_store.status(conn)
    assert by_sql == expected
    counts = Counter(expected.values())
    assert set(counts) == set(STATES)  # the combinations reach every state
    assert report.totals() == {s: counts[s] for s in STATES}

    async def progress() -> Any:
        async with open_store(database_url) as store:
            return await store.progress()

    p = asyncio.run(progress())
    assert (p.enqueued, p.in_flight, p.retrying, p.applied, p.dead_lettered) == (
        len(expected),
        counts["in_flight"],
        counts["retrying"],
        counts["applied"],
        counts["dead_lettered"],
    )
