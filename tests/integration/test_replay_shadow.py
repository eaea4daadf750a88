"""A dry run's private copies: its writes never reach (or lock) the real tables, even when
the session's search_path lists pg_temp last."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from pipeline.store.migrate import migrate
from pipeline.store.replay import ReplayStore

pytestmark = pytest.mark.integration


async def _dry_write(url: str) -> tuple[int, int]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("SET search_path = public, pg_temp")
        async with conn.transaction(force_rollback=True):
            await ReplayStore(conn, "p").shadow()
            await conn.execute("UPDATE pending_propagations SET attempts = 7")
            await conn.execute("DELETE FROM propagation_audit")
            # Meanwhile the real row is neither changed nor locked.
            with psycopg.connect(url, autocommit=True) as other:
                other.execute("SET lock_timeout = '2s'")
                other.execute("UPDATE pending_propagations SET last_error = 'live write'")
            cur = await conn.execute("SELECT attempts FROM pending_propagations")
            seen = await cur.fetchone()
            cur = await conn.execute("SELECT count(*) FROM propagation_audit")
            audit = await cur.fetchone()
    assert seen is not None and audit is not None
    return int(seen[0]), int(audit[0])


def test_dry_run_writes_only_its_private_copies(database_url: str) -> None:
    migrate(database_url)
    with psycopg.connect(database_url) as conn:
        pid = conn.execute(
            "INSERT INTO pending_propagations (kind, team_id, resource_type, resource_id)"
            " VALUES ('tier_elevation', 't', 'postgres', 'r') RETURNING id"
        ).fetchone()[0]  # type: ignore[index]
        conn.execute(
            "INSERT INTO propagation_audit (event_id, propagation_id, audit_kind, outcome,"
            " attempt, occurred_at, source_topic, source_partition, source_offset)"
            " VALUES (gen_random_uuid(), %s, 'outcome', 'applied', 1, now(), 'o', 0, 0)",
            (pid,),
        )
    assert asyncio.run(_dry_write(database_url)) == (7, 0)  # the copies took the writes
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT attempts, last_error FROM pending_propagations").fetchone()
        audit = conn.execute("SELECT count(*) FROM propagation_audit").fetchone()
    assert (row, audit) == ((0, "live write"), (1,))
