"""The projector: ``propagation-outcomes`` -> ``pending_propagations`` and the audit table.

It does not use Kafka consumer-group offsets: its offsets live in
``projection_checkpoints``, written in the same transaction as the rows they produced
(the eventsourcing tracking-record pattern). One projector per projection name is active
at a time; another one waits on a Postgres advisory lock as a hot standby.
"""

from __future__ import annotations

import asyncio
import contextlib
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


class Projector:
    def __init__(
        self,
        *,
        database_url: str,
        client_kwargs: dict[str, Any],
        topic: str,
        projection: str,
        metrics: Metrics,
        batch_max: int = 2000,
        standby_poll: float = 1.0,
    ) -> None:
        self._url = database_url
        self._kafka = client_kwargs
        self._topic = topic
        self._projection = projection
        self._metrics = metrics
        self._batch_max = batch_max
        self._standby_poll = standby_poll
        self.folded = 0
        self.state = "starting"  # starting | standby | active | failed | stopped

    async def run(self, stop: asyncio.Event) -> None:
        logs.event(_log, "started", topic=self._topic, projection=self._projection)
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
        async with session(self._url) as conn:
            store = ProjectionStore(conn, self._projection)
            if not await self._acquire(store, stop):
                return
            consumer = AIOKafkaConsumer(
                **self._kafka,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_partition_fetch_bytes=4 * 1024 * 1024,
            )
            await consumer.start()
            try:
                await self._assign(consumer, store)
                while not stop.is_set():
                    batch = await consumer.getmany(timeout_ms=200, max_records=self._batch_max)
                    if batch:
                        await self._fold(store, batch)
            finally:
                await consumer.stop()

    async def _acquire(self, store: ProjectionStore, stop: asyncio.Event) -> bool:
        announced = False
        while not stop.is_set():
            if await store.try_lock():
                self.state = "active"
                logs.event(_log, "active", projection=self._projection)
                return True
            self.state = "standby"
            if not announced:
                logs.event(_log, "standby", projection=self._projection)
                announced = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._standby_poll)
        return False

    async def _assign(self, consumer: AIOKafkaConsumer, store: ProjectionStore) -> None:
        partitions = await partitions_for(self._kafka, self._topic)
        tps = [TopicPartition(self._topic, p) for p in partitions]
        consumer.assign(tps)
        checkpoints = await store.load_checkpoints(self._topic)
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
            self._metrics.record_invalid(skip.reason, self._topic)
            logs.event(_log, "invalid_outcome_skipped", **skip.log_fields())
        changed = await store.fold_batch(decoded.items, decoded.next_offsets)
        for item, did in zip(decoded.items, changed, strict=True):
            self._metrics.projected.labels(item.event.outcome.value, str(did).lower()).inc()
        self.folded += len(decoded.items)
