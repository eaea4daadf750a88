"""SQL of the operator commands: ``pipeline status`` counts and ``pipeline retry``.

Runs on a synchronous connection the caller owns; every driver error becomes a
``StoreError`` here, and a refused retry a ``RetryRefused`` with a message for operators.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from pipeline.domain.errors import PipelineError
from pipeline.domain.rowstate import STATES
from pipeline.store.db import translated
from pipeline.store.rowstate import STATE_SQL

COUNTS_SQL = f"""
SELECT kind::text, {STATE_SQL} AS state, count(*)
FROM pending_propagations
GROUP BY 1, 2
ORDER BY 1, 2
"""

OLDEST_PENDING_SQL = f"""
SELECT id, extract(epoch FROM now() - created_at)
FROM pending_propagations
WHERE {STATE_SQL} = 'pending'
ORDER BY created_at, id
LIMIT 1
"""

RECENT_DEAD_SQL = """
SELECT count(*) FROM pending_propagations WHERE failed_at > now() - %s::interval
"""

LOCK_ROW_SQL = f"""
SELECT id, {STATE_SQL} AS state, attempts, team_id, resource_type, resource_id
FROM pending_propagations
WHERE id = %s
FOR UPDATE
"""

LATER_APPLIED_SQL = """
SELECT id FROM pending_propagations
WHERE team_id = %s AND resource_type = %s AND resource_id = %s
  AND id > %s AND applied_at IS NOT NULL
ORDER BY id
LIMIT 10
"""

# Attempts keep counting (attempt numbers are de-duplication keys downstream); the budget
# restarts from the attempts already made.
RETRY_DEAD_SQL = """
UPDATE pending_propagations
SET failed_at = NULL,
    last_outcome = NULL,
    next_attempt_at = now(),
    attempt_budget_base = attempts
WHERE id = %s
"""

RETRY_OPEN_SQL = """
UPDATE pending_propagations SET next_attempt_at = now() WHERE id = %s
"""

INSERT_ACTION_SQL = """
INSERT INTO propagation_operator_actions (propagation_id, action, reason, actor)
VALUES (%s, %s, %s, %s)
RETURNING id, at
"""

ACTIONS_SQL = """
SELECT id, action, reason, actor, at FROM propagation_operator_actions
WHERE propagation_id = %s ORDER BY at, id
"""


class RetryRefused(PipelineError):
    """``pipeline retry`` was asked for something it must not do (the message says why)."""


# What an operator action records of who and why, at most (the console's form says the same).
MAX_ACTOR_CHARS = 100
MAX_REASON_CHARS = 500


def note_problem(actor: str, reason: str | None) -> str | None:
    """Why an operator action's actor or reason cannot be recorded as given, or None."""
    if len(actor) > MAX_ACTOR_CHARS:
        return f"the actor is {len(actor)} characters long; at most {MAX_ACTOR_CHARS} are kept"
    if reason is not None and len(reason) > MAX_REASON_CHARS:
        return f"the reason is {len(reason)} characters long; at most {MAX_REASON_CHARS} are kept"
    return None


@dataclass(frozen=True, slots=True)
class StatusReport:
    # counts[kind][state]; every kind present in the table, every state present per kind
    counts: dict[str, dict[str, int]]
    oldest_pending_id: int | None
    oldest_pending_age_seconds: float
    dead_lettered_last_hour: int

    def totals(self) -> dict[str, int]:
        return {s: sum(by_state[s] for by_state in self.counts.values()) for s in STATES}

    def to_dict(self) -> dict[str, Any]:
        return {
            "totals": self.totals(),
            "by_kind": self.counts,
            "oldest_pending": {
                "id": self.oldest_pending_id,
                "age_seconds": round(self.oldest_pending_age_seconds, 3),
            },
            "dead_lettered_last_hour": self.dead_lettered_last_hour,
        }


@dataclass(frozen=True, slots=True)
class RetryResult:
    propagation_id: int
    previous_state: str
    action: str
    next_attempt: int
    action_id: int
    at: datetime


@dataclass(frozen=True, slots=True)
class OperatorAction:
    id: int
    action: str
    reason: str | None
    actor: str
    at: datetime


def status(conn: psycopg.Connection[Any]) -> StatusReport:
    with translated("status query failed"):
        counts: dict[str, dict[str, int]] = {}
        for kind, state, n in conn.execute(COUNTS_SQL).fetchall():
            counts.setdefault(kind, dict.fromkeys(STATES, 0))[state] = int(n)
        oldest = conn.execute(OLDEST_PENDING_SQL).fetchone()
        dead = conn.execute(RECENT_DEAD_SQL, ("1 hour",)).fetchone()
    assert dead is not None
    return StatusReport(
        counts=counts,
        oldest_pending_id=int(oldest[0]) if oldest else None,
        oldest_pending_age_seconds=max(0.0, float(oldest[1])) if oldest else 0.0,
        dead_lettered_last_hour=int(dead[0]),
    )


def retry(
    conn: psycopg.Connection[Any],
    propagation_id: int,
    *,
    reason: str | None,
    actor: str,
    force: bool = False,
) -> RetryResult:
    """Make a dead-lettered (or stuck) propagation due now, with an audit row; one transaction.

    A dead-lettered row is re-opened with its attempt budget restarted from the attempts
    already made; an open row is made due at once (the relay re-publishes its attempt and the
    processor re-emits or runs it). Refused for unknown ids, applied rows, and (unless
    ``force``) rows whose resource has a later applied propagation, which a late retry of an
    older regrade would silently undo.
    """
    too_long = note_problem(actor, reason)
    if too_long is not None:
        raise RetryRefused(too_long)
    with translated(f"retry of propagation {propagation_id} failed"), conn.transaction():
        row = conn.execute(LOCK_ROW_SQL, (propagation_id,)).fetchone()
        if row is None:
            raise RetryRefused(f"propagation {propagation_id} does not exist")
        _id, state, attempts, team_id, resource_type, resource_id = row
        if state == "applied":
            raise RetryRefused(
                f"propagation {propagation_id} is applied; there is nothing to retry"
            )
        later = [
            int(r[0])
            for r in conn.execute(
                LATER_APPLIED_SQL, (team_id, resource_type, resource_id, propagation_id)
            ).fetchall()
        ]
        if later and not force:
            raise RetryRefused(
                f"propagation {propagation_id} has later applied propagations for the "
                f"same resource (ids {', '.join(map(str, later))}); retrying it could undo "
                "them. Pass --force if that is what you want."
            )
        if state == "dead_lettered":
            action = "retry_dead_lettered"
            conn.execute(RETRY_DEAD_SQL, (propagation_id,))
        else:
            action = "retry_open"
            conn.execute(RETRY_OPEN_SQL, (propagation_id,))
        audit = conn.execute(INSERT_ACTION_SQL, (propagation_id, action, reason, actor)).fetchone()
    assert audit is not None
    return RetryResult(
        propagation_id=propagation_id,
        previous_state=str(state),
        action=action,
        next_attempt=int(attempts) + 1,
        action_id=int(audit[0]),
        at=audit[1],
    )


def operator_actions(conn: psycopg.Connection[Any], propagation_id: int) -> list[OperatorAction]:
    """The operator actions taken on one propagation, oldest first (for ``pipeline show``)."""
    with translated("reading operator actions failed"):
        rows = conn.execute(ACTIONS_SQL, (propagation_id,)).fetchall()
    return [OperatorAction(int(i), a, r, actor, at) for i, a, r, actor, at in rows]
