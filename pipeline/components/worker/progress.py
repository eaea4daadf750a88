"""When a worker that looks healthy has stopped receiving commands it ought to be receiving.

faust can leave a partition unfetched after a restart (seen after the processor group's
offsets were reset on a quiet pipeline: recovery finished, lag stayed, no message came). The
AckGuard keeps that from ever committing past a command, so the failure is a stall, not a
loss; this turns the stall into a restart. The decision is a pure function of what the worker
can see: per assigned partition, the broker's end offset, the next offset the worker expects,
how many admitted commands are not yet acknowledged, and how long since it admitted one.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

STALL_AFTER_S = 30.0
BASELINE_WITHIN_S = 10.0  # how long an assignment may wait for the broker's committed offsets


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
    """The broker's offsets of ``topic``'s partitions, through group-less clients of its own.

    End offsets for the progress watchdog; committed offsets (the sequencer's baselines) for
    each assignment, asked of the broker because faust's cache of them is wrong after an
    offset reset (it keeps a committed 0 as "none").
    """

    def __init__(self, client_kwargs: dict[str, Any], topic: str) -> None:
        self._kwargs = client_kwargs
        self._topic = topic
        self._consumer: AIOKafkaConsumer | None = None
        self._admin: AIOKafkaAdminClient | None = None

    async def _reader(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(**self._kwargs, group_id=None, enable_auto_commit=False)
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    def _tps(self, partitions: list[int]) -> list[TopicPartition]:
        return [TopicPartition(self._topic, p) for p in partitions]

    async def fetch(self, partitions: list[int]) -> dict[int, int]:
        ends = await (await self._reader()).end_offsets(self._tps(partitions))
        return {tp.partition: int(offset) for tp, offset in ends.items()}

    async def baselines(self, group: str, partitions: list[int]) -> dict[int, int]:
        """Where ``group`` resumes each partition: its committed offset, else (or when
        retention removed it) the log start, as the worker's auto_offset_reset is earliest."""
        if not partitions:
            return {}
        if self._admin is None:
            admin = AIOKafkaAdminClient(**self._kwargs)
            await admin.start()
            self._admin = admin
        tps = self._tps(partitions)
        committed = await self._admin.list_consumer_group_offsets(group, partitions=tps)
        starts = await (await self._reader()).beginning_offsets(tps)
        out = {tp.partition: int(offset) for tp, offset in starts.items()}
        for tp, meta in committed.items():
            if tp.partition in out and tp.topic == self._topic and meta.offset >= 0:
                out[tp.partition] = max(out[tp.partition], int(meta.offset))
        return out

    async def baselines_within(
        self, group: str, partitions: list[int], within: float = BASELINE_WITHIN_S
    ) -> dict[int, int]:
        """``baselines``, retried while the broker is away for up to ``within`` seconds; the
        last error is raised after that (a worker must not guess its starting points)."""
        deadline = time.monotonic() + within
        while True:
            try:
                return await asyncio.wait_for(
                    self.baselines(group, partitions), max(deadline - time.monotonic(), 0.1)
                )
            except Exception:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.5)

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        admin, self._admin = self._admin, None
        if consumer is not None:
            await consumer.stop()
        if admin is not None:
            await admin.close()
