"""What retention does to the head of a log, on demand: ``delete_records`` below an offset.

Shared by the retention tests and the chaos scenarios (which import the integration
helpers), so both trim a log the same way.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete


async def _trim(bootstrap: str, topic: str, before: dict[int, int]) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        done = await admin.delete_records(
            {TopicPartition(topic, p): RecordsToDelete(o) for p, o in before.items()},
            timeout_ms=30_000,
        )
        return {tp.partition: int(low) for tp, low in done.items()}
    finally:
        await admin.close()


def trim(bootstrap: str, topic: str, before: dict[int, int]) -> dict[int, int]:
    """Delete every record below ``before[p]`` on each partition; returns the new log starts."""
    return asyncio.run(_trim(bootstrap, topic, before))


def first_positions(outcomes: dict[int, list[dict[str, Any]]]) -> dict[int, tuple[int, int]]:
    """Per propagation, (partition, offset) of its first outcome on the log (a witness that
    does not read the projection's own first_outcome_* columns)."""
    return {
        pid: (events[0]["_partition"], events[0]["_offset"])
        for pid, events in outcomes.items()
        if events
    }
