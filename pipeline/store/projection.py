"""SQL of the projection: folding outcome events into Postgres, with checkpoints.

Every batch is one transaction: audit rows, row updates and the next offsets commit
together, so a crash anywhere neither loses nor double-applies an outcome.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from pipeline.domain.codec import Located
from pipeline.domain.events import Outcome, parse_iso
from pipeline.store.db import AsyncConn, fetchall, fetchone, translated

# A batch's rows go to Postgres as one JSON array (one row an array of columns): psycopg
# dumps a Python list to an array literal element by element in Python, 10 us per row for
# these two statements, the projector's largest cost; orjson writes the JSON in 0.1 us
# (issue 16). Timestamps are parsed here, so a malformed one fails as it did before, and
# orjson writes them back in RFC 3339, which ::timestamptz reads.
#
# One statement per batch for the audit rows and one per "round" for the fold: a round
# holds at most one event per propagation (the k-th of each), so a batch that carries
# several attempts of one propagation (a replay) still folds them in log order.
INSERT_AUDIT_SQL = """
INSERT INTO propagation_audit (event_id, propagation_id, audit_kind, outcome, attempt,
    skip_reason, skip_reason_bucket, error, dead_letter_reason, occurred_at,
    source_topic, source_partition, source_offset)
SELECT (r->>0)::uuid, (r->>1)::bigint, r->>2, r->>3, (r->>4)::int, r->>5, r->>6, r->>7,
    r->>8, (r->>9)::timestamptz, r->>10, (r->>11)::int, (r->>12)::bigint
FROM jsonb_array_elements(%s::jsonb) AS r
ON CONFLICT (event_id) DO NOTHING
"""

# Idempotent fold: an outcome for an attempt already folded (attempts >= attempt) or for a
# row already terminal matches no row and changes nothing. The first outcome folded into a
# row records where it lies on the log (first_outcome_*): a replay refolds a row only when
# it read that position, so a row whose history retention trimmed keeps its projection.
#
# Each row must be found by its primary key, one probe per event. Left to statistics that a
# burst of inserts leaves stale (the outbox looks small), the planner hashed the batch and
# read every open row for each batch instead: by a partial open-row index when "not
# terminal" was written "applied_at IS NULL AND failed_at IS NULL", by a sequential scan
# otherwise. 45-65 us per folded row, most of Postgres's CPU in the bench; 11-12 us per row
# by key (issue 16). So "not terminal" is num_nulls(...) = 2, which no partial index
# predicate matches, and FOLD_PLAN_SQL rules out the scan and the hash and merge joins.
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
FROM (SELECT (r->>0)::bigint, (r->>1)::int, r->>2, r->>3, r->>4, (r->>5)::bool,
             (r->>6)::bool, (r->>7)::timestamptz, (r->>8)::timestamptz, r->>9,
             (r->>10)::int, (r->>11)::bigint
      FROM jsonb_array_elements(%s::jsonb) AS r)
    AS v(propagation_id, attempt, outcome, error, skip_reason, applied, failed,
         occurred_at, next_attempt_at, topic, partition, log_offset)
WHERE p.id = v.propagation_id
  AND num_nulls(p.applied_at, p.failed_at) = 2
  AND p.attempts < v.attempt
RETURNING p.id
"""

# One statement (the batch's transaction is pipelined); SET LOCAL's scope, the transaction.
FOLD_PLAN_SQL = (
    "SELECT set_config('enable_seqscan', 'off', true),"
    " set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true)"
)

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


def _rows(rows: Sequence[tuple[Any, ...]]) -> str:
    """Rows as the JSON array that the statements' ``jsonb_array_elements`` take apart."""
    return orjson.dumps(rows).decode()


def fold_rows(items: Sequence[Located]) -> str:
    """FOLD_SQL's parameter: one row per event."""
    return _rows(
        [
            (
                i.event.propagation_id,
                i.event.attempt,
                i.event.outcome.value,
                i.event.error,
                i.event.skip_reason,
                i.event.outcome is Outcome.APPLIED,
                i.event.outcome in _DEAD,
                parse_iso(i.event.occurred_at),
                parse_iso(i.event.next_attempt_at) if i.event.next_attempt_at else None,
                i.topic,
                i.partition,
                i.offset,
            )
            for i in items
        ]
    )


def audit_rows(items: Sequence[Located]) -> str:
    """INSERT_AUDIT_SQL's parameter: one row per event."""
    return _rows(
        [
            (
                i.event.event_id,
                i.event.propagation_id,
                i.event.audit_kind,
                i.event.outcome.value,
                i.event.attempt,
                i.event.skip_reason,
                i.event.skip_reason_bucket,
                i.event.error,
                i.event.dead_letter_reason.value if i.event.dead_letter_reason else None,
                parse_iso(i.event.occurred_at),
                i.topic,
                i.partition,
                i.offset,
            )
            for i in items
        ]
    )


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
    def __init__(self, conn: AsyncConn, projection: str) -> None:
        self._conn = conn
        self._projection = projection

    async def try_lock(self) -> bool:
        """Take the projection's writer lock for this session, if it is free."""
        what = "taking the projection lock failed"
        row = await fetchone(self._conn, TRY_LOCK_SQL, (self._projection,), what=what)
        return bool(row and row[0])

    async def load_checkpoints(self, topic: str) -> dict[int, int]:
        params = (self._projection, topic)
        rows = await fetchall(
            self._conn, LOAD_CHECKPOINTS_SQL, params, what="loading checkpoints failed"
        )
        return {int(p): int(o) for p, o in rows}

    async def fold_batch(
        self, items: Sequence[Located], next_offsets: dict[tuple[str, int], int]
    ) -> list[bool]:
        """Fold events in log order and move the checkpoints, in one transaction.

        Returns, per event, whether it changed the propagation row.
        """
        changed = [False] * len(items)
        # Pipelined: BEGIN, the audit insert and the fold go in one round trip, the
        # checkpoints and COMMIT in another (five before; issue 16).
        with translated("projection batch failed"):
            async with (
                self._conn.pipeline(),
                self._conn.transaction(),
                self._conn.cursor() as cur,
            ):
                if items:
                    await cur.execute(FOLD_PLAN_SQL)
                    await cur.execute(INSERT_AUDIT_SQL, (audit_rows(items),))
                for idx in rounds(items):
                    await cur.execute(FOLD_SQL, (fold_rows([items[i] for i in idx]),))
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
        return changed
