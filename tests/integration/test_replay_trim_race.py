"""Retention trimming the head of the log while a bounded read (a replay) is under way.

A rebuild classifies rows against the range [start, end) it is about to read, resets them and
refolds from the log. If retention deletes records at the start before the reader has fetched
them, the consumer's fetch is out of range; reset to "earliest", it would silently jump
forward and the rebuild would commit rows reset but never refolded. A bounded read must fail
instead (the rebuild's transaction then rolls back).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from pipeline.adapters.topics import ensure_topics
from pipeline.devtools.stack.kafka import KafkaBroker
from pipeline.domain.errors import BrokerError
from pipeline.ops.tail import LogReader, StartPoint

pytestmark = pytest.mark.integration

N, CUT = 20, 10


async def _read_after_trim(bootstrap: str, topic: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    kw = {"bootstrap_servers": bootstrap}
    await ensure_topics(kw, [topic], 1)
    producer = AIOKafkaProducer(**kw)
    await producer.start()
    try:
        for i in range(N):
            await producer.send_and_wait(topic, f"r{i}".encode(), partition=0)
    finally:
        await producer.stop()
    from trimlog import _trim

    assert await _trim(bootstrap, topic, {0: CUT}) == {0: CUT}

    # The reader saw the log as it was before retention ran: start offset 0. (Deterministic
    # stand-in for retention firing between the reader's open and its first fetch.)
    async def before_the_trim(self: AIOKafkaConsumer, partitions: list[Any]) -> dict[Any, int]:
        return dict.fromkeys(partitions, 0)

    monkeypatch.setattr(AIOKafkaConsumer, "beginning_offsets", before_the_trim)
    reader = LogReader(kw, topic, StartPoint("beginning"), bounded=True)
    await reader.open()
    assert reader.starts == {0: 0}
    got: list[int] = []
    try:
        async with asyncio.timeout(60):
            async for batch in reader.batches(asyncio.Event(), 100):
                got += [m.offset for m in batch]
    finally:
        await reader.close()
    return got


def test_a_bounded_read_fails_when_retention_took_its_start(
    kafka_broker: KafkaBroker, topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = f"{topic_prefix}trim-race"
    with pytest.raises(BrokerError, match=r"deleted \(retention\) before they were read"):
        got = asyncio.run(_read_after_trim(kafka_broker.bootstrap, topic, monkeypatch))
        pytest.fail(f"read {got} without noticing offsets 0..{CUT - 1} were gone")
