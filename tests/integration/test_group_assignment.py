"""``group_assignment`` reads a consumer group's state and who holds what (adapters/topics.py).

The bench waits on it before each measured phase, so a worker that joins late cannot put a
rebalance inside the numbers.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer

from pipeline.adapters.topics import ensure_topics, group_assignment
from pipeline.devtools.stack.kafka import KafkaBroker
from pipeline.domain.errors import BrokerError

pytestmark = pytest.mark.integration


async def _until(kw: dict[str, str], group: str, members: int) -> tuple[str, list[set[str]]]:
    deadline = time.monotonic() + 60
    while True:
        state, held = await group_assignment(kw, group)
        if (state == "Stable" and len(held) == members) or time.monotonic() > deadline:
            return state, held
        await asyncio.sleep(0.2)


async def test_reports_each_member_and_the_topics_it_holds(
    kafka_broker: KafkaBroker, topic_prefix: str
) -> None:
    kw = {"bootstrap_servers": kafka_broker.bootstrap}
    topic, other = f"{topic_prefix}held", f"{topic_prefix}unheld"
    await ensure_topics(kw, [topic, other], 2)
    group = f"{topic_prefix}group"
    try:
        state, held = await group_assignment(kw, group)
    except BrokerError:
        pass  # no coordinator yet: the group has never existed
    else:
        assert (state, held) == ("Dead", [])

    consumers = [AIOKafkaConsumer(topic, **kw, group_id=group) for _ in range(2)]
    for c in consumers:
        await c.start()
    try:
        assert await _until(kw, group, 2) == ("Stable", [{topic}, {topic}])
        await consumers[1].stop()
        # One member left: after the rebalance the other holds both partitions.
        assert await _until(kw, group, 1) == ("Stable", [{topic}])
    finally:
        for c in consumers:
            await c.stop()
    state, held = await group_assignment(kw, group)
    assert (state, held) == ("Empty", [])
