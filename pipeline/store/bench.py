"""Every SQL statement the benchmark runs (the project keeps SQL in store modules only).

Rows the bench enqueues are told apart by their ``resource_id`` prefix (``warm-``, ``sat-``,
``lat-``, ``raw-``); the bench runs in a database of its own, so nothing else is in there.
Peers get one simple table each (``bench_jobs_<peer>``): the job is "call the provisioner,
then stamp ``applied_at`` on the job's row", the same work the pipeline does per propagation.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

PEER_TABLES = {"pgqueuer": "bench_jobs_pgqueuer", "procrastinate": "bench_jobs_procrastinate"}

_INSERT_BATCH_SQL = """
INSERT INTO pending_propagations (kind, team_id, resource_type, resource_id, payload,
                                  next_attempt_at)
SELECT 'tier_elevation', 'bench', 'postgres', %(prefix)s || g::text,
       '{"target_tier": "pro"}'::jsonb, %(due)s::timestamptz
FROM generate_series(1, %(n)s) AS g
RETURNING id
"""

_PROGRESS_SQL = """
SELECT count(*) FILTER (WHERE applied_at IS NOT NULL),
       count(*) FILTER (WHERE failed_at IS NOT NULL)
FROM pending_propagations WHERE id BETWEEN %s AND %s
"""

_STAGE_SQL = """
SELECT count(*), min(created_at), max(created_at), min(published_at), max(published_at),
       min(applied_at), max(applied_at), max(attempts)
FROM pending_propagations WHERE id BETWEEN %s AND %s
"""

# Percentiles of the seconds from enqueue to a later stamp of the same rows: `until` is
# that stamp (rows without it are not counted), `source` the table(s) aliased `p`.
_LATENCY_SQL = """
SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99])
           WITHIN GROUP (ORDER BY extract(epoch FROM {until} - p.created_at)),
       max(extract(epoch FROM {until} - p.created_at)), count({until})
FROM {source}
WHERE p.id BETWEEN %s AND %s
"""
_CREATED_SQL = """
SELECT id, extract(epoch FROM created_at) FROM pending_propagations WHERE id BETWEEN %s AND %s
"""

# The worker's outcome (applied_at is the outcome's occurred_at).
_OUTCOME_LATENCY_SQL = _LATENCY_SQL.format(until="p.applied_at", source="pending_propagations p")
# The relay's claim (published_at is its transaction's start).
_CLAIMED_LATENCY_SQL = _LATENCY_SQL.format(until="p.published_at", source="pending_propagations p")
# The projector's UPDATE (bench_projected is filled by a trigger).
_PROJECTED_LATENCY_SQL = _LATENCY_SQL.format(
    until="b.projected_at",
    source="pending_propagations p JOIN bench_projected b ON b.id = p.id",
)

_TRIGGER_SETUP = [
    """CREATE TABLE IF NOT EXISTS bench_projected (
           id bigint PRIMARY KEY, projected_at timestamptz NOT NULL DEFAULT clock_timestamp())""",
    """CREATE OR REPLACE FUNCTION bench_projected_mark() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN
           INSERT INTO bench_projected (id) VALUES (NEW.id) ON CONFLICT DO NOTHING;
           RETURN NULL;
       END $$""",
    "DROP TRIGGER IF EXISTS bench_projected_mark ON pending_propagations",
    """CREATE TRIGGER bench_projected_mark AFTER UPDATE OF applied_at ON pending_propagations
       FOR EACH ROW WHEN (OLD.applied_at IS NULL AND NEW.applied_at IS NOT NULL)
       EXECUTE FUNCTION bench_projected_mark()""",
]
_TRIGGER_DROP = "DROP TRIGGER IF EXISTS bench_projected_mark ON pending_propagations"

_RAW_UPDATE_BATCH_SQL = "UPDATE pending_propagations SET applied_at = now() WHERE id = ANY(%s)"
_RAW_UPDATE_ONE_SQL = "UPDATE pending_propagations SET applied_at = now() WHERE id = %s"

# Peer job SQL. asyncpg (pgqueuer) uses $1, psycopg (procrastinate) uses %s.
PEER_UPDATE_ASYNCPG = "UPDATE {table} SET applied_at = now() WHERE id = $1"
PEER_UPDATE_PSYCOPG = "UPDATE {table} SET applied_at = now() WHERE id = %s"


@dataclass(frozen=True, slots=True)
class Stage:
    rows: int
    created_min: datetime | None
    created_max: datetime | None
    published_min: datetime | None
    published_max: datetime | None
    applied_min: datetime | None
    applied_max: datetime | None
    max_attempts: int | None


@dataclass(frozen=True, slots=True)
class Percentiles:
    p50: float
    p95: float
    p99: float
    max: float
    samples: int


def insert_batch(
    conn: psycopg.Connection[Any], prefix: str, n: int, due: str = "now"
) -> tuple[int, int]:
    """Insert ``n`` propagations in one statement; returns the (first, last) id."""
    rows = conn.execute(_INSERT_BATCH_SQL, {"prefix": prefix, "n": n, "due": due}).fetchall()
    ids = [int(r[0]) for r in rows]
    return min(ids), max(ids)


async def insert_batch_async(
    conn: psycopg.AsyncConnection[Any], prefix: str, n: int
) -> tuple[int, int]:
    cur = await conn.execute(_INSERT_BATCH_SQL, {"prefix": prefix, "n": n, "due": "now"})
    ids = [int(r[0]) for r in await cur.fetchall()]
    return min(ids), max(ids)


async def progress(conn: psycopg.AsyncConnection[Any], first: int, last: int) -> tuple[int, int]:
    """(applied, failed) rows in the id range."""
    cur = await conn.execute(_PROGRESS_SQL, (first, last))
    row = await cur.fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def stage(conn: psycopg.Connection[Any], first: int, last: int) -> Stage:
    row = conn.execute(_STAGE_SQL, (first, last)).fetchone()
    assert row is not None
    return Stage(int(row[0]), *row[1:])


def _percentiles(row: Any) -> Percentiles:
    if row is None or row[0] is None:
        return Percentiles(0.0, 0.0, 0.0, 0.0, 0)
    p50, p95, p99 = (float(x) for x in row[0])
    return Percentiles(p50, p95, p99, float(row[1]), int(row[2]))


def created_epochs(conn: psycopg.Connection[Any], first: int, last: int) -> dict[int, float]:
    rows = conn.execute(_CREATED_SQL, (first, last)).fetchall()
    return {int(r[0]): float(r[1]) for r in rows}


def percentiles(values: list[float]) -> Percentiles:
    """Nearest-rank p50/p95/p99 and max of ``values`` (seconds)."""
    if not values:
        return Percentiles(0.0, 0.0, 0.0, 0.0, 0)
    ordered = sorted(values)
    n = len(ordered)

    def rank(q: float) -> float:
        return ordered[min(n - 1, max(0, math.ceil(q * n) - 1))]

    return Percentiles(rank(0.5), rank(0.95), rank(0.99), ordered[-1], n)


def outcome_latency(conn: psycopg.Connection[Any], first: int, last: int) -> Percentiles:
    return _percentiles(conn.execute(_OUTCOME_LATENCY_SQL, (first, last)).fetchone())


def claimed_latency(conn: psycopg.Connection[Any], first: int, last: int) -> Percentiles:
    return _percentiles(conn.execute(_CLAIMED_LATENCY_SQL, (first, last)).fetchone())


def projected_latency(conn: psycopg.Connection[Any], first: int, last: int) -> Percentiles:
    return _percentiles(conn.execute(_PROJECTED_LATENCY_SQL, (first, last)).fetchone())


def install_projected_trigger(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        for statement in _TRIGGER_SETUP:
            conn.execute(statement.encode())


def drop_projected_trigger(conn: psycopg.Connection[Any]) -> None:
    conn.execute(_TRIGGER_DROP)


def raw_update_batched(conn: psycopg.Connection[Any], ids: list[int], batch: int) -> None:
    """``UPDATE ... WHERE id = ANY(...)``, one autocommitted statement per batch."""
    for i in range(0, len(ids), batch):
        conn.execute(_RAW_UPDATE_BATCH_SQL, (ids[i : i + batch],))


def raw_update_row_by_row(conn: psycopg.Connection[Any], ids: list[int], batch: int) -> None:
    """One statement (one round trip) per row, ``batch`` rows per transaction: the
    projector's current pattern, minus its audit insert."""
    for i in range(0, len(ids), batch):
        with conn.transaction(), conn.cursor() as cur:
            for pid in ids[i : i + batch]:
                cur.execute(_RAW_UPDATE_ONE_SQL, (pid,))


def peer_table(peer: str) -> sql.Identifier:
    return sql.Identifier(PEER_TABLES[peer])


def reset_peer_table(conn: psycopg.Connection[Any], peer: str, n: int) -> None:
    """(Re)create the peer's job table with ``n`` rows, ids 1..n, none applied."""
    table = peer_table(peer)
    with conn.transaction():
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
        conn.execute(
            sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, applied_at timestamptz)").format(table)
        )
        conn.execute(
            sql.SQL("INSERT INTO {} (id) SELECT g FROM generate_series(1, %s) AS g").format(table),
            (n,),
        )


async def peer_applied(conn: psycopg.AsyncConnection[Any], peer: str) -> int:
    cur = await conn.execute(sql.SQL("SELECT count(applied_at) FROM {}").format(peer_table(peer)))
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


def peer_update_sql(peer: str, driver: str) -> str:
    """The job's UPDATE for ``peer`` in the placeholder style of ``driver``."""
    template = PEER_UPDATE_ASYNCPG if driver == "asyncpg" else PEER_UPDATE_PSYCOPG
    return template.format(table=PEER_TABLES[peer])


def reset_peer_schema(conn: psycopg.Connection[Any], peer: str) -> None:
    """Drop what a previous trial of ``peer`` left in its queue tables."""
    if peer == "pgqueuer":
        conn.execute(b"TRUNCATE pgqueuer, pgqueuer_log, pgqueuer_statistics")
    else:
        conn.execute(b"TRUNCATE procrastinate_jobs, procrastinate_events RESTART IDENTITY CASCADE")


_PEER_MARKER_TABLES = {"pgqueuer": "pgqueuer", "procrastinate": "procrastinate_jobs"}


def peer_schema_installed(conn: psycopg.Connection[Any], peer: str) -> bool:
    row = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL", (_PEER_MARKER_TABLES[peer],)
    ).fetchone()
    return bool(row and row[0])


# --- the plain reference peer (pipeline.devtools.bench.plain) ------------------------------------

_PLAIN_SETUP = [
    "DROP TABLE IF EXISTS bench_plain_outbox, bench_plain_audit",
    """CREATE TABLE bench_plain_outbox (
           id bigserial PRIMARY KEY, key text NOT NULL, warm boolean NOT NULL DEFAULT false,
           created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
           published_at timestamptz, applied_at timestamptz)""",
    "CREATE INDEX ON bench_plain_outbox (id) WHERE published_at IS NULL",
    """CREATE TABLE bench_plain_audit (
           job_id bigint NOT NULL, outcome text NOT NULL, at timestamptz NOT NULL DEFAULT now())""",
]
_PLAIN_INSERT_SQL = """
INSERT INTO bench_plain_outbox (key, warm)
SELECT %(tag)s || g::text, %(warm)s FROM generate_series(1, %(n)s) AS g
"""
_PLAIN_APPLIED_SQL = "SELECT count(applied_at) FROM bench_plain_outbox WHERE warm = %s"
_PLAIN_CLAIM_SQL = """
SELECT id, key FROM bench_plain_outbox WHERE published_at IS NULL
ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED
"""
_PLAIN_PUBLISHED_SQL = "UPDATE bench_plain_outbox SET published_at = now() WHERE id = ANY(%s)"
_PLAIN_PROJECT_SQL = """
UPDATE bench_plain_outbox o SET applied_at = now()
FROM unnest(%s::bigint[]) AS u(id) WHERE o.id = u.id
"""
_PLAIN_AUDIT_SQL = """
INSERT INTO bench_plain_audit (job_id, outcome) SELECT u, 'applied' FROM unnest(%s::bigint[]) u
"""


def reset_plain_tables(conn: psycopg.Connection[Any]) -> None:
    with conn.transaction():
        for statement in _PLAIN_SETUP:
            conn.execute(statement.encode())


async def plain_insert(conn: psycopg.AsyncConnection[Any], n: int, warm: bool = False) -> None:
    tag = f"plain-{'warm' if warm else 'run'}-{uuid.uuid4().hex[:8]}-"
    await conn.execute(_PLAIN_INSERT_SQL, {"tag": tag, "warm": warm, "n": n})


async def plain_applied(conn: psycopg.AsyncConnection[Any], warm: bool = False) -> int:
    cur = await conn.execute(_PLAIN_APPLIED_SQL, (warm,))
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def plain_claim(conn: psycopg.AsyncConnection[Any], limit: int) -> list[tuple[int, str]]:
    cur = await conn.execute(_PLAIN_CLAIM_SQL, (limit,))
    return [(int(r[0]), str(r[1])) for r in await cur.fetchall()]


async def plain_mark_published(conn: psycopg.AsyncConnection[Any], ids: list[int]) -> None:
    await conn.execute(_PLAIN_PUBLISHED_SQL, (ids,))


async def plain_project(conn: psycopg.AsyncConnection[Any], ids: list[int]) -> None:
    """One UPDATE from unnest and one audit INSERT for the whole batch."""
    await conn.execute(_PLAIN_PROJECT_SQL, (ids,))
    await conn.execute(_PLAIN_AUDIT_SQL, (ids,))
