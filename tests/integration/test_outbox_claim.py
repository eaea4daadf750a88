"""The relay's claim and the projector's fold: per-resource order, and plans that do not
depend on statistics.

After a burst of inserts the planner's statistics say the outbox is nearly empty. Left to
them, the claim's per-resource check became an anti-join or a sort over every open row
(20 ms to 1 s per claim at 20k open rows, issue 16). The claim must walk the due index in
order and probe the open-resource index once per candidate, at any backlog; the fold must
find each row by its primary key. Postgres only.
"""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest
from factories import outcome_event

from pipeline.domain.codec import Located
from pipeline.store.db import connect_async
from pipeline.store.migrate import migrate
from pipeline.store.outbox import CLAIM_PLAN_SQL, CLAIM_SQL, STAMP_SQL, OutboxStore
from pipeline.store.projection import FOLD_PLAN_SQL, FOLD_SQL, fold_rows

pytestmark = pytest.mark.integration

BURST = """
INSERT INTO pending_propagations (kind, team_id, resource_type, resource_id)
SELECT 'tier_elevation', 'team', 'postgres', 'res-' || g FROM generate_series(1, %s) g
"""


def _plan(conn: psycopg.Connection[tuple[object, ...]]) -> str:
    with conn.transaction():
        for setting in CLAIM_PLAN_SQL:
            conn.execute(setting)
        rows = conn.execute("EXPLAIN " + CLAIM_SQL, (500,)).fetchall()
    return "\n".join(str(r[0]) for r in rows)


def test_the_claim_plan_probes_per_row_after_a_burst_and_after_analyze(
    database_url: str,
) -> None:
    migrate(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE pending_propagations")  # statistics of an empty table
        conn.execute(BURST, (20_000,))
        for when in ("stale statistics", "fresh statistics"):
            for _ in range(4):  # and after claims and stamps have left dead index entries
                plan = _plan(conn)
                assert "Join" not in plan and "Sort" not in plan and "Bitmap" not in plan, (
                    when,
                    plan,
                )
                assert "Index Scan using pending_propagations_due_idx" in plan, (when, plan)
                assert "SubPlan" in plan, (when, plan)
                with conn.transaction():
                    for setting in CLAIM_PLAN_SQL:
                        conn.execute(setting)
                    ids = [r[0] for r in conn.execute(CLAIM_SQL, (500,)).fetchall()]
                    conn.execute(STAMP_SQL, (timedelta(minutes=5), ids))
                assert len(ids) == 500
            conn.execute("ANALYZE pending_propagations")
        # Statistics taken while most rows were published (due in the future), then those
        # rows come due again at once (the rescue after a worker outage): the planner thinks
        # a few hundred rows are due and would sort every due row.
        conn.execute("UPDATE pending_propagations SET next_attempt_at = now() + interval '1h'")
        conn.execute("UPDATE pending_propagations SET next_attempt_at = now() WHERE id % 40 = 0")
        conn.execute("ANALYZE pending_propagations")
        conn.execute("UPDATE pending_propagations SET next_attempt_at = now() - interval '1s'")
        plan = _plan(conn)
        assert "Sort" not in plan and "Bitmap" not in plan and "SubPlan" in plan, plan


async def test_the_claim_holds_back_later_rows_of_a_resource_with_an_open_row(
    database_url: str,
) -> None:
    migrate(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        insert = (
            "INSERT INTO pending_propagations (kind, team_id, resource_type, resource_id)"
            " VALUES ('tier_elevation', %s, 'postgres', %s) RETURNING id"
        )
        a1, b1, a2, c1, _a3 = (
            conn.execute(insert, (team, res)).fetchone()[0]  # type: ignore[index]
            for team, res in [("t", "a"), ("t", "b"), ("t", "a"), ("u", "a"), ("t", "a")]
        )
        conn.execute("UPDATE pending_propagations SET applied_at = now() WHERE id = %s", (b1,))
    conn_async = await connect_async(database_url)
    try:
        store = OutboxStore(conn_async)
        async with store.transaction():
            first = [r.id for r in await store.claim(10)]
        assert first == [a1, c1]  # a2 and a3 wait for a1; ("u", "a") is another resource
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("UPDATE pending_propagations SET applied_at = now() WHERE id = %s", (a1,))
        async with store.transaction():
            second = [r.id for r in await store.claim(10)]
        assert second == [a2, c1]  # c1 was not stamped: still due
    finally:
        await conn_async.close()


@pytest.mark.parametrize("burst", [10_000, 20_000])
def test_the_fold_finds_each_row_by_its_key_after_a_burst_and_after_analyze(
    database_url: str, burst: int
) -> None:
    # Planted once each: without FOLD_PLAN_SQL the stale-statistics plan was a hash join
    # over a sequential scan; with "applied_at IS NULL AND failed_at IS NULL" in the fold's
    # WHERE, one over every open row read through a partial index (45-65 us per row).
    migrate(database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE pending_propagations")  # statistics of an empty table
        conn.execute(BURST, (burst,))
        ids = [r[0] for r in conn.execute("SELECT id FROM pending_propagations ORDER BY id")]
        for start in range(0, len(ids), 500):  # as the relay stamps them
            conn.execute(STAMP_SQL, (timedelta(minutes=5), ids[start : start + 500]))
        batch = fold_rows(
            [Located(outcome_event(pid), "outcomes", 0, pid) for pid in ids[7_000:7_100]]
        )
        for when in ("stale statistics", "fresh statistics"):
            with conn.transaction():
                conn.execute(FOLD_PLAN_SQL)
                rows = conn.execute("EXPLAIN " + FOLD_SQL, (batch,)).fetchall()
            plan = "\n".join(str(r[0]) for r in rows)
            assert "Index Scan using pending_propagations_pkey" in plan, (when, plan)
            assert "Hash" not in plan and "Scan on pending_propagations" not in plan.replace(
                "Index Scan using pending_propagations_pkey on pending_propagations", ""
            ), (when, plan)
            conn.execute("ANALYZE pending_propagations")
