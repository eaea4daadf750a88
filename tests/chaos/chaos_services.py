"""The chaos suite's own services and the raw Kafka and TCP access its faults and checks use."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from pipeline.adapters.topics import partitions_for
from pipeline.devtools.stack import procs
from pipeline.devtools.stack.kafka import KafkaBroker
from pipeline.devtools.stack.postgres import PostgresCluster


class Stack:
    """A Kafka broker and a Postgres cluster of the chaos suite's own, free to kill."""

    def __init__(self, workdir: Path, cache_dir: Path) -> None:
        self.workdir = workdir
        self.kafka = KafkaBroker(workdir / "kafka", cache_dir)
        self.postgres = PostgresCluster(workdir / "postgres")

    def start(self) -> None:
        self.kafka.start()
        self.postgres.start()

    def ensure_running(self) -> None:
        """A scenario that failed halfway may leave a service down; bring it back."""
        if not self.kafka.running:
            self.kafka.start()
        if not self.postgres.running:
            self.postgres.start()

    def stop(self) -> None:
        for step in (self.stop_kafka, self.postgres.stop, self.postgres.remove_files):
            with contextlib.suppress(Exception):
                step()

    def stop_kafka(self) -> None:
        self.kafka.stop()

    def kafka_logs(self) -> list[tuple[str, Path]]:
        return [("kafka broker", self.kafka.log_path)]

    def logs(self, tail: int = 40) -> str:
        return "\n".join(
            f"--- {name} ({path})\n{procs.tail(path, tail)}"
            for name, path in [*self.kafka_logs(), ("postgres", self.postgres.log_path)]
        )


async def _produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes]]) -> int:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_request_size=2 * 1024 * 1024
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in messages]
        acked = await asyncio.gather(*futures)
        return sum(1 for md in acked if md.offset >= 0)
    finally:
        await producer.stop()


async def _commit_zero(bootstrap: str, group: str, topic: str) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [
            TopicPartition(topic, p)
            for p in await partitions_for({"bootstrap_servers": bootstrap}, topic)
        ]
        assert tps, f"topic {topic} has no partitions"
        consumer.assign(tps)
        await consumer.commit({tp: 0 for tp in tps})
    finally:
        await consumer.stop()


async def _delete_topics(bootstrap: str, prefix: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        mine = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()


def port_refused(port: int, within: float = 15) -> bool:
    """A client's view: a TCP connection to the port is refused (nothing listens) within
    ``within`` seconds. A killed JVM's threads take a moment to go and hold the socket
    until the last one has, even when its main thread already shows as dead."""
    deadline = time.monotonic() + within
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                pass
        except OSError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
