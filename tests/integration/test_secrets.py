"""Secrets never show up in logs, metrics, error messages or ``pipeline dev status``.

Components run with a sentinel SASL password and a Postgres URL holding a sentinel password;
they do some work, then fail in the ways operators meet (wrong password, bad configuration,
unreachable or malformed database URL), and everything they produced is searched for the
sentinels.
"""

from __future__ import annotations

import functools
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from certs import sasl_env, sasl_ssl_broker
from harness import Pipeline, clean_env, cli

from pipeline.devtools.fake_provisioner import FakeProvisioner, Rule
from pipeline.devtools.stack.kafka import KafkaBroker
from pipeline.store.outbox import enqueue

pytestmark = pytest.mark.integration

SASL_SECRET = "sentinel-8f3c1e-hunter2"
WRONG_SECRET = "sentinel-wrong-77e1d0-hunter2"
PG_SECRET = "sentinel-pg-4a9d21-hunter2"
SENTINELS = (SASL_SECRET, WRONG_SECRET, PG_SECRET)


@pytest.fixture(scope="module")
def sasl_broker(
    tmp_path_factory: pytest.TempPathFactory, stack_cache_dir: Path, certs: Path
) -> Iterator[KafkaBroker]:
    # SASL_SSL without client certificates: the other Kafka security test requires them.
    workdir = tmp_path_factory.mktemp("kafka-sasl")
    with sasl_ssl_broker(
        workdir, stack_cache_dir, certs, SASL_SECRET, require_client_cert=False
    ) as broker:
        yield broker


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username}:{password}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def assert_no_sentinel(outputs: dict[str, str]) -> None:
    leaks = {
        where: [s for s in SENTINELS if s in text]
        for where, text in outputs.items()
        if any(s in text for s in SENTINELS)
    }
    assert not leaks, f"secrets leaked into: {leaks}"


def test_secrets_never_leak(
    sasl_broker: KafkaBroker,
    certs: Path,
    database_url: str,
    topic_prefix: str,
    provisioner: FakeProvisioner,
    tmp_path: Path,
) -> None:
    outputs: dict[str, str] = {}
    secret_url = with_password(database_url, PG_SECRET)  # trust auth: any password connects
    provisioner.set_rules([Rule(match="err-*", action="error", code="PERMISSION_DENIED")])

    # 1. Real work over SASL_SSL, with the secret-bearing URL, plus failing provisioner calls.
    sasl_pipeline = functools.partial(
        Pipeline,
        database_url=secret_url,
        bootstrap=sasl_broker.secure_bootstrap,
        provisioner_addr=str(provisioner.address),
        prefix=topic_prefix,
    )
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    p = sasl_pipeline(
        logdir=work_dir,
        max_attempts=2,
        extra_env={
            **sasl_env(certs, SASL_SECRET, client_cert=False),
            "PIPELINE_LOG_LEVEL": "DEBUG",
        },
    )
    p.migrate()
    with psycopg.connect(database_url) as conn:
        ids = [
            enqueue(conn, "tier_elevation", "team-x", "postgres", rid, {"target_tier": "pro"})
            for rid in ("ok-1", "ok-2", "err-1")
        ]
        conn.commit()
    try:
        p.start()
        rows = p.wait_terminal(ids, timeout=120)
        for name in ("relay", "worker", "projector"):
            url = f"http://127.0.0.1:{p.ports[name]}/metrics"
            outputs[f"{name} /metrics"] = urllib.request.urlopen(url, timeout=5).read().decode()
    finally:
        p.stop()
    assert [rows[i]["last_outcome"] for i in ids] == ["applied", "applied", "dead_lettered"]

    # 2. The same components with a wrong SASL password: they exit with an error.
    wrong_dir = tmp_path / "wrong"
    wrong_dir.mkdir()
    wrong = sasl_pipeline(
        logdir=wrong_dir, extra_env=sasl_env(certs, WRONG_SECRET, client_cert=False)
    )
    wrong.start()
    try:
        codes = {name: proc.wait(timeout=60) for name, proc in wrong.procs.items()}
    finally:
        wrong.stop()
    assert codes == {"relay": 2, "worker": 2, "projector": 2}, wrong.logs()

    # 3. A relay whose database is unreachable keeps failing batches and logging why; a
    # malformed URL (libpq's parse errors quote it whole) is refused at start-up.
    env = {**clean_env(), **sasl_env(certs, SASL_SECRET, client_cert=False)}
    env.update(
        PIPELINE_KAFKA_BOOTSTRAP=sasl_broker.secure_bootstrap,
        PIPELINE_PROVISIONER_ADDR="127.0.0.1:1",
        PIPELINE_TOPIC_PREFIX=topic_prefix,
        PIPELINE_METRICS_PORT="0",
    )
    log = tmp_path / "relay-unreachable-db.log"
    with log.open("wb") as f:
        relay = subprocess.Popen(
            [sys.executable, "-m", "pipeline.ops.cli", "relay"],
            env={**env, "PIPELINE_DATABASE_URL": f"postgresql://u:{PG_SECRET}@127.0.0.1:1/x"},
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while "batch_failed" not in log.read_text() and time.monotonic() < deadline:
            assert relay.poll() is None, log.read_text()
            time.sleep(0.2)
    finally:
        relay.terminate()
        relay.wait(timeout=30)
    assert '"error":"cannot connect to Postgres: connection failed' in log.read_text()
    malformed = f"postgresql://postgres:{PG_SECRET}@[::1/nowhere"
    for command in ("relay", "migrate"):
        res = cli(command, env={**env, "PIPELINE_DATABASE_URL": malformed})
        assert (res.returncode, res.stderr) == (
            2,
            f"pipeline {command}: invalid configuration:\n  PIPELINE_DATABASE_URL cannot be "
            "parsed as a Postgres URL or conninfo string (value not shown: it may hold a "
            "password)\n",
        )

    # 4. Invalid configuration: every problem is listed, no secret is echoed.
    bad = {
        **env,
        "PIPELINE_DATABASE_URL": f"mysql://root:{PG_SECRET}@db/x",
        "PIPELINE_KAFKA_SASL_MECHANISM": "NOPE",
        "PIPELINE_BACKOFF_SCALE": "fast",
    }
    res = cli("relay", "--kafka-sasl-password", SASL_SECRET, env=bad)
    assert res.returncode == 2
    assert res.stderr.startswith("pipeline relay: invalid configuration:"), res.stderr
    outputs["relay with bad config (stdout+stderr)"] = res.stdout + res.stderr

    # 5. `pipeline dev` with an external database URL that holds a password.
    dev_env = {**clean_env(), "PIPELINE_DATABASE_URL": secret_url}
    state = tmp_path / "dev"
    up = cli("dev", "up", "--state-dir", str(state), env=dev_env, timeout=180)
    try:
        assert up.returncode == 0, up.stderr
        status = cli("dev", "status", "--state-dir", str(state), env=dev_env)
        assert status.returncode == 0, status.stderr
        assert "postgres\t-\tpostgresql://postgres:***@" in status.stdout, status.stdout
    finally:
        down = cli("dev", "down", "--state-dir", str(state), env=dev_env)
    outputs["dev up"] = up.stdout + up.stderr
    outputs["dev status"] = status.stdout + status.stderr
    outputs["dev down"] = down.stdout + down.stderr

    logs = [*tmp_path.rglob("*.log"), sasl_broker.log_path]
    for path in logs:
        outputs[str(path)] = path.read_text(errors="replace")
    assert len([p for p in logs if p.name == "relay.log"]) == 2
    assert_no_sentinel(outputs)
