"""The worker's outcome publishing: wait for the broker's ack, heal a broken producer.

Outcomes go straight to the aiokafka producer inside faust's Producer, not through faust's
``Topic.send``: faust's send path builds a FutureMessage, a PendingMessage and callbacks per
record and only queues; going around it cut the worker's CPU by 14% (issue 16). It is
the same producer faust flushes before every commit, so a commit still never passes an outcome
that is not yet on the broker. Waiting for the ack makes a failed delivery fail the command
(faust would only log it). After a producer-state error (adapters/kafka_producer.py) the
producer is replaced in place and the outcome sent again with its own event_id.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaProducer

from pipeline.adapters.faust_compat import (
    aiokafka_producer,
    install_aiokafka_producer,
    new_aiokafka_producer,
)
from pipeline.adapters.kafka_producer import (
    fatal_idempotence_error,
    record_rebuild,
    replace_producer,
)
from pipeline.runtime import logs
from pipeline.runtime.metrics import Metrics

_log = logs.get("worker")


class OutcomeSender:
    def __init__(self, app: Any, topic: str, metrics: Metrics) -> None:
        self._app = app
        self._topic = topic
        self._metrics = metrics
        self._lock: asyncio.Lock | None = None

    async def send(self, key: bytes, value: bytes) -> None:
        await self.send_many([(key, value)])

    async def send_many(self, records: list[tuple[bytes, bytes]]) -> None:
        """Produce every (key, value) and wait for the broker's acks; they share requests."""
        pending = records
        for last_try in (False, True):
            broken = self._current()
            if broken is None:
                raise RuntimeError("the worker's producer is not started")
            failed, error = await self._deliver(broken, pending)
            if error is None:
                return
            label = fatal_idempotence_error(error)
            if label is None or last_try:
                raise error
            await self._heal(broken, label)
            pending = failed  # only what the broken producer did not deliver goes again

    async def _deliver(
        self, producer: AIOKafkaProducer, records: list[tuple[bytes, bytes]]
    ) -> tuple[list[tuple[bytes, bytes]], Exception | None]:
        sent: list[tuple[tuple[bytes, bytes], asyncio.Future[Any]]] = []
        failed: list[tuple[bytes, bytes]] = []
        error: Exception | None = None
        for record in records:
            try:
                sent.append((record, await producer.send(self._topic, record[1], key=record[0])))
            except Exception as exc:
                failed.append(record)
                error = error or exc
        for record, delivered in sent:
            try:
                await delivered
            except Exception as exc:
                failed.append(record)
                error = error or exc
        return failed, error

    def _current(self) -> AIOKafkaProducer | None:
        return aiokafka_producer(self._app.producer)

    async def _heal(self, broken: AIOKafkaProducer | None, label: str) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if broken is None or self._current() is not broken:
                return  # another lane healed it already
            faust_producer = self._app.producer
            await replace_producer(
                broken,
                lambda: new_aiokafka_producer(faust_producer),
                lambda p: install_aiokafka_producer(faust_producer, p),
            )
            record_rebuild(self._metrics, _log, "worker", label)
            logs.event(_log, "outcome_resent", logging.INFO, error=label)
