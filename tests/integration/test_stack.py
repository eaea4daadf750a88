"""The local stack really works: the broker, Postgres and the stale-process reaper."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from pipeline.devtools.stack import procs
from pipeline.devtools.stack.kafka import KafkaBroker

pytestmark = pytest.mark.integration


async def _create_topic(bootstrap: str, name: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()


async def _produce(bootstrap: str, topic: str, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all")
    await producer.start()
    try:
        for i in range(count):
            await producer.send(topic, key=f"k{i % 7}".encode(), value=f"v{i}".encode())
        await producer.flush()
    finally:
        await producer.stop()


async def _consume(bootstrap: str, topic: str, group: str, count: int) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        deadline = time.monotonic() + 30
        while len(values) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                values.extend(r.value for r in records if r.value is not None)
        await consumer.commit()
    finally:
        await consumer.stop()
    return values


async def test_broker_answers_metadata(kafka_broker: KafkaBroker) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    await admin.start()
    try:
        info = await admin.describe_cluster()
    finally:
        await admin.close()
    assert [b["node_id"] for b in info["brokers"]] == [1]
    assert info["controller_id"] == 1


async def test_idempotent_produce_and_group_consume(
    kafka_broker: KafkaBroker, topic_prefix: str
) -> None:
    topic, group = f"{topic_prefix}events", f"{topic_prefix}group"
    await _create_topic(kafka_broker.bootstrap, topic, 3)
    await _produce(kafka_broker.bootstrap, topic, 30)

    values = await _consume(kafka_broker.bootstrap, topic, group, 30)

    assert sorted(values) == sorted(f"v{i}".encode() for i in range(30))
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
        committed = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    assert len(described[0]["partitions"]) == 3
    assert sum(meta.offset for meta in committed.values()) == 30
    assert {tp for tp in committed} == {TopicPartition(topic, p) for p in range(3)}


async def test_worker_watchdog_reads_end_offsets_without_a_group(
    kafka_broker: KafkaBroker, topic_prefix: str
) -> None:
    # The progress watchdog's view of the broker (pipeline/components/worker/progress.py).
    from pipeline.components.worker.progress import EndOffsets

    topic = f"{topic_prefix}watched"
    await _create_topic(kafka_broker.bootstrap, topic, 3)
    ends = EndOffsets({"bootstrap_servers": kafka_broker.bootstrap}, topic)
    try:
        assert await ends.fetch([0, 1, 2]) == {0: 0, 1: 0, 2: 0}
        await _produce(kafka_broker.bootstrap, topic, 30)
        after = await ends.fetch([0, 1, 2])
    finally:
        await ends.close()
    assert sum(after.values()) == 30 and set(after) == {0, 1, 2}


async def test_worker_baselines_are_the_groups_committed_offsets_or_log_start(
    kafka_broker: KafkaBroker, topic_prefix: str
) -> None:
    # The sequencer's starting points (components/worker/progress.py): a committed 0 must stay
    # 0 (faust's cache turns it into "none"), an uncommitted partition starts at its log start.
    from aiokafka.admin.records_to_delete import RecordsToDelete
    from aiokafka.structs import OffsetAndMetadata

    from pipeline.components.worker.progress import EndOffsets

    bootstrap = kafka_broker.bootstrap
    topic, group = f"{topic_prefix}based", f"{topic_prefix}based-group"
    await _create_topic(bootstrap, topic, 5)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for partition, count in ((0, 10), (1, 5), (2, 4), (3, 6)):
            for i in range(count):
                await producer.send(topic, value=f"v{i}".encode(), partition=partition)
        await producer.flush()
    finally:
        await producer.stop()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        # retention at work: the log start of 2 becomes 3, of 3 becomes 4
        await admin.delete_records(
            {
                TopicPartition(topic, 2): RecordsToDelete(3),
                TopicPartition(topic, 3): RecordsToDelete(4),
            }
        )
    finally:
        await admin.close()
    committer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await committer.start()
    try:
        committer.assign([TopicPartition(topic, p) for p in (0, 1, 3)])
        await committer.commit(
            {
                TopicPartition(topic, 0): OffsetAndMetadata(0, ""),
                TopicPartition(topic, 1): OffsetAndMetadata(3, ""),
                TopicPartition(topic, 3): OffsetAndMetadata(1, ""),  # below the log start
            }
        )
    finally:
        await committer.stop()

    offsets = EndOffsets({"bootstrap_servers": bootstrap}, topic)
    try:
        got = await offsets.baselines_within(group, [0, 1, 2, 3, 4])
        none = await offsets.baselines_within(group, [])
    finally:
        await offsets.close()
    assert got == {0: 0, 1: 3, 2: 3, 3: 4, 4: 0}
    assert none == {}


async def test_worker_baselines_fail_when_the_broker_cannot_answer() -> None:
    # No guessing: after the bounded retry the error reaches the worker (which restarts).
    from aiokafka.errors import KafkaConnectionError

    from pipeline.components.worker.progress import EndOffsets

    offsets = EndOffsets({"bootstrap_servers": f"127.0.0.1:{procs.free_port()}"}, "absent")
    try:
        with pytest.raises(KafkaConnectionError, match="Unable to bootstrap"):
            await offsets.baselines_within("g", [0], within=1.0)
    finally:
        await offsets.close()


def test_postgres_per_test_database(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT current_database(), 6 * 7").fetchone()
    assert row is not None
    assert row[0] == database_url.rsplit("/", 1)[1]
    assert row[1] == 42


def test_broker_restart_keeps_messages(
    tmp_path: Path, stack_cache_dir: Path, topic_prefix: str
) -> None:
    # A broker of its own: restarting the shared one would disturb other tests.
    broker = KafkaBroker(tmp_path / "kafka", stack_cache_dir)
    topic = f"{topic_prefix}durable"
    broker.start()
    try:
        asyncio.run(_create_topic(broker.bootstrap, topic, 1))
        asyncio.run(_produce(broker.bootstrap, topic, 5))
        address = broker.bootstrap
        broker.stop()
        assert not broker.running

        broker.start()

        assert broker.bootstrap == address
        values = asyncio.run(_consume(broker.bootstrap, topic, f"{topic_prefix}g", 5))
        assert values == [f"v{i}".encode() for i in range(5)]
    finally:
        broker.stop()


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_reap_stale_kills_service_of_dead_owner(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    signature = "sleep 300"
    orphan = procs.spawn_detached(["sleep", "300"], tmp_path / "orphan.log")
    survivor = procs.spawn_detached(["sleep", "300"], tmp_path / "survivor.log")
    try:
        dead_owner = _dead_pid()
        procs.register(
            run_dir, procs.ServiceRecord(orphan, "fake", 1, dead_owner, time.time(), signature)
        )
        # Owned by a live process (us): must be left alone.
        procs.register(
            run_dir, procs.ServiceRecord(survivor, "fake", 2, os.getpid(), 0.0, signature)
        )

        removed = procs.reap_stale(run_dir, timeout=5)

        assert [r.pid for r in removed] == [orphan]
        assert not procs.pid_alive(orphan)
        assert procs.pid_alive(survivor)
        assert [r.pid for r in procs.read_records(run_dir)] == [survivor]
    finally:
        procs.terminate(orphan, 5)
        procs.terminate(survivor, 5)


def test_reap_stale_spares_a_reused_pid(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    unrelated = procs.spawn_detached(["sleep", "300"], tmp_path / "unrelated.log")
    try:
        record = procs.ServiceRecord(
            unrelated, "kafka", 1, _dead_pid(), 0.0, "/some/other/server.properties"
        )
        procs.register(run_dir, record)

        assert procs.reap_stale(run_dir, timeout=5) == [record]

        assert procs.pid_alive(unrelated)
        assert procs.read_records(run_dir) == []
    finally:
        procs.terminate(unrelated, 5)
