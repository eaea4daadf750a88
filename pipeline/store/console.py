"""SQL only the operator console asks: outcomes per minute, the dead-letter list, search.

Everything the CLI also shows comes from the CLI's own stores (``status_store`` for counts and
retry, ``history_store`` for one propagation, ``lag``/``outbox`` for lag and backlog,
``replay_store`` for the projection lock); this module adds what no command needs. Each query
is served by an index of migration 0004, so a page stays fast with millions of rows. Runs on a
synchronous connection the caller owns; driver errors become ``StoreError`` here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from pipeline.domain.events import Outcome
from pipeline.store.db import translated
from pipeline.store.rowstate import STATE_SQL

# The chart's window: the last 60 whole minutes, the current one included.
OUTCOMES_PER_MINUTE_SQL = """
SELECT date_trunc('minute', occurred_at) AS minute, outcome, count(*)
FROM propagation_audit
WHERE occurred_at >= date_trunc('minute', now()) - interval '59 minutes'
GROUP BY 1, 2
ORDER BY 1, 2
"""

WINDOW_START_SQL = "SELECT date_trunc('minute', now()) - interval '59 minutes'"

# Two shapes, each walking an index newest first and stopping at a page. The terminal audit
# row of a dead letter carries why (dead_letter_reason) and, after unexpected skips, the skip's
# bucket; the outbox row keeps only the last reason's text. Its occurred_at is the row's
# failed_at (the fold copies it), which ties a row to its latest dead-letter event.
_COLUMNS = """
SELECT p.id, p.kind::text AS kind, p.team_id, p.resource_type, p.resource_id, p.attempts,
       p.failed_at, p.last_outcome, p.last_error, p.last_skip_reason,
       a.dead_letter_reason, a.skip_reason_bucket
"""
_DEAD_OUTCOMES = "('dead_lettered', 'unknown_kind_dead_lettered')"

# Unfiltered or by kind and time: from the outbox's failed_at indexes.
DEAD_LETTERS_SQL = f"""
{_COLUMNS}
FROM pending_propagations p
LEFT JOIN LATERAL (
    SELECT dead_letter_reason, skip_reason_bucket FROM propagation_audit a
    WHERE a.propagation_id = p.id AND a.outcome IN {_DEAD_OUTCOMES}
    ORDER BY a.attempt DESC
    LIMIT 1
) a ON true
WHERE p.failed_at IS NOT NULL {{filters}}
ORDER BY p.failed_at DESC, p.id DESC
LIMIT {{limit}}
"""

# By reason or skip bucket: from the audit's dead-letter indexes (0004), so a filter that
# matches few or none reads few, instead of checking every dead letter's audit row.
# OFFSET 0 keeps the row lookup a subquery: joined flat, the planner misjudges the failed_at
# match and sorts every candidate instead of walking the index in order.
DEAD_LETTERS_BY_AUDIT_SQL = f"""
{_COLUMNS}
FROM propagation_audit a
CROSS JOIN LATERAL (
    SELECT * FROM pending_propagations p
    WHERE p.id = a.propagation_id AND p.failed_at = a.occurred_at
    OFFSET 0
) p
WHERE a.outcome IN {_DEAD_OUTCOMES} {{filters}}
ORDER BY a.occurred_at DESC, a.propagation_id DESC
LIMIT {{limit}}
"""

# Keyset paging: the next page starts after the last row shown (failed_at, id).
AFTER_SQL = "({time}, {id}) < (SELECT failed_at, id FROM pending_propagations WHERE id = {after})"

SEARCH_COLUMNS = f"""
SELECT id, kind::text AS kind, team_id, resource_type, resource_id, attempts, created_at,
       {STATE_SQL} AS state
FROM pending_propagations
"""

# A team, a resource id, or a Kafka key team:type:id; newest first, each arm on its index.
SEARCH_SQL = f"""
({SEARCH_COLUMNS} WHERE team_id = %(q)s ORDER BY id DESC LIMIT %(limit)s)
UNION
({SEARCH_COLUMNS} WHERE resource_id = %(q)s ORDER BY id DESC LIMIT %(limit)s)
UNION
({SEARCH_COLUMNS} WHERE resource_id = %(rid)s AND team_id = %(team)s AND resource_type = %(rtype)s
 ORDER BY id DESC LIMIT %(limit)s)
ORDER BY id DESC
LIMIT %(limit)s
"""

CHART_OUTCOMES = tuple(o.value for o in Outcome)


@dataclass(frozen=True, slots=True)
class OutcomeSeries:
    """Counts per minute for each outcome, aligned on ``minutes`` (oldest first, 60 of them)."""

    minutes: list[datetime]
    counts: dict[str, list[int]]


@dataclass(frozen=True, slots=True)
class DeadLetterFilter:
    kind: str | None = None
    reason: str | None = None  # dead_letter_reason
    bucket: str | None = None  # skip_reason_bucket
    since: datetime | None = None
    until: datetime | None = None
    after: int | None = None  # id of the last row of the previous page
    limit: int = 50

    def query(self) -> tuple[sql.Composed, dict[str, Any]]:
        # Only the conditions asked for go into the statement, so each shape gets its own
        # plan (an "x IS NULL OR ..." catch-all would defeat the indexes).
        by_audit = bool(self.reason or self.bucket)
        time, id_ = ("a.occurred_at", "a.propagation_id") if by_audit else ("p.failed_at", "p.id")
        conds: list[sql.Composable] = []
        params: dict[str, Any] = {}
        for name, condition in (
            ("kind", "p.kind = %(kind)s::propagation_kind"),
            ("reason", "a.dead_letter_reason = %(reason)s"),
            ("bucket", "a.skip_reason_bucket = %(bucket)s"),
            ("since", f"{time} >= %(since)s"),
            ("until", f"{time} < %(until)s"),
        ):
            value = getattr(self, name)
            if value:
                conds.append(sql.SQL(condition))
                params[name] = value
        if self.after is not None:
            after = AFTER_SQL.format(time=time, id=id_, after="{after}")
            conds.append(sql.SQL(after).format(after=sql.Literal(self.after)))
        filters = sql.SQL("").join(sql.SQL(" AND ") + c for c in conds)
        statement = sql.SQL(DEAD_LETTERS_BY_AUDIT_SQL if by_audit else DEAD_LETTERS_SQL).format(
            filters=filters, limit=sql.Literal(self.limit + 1)
        )
        return statement, params


@dataclass(frozen=True, slots=True)
class DeadLetterPage:
    rows: list[dict[str, Any]]
    next_after: int | None  # None: this is the last page
    filters: DeadLetterFilter = field(default_factory=DeadLetterFilter)


def outcomes_per_minute(conn: psycopg.Connection[Any]) -> OutcomeSeries:
    with translated("outcomes per minute query failed"):
        start_row = conn.execute(WINDOW_START_SQL).fetchone()
        rows = conn.execute(OUTCOMES_PER_MINUTE_SQL).fetchall()
    assert start_row is not None
    minutes = [start_row[0] + timedelta(minutes=i) for i in range(60)]
    index = {m: i for i, m in enumerate(minutes)}
    counts = {o: [0] * 60 for o in CHART_OUTCOMES}
    for minute, outcome, n in rows:
        if minute in index and outcome in counts:
            counts[outcome][index[minute]] = int(n)
    return OutcomeSeries(minutes, counts)


def dead_letters(conn: psycopg.Connection[Any], f: DeadLetterFilter) -> DeadLetterPage:
    statement, params = f.query()
    with translated("dead-letter query failed"), conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(statement, params).fetchall()
    more = len(rows) > f.limit
    rows = rows[: f.limit]
    return DeadLetterPage(rows, int(rows[-1]["id"]) if more else None, f)


def search(conn: psycopg.Connection[Any], text: str, limit: int = 50) -> list[dict[str, Any]]:
    """Propagations of a team, a resource id, or a ``team:type:id`` key, newest first."""
    team, _, rest = text.partition(":")
    rtype, _, rid = rest.partition(":")
    params = {"q": text, "team": team, "rtype": rtype, "rid": rid or None, "limit": limit}
    with translated("search failed"), conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(SEARCH_SQL, params).fetchall()
