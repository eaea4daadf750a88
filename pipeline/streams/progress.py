"""When a worker that looks healthy has stopped receiving commands it ought to be receiving.

faust can leave a partition unfetched after a restart (seen after the processor group's
offsets were reset on a quiet pipeline: recovery finished, lag stayed, no message came). The
AckGuard keeps that from ever committing past a command, so the failure is a stall, not a
loss; this turns the stall into a restart. The decision is a pure function of what the worker
can see: per assigned partition, the broker's end offset, the next offset the worker expects,
how many admitted commands are not yet acknowledged, and how long since it admitted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

STALL_AFTER_S = 30.0


@dataclass(frozen=True)
class PartitionView:
    partition: int
    end_offset: int | None  # the broker's end offset (None: not known yet)
    next_offset: int | None  # the next offset the worker expects (None: not known yet)
    unacked: int  # admitted commands of this partition not yet acknowledged
    idle_s: float  # seconds since this partition last admitted a command (or was assigned)


def stalled_partitions(
    views: list[PartitionView], *, stall_after: float, lanes_full: bool, in_recovery: bool
) -> list[int]:
    """Partitions with commands waiting that the worker has not been given for too long.

    A partition is not stalled while the worker is busy with it (unacknowledged work), while
    every lane is taken (back-pressure holds the whole stream) or while tables recover.
    """
    if lanes_full or in_recovery:
        return []
    out = []
    for v in views:
        if v.end_offset is None or v.next_offset is None:
            continue
        if v.end_offset > v.next_offset and v.unacked == 0 and v.idle_s > stall_after:
            out.append(v.partition)
    return out


class EndOffsets:
    """The broker's end offsets of ``topic``'s partitions, through a client of its own."""

    def __init__(self, client_kwargs: dict[str, Any], topic: str) -> None:
        self._kwargs = client_kwargs
        self._topic = topic
        self._consumer: AIOKafkaConsumer | None = None

    async def fetch(self, partitions: list[int]) -> dict[int, int]:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(**self._kwargs, group_id=None, enable_auto_commit=False)
            await consumer.start()
            self._consumer = consumer
        tps = [TopicPartition(self._topic, p) for p in partitions]
        ends = await self._consumer.end_offsets(tps)
        return {tp.partition: int(offset) for tp, offset in ends.items()}

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()
