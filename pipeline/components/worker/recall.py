"""The worker's memory of answered (propagation, attempt) pairs, rebuilt from the outcome log.

The outcome topic already records every answer the worker gave, so it is the de-duplication
memory: a changelog record per command would make the broker write each propagation a
third time (issue 16). At each assignment the worker reads back the recent outcomes of its
partitions; while it runs, it remembers what it produces itself.

A command and its outcome carry the same key (the resource) and both topics have the same
partition count, so the outcomes of command partition p are on outcome partition p.
Only the newest ``max_entries`` per partition, and nothing older than ``within``, are read:
what falls outside is executed again on redelivery, and the provisioner's idempotency key
keeps its effect single (components/worker/seen.py).
"""

from __future__ import annotations

import time
from collections.abc import MutableMapping
from datetime import timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.domain import codec

FETCH_TIMEOUT_MS = 500


def remember(
    memory: MutableMapping[bytes, bytes], propagation_id: int, attempt: int, body: bytes
) -> None:
    """Record the outcome ``body`` of one answered attempt."""
    memory[str(propagation_id).encode()] = str(attempt).encode() + b"|" + body


def recorded(memory: MutableMapping[bytes, bytes], propagation_id: int) -> tuple[int, bytes] | None:
    """(last answered attempt, its outcome body), or None if none is remembered."""
    prior = memory.get(str(propagation_id).encode())
    if prior is None:
        return None
    attempt, _, body = prior.partition(b"|")
    return int(attempt), body


async def recall(
    client_kwargs: dict[str, Any],
    topic: str,
    partitions: list[int],
    memory: MutableMapping[bytes, bytes],
    *,
    within: timedelta,
    max_entries: int,
) -> int:
    """Read the recent outcomes of ``partitions`` into ``memory``; returns how many."""
    if not partitions:
        return 0
    consumer = AIOKafkaConsumer(**client_kwargs, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        firsts = await consumer.beginning_offsets(tps)
        since_ms = int((time.time() - within.total_seconds()) * 1000)
        by_time = await consumer.offsets_for_times({tp: since_ms for tp in tps})
        todo: dict[TopicPartition, int] = {}
        for tp in tps:
            found = by_time.get(tp)
            start = max(firsts[tp], ends[tp] - max_entries, found.offset if found else ends[tp])
            if start < ends[tp]:
                consumer.seek(tp, start)
                todo[tp] = ends[tp]
            else:
                consumer.pause(tp)
        count = 0
        while todo:
            batch = await consumer.getmany(*todo, timeout_ms=FETCH_TIMEOUT_MS)
            for tp, records in batch.items():
                wanted = [r for r in records if r.offset < todo.get(tp, -1)]
                # The log is decoded the one way every reader decodes it; the raw bytes are
                # what a redelivery re-emits, unchanged.
                raw = {r.offset: r.value for r in wanted}
                for located in codec.decode_outcomes(wanted).items:
                    body = raw[located.offset]
                    assert body is not None  # a decoded outcome had a value
                    remember(memory, located.event.propagation_id, located.event.attempt, body)
                    count += 1
            for tp in list(todo):
                if await consumer.position(tp) >= todo[tp]:
                    consumer.pause(tp)
                    del todo[tp]
        return count
    finally:
        await consumer.stop()
