"""The pipeline over Kafka SASL_SSL (SCRAM-SHA-512 plus client certificates) and gRPC mTLS.

A broker of its own serves a SASL_SSL listener that requires both a SCRAM login and a client
certificate; its PLAINTEXT listener stays for the broker itself and lets this test read the
topics back. The provisioner is a fake that requires a client certificate too.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError
from certs import sasl_env, sasl_ssl_broker
from harness import Pipeline, dedupe, read_topic

from pipeline.devtools.fake_provisioner import FakeProvisioner
from pipeline.devtools.stack import procs
from pipeline.devtools.stack.kafka import KafkaBroker
from pipeline.domain.events import idempotency_key
from pipeline.runtime.config import Config, Secret
from pipeline.store.outbox import enqueue

pytestmark = pytest.mark.integration

PASSWORD = "svc-pw-3b9d0a"


@pytest.fixture(scope="module")
def secure_broker(
    tmp_path_factory: pytest.TempPathFactory, stack_cache_dir: Path, certs: Path
) -> Iterator[KafkaBroker]:
    workdir = tmp_path_factory.mktemp("kafka-secure")
    with sasl_ssl_broker(
        workdir, stack_cache_dir, certs, PASSWORD, require_client_cert=True
    ) as broker:
        yield broker


def provisioner_tls_env(certs: Path) -> dict[str, str]:
    return {
        "PIPELINE_PROVISIONER_TLS_CA": str(certs / "ca.pem"),
        "PIPELINE_PROVISIONER_TLS_CERT": str(certs / "client.pem"),
        "PIPELINE_PROVISIONER_TLS_KEY": str(certs / "client.key"),
    }


def test_pipeline_over_sasl_ssl_and_mtls_provisioner(
    secure_broker: KafkaBroker,
    certs: Path,
    database_url: str,
    topic_prefix: str,
    tmp_path: Path,
) -> None:
    fake = FakeProvisioner(seed=1)
    addr = fake.start(
        tls_cert=str(certs / "server.pem"),
        tls_key=str(certs / "server.key"),
        client_ca=str(certs / "ca.pem"),
    )
    p = Pipeline(
        database_url=database_url,
        bootstrap=secure_broker.secure_bootstrap,
        provisioner_addr=addr,
        prefix=topic_prefix,
        logdir=tmp_path,
        extra_env={**sasl_env(certs, PASSWORD, client_cert=True), **provisioner_tls_env(certs)},
    )
    p.migrate()
    with psycopg.connect(database_url) as conn:
        ids = [
            enqueue(
                conn, "tier_elevation", "team-s", "postgres", f"sec-{i}", {"target_tier": "pro"}
            )
            for i in range(5)
        ]
        conn.commit()
    try:
        p.start()
        rows = p.wait_terminal(ids, timeout=120)
    finally:
        p.stop()
        fake.stop()
    assert [(rows[i]["last_outcome"], rows[i]["attempts"]) for i in ids] == [("applied", 1)] * 5
    assert all(rows[i]["applied_at"] is not None for i in ids)
    # Every call reached the provisioner over mutual TLS, once per propagation.
    assert fake.applied_keys() == {idempotency_key(i) for i in ids}
    # The topics were written through the secure listener; read them back over PLAINTEXT.
    outcomes = asyncio.run(
        read_topic(secure_broker.bootstrap, f"{topic_prefix}propagation-outcomes")
    )
    assert {i: [e["outcome"] for e in dedupe(outcomes[i])] for i in ids} == {
        i: ["applied"] for i in ids
    }
    for name in ("relay", "worker", "projector"):
        assert "SaslAuthenticationFailed" not in (tmp_path / f"{name}.log").read_text()


def test_wrong_password_fails_fast_with_a_clear_error(
    secure_broker: KafkaBroker, certs: Path, database_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    p = Pipeline(
        database_url=database_url,
        bootstrap=secure_broker.secure_bootstrap,
        provisioner_addr="127.0.0.1:1",
        prefix=topic_prefix,
        logdir=tmp_path,
        extra_env=sasl_env(certs, "not-the-password", client_cert=True),
    )
    p.start()
    codes = {}
    try:
        for name, proc in p.procs.items():
            try:
                codes[name] = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                codes[name] = None  # a hang: reported below with the logs
    finally:
        p.stop()
    assert codes == {"relay": 2, "worker": 2, "projector": 2}, p.logs()
    for name, command in (("relay", "relay"), ("worker", "worker"), ("projector", "project")):
        out = (tmp_path / f"{name}.log").read_text()
        # The first Kafka question each one asks (topics, or the worker's replication check).
        assert f"pipeline {command}: could not " in out, out
        assert "Authentication failed during authentication due to invalid credentials" in out, out
        assert "check PIPELINE_KAFKA_SASL_USERNAME, _PASSWORD and _MECHANISM" in out, out


async def test_sasl_without_client_certificate_is_refused(
    secure_broker: KafkaBroker, certs: Path
) -> None:
    env = sasl_env(certs, PASSWORD, client_cert=False)
    env["PIPELINE_KAFKA_BOOTSTRAP"] = secure_broker.secure_bootstrap
    cfg = Config.from_env(env, required=("kafka_bootstrap",))
    assert cfg.kafka_sasl_password == Secret(PASSWORD)
    admin = AIOKafkaAdminClient(**cfg.kafka_client_kwargs(), request_timeout_ms=10_000)
    with pytest.raises(KafkaConnectionError):
        await admin.start()
    await admin.close()
    # The same settings with the client certificate are let in.
    with_cert = cfg.replace(
        kafka_ssl_certfile=str(certs / "client.pem"), kafka_ssl_keyfile=str(certs / "client.key")
    )
    admin = AIOKafkaAdminClient(**with_cert.kafka_client_kwargs(), request_timeout_ms=10_000)
    try:
        await admin.start()
        cluster = await admin.describe_cluster()
    finally:
        await admin.close()
    assert [b["port"] for b in cluster["brokers"]] == [secure_broker.secure_port]
    assert cluster["brokers"][0]["host"] == procs.LOCALHOST
