"""SQL of ``pipeline show``: one propagation's row and its audit trail, read-only."""

from __future__ import annotations

from typing import Any

from psycopg.rows import dict_row

from pipeline.store.db import connected

ROW_SQL = """
SELECT id, kind::text AS kind, team_id, resource_type, resource_id, payload, attempts,
       published_attempt, published_at, next_attempt_at, applied_at, failed_at, last_outcome,
       last_error, last_skip_reason, created_at
FROM pending_propagations WHERE id = %s
"""

AUDIT_SQL = """
SELECT event_id::text AS event_id, audit_kind, outcome, attempt, skip_reason,
       skip_reason_bucket, error, dead_letter_reason, occurred_at, source_topic,
       source_partition, source_offset
FROM propagation_audit WHERE propagation_id = %s
ORDER BY attempt, occurred_at, source_offset
"""

CONNECT_TIMEOUT_SECONDS = 5


def load(
    database_url: str, propagation_id: int
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The row (None when there is no such propagation) and its audit rows, oldest first."""
    # Bounded: a Postgres that accepts but never answers must fail `pipeline show` and the
    # console's propagation page with an error, not hang them (and a worker thread).
    with connected(
        database_url,
        what=f"cannot read propagation {propagation_id}",
        row_factory=dict_row,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
    ) as conn:
        row = conn.execute(ROW_SQL, (propagation_id,)).fetchone()
        audit = conn.execute(AUDIT_SQL, (propagation_id,)).fetchall()
    return row, audit
