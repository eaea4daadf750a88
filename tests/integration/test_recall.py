"""The worker's de-duplication memory is read back from the outcome topic (worker/recall.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta

from aiokafka import AIOKafkaProducer
from harness import Pipeline
from test_semantics import _outcome as outcome_bytes

from pipeline.adapters.topics import ensure_topics
from pipeline.components.worker.recall import recall, recorded
from pipeline.components.worker.seen import BoundedDict
from pipeline.devtools.stack.kafka import KafkaBroker
from pipeline.domain.events import Outcome
from pipeline.runtime.exit_codes import ExitCode

HOUR = timedelta(hours=1)


def _outcome(pid: int, attempt: int) -> bytes:
    return outcome_bytes(pid, attempt, Outcome.APPLIED)


async def _setup(
    broker: KafkaBroker, topic: str, records: list[tuple[int, bytes, int | None]]
) -> dict[str, str]:
    """``records``: (partition, value, timestamp ms or None for now), produced in order."""
    kw = {"bootstrap_servers": broker.bootstrap}
    await ensure_topics(kw, [topic], 2)
    producer = AIOKafkaProducer(**kw, acks="all")
    await producer.start()
    try:
        for partition, value, ts in records:
            await producer.send_and_wait(topic, value, partition=partition, timestamp_ms=ts)
    finally:
        await producer.stop()
    return kw


async def test_recalls_the_last_answer_of_each_propagation_on_the_assigned_partitions(
    kafka_broker: KafkaBroker, topic_prefix: str
) -> None:
    topic = f"{topic_prefix}propagation-outcomes"
    kw = await _setup(
        kafka_broker,
        topic,
        [
            (0, _outcome(1, 1), None),
            (0, b"not json", None),  # skipped, as the projector skips it
            (0, _outcome(1, 2), None),  # a later attempt of the same propagation wins
            (0, _outcome(2, 1), None),
            (1, _outcome(3, 1), None),  # partition 1 is not assigned here
        ],
    )
    memory: BoundedDict[bytes, bytes] = BoundedDict(100)
    n = await recall(kw, topic, [0], memory, within=HOUR, max_entries=100)
    assert n == 3
    assert recorded(memory, 1) == (2, _outcome(1, 2))
    assert recorded(memory, 2) == (1, _outcome(2, 1))
    assert recorded(memory, 3) is None
    assert list(memory) == [b"1", b"2"]


async def test_reads_at_most_max_entries_per_partition_and_nothing_older_than_within(
    kafka_broker: KafkaBroker, topic_prefix: str
) -> None:
    topic = f"{topic_prefix}propagation-outcomes"
    old = int((time.time() - 2 * 3600) * 1000)  # before the hour looked back on
    records = [(0, _outcome(pid, 1), old) for pid in (1, 2)]
    records += [(0, _outcome(pid, 1), None) for pid in (3, 4, 5, 6)]
    records += [(1, _outcome(pid, 1), None) for pid in (7, 8)]
    kw = await _setup(kafka_broker, topic, records)
    memory: BoundedDict[bytes, bytes] = BoundedDict(100)
    n = await recall(kw, topic, [0, 1], memory, within=HOUR, max_entries=3)
    assert n == 5
    assert sorted(int(k) for k in memory) == [4, 5, 6, 7, 8]
    # Everything recent, when the bound allows: the two old ones stay forgotten.
    memory.clear()
    assert await recall(kw, topic, [0, 1], memory, within=HOUR, max_entries=100) == 6
    assert sorted(int(k) for k in memory) == [3, 4, 5, 6, 7, 8]


async def test_an_empty_topic_recalls_nothing(kafka_broker: KafkaBroker, topic_prefix: str) -> None:
    topic = f"{topic_prefix}propagation-outcomes"
    kw = await _setup(kafka_broker, topic, [])
    memory: BoundedDict[bytes, bytes] = BoundedDict(10)
    assert await recall(kw, topic, [0, 1], memory, within=HOUR, max_entries=10) == 0
    assert await recall(kw, topic, [], memory, within=HOUR, max_entries=10) == 0
    assert not memory


def test_the_worker_refuses_topics_of_different_partition_counts(
    make_pipeline: Callable[..., Pipeline],
) -> None:
    p = make_pipeline()
    outcomes = f"{p.prefix}propagation-outcomes"
    asyncio.run(ensure_topics({"bootstrap_servers": p.bootstrap}, [outcomes], p.partitions + 2))
    p.start("worker")
    proc = p.procs.pop("worker")
    assert proc.wait(timeout=90) == ExitCode.ERROR
    log = (p.logdir / "worker.log").read_text()
    assert (
        f"topic {p.prefix}propagations has {p.partitions} partitions but {outcomes} has "
        f"{p.partitions + 2}: the worker reads the answers to command partition p from outcome "
        "partition p"
    ) in log
