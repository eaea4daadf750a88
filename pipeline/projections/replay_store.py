"""SQL of ``pipeline replay`` beside the projector's fold (which it reuses, never copies).

Here: the projection lock and who holds it, the reset of a rebuild, the before/after
comparison a rebuild or dry run reports, and the checkpoints a replay leaves behind.
The fold itself is ``ProjectionStore.fold_batch``: a replay and the live projector must
produce the same rows from the same events, so they run the same statements.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from pipeline.errors import StoreError

# The same key as the live projector (projector.LOCK_SQL): one writer per projection.
TRY_LOCK_SQL = "SELECT pg_try_advisory_lock(hashtext(%s))"
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

# What a rebuild compares: the projected columns (next_attempt_at only where it still
# matters, on open rows).
SNAPSHOT_SQL = """
CREATE TEMP TABLE replay_before ON COMMIT DROP AS
SELECT id, attempts, applied_at, failed_at, last_outcome, last_error, last_skip_reason,
       next_attempt_at
FROM pending_propagations
"""

RESET_SQL = """
UPDATE pending_propagations
SET attempts = 0, applied_at = NULL, failed_at = NULL, last_outcome = NULL,
    last_error = NULL, last_skip_reason = NULL, next_attempt_at = created_at
"""

# DELETE, not TRUNCATE: TRUNCATE's exclusive lock would block every reader of the audit
# table for the whole rebuild; DELETE lets them read the old rows until the commit.
CLEAR_AUDIT_SQL = "DELETE FROM propagation_audit"
CLEAR_CHECKPOINTS_SQL = "DELETE FROM projection_checkpoints WHERE projection = %s AND topic = %s"

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
SELECT count(*) FROM pending_propagations p JOIN replay_before b ON b.id = p.id
WHERE (p.attempts, p.applied_at, p.failed_at, p.last_outcome, p.last_error,
       p.last_skip_reason)
      IS DISTINCT FROM
      (b.attempts, b.applied_at, b.failed_at, b.last_outcome, b.last_error,
       b.last_skip_reason)
   OR (p.applied_at IS NULL AND p.failed_at IS NULL
       AND p.next_attempt_at IS DISTINCT FROM b.next_attempt_at)
"""

COUNT_AUDIT_SQL = "SELECT count(*) FROM propagation_audit"

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
    def __init__(self, conn: psycopg.AsyncConnection[Any], projection: str) -> None:
        self._conn = conn
        self._projection = projection

    async def _one(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        try:
            cur = await self._conn.execute(sql, params)
            row = await cur.fetchone()
        except psycopg.Error as exc:
            raise StoreError(f"replay query failed: {exc}") from exc
        return row[0] if row else None

    async def try_lock(self) -> bool:
        return bool(await self._one(TRY_LOCK_SQL, (self._projection,)))

    async def unlock(self) -> None:
        await self._one(UNLOCK_SQL, (self._projection,))

    async def lock_holder(self) -> LockHolder | None:
        try:
            cur = await self._conn.execute(HOLDER_SQL, (self._projection, self._projection))
            row = await cur.fetchone()
        except psycopg.Error as exc:
            raise StoreError(f"cannot look up the lock holder: {exc}") from exc
        return LockHolder(*row) if row else None

    async def count_audit(self) -> int:
        return int(await self._one(COUNT_AUDIT_SQL))

    async def begin_rebuild(self, topic: str) -> None:
        """Snapshot, then reset the projected state; call inside the rebuild's transaction."""
        try:
            async with self._conn.cursor() as cur:
                await cur.execute(SNAPSHOT_SQL)
                await cur.execute(RESET_SQL)
                await cur.execute(CLEAR_AUDIT_SQL)
                await cur.execute(CLEAR_CHECKPOINTS_SQL, (self._projection, topic))
        except psycopg.Error as exc:
            raise StoreError(f"rebuild reset failed: {exc}") from exc

    async def finish_rebuild(self) -> int:
        """Restore relay leases; returns how many rows differ from before the rebuild."""
        try:
            await self._conn.execute(RESTORE_LEASES_SQL)
        except psycopg.Error as exc:
            raise StoreError(f"rebuild finish failed: {exc}") from exc
        return int(await self._one(DIFF_SQL))

    async def clear_checkpoints(self, projection: str, topic: str) -> None:
        try:
            await self._conn.execute(CLEAR_CHECKPOINTS_SQL, (projection, topic))
        except psycopg.Error as exc:
            raise StoreError(f"clearing checkpoints failed: {exc}") from exc

    async def finish_replay(self, topic: str, advance: dict[int, int], cursor: str) -> None:
        """Move live checkpoints forward and drop the replay's cursor, in one transaction."""
        try:
            async with self._conn.transaction(), self._conn.cursor() as cur:
                await cur.executemany(
                    ADVANCE_CHECKPOINT_SQL,
                    [(self._projection, topic, p, o) for p, o in sorted(advance.items())],
                )
                await cur.execute(CLEAR_CHECKPOINTS_SQL, (cursor, topic))
        except psycopg.Error as exc:
            raise StoreError(f"finishing the replay failed: {exc}") from exc

    async def record_report(self, report: dict[str, Any]) -> None:
        """Keep a finished run's report (the JSON ``pipeline replay`` prints)."""
        from psycopg.types.json import Jsonb

        try:
            await self._conn.execute(RECORD_REPORT_SQL, (self._projection, Jsonb(report)))
        except psycopg.Error as exc:
            raise StoreError(f"storing the replay report failed: {exc}") from exc

    async def last_report(self) -> tuple[Any, dict[str, Any]] | None:
        """(finished_at, report) of the projection's latest replay, or None."""
        try:
            cur = await self._conn.execute(LAST_REPORT_SQL, (self._projection,))
            row = await cur.fetchone()
        except psycopg.Error as exc:
            raise StoreError(f"reading the last replay report failed: {exc}") from exc
        return (row[0], row[1]) if row else None
