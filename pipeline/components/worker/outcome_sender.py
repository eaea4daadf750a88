"""The worker's outcome publishing: wait for the broker's ack, heal a broken producer.

faust's ``Topic.send`` only queues: a delivery that fails later is logged by faust and the
command would still be acknowledged and committed. Waiting for the ack makes a failed delivery
fail the command instead. After a producer-state error (adapters/kafka_producer.py) the faust app's
aiokafka producer is replaced in place and the outcome sent again with its own event_id.
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
    def __init__(self, app: Any, topic: Any, metrics: Metrics) -> None:
        self._app = app
        self._topic = topic
        self._metrics = metrics
        self._lock: asyncio.Lock | None = None

    async def send(self, key: bytes, value: bytes) -> None:
        for last_try in (False, True):
            broken = self._current()
            try:
                pending = await self._topic.send(key=key, value=value)
                await pending
                return
            except Exception as exc:
                label = fatal_idempotence_error(exc)
                if label is None or last_try:
                    raise
                await self._heal(broken, label)

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
