"""SQL of the projection: folding outcome events into Postgres, with checkpoints.

Every batch is one transaction: audit rows, row updates and the next offsets commit
together, so a crash anywhere neither loses nor double-applies an outcome.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from pipeline.errors import StoreError
from pipeline.events import Outcome, OutcomeEvent, parse_iso

INSERT_AUDIT_SQL = """
INSERT INTO propagation_audit (event_id, propagation_id, audit_kind, outcome, attempt,
    skip_reason, skip_reason_bucket, error, dead_letter_reason, occurred_at,
    source_topic, source_partition, source_offset)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (event_id) DO NOTHING
"""

# Idempotent fold: an outcome for an attempt already folded (attempts >= attempt) or for a
# row already terminal matches no row and changes nothing.
FOLD_SQL = """
UPDATE pending_propagations
SET attempts = %(attempt)s,
    last_outcome = %(outcome)s,
    last_error = %(error)s,
    last_skip_reason = %(skip_reason)s,
    applied_at = CASE WHEN %(applied)s THEN %(occurred_at)s END,
    failed_at = CASE WHEN %(failed)s THEN %(occurred_at)s END,
    next_attempt_at = coalesce(%(next_attempt_at)s, next_attempt_at)
WHERE id = %(propagation_id)s
  AND applied_at IS NULL AND failed_at IS NULL
  AND attempts < %(attempt)s
"""

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


def fold_params(e: OutcomeEvent) -> dict[str, Any]:
    return {
        "propagation_id": e.propagation_id,
        "attempt": e.attempt,
        "outcome": e.outcome.value,
        "error": e.error,
        "skip_reason": e.skip_reason,
        "applied": e.outcome is Outcome.APPLIED,
        "failed": e.outcome in _DEAD,
        "occurred_at": parse_iso(e.occurred_at),
        "next_attempt_at": parse_iso(e.next_attempt_at) if e.next_attempt_at else None,
    }


def audit_params(item: Located) -> tuple[Any, ...]:
    e = item.event
    return (
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


class ProjectionStore:
    def __init__(self, conn: psycopg.AsyncConnection[Any], projection: str) -> None:
        self._conn = conn
        self._projection = projection

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
        changed: list[bool] = []
        try:
            async with self._conn.transaction(), self._conn.cursor() as cur:
                for item in items:
                    await cur.execute(INSERT_AUDIT_SQL, audit_params(item))
                    await cur.execute(FOLD_SQL, fold_params(item.event))
                    changed.append(cur.rowcount == 1)
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
