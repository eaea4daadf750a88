"""Least privilege in Postgres: each component under its own role, with only its grants."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from harness import Pipeline, clean_env, cli

from pipeline.store.migrate import migrate
from pipeline.store.outbox import enqueue
from pipeline.store.roles import ROLES, create_roles, login_user, password_variable

pytestmark = pytest.mark.integration

# Distinct per role so a test would notice one role logging in as another.
PASSWORDS = {spec.name: f"pw-{spec.component}-{uuid.uuid4().hex[:8]}" for spec in ROLES}


def as_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    host = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


def url_for(database_url: str, role: str) -> str:
    spec = next(s for s in ROLES if s.name == role)
    return as_user(database_url, login_user(spec), PASSWORDS[role])


def create_roles_with_cli(database_url: str) -> str:
    env = {**clean_env(), "PIPELINE_DATABASE_URL": database_url}
    env.update({password_variable(spec): PASSWORDS[spec.name] for spec in ROLES})
    res = cli("migrate", "--create-roles", env=env)
    assert res.returncode == 0, res.stderr
    for password in PASSWORDS.values():
        assert password not in res.stdout + res.stderr
    return res.stdout


@pytest.fixture
def roles_db(database_url: str) -> str:
    migrate(database_url)
    create_roles(database_url, PASSWORDS)
    with psycopg.connect(database_url) as conn:
        enqueue(conn, "tier_elevation", "team-r", "postgres", "db-1", {"target_tier": "pro"})
        conn.commit()
    return database_url


def test_relay_role_cannot_set_applied_at(roles_db: str) -> None:
    with psycopg.connect(url_for(roles_db, "pipeline_relay"), autocommit=True) as conn:
        # What the relay does is allowed ...
        cur = conn.execute(
            "UPDATE pending_propagations SET published_attempt = 1, published_at = now()"
        )
        assert cur.rowcount == 1
        # ... stamping a propagation applied is not.
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as denied:
            conn.execute("UPDATE pending_propagations SET applied_at = now()")
        assert str(denied.value).startswith("permission denied for table pending_propagations")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO propagation_audit SELECT * FROM propagation_audit")


def test_projector_role_cannot_enqueue(roles_db: str) -> None:
    with psycopg.connect(url_for(roles_db, "pipeline_projector")) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as denied:
            conn.execute(
                "INSERT INTO pending_propagations (kind, team_id, resource_type, resource_id)"
                " VALUES ('tier_elevation', 'team-r', 'postgres', 'db-2')"
            )
        assert str(denied.value) == "permission denied for table pending_propagations"


def test_enqueuer_and_operator_roles(roles_db: str) -> None:
    with psycopg.connect(url_for(roles_db, "pipeline_enqueuer")) as conn:
        pid = enqueue(conn, "tier_demotion", "team-r", "redis", "r-1", {"target_tier": "free"})
        conn.commit()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT payload FROM pending_propagations")
    with psycopg.connect(url_for(roles_db, "pipeline_operator"), autocommit=True) as conn:
        row = conn.execute("SELECT kind::text FROM pending_propagations WHERE id = %s", (pid,))
        assert row.fetchone() == ("tier_demotion",)
        for table in ("propagation_audit", "projection_checkpoints", "schema_migrations"):
            conn.execute(f"SELECT count(*) FROM {table}")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE pending_propagations SET applied_at = now()")


def test_each_component_under_its_own_role_reaches_applied(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    p = make_pipeline()
    out = create_roles_with_cli(p.database_url)
    assert out.splitlines()[-1] == "roles: " + ", ".join(
        n for spec in ROLES for n in (spec.name, login_user(spec))
    )
    # Running it again changes nothing and still succeeds.
    create_roles_with_cli(p.database_url)
    p.component_env = {
        "relay": {"PIPELINE_DATABASE_URL": url_for(p.database_url, "pipeline_relay")},
        "projector": {"PIPELINE_DATABASE_URL": url_for(p.database_url, "pipeline_projector")},
        # The worker never talks to Postgres: a URL that cannot connect proves it.
        "worker": {"PIPELINE_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"},
    }
    with psycopg.connect(url_for(p.database_url, "pipeline_enqueuer")) as conn:
        ids = [
            enqueue(conn, "tier_elevation", "team-r", "postgres", f"db-{i}", {"target_tier": "pro"})
            for i in range(5)
        ]
        conn.commit()
    p.start()
    rows = p.wait_terminal(ids, timeout=120)
    assert [(rows[i]["last_outcome"], rows[i]["attempts"]) for i in ids] == [("applied", 1)] * 5
    with psycopg.connect(p.database_url) as conn:
        audit = conn.execute("SELECT count(*) FROM propagation_audit").fetchone()
    assert audit == (5,)
    for name in ("relay", "projector"):
        log = (p.logdir / f"{name}.log").read_text()
        assert "permission denied" not in log, log
