"""The projector: ``propagation-outcomes`` -> ``pending_propagations`` and the audit table.

It does not use Kafka consumer-group offsets: its offsets live in
``projection_checkpoints``, written in the same transaction as the rows they produced
(the eventsourcing tracking-record pattern). One projector per projection name is active
at a time; another one waits on a Postgres advisory lock as a hot standby.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.adapters.topics import partitions_for
from pipeline.domain.codec import decode_outcomes
from pipeline.domain.errors import StoreError
from pipeline.runtime import logs
from pipeline.runtime.metrics import Metrics
from pipeline.store.db import session
from pipeline.store.projection import ProjectionStore

_log = logs.get("projector")


@dataclass(kw_only=True, eq=False)
class Projector:
    database_url: str
    client_kwargs: dict[str, Any]
    topic: str
    projection: str
    metrics: Metrics
    batch_max: int = 2000
    standby_poll: float = 1.0
    folded: int = field(default=0, init=False)
    state: str = field(default="starting", init=False)  # starting|standby|active|failed|stopped

    async def run(self, stop: asyncio.Event) -> None:
        logs.event(_log, "started", topic=self.topic, projection=self.projection)
        while not stop.is_set():
            try:
                await self._run_once(stop)
            except StoreError as exc:
                self.state = "failed"
                logs.event(_log, "failed", error=str(exc)[:500], retry_in_s=1.0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
        self.state = "stopped"
        logs.event(_log, "stopped", folded=self.folded)

    async def _run_once(self, stop: asyncio.Event) -> None:
        async with session(self.database_url) as conn:
            store = ProjectionStore(conn, self.projection)
            if not await self._acquire(store, stop):
                return
            consumer = AIOKafkaConsumer(
                **self.client_kwargs,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_partition_fetch_bytes=4 * 1024 * 1024,
            )
            await consumer.start()
            try:
                await self._assign(consumer, store)
                while not stop.is_set():
                    batch = await consumer.getmany(timeout_ms=200, max_records=self.batch_max)
                    if batch:
                        await self._fold(store, batch)
            finally:
                await consumer.stop()

    async def _acquire(self, store: ProjectionStore, stop: asyncio.Event) -> bool:
        announced = False
        while not stop.is_set():
            if await store.try_lock():
                self.state = "active"
                logs.event(_log, "active", projection=self.projection)
                return True
            self.state = "standby"
            if not announced:
                logs.event(_log, "standby", projection=self.projection)
                announced = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.standby_poll)
        return False

    async def _assign(self, consumer: AIOKafkaConsumer, store: ProjectionStore) -> None:
        partitions = await partitions_for(self.client_kwargs, self.topic)
        tps = [TopicPartition(self.topic, p) for p in partitions]
        consumer.assign(tps)
        checkpoints = await store.load_checkpoints(self.topic)
        for tp in tps:
            if tp.partition in checkpoints:
                consumer.seek(tp, checkpoints[tp.partition])
            else:
                await consumer.seek_to_beginning(tp)
        logs.event(_log, "partitions_assigned", partitions=partitions, checkpoints=checkpoints)

    async def _fold(self, store: ProjectionStore, batch: dict[Any, list[Any]]) -> None:
        decoded = decode_outcomes(msg for messages in batch.values() for msg in messages)
        for skip in decoded.skipped:
            # Counted and skipped: the checkpoint moves past it.
            self.metrics.record_invalid(skip.reason, self.topic)
            logs.event(_log, "invalid_outcome_skipped", **skip.log_fields())
        changed = await store.fold_batch(decoded.items, decoded.next_offsets)
        for item, did in zip(decoded.items, changed, strict=True):
            self.metrics.projected.labels(item.event.outcome.value, str(did).lower()).inc()
        self.folded += len(decoded.items)
