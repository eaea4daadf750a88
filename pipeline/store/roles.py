"""Least-privilege Postgres roles per component: the SQL of ``pipeline migrate --create-roles``.

Each component role is a NOLOGIN group holding exactly the grants that component's SQL needs,
so a compromised or buggy relay cannot stamp a propagation applied and a projector cannot
invent propagations. LOGIN users are optional members of those groups, with passwords taken
from the environment (never printed, never in an error message).

Grants are re-applied from scratch on every run (revoke, then grant), so a run after a new
migration covers new columns and tables, and a narrowed grant list really narrows. The
migrations themselves keep running as the owner.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from pipeline.domain.errors import StoreError
from pipeline.store.db import connected

OUTBOX = "pending_propagations"
AUDIT = "propagation_audit"
CHECKPOINTS = "projection_checkpoints"
ACTIONS = "propagation_operator_actions"
MIGRATIONS = "schema_migrations"
TABLES = (OUTBOX, AUDIT, CHECKPOINTS, ACTIONS, MIGRATIONS)
_LOCK_KEY = 7_340_221_002  # advisory lock id reserved for role management


@dataclass(frozen=True, slots=True)
class RoleSpec:
    name: str
    component: str  # the suffix of its login user's password variable
    grants: tuple[str, ...]  # GRANT statements, "{role}" and "{schema}" filled in
    sequences_of: tuple[str, ...] = ()  # tables whose identity sequence it may use


# Column lists mirror the statements in outbox.py, projections/store.py and status_store.py.
# SELECT on the outbox is needed by every role that updates it: UPDATE ... WHERE reads
# columns, and the relay's FOR UPDATE needs UPDATE on at least one column.
ROLES: tuple[RoleSpec, ...] = (
    RoleSpec(
        "pipeline_relay",
        "relay",
        (
            f"GRANT SELECT ON {OUTBOX} TO {{role}}",
            # Only what the relay stamps: it can never set applied_at or failed_at.
            f"GRANT UPDATE (published_attempt, published_at, next_attempt_at) "
            f"ON {OUTBOX} TO {{role}}",
            # The relay process runs the lag monitor: it reads the projector's offsets.
            f"GRANT SELECT ON {CHECKPOINTS} TO {{role}}",
        ),
    ),
    RoleSpec(
        "pipeline_projector",
        "projector",
        (
            f"GRANT SELECT ON {OUTBOX} TO {{role}}",
            # first_outcome_*: where the row's history starts on the log (migration 0005),
            # which a replay reads to decide what it may reset.
            f"GRANT UPDATE (attempts, last_outcome, last_error, last_skip_reason, applied_at,"
            f" failed_at, next_attempt_at, first_outcome_topic, first_outcome_partition,"
            f" first_outcome_offset) ON {OUTBOX} TO {{role}}",
            # SELECT too: INSERT ... ON CONFLICT (event_id) reads the conflict target.
            f"GRANT SELECT, INSERT ON {AUDIT} TO {{role}}",
            f"GRANT SELECT, INSERT, UPDATE ON {CHECKPOINTS} TO {{role}}",
        ),
    ),
    RoleSpec(
        "pipeline_enqueuer",
        "enqueuer",
        (
            f"GRANT INSERT ON {OUTBOX} TO {{role}}",
            # enqueue() reads back the new id with RETURNING id.
            f"GRANT SELECT (id) ON {OUTBOX} TO {{role}}",
        ),
        sequences_of=(OUTBOX,),
    ),
    RoleSpec(
        "pipeline_operator",
        "operator",
        (
            "GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}",
            # `pipeline retry`: reopen a dead-lettered row with a fresh attempt budget.
            f"GRANT UPDATE (failed_at, last_outcome, next_attempt_at, attempt_budget_base) "
            f"ON {OUTBOX} TO {{role}}",
            f"GRANT INSERT ON {ACTIONS} TO {{role}}",
            # Tables of later migrations are readable without re-running --create-roles.
            "ALTER DEFAULT PRIVILEGES IN SCHEMA {schema} GRANT SELECT ON TABLES TO {role}",
        ),
        sequences_of=(ACTIONS,),
    ),
)

ROLE_NAMES = tuple(r.name for r in ROLES)

_CREATE_GROUP_SQL = """
DO $$
BEGIN
    CREATE ROLE {role} NOLOGIN;
EXCEPTION WHEN duplicate_object THEN
    NULL; -- created earlier (roles are cluster-wide) or by a concurrent run
END
$$
"""

_CREATE_USER_SQL = """
DO $$
BEGIN
    CREATE ROLE {user} LOGIN;
EXCEPTION WHEN duplicate_object THEN
    NULL;
END
$$
"""


def password_variable(spec: RoleSpec) -> str:
    """The environment variable holding the password of ``spec``'s login user."""
    return f"PIPELINE_{spec.component.upper()}_DB_PASSWORD"


def login_user(spec: RoleSpec) -> str:
    return f"{spec.name}_user"


def create_roles(database_url: str, passwords: Mapping[str, str] | None = None) -> list[str]:
    """Create the group roles (and login users for the given passwords); grant; return names.

    ``passwords`` maps a role name (``pipeline_relay``) to its login user's password.
    """
    passwords = passwords or {}
    unknown = sorted(set(passwords) - set(ROLE_NAMES))
    if unknown:
        raise StoreError(f"no such pipeline role(s): {', '.join(unknown)}")
    made: list[str] = []
    # psycopg's messages carry no statement text, so no password can show up in the error.
    with (
        connected(database_url, what="creating roles failed", autocommit=True) as conn,
        conn.transaction(),
    ):
        # Two runs at once would race on the same catalog rows ("tuple concurrently
        # updated"); the lock makes the second wait for the first.
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        schema = _current_schema(conn)
        for spec in ROLES:
            _apply(conn, spec, schema)
            made.append(spec.name)
            password = passwords.get(spec.name)
            if password:
                _login_user(conn, spec, password)
                made.append(login_user(spec))
    return made


def _current_schema(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT current_schema()").fetchone()
    if row is None or row[0] is None:
        raise StoreError("no current schema to grant on")
    return str(row[0])


def _apply(conn: psycopg.Connection[Any], spec: RoleSpec, schema: str) -> None:
    role = sql.Identifier(spec.name)
    schema_id = sql.Identifier(schema)
    conn.execute(sql.SQL(_CREATE_GROUP_SQL).format(role=role))
    existing = [t for t in TABLES if _table_exists(conn, t)]
    # Start from nothing so the grants below are the whole truth (column grants included).
    conn.execute(
        sql.SQL("REVOKE ALL ON {tables} FROM {role}").format(
            tables=sql.SQL(", ").join(sql.Identifier(t) for t in existing), role=role
        )
    )
    conn.execute(
        sql.SQL("GRANT USAGE ON SCHEMA {schema} TO {role}").format(schema=schema_id, role=role)
    )
    for grant in spec.grants:
        conn.execute(sql.SQL(grant).format(role=role, schema=schema_id))
    for table in spec.sequences_of:
        row = conn.execute("SELECT pg_get_serial_sequence(%s, 'id')", (table,)).fetchone()
        if row is None or row[0] is None:
            raise StoreError(f"{table} has no identity sequence; run the migrations first")
        # pg_get_serial_sequence returns the name already quoted as an identifier.
        conn.execute(
            sql.SQL("GRANT USAGE ON SEQUENCE {seq} TO {role}").format(
                seq=sql.SQL(row[0]), role=role
            )
        )


def _table_exists(conn: psycopg.Connection[Any], table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    return bool(row and row[0])


def _login_user(conn: psycopg.Connection[Any], spec: RoleSpec, password: str) -> None:
    user = sql.Identifier(login_user(spec))
    conn.execute(sql.SQL(_CREATE_USER_SQL).format(user=user))
    # A utility statement takes no bind parameters, so the password is a client-side
    # literal; psycopg never puts statement text into its error messages.
    conn.execute(
        sql.SQL("ALTER ROLE {user} LOGIN INHERIT PASSWORD {password}").format(
            user=user, password=sql.Literal(password)
        )
    )
    conn.execute(
        sql.SQL("GRANT {role} TO {user}").format(role=sql.Identifier(spec.name), user=user)
    )
