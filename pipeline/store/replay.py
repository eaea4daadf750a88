"""SQL of ``pipeline replay`` beside the projector's fold (which it reuses, never copies).

Here: the projection lock and who holds it, the private snapshot of a dry run, which rows
a rebuild may reset (only those whose first outcome lies in the range it read, on its own
topic), the reset, the before/after comparison it reports, and the checkpoints a replay
leaves behind. No statement here deletes an audit row: the audit table is append-only.
The fold itself is ``ProjectionStore.fold_batch``: a replay and the live projector must
produce the same rows from the same events, so they run the same statements.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.domain.errors import StoreError
from pipeline.store.db import AsyncConn, fetchall, fetchone, translated
from pipeline.store.projection import ProjectionStore

# The live projector's own lock (store.TRY_LOCK_SQL): one writer per projection.
UNLOCK_SQL = "SELECT pg_advisory_unlock(hashtext(%s))"

# A bigint advisory key is split into classid (high 32 bits) and objid (low 32 bits).
HOLDER_SQL = """
SELECT a.pid, coalesce(nullif(a.application_name, ''), '?'), host(a.client_addr),
       a.backend_start, a.state
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.objid::bigint = (hashtext(%s)::bigint & 4294967295)
  AND l.classid::bigint = ((hashtext(%s)::bigint >> 32) & 4294967295)
"""

# The range a replay read, per partition: [start_offset, end_offset).
_RANGE = "unnest(%s::int[], %s::bigint[], %s::bigint[]) AS r(partition, start_offset, end_offset)"

# Every row with outcome history, by where that history starts relative to the range read:
# only `in_range` rows are reset and refolded; the others keep their projection.
CLASSIFY_SQL = f"""
SELECT CASE
         WHEN p.first_outcome_topic IS NULL THEN 'unknown_provenance'
         WHEN p.first_outcome_topic <> %s THEN 'other_topic'
         WHEN r.partition IS NULL OR p.first_outcome_offset < r.start_offset
           THEN 'first_outcome_before_range'
         WHEN p.first_outcome_offset >= r.end_offset THEN 'first_outcome_after_range'
         ELSE 'in_range'
       END, count(*)
FROM pending_propagations p LEFT JOIN {_RANGE} ON r.partition = p.first_outcome_partition
WHERE p.first_outcome_topic IS NOT NULL OR p.attempts > 0 OR p.last_outcome IS NOT NULL
   OR p.applied_at IS NOT NULL OR p.failed_at IS NOT NULL
GROUP BY 1
"""

SCOPE_SQL = f"""
CREATE TEMP TABLE replay_scope ON COMMIT DROP AS
SELECT p.id FROM pending_propagations p JOIN {_RANGE} ON r.partition = p.first_outcome_partition
WHERE p.first_outcome_topic = %s
  AND p.first_outcome_offset >= r.start_offset AND p.first_outcome_offset < r.end_offset
"""

# Lock the rows first, so the snapshot below is what the reset overwrites (the relay may
# have stamped a lease since the scope was read).
LOCK_SCOPE_SQL = (
    "SELECT id FROM pending_propagations WHERE id IN (SELECT id FROM replay_scope) FOR UPDATE"
)

# What a rebuild compares and restores (next_attempt_at only where it still matters).
_COLUMNS = """attempts, applied_at, failed_at, last_outcome, last_error, last_skip_reason,
       next_attempt_at, first_outcome_topic, first_outcome_partition, first_outcome_offset"""
SNAPSHOT_SQL = f"""
CREATE TEMP TABLE replay_before ON COMMIT DROP AS
SELECT id, {_COLUMNS} FROM pending_propagations WHERE id IN (SELECT id FROM replay_scope)
"""

# next_attempt_at is left alone: the fold sets it from the outcomes it folds, and a reset
# must never make a row due (only the relay's rescue of an attempt in flight does that).
RESET_SQL = """
UPDATE pending_propagations
SET attempts = 0, applied_at = NULL, failed_at = NULL, last_outcome = NULL,
    last_error = NULL, last_skip_reason = NULL, first_outcome_topic = NULL,
    first_outcome_partition = NULL, first_outcome_offset = NULL
WHERE id IN (SELECT id FROM replay_scope)
"""

# A replay never reopens (or flips) a terminal row: were it reopened, the relay would
# execute it again. Nor does it end a row an operator reopened (`pipeline retry` keeps the
# attempts and clears failed_at, so the log ends it at an attempt the row already folded):
# the retry would be lost and the outcome of the attempt in flight could not fold. Nor does
# it move a terminal row's attempts back (a retried row dead-lettered again): the next retry
# would reuse attempt numbers. A refold that disagrees this way keeps the row as it was, and
# the report counts it.
KEEP_TERMINAL_SQL = f"""
UPDATE pending_propagations p
SET ({_COLUMNS}) = (b.attempts, b.applied_at, b.failed_at, b.last_outcome, b.last_error,
    b.last_skip_reason, b.next_attempt_at, b.first_outcome_topic, b.first_outcome_partition,
    b.first_outcome_offset)
FROM replay_before b
WHERE b.id = p.id
  AND ((b.applied_at IS NOT NULL AND p.applied_at IS NULL)
       OR (b.failed_at IS NOT NULL AND p.failed_at IS NULL)
       OR ((p.applied_at IS NOT NULL OR p.failed_at IS NOT NULL)
           AND (b.attempts > p.attempts
                OR (b.applied_at IS NULL AND b.failed_at IS NULL AND b.attempts >= p.attempts))))
RETURNING p.id
"""

# The relay, not the log, owns the rescue lease it stamps into next_attempt_at when it
# publishes: an attempt in flight keeps it, or the rebuild would trigger an early rescue.
RESTORE_LEASES_SQL = """
UPDATE pending_propagations p
SET next_attempt_at = b.next_attempt_at
FROM replay_before b
WHERE b.id = p.id AND p.applied_at IS NULL AND p.failed_at IS NULL
  AND p.published_attempt > p.attempts AND b.next_attempt_at > p.next_attempt_at
"""

DIFF_SQL = """
SELECT p.id FROM pending_propagations p JOIN replay_before b ON b.id = p.id
WHERE (p.attempts, p.applied_at, p.failed_at, p.last_outcome, p.last_error,
       p.last_skip_reason)
      IS DISTINCT FROM
      (b.attempts, b.applied_at, b.failed_at, b.last_outcome, b.last_error,
       b.last_skip_reason)
   OR (p.applied_at IS NULL AND p.failed_at IS NULL
       AND p.next_attempt_at IS DISTINCT FROM b.next_attempt_at)
ORDER BY p.id
"""

# A dry run works on private copies (temporary tables shadow the real ones by name for
# this session) taken in one snapshot, so it runs the very statements of a real run without
# the projection lock and without locking a row the live pipeline writes.
SHADOW_SQL = (
    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ WRITE",
    # pg_temp is searched first by default; a search_path that lists it later must not
    # send a dry run's writes to the real tables.
    "SELECT set_config('search_path', 'pg_temp, ' || current_setting('search_path'), true)",
    "CREATE TEMP TABLE pending_propagations ON COMMIT DROP AS SELECT * FROM pending_propagations",
    "ALTER TABLE pg_temp.pending_propagations ADD PRIMARY KEY (id)",
    "CREATE TEMP TABLE propagation_audit ON COMMIT DROP AS SELECT * FROM propagation_audit",
    "ALTER TABLE pg_temp.propagation_audit ADD PRIMARY KEY (event_id)",
    "CREATE TEMP TABLE projection_checkpoints ON COMMIT DROP AS"
    " SELECT * FROM projection_checkpoints",
    "ALTER TABLE pg_temp.projection_checkpoints ADD PRIMARY KEY (projection, topic, partition)",
)
SHADOWED_SQL = """
SELECT count(*) FROM unnest(ARRAY['pending_propagations', 'propagation_audit',
    'projection_checkpoints']) AS t(name)
WHERE to_regclass(t.name) IS DISTINCT FROM to_regclass('pg_temp.' || t.name)
"""

COUNT_AUDIT_SQL = "SELECT count(*) FROM propagation_audit"

CLEAR_CHECKPOINTS_SQL = "DELETE FROM projection_checkpoints WHERE projection = %s AND topic = %s"

# A replay only moves the live checkpoint forward, never back.
ADVANCE_CHECKPOINT_SQL = """
INSERT INTO projection_checkpoints (projection, topic, partition, next_offset, updated_at)
VALUES (%s, %s, %s, %s, now())
ON CONFLICT (projection, topic, partition) DO UPDATE
SET next_offset = GREATEST(projection_checkpoints.next_offset, EXCLUDED.next_offset),
    updated_at = now()
"""


RECORD_REPORT_SQL = "INSERT INTO replay_reports (projection, report) VALUES (%s, %s)"

LAST_REPORT_SQL = """
SELECT finished_at, report FROM replay_reports WHERE projection = %s ORDER BY id DESC LIMIT 1
"""


@dataclass(frozen=True, slots=True)
class LockHolder:
    pid: int
    application: str
    client: str | None
    since: Any
    state: str | None

    def describe(self) -> str:
        return (
            f"pid {self.pid} ({self.application}) from {self.client or 'local socket'}, "
            f"connected since {self.since}, state {self.state}"
        )


class ReplayStore:
    def __init__(self, conn: AsyncConn, projection: str) -> None:
        self._conn = conn
        self._projection = projection

    async def _one(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        row = await fetchone(self._conn, sql, params, what="replay query failed")
        return row[0] if row else None

    async def try_lock(self) -> bool:
        return await ProjectionStore(self._conn, self._projection).try_lock()

    async def unlock(self) -> None:
        await self._one(UNLOCK_SQL, (self._projection,))

    async def lock_holder(self) -> LockHolder | None:
        params = (self._projection, self._projection)
        row = await fetchone(self._conn, HOLDER_SQL, params, what="cannot look up the lock holder")
        return LockHolder(*row) if row else None

    async def count_audit(self) -> int:
        return int(await self._one(COUNT_AUDIT_SQL))

    async def shadow(self) -> None:
        """First thing in a dry run's transaction: private copies of the projected tables."""
        with translated("dry run snapshot failed"):
            async with self._conn.cursor() as cur:
                for sql in SHADOW_SQL:
                    await cur.execute(sql)
                # Checked, not assumed: a dry run must never write to the real tables.
                await cur.execute(SHADOWED_SQL)
                row = await cur.fetchone()
        if not row or row[0]:
            raise StoreError("dry run refused: the private copies do not shadow the real tables")

    async def classify(self, topic: str, read: dict[int, tuple[int, int]]) -> dict[str, int]:
        """Rows with outcome history, counted by where it starts against the range read."""
        what = "classifying rows for the rebuild failed"
        rows = await fetchall(self._conn, CLASSIFY_SQL, (topic, *_range(read)), what=what)
        return {str(k): int(n) for k, n in rows}

    async def begin_rebuild(self, topic: str, read: dict[int, tuple[int, int]]) -> int:
        """Snapshot, then reset the rows in range; returns how many. Inside the transaction."""
        with translated("rebuild reset failed"):
            async with self._conn.cursor() as cur:
                await cur.execute(SCOPE_SQL, (*_range(read), topic))
                await cur.execute(LOCK_SCOPE_SQL)
                await cur.execute(SNAPSHOT_SQL)
                await cur.execute(RESET_SQL)
                return int(cur.rowcount)

    async def finish_rebuild(self) -> tuple[int, list[int]]:
        """Keep terminal rows terminal, restore relay leases.

        Returns how many rows were kept as they were because the refold would have reopened
        them, and the ids of the rows that differ from before the rebuild.
        """
        with translated("rebuild finish failed"):
            async with self._conn.cursor() as cur:
                await cur.execute(KEEP_TERMINAL_SQL)
                kept = cur.rowcount
                await cur.execute(RESTORE_LEASES_SQL)
                await cur.execute(DIFF_SQL)
                return int(kept), [int(r[0]) for r in await cur.fetchall()]

    async def clear_checkpoints(self, projection: str, topic: str) -> None:
        with translated("clearing checkpoints failed"):
            await self._conn.execute(CLEAR_CHECKPOINTS_SQL, (projection, topic))

    async def finish_replay(self, topic: str, advance: dict[int, int], cursor: str) -> None:
        """Move live checkpoints forward and drop the replay's cursor, in one transaction."""
        with translated("finishing the replay failed"):
            async with self._conn.transaction(), self._conn.cursor() as cur:
                await cur.executemany(
                    ADVANCE_CHECKPOINT_SQL,
                    [(self._projection, topic, p, o) for p, o in sorted(advance.items())],
                )
                await cur.execute(CLEAR_CHECKPOINTS_SQL, (cursor, topic))

    async def record_report(self, report: dict[str, Any]) -> None:
        """Keep a finished run's report (the JSON ``pipeline replay`` prints)."""
        from psycopg.types.json import Jsonb

        with translated("storing the replay report failed"):
            await self._conn.execute(RECORD_REPORT_SQL, (self._projection, Jsonb(report)))

    async def last_report(self) -> tuple[Any, dict[str, Any]] | None:
        """(finished_at, report) of the projection's latest replay, or None."""
        what = "reading the last replay report failed"
        row = await fetchone(self._conn, LAST_REPORT_SQL, (self._projection,), what=what)
        return (row[0], row[1]) if row else None


def _range(read: dict[int, tuple[int, int]]) -> tuple[list[int], list[int], list[int]]:
    parts = sorted(read)
    return parts, [read[p][0] for p in parts], [read[p][1] for p in parts]
