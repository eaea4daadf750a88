"""SQL of the projection: folding outcome events into Postgres, with checkpoints.

Every batch is one transaction: audit rows, row updates and the next offsets commit
together, so a crash anywhere neither loses nor double-applies an outcome.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from pipeline.domain.errors import StoreError
from pipeline.domain.events import Outcome, OutcomeEvent, parse_iso

# One statement per batch for the audit rows and one per "round" for the fold: a round
# holds at most one event per propagation (the k-th of each), so a batch that carries
# several attempts of one propagation (a replay) still folds them in log order.
INSERT_AUDIT_SQL = """
INSERT INTO propagation_audit (event_id, propagation_id, audit_kind, outcome, attempt,
    skip_reason, skip_reason_bucket, error, dead_letter_reason, occurred_at,
    source_topic, source_partition, source_offset)
SELECT * FROM unnest(%s::uuid[], %s::bigint[], %s::text[], %s::text[], %s::int[],
    %s::text[], %s::text[], %s::text[], %s::text[], %s::timestamptz[],
    %s::text[], %s::int[], %s::bigint[])
ON CONFLICT (event_id) DO NOTHING
"""

# Idempotent fold: an outcome for an attempt already folded (attempts >= attempt) or for a
# row already terminal matches no row and changes nothing. The first outcome folded into a
# row records where it lies on the log (first_outcome_*): a replay refolds a row only when
# it read that position, so a row whose history retention trimmed keeps its projection.
FOLD_SQL = """
UPDATE pending_propagations AS p
SET attempts = v.attempt,
    last_outcome = v.outcome,
    last_error = v.error,
    last_skip_reason = v.skip_reason,
    applied_at = CASE WHEN v.applied THEN v.occurred_at END,
    failed_at = CASE WHEN v.failed THEN v.occurred_at END,
    next_attempt_at = coalesce(v.next_attempt_at, p.next_attempt_at),
    first_outcome_topic = coalesce(p.first_outcome_topic, v.topic),
    first_outcome_partition = CASE WHEN p.first_outcome_topic IS NULL THEN v.partition
                                   ELSE p.first_outcome_partition END,
    first_outcome_offset = CASE WHEN p.first_outcome_topic IS NULL THEN v.log_offset
                                ELSE p.first_outcome_offset END
FROM unnest(%s::bigint[], %s::int[], %s::text[], %s::text[], %s::text[], %s::bool[],
    %s::bool[], %s::timestamptz[], %s::timestamptz[], %s::text[], %s::int[], %s::bigint[])
    AS v(propagation_id, attempt, outcome, error, skip_reason, applied, failed,
         occurred_at, next_attempt_at, topic, partition, log_offset)
WHERE p.id = v.propagation_id
  AND p.applied_at IS NULL AND p.failed_at IS NULL
  AND p.attempts < v.attempt
RETURNING p.id
"""

# One writer per projection: the live projector and `pipeline replay` take this
# session-level advisory lock (a projector without it waits as a hot standby).
TRY_LOCK_SQL = "SELECT pg_try_advisory_lock(hashtext(%s))"

CHECKPOINT_SQL = """
INSERT INTO projection_checkpoints (projection, topic, partition, next_offset, updated_at)
VALUES (%s, %s, %s, %s, now())
ON CONFLICT (projection, topic, partition)
DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = now()
"""

LOAD_CHECKPOINTS_SQL = """
SELECT partition, next_offset FROM projection_checkpoints WHERE projection = %s AND topic = %s
"""

_DEAD = (Outcome.DEAD_LETTERED, Outcome.UNKNOWN_KIND_DEAD_LETTERED)


@dataclass(frozen=True, slots=True)
class Located:
    """An outcome event with where it came from on the log."""

    event: OutcomeEvent
    topic: str
    partition: int
    offset: int


def fold_columns(items: Sequence[Located]) -> list[list[Any]]:
    """Column arrays for FOLD_SQL, one entry per event."""
    cols: list[list[Any]] = [[] for _ in range(12)]
    for item in items:
        e = item.event
        row = (
            e.propagation_id,
            e.attempt,
            e.outcome.value,
            e.error,
            e.skip_reason,
            e.outcome is Outcome.APPLIED,
            e.outcome in _DEAD,
            parse_iso(e.occurred_at),
            parse_iso(e.next_attempt_at) if e.next_attempt_at else None,
            item.topic,
            item.partition,
            item.offset,
        )
        for col, value in zip(cols, row, strict=True):
            col.append(value)
    return cols


def audit_columns(items: Sequence[Located]) -> list[list[Any]]:
    cols: list[list[Any]] = [[] for _ in range(13)]
    for item in items:
        e = item.event
        row = (
            e.event_id,
            e.propagation_id,
            e.audit_kind,
            e.outcome.value,
            e.attempt,
            e.skip_reason,
            e.skip_reason_bucket,
            e.error,
            e.dead_letter_reason.value if e.dead_letter_reason else None,
            parse_iso(e.occurred_at),
            item.topic,
            item.partition,
            item.offset,
        )
        for col, value in zip(cols, row, strict=True):
            col.append(value)
    return cols


def rounds(items: Sequence[Located]) -> list[list[int]]:
    """Indexes of ``items`` split so that no round holds two events of one propagation."""
    out: list[list[int]] = []
    depth: dict[int, int] = {}
    for i, item in enumerate(items):
        k = depth.get(item.event.propagation_id, 0)
        depth[item.event.propagation_id] = k + 1
        if k == len(out):
            out.append([])
        out[k].append(i)
    return out


class ProjectionStore:
    def __init__(self, conn: psycopg.AsyncConnection[Any], projection: str) -> None:
        self._conn = conn
        self._projection = projection

    async def try_lock(self) -> bool:
        """Take the projection's writer lock for this session, if it is free."""
        try:
            cur = await self._conn.execute(TRY_LOCK_SQL, (self._projection,))
            row = await cur.fetchone()
        except psycopg.Error as exc:
            raise StoreError(f"taking the projection lock failed: {exc}") from exc
        return bool(row and row[0])

    async def load_checkpoints(self, topic: str) -> dict[int, int]:
        try:
            cur = await self._conn.execute(LOAD_CHECKPOINTS_SQL, (self._projection, topic))
            return {int(p): int(o) for p, o in await cur.fetchall()}
        except psycopg.Error as exc:
            raise StoreError(f"loading checkpoints failed: {exc}") from exc

    async def fold_batch(
        self, items: Sequence[Located], next_offsets: dict[tuple[str, int], int]
    ) -> list[bool]:
        """Fold events in log order and move the checkpoints, in one transaction.

        Returns, per event, whether it changed the propagation row.
        """
        changed = [False] * len(items)
        try:
            async with self._conn.transaction(), self._conn.cursor() as cur:
                if items:
                    await cur.execute(INSERT_AUDIT_SQL, audit_columns(items))
                for idx in rounds(items):
                    await cur.execute(FOLD_SQL, fold_columns([items[i] for i in idx]))
                    hit = {int(r[0]) for r in await cur.fetchall()}
                    for i in idx:
                        changed[i] = items[i].event.propagation_id in hit
                if next_offsets:
                    await cur.executemany(
                        CHECKPOINT_SQL,
                        [
                            (self._projection, topic, partition, offset)
                            for (topic, partition), offset in sorted(next_offsets.items())
                        ],
                    )
        except psycopg.Error as exc:
            raise StoreError(f"projection batch failed: {exc}") from exc
        return changed
