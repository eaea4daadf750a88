"""The pipeline on a three-node KRaft cluster: replicated topics, and the dev stack's quorum.

The cluster is this module's own (formatted fresh), never the session's single broker.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from harness import Pipeline, clean_env, cli

from pipeline.devtools.fake_provisioner import FakeProvisioner, Rule
from pipeline.devtools.stack.kafka_cluster import KafkaCluster
from pipeline.runtime.exit_codes import ExitCode
from pipeline.store.outbox import enqueue

pytestmark = pytest.mark.integration

GAUGE = "instant_propagation_topic_under_replicated"


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, stack_cache_dir: Path
) -> Iterator[KafkaCluster]:
    c = KafkaCluster(tmp_path_factory.mktemp("cluster"), stack_cache_dir, 3)
    c.start(timeout=180)
    try:
        yield c
    finally:
        c.stop()


async def _described(bootstrap: str, prefix: str) -> dict[str, tuple[list[int], str]]:
    """Straight from the brokers: each prefixed topic's replica counts and min ISR."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(prefix)]
        topics = {t["topic"]: t for t in await admin.describe_topics(names)}
        res = [ConfigResource(ConfigResourceType.TOPIC, n) for n in names]
        min_isr: dict[str, str] = {}
        for resp in await admin.describe_configs(res):
            for _err, _msg, _type, name, entries, *_ in resp.resources:
                min_isr[name] = next(e[1] for e in entries if e[0] == "min.insync.replicas")
    finally:
        await admin.close()
    return {n: ([len(p["replicas"]) for p in topics[n]["partitions"]], min_isr[n]) for n in names}


@pytest.fixture
def pipe(
    cluster: KafkaCluster,
    database_url: str,
    topic_prefix: str,
    provisioner: FakeProvisioner,
    tmp_path: Path,
) -> Iterator[Pipeline]:
    """The pipeline on the cluster, migrated; its components stop when the test ends."""
    p = Pipeline(database_url, cluster.bootstrap, str(provisioner.address), topic_prefix, tmp_path)
    p.migrate()
    try:
        yield p
    finally:
        p.stop()


def _enqueue(url: str, n: int) -> list[int]:
    with psycopg.connect(url) as conn:
        ids = [
            enqueue(conn, "tier_elevation", "team-1", "postgres", f"r-{i}", {"target_tier": "pro"})
            for i in range(n)
        ]
        conn.commit()
    return ids


def test_every_topic_the_pipeline_creates_has_factor_3_and_min_isr_2(
    cluster: KafkaCluster,
    database_url: str,
    topic_prefix: str,
    pipe: Pipeline,
) -> None:
    pipe.start()
    ids = _enqueue(database_url, 30)
    rows = pipe.wait_terminal(ids, timeout=240)
    assert all(rows[i]["applied_at"] is not None for i in ids)
    described = asyncio.run(_described(cluster.bootstrap, topic_prefix))
    group = f"{topic_prefix}propagation-processor"
    assert set(described) == {
        f"{topic_prefix}propagations",
        f"{topic_prefix}propagation-outcomes",
        f"{group}-__assignor-__leader",
    }
    for name, (replicas, min_isr) in described.items():
        assert set(replicas) == {3}, name
        assert min_isr == "2", name
    for component, topic in (("relay", "propagations"), ("worker", "propagations")):
        assert pipe.metric(component, GAUGE, {"topic": f"{topic_prefix}{topic}"}) == 0
    pipe.assert_running()


def test_a_topic_below_the_configured_replication_is_reported(
    cluster: KafkaCluster,
    database_url: str,
    topic_prefix: str,
    pipe: Pipeline,
    tmp_path: Path,
) -> None:
    # The defect planted: the commands topic exists with factor 1 and min ISR 1.
    commands = f"{topic_prefix}propagations"

    async def plant() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(commands, 3, 1, topic_configs={"min.insync.replicas": "1"})]
            )
        finally:
            await admin.close()

    asyncio.run(plant())
    pipe.start("relay")
    flagged = _wait_log_events(pipe, tmp_path / "relay.log", "topic_under_replicated")
    assert pipe.metric("relay", GAUGE, {"topic": commands}) == 1
    assert pipe.metric("relay", GAUGE, {"topic": f"{topic_prefix}propagation-outcomes"}) == 0
    assert [(x["topic"], x["factor"], x["min_insync_replicas"]) for x in flagged] == [
        (commands, 1, 1)
    ]
    status = cli("status", "--json", env=pipe.env(), timeout=120)
    doc = json.loads(status.stdout)
    assert [t["topic"] for t in doc["kafka"]["under_replicated"]] == [commands]


def _wait_log_events(p: Pipeline, log: Path, event: str, timeout: float = 90) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        p.assert_running()
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        found = [x for x in lines if x.get("event") == event]
        # The gauge is set right after the log lines of the same check.
        if found and any(x.get("event") == "started" for x in lines):
            return found
        assert time.monotonic() < deadline, f"no {event} in {log}\n{p.logs()}"
        time.sleep(0.2)


def test_dev_up_brokers_3_lists_every_broker_and_the_quorum_leader(
    tmp_path: Path, stack_cache_dir: Path
) -> None:
    env = clean_env()
    env["PIPELINE_STACK_CACHE"] = str(stack_cache_dir)
    state = tmp_path / f"dev-{uuid.uuid4().hex[:6]}"
    up_args = ("--brokers", "3", "--state-dir", str(state), "--timeout", "180")
    up = cli("dev", "up", *up_args, env=env, timeout=120)
    try:
        assert up.returncode == 0, up.stderr
        exports = dict(
            line.removeprefix("export ").split("=", 1)
            for line in up.stdout.splitlines()
            if line.startswith("export ")
        )
        assert len(exports["PIPELINE_KAFKA_BOOTSTRAP"].split(",")) == 3
        st = cli("dev", "status", "--state-dir", str(state), env=env, timeout=120)
        assert st.returncode == 0, st.stderr
        rows = [line.split("\t") for line in st.stdout.splitlines() if "\t" in line]
        assert [r[0] for r in rows if r[0].startswith("kafka")] == ["kafka-1", "kafka-2", "kafka-3"]
        assert all(r[3] == "yes" for r in rows)
        leader = [line for line in st.stdout.splitlines() if line.startswith("quorum leader: ")]
        assert leader and leader[0].removeprefix("quorum leader: ") in {
            "kafka-1",
            "kafka-2",
            "kafka-3",
        }
        again = cli("dev", "up", "--brokers", "1", "--state-dir", str(state), env=env, timeout=120)
        assert again.returncode != 0 and "runs with 3 broker(s), not 1" in again.stderr
    finally:
        cli("dev", "down", "--state-dir", str(state), env=env, timeout=120)


def test_status_and_lag_answer_with_a_broker_down(
    cluster: KafkaCluster,
    database_url: str,
    topic_prefix: str,
    pipe: Pipeline,
) -> None:
    down = cluster.node(2)
    try:
        pipe.start()
        ids = _enqueue(database_url, 10)
        pipe.wait_terminal(ids, timeout=240)
        down.kill(signal.SIGKILL)
        for command in ("status", "lag"):
            started = time.monotonic()
            res = cli(command, "--json", env=pipe.env(), timeout=120)
            took = time.monotonic() - started
            print(f"pipeline {command} with broker 2 down: rc={res.returncode} in {took:.1f}s")
            assert res.returncode in (0, ExitCode.PARTIAL), res.stderr
            doc = json.loads(res.stdout)
            assert doc["partial"] is (res.returncode == ExitCode.PARTIAL)
        pipe.assert_running()
    finally:
        if not down.running:
            down.launch()
            down.wait_ready(180)


def test_a_worker_told_to_stop_with_every_broker_gone_exits_within_30s_non_zero(
    cluster: KafkaCluster, database_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    # Runs last in this module: it takes the cluster down, and brings it back at the end.
    slow = FakeProvisioner([Rule(match="slow-*", action="ok", latency_ms=3000)], seed=1)
    slow.start()
    p = Pipeline(database_url, cluster.bootstrap, str(slow.address), topic_prefix, tmp_path)
    p.migrate()
    try:
        p.start("relay", "worker")
        with psycopg.connect(database_url) as conn:
            for i in range(10):
                enqueue(
                    conn, "tier_elevation", "t", "postgres", f"slow-{i}", {"target_tier": "pro"}
                )
            conn.commit()
        deadline = time.monotonic() + 180
        while not slow.calls():  # commands in flight: their outcomes are not produced yet
            p.assert_running()
            assert time.monotonic() < deadline, p.logs()
            time.sleep(0.1)
        for node in cluster.nodes:
            node.kill(signal.SIGKILL)
        worker = p.procs.pop("worker")
        started = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        rc = worker.wait(timeout=120)
        took = time.monotonic() - started
        print(f"worker exited rc={rc} {took:.1f}s after SIGTERM with every broker down")
        assert took < 30, f"{took:.1f}s\n{p.logs()}"
        assert rc == ExitCode.NOT_DRAINED, p.logs()
        events = [
            json.loads(line).get("event")
            for line in (tmp_path / "worker.log").read_text().splitlines()
            if line.startswith("{")
        ]
        assert "stopped_without_draining" in events
    finally:
        p.stop()
        slow.stop()
        for node in cluster.nodes:
            if not node.running:
                node.launch()
