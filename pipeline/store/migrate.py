"""Versioned migrations, applied by ``pipeline migrate``.

Idempotent and safe to run concurrently (an advisory lock serialises runners) and while
the pipeline runs (each migration is one short transaction).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from importlib import resources

from pipeline.domain.errors import StoreError
from pipeline.store.db import connected

_LOCK_KEY = 7_340_221_001  # advisory lock id reserved for migrations


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    out = []
    for entry in resources.files("pipeline.store.migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            out.append(Migration(version, entry.name, entry.read_text()))
    out.sort(key=lambda m: m.version)
    _refuse_duplicate_versions(out)
    return out


def _refuse_duplicate_versions(migrations: list[Migration]) -> None:
    # schema_migrations is keyed by version: a second file with an applied number would be
    # skipped silently (two branches that each add the next number, say).
    for a, b in itertools.pairwise(migrations):
        if a.version == b.version:
            raise StoreError(f"two migrations share version {a.version}: {a.name}, {b.name}")


def migrate(database_url: str) -> list[str]:
    """Apply what is missing; returns the names applied (empty when up to date)."""
    applied: list[str] = []
    with connected(database_url, what="migration failed", autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            for m in available():
                if m.version in done:
                    continue
                with conn.transaction():
                    conn.execute(m.sql.encode())
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (m.version, m.name),
                    )
                applied.append(m.name)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied
