"""Raw limits measured in the same run: what the pipeline's building blocks can do alone.

* aiokafka: produce ``count`` command-sized events with the relay's own producer settings
  (idempotent, acks=all), then consume them back;
* gRPC: ``count`` RegradeResource calls through :class:`GrpcProvisioner` with 64 in flight;
* Postgres: ``UPDATE ... SET applied_at = now() WHERE id = ANY(...)`` in batches, and the same
  rows updated one statement per row (the projector's pattern), for comparison.

Also reads the record timestamps of a topic, which the per-stage rates are derived from.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.adapters.provisioner import GrpcProvisioner
from pipeline.adapters.topics import ensure_topics, partitions_for
from pipeline.components.relay import make_producer
from pipeline.domain.events import Applied
from pipeline.runtime.config import CALL_TRIES_PER_ATTEMPT, HANDLER_DEADLINE
from pipeline.store import bench as store

GRPC_IN_FLIGHT = 64
UPDATE_BATCH = 500
KAFKA_WARMUP = 200


@dataclass(frozen=True, slots=True)
class Rate:
    count: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, float]:
        return {"count": self.count, "seconds": self.seconds, "per_second": self.per_second}


def _sample_event(i: int) -> bytes:
    # About the size of a real command event.
    return orjson.dumps(
        {
            "schema": "propagation.command.v1",
            "event_id": f"00000000-0000-4000-8000-{i:012d}",
            "propagation_id": i,
            "kind": "tier_elevation",
            "attempt": 1,
            "team_id": "bench",
            "resource_type": "postgres",
            "resource_id": f"raw-{i}",
            "payload": {"target_tier": "pro"},
            "ts": "2026-01-01T00:00:00Z",
        }
    )


async def kafka_produce_consume(
    client_kwargs: dict[str, Any], topic: str, count: int, partitions: int
) -> tuple[Rate, Rate]:
    """(produce, consume) of ``count`` events on a fresh topic."""
    await ensure_topics(client_kwargs, [topic], partitions)
    producer = make_producer(client_kwargs)
    await producer.start()
    try:
        # Untimed warm-up: a new topic's leaders take a moment to be known (NotLeader retries).
        await asyncio.gather(
            *[await producer.send(topic, _sample_event(-i)) for i in range(1, KAFKA_WARMUP + 1)]
        )
        t0 = time.perf_counter()
        for start in range(0, count, 500):  # the relay's batch shape
            futures = [
                await producer.send(topic, _sample_event(i), key=f"bench:postgres:raw-{i}".encode())
                for i in range(start, min(start + 500, count))
            ]
            await asyncio.gather(*futures)
        produced = Rate(count, time.perf_counter() - t0)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(**client_kwargs, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in await partitions_for(client_kwargs, topic)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        t0 = time.perf_counter()
        seen = 0
        while seen < count + KAFKA_WARMUP:
            batch = await consumer.getmany(timeout_ms=500, max_records=2000)
            for messages in batch.values():
                for m in messages:
                    orjson.loads(m.value or b"null")  # consumers decode what they read
                    seen += 1
        consumed = Rate(seen - KAFKA_WARMUP, time.perf_counter() - t0)
    finally:
        await consumer.stop()
    return produced, consumed


async def grpc_alone(addr: str, count: int, key_prefix: str, batch: int = 0) -> tuple[Rate, int]:
    """``count`` regrade calls, GRPC_IN_FLIGHT at a time; returns (rate, calls not applied).

    ``batch`` > 0: the calls share ApplyBatch round trips, as the worker's do.
    """
    port = GrpcProvisioner(
        addr, deadline=HANDLER_DEADLINE.total_seconds(), tries=CALL_TRIES_PER_ATTEMPT, batch=batch
    )
    slots = asyncio.Semaphore(GRPC_IN_FLIGHT)
    failed = 0

    async def one(i: int) -> None:
        nonlocal failed
        async with slots:
            reply = await port.regrade(
                idempotency_key=f"{key_prefix}{i}",
                team_id="bench",
                resource_type="postgres",
                resource_id=f"{key_prefix}{i}",
                target_tier="pro",
            )
        if not isinstance(reply, Applied):
            failed += 1

    try:
        await one(-1)  # connect first: channel set-up is not a per-call cost
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(count)))
        return Rate(count, time.perf_counter() - t0), failed
    finally:
        await port.close()


def update_alone(database_url: str, count: int) -> tuple[Rate, Rate]:
    """(batched ANY(), row by row) UPDATEs of ``count`` fresh, not-yet-due outbox rows each."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        # Not due until infinity: no relay would ever claim them.
        first, last = store.insert_batch(conn, "raw-batched-", count, due="infinity")
        ids = list(range(first, last + 1))
        t0 = time.perf_counter()
        store.raw_update_batched(conn, ids, UPDATE_BATCH)
        batched = Rate(len(ids), time.perf_counter() - t0)
        first, last = store.insert_batch(conn, "raw-rows-", count, due="infinity")
        ids = list(range(first, last + 1))
        t0 = time.perf_counter()
        store.raw_update_row_by_row(conn, ids, UPDATE_BATCH)
        row_by_row = Rate(len(ids), time.perf_counter() - t0)
    return batched, row_by_row


async def topic_timestamps(
    client_kwargs: dict[str, Any], topic: str, first: int, last: int
) -> list[int]:
    """Record timestamps (ms) of the events of propagations ``first..last`` on ``topic``."""
    return [ts for _pid, ts in await _scan(client_kwargs, topic, first, last)]


async def first_record_ms(
    client_kwargs: dict[str, Any], topic: str, first: int, last: int
) -> dict[int, int]:
    """Per propagation of ``first..last``, the timestamp (ms) of its first record on ``topic``."""
    out: dict[int, int] = {}
    for pid, ts in await _scan(client_kwargs, topic, first, last):
        if pid not in out or ts < out[pid]:
            out[pid] = ts
    return out


async def _scan(
    client_kwargs: dict[str, Any], topic: str, first: int, last: int
) -> list[tuple[int, int]]:
    consumer = AIOKafkaConsumer(**client_kwargs, group_id=None, enable_auto_commit=False)
    await consumer.start()
    out: list[tuple[int, int]] = []
    try:
        tps = [TopicPartition(topic, p) for p in await partitions_for(client_kwargs, topic)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        while remaining:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for tp, messages in batch.items():
                for m in messages:
                    try:
                        pid = orjson.loads(m.value or b"null").get("propagation_id")
                    except (orjson.JSONDecodeError, AttributeError):
                        continue
                    if isinstance(pid, int) and first <= pid <= last:
                        out.append((pid, int(m.timestamp)))
                if messages and messages[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
    finally:
        await consumer.stop()
    return out


def rate_of_timestamps(stamps_ms: list[int]) -> Rate:
    if len(stamps_ms) < 2:
        return Rate(len(stamps_ms), 0.0)
    return Rate(len(stamps_ms), (max(stamps_ms) - min(stamps_ms)) / 1000)
