"""Migration 0005 backfills each row's first outcome position from its audit rows.

Rows folded before the migration have no first_outcome_* yet; without the backfill every
one of them would count as ``unknown_provenance`` and every rebuild would refuse.
"""

from __future__ import annotations

import uuid

import psycopg
import pytest

from pipeline.store.migrate import available, migrate

pytestmark = pytest.mark.integration

AUDIT = """
INSERT INTO propagation_audit (event_id, propagation_id, audit_kind, outcome, attempt,
    occurred_at, source_topic, source_partition, source_offset)
VALUES (%s, %s, 'outcome', %s, %s, now(), %s, %s, %s)
"""


def test_backfill_from_the_earliest_audit_row(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        # The schema as it was before 0005, recorded as migrate() records it.
        conn.execute(
            "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for m in available():
            if m.version < 5:
                conn.execute(m.sql.encode())
                conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (m.version, m.name),
                )
        ids = [
            conn.execute(
                "INSERT INTO pending_propagations (kind, team_id, resource_type, resource_id)"
                " VALUES ('tier_elevation', 't', 'postgres', %s) RETURNING id",
                (f"r{i}",),
            ).fetchone()[0]  # type: ignore[index]
            for i in range(3)
        ]
        # Row 0: two attempts, audit rows inserted out of order; row 1: another prefix's
        # topic; row 2: no outcome yet.
        for pid, outcome, attempt, topic, part, off in (
            (ids[0], "applied", 2, "a-propagation-outcomes", 1, 40),
            (ids[0], "retrying", 1, "a-propagation-outcomes", 1, 17),
            (ids[1], "applied", 1, "b-propagation-outcomes", 0, 3),
        ):
            conn.execute(AUDIT, (uuid.uuid4(), pid, outcome, attempt, topic, part, off))
    assert migrate(database_url) == ["0005_outcome_provenance.sql"]
    with psycopg.connect(database_url) as conn:
        got = conn.execute(
            "SELECT id, first_outcome_topic, first_outcome_partition, first_outcome_offset"
            " FROM pending_propagations ORDER BY id"
        ).fetchall()
    assert got == [
        (ids[0], "a-propagation-outcomes", 1, 17),
        (ids[1], "b-propagation-outcomes", 0, 3),
        (ids[2], None, None, None),
    ]
