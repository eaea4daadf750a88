"""Producers that heal: a new idempotent producer after an error that leaves the old one broken.

aiokafka's idempotent producer stays broken after OutOfOrderSequenceNumber (and the other
producer-state errors below) until it is built anew (aiokafka issue #1017): seen after a
broker of a three-node cluster died and came back, the relay failed every batch for minutes.
The caller's work is retried by its own loop (the relay's rows stay due, the worker re-sends
the outcome with the same event_id), so a rebuild may publish an event twice, which the
worker's and the consumers' de-duplication absorb.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
)

from pipeline.runtime import logs
from pipeline.runtime.metrics import Metrics

# Error class -> metric label (a fixed set: the label stays bounded).
FATAL_IDEMPOTENCE: dict[type[BaseException], str] = {
    OutOfOrderSequenceNumber: "out_of_order_sequence_number",
    UnknownProducerId: "unknown_producer_id",
    InvalidProducerEpoch: "invalid_producer_epoch",
    ProducerFenced: "producer_fenced",
}
STOP_OLD_TIMEOUT_S = 10.0


def fatal_idempotence_error(exc: BaseException | None) -> str | None:
    """The label of the producer-state error in ``exc`` or its causes, else None.

    faust wraps send errors (ProducerSendError from the KafkaError), so the chain is walked.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        for cls, label in FATAL_IDEMPOTENCE.items():
            if isinstance(exc, cls):
                return label
        exc = exc.__cause__ or exc.__context__
    return None


async def replace_producer(
    current: AIOKafkaProducer,
    build: Callable[[], AIOKafkaProducer],
    install: Callable[[AIOKafkaProducer], None],
) -> AIOKafkaProducer:
    """Start a new producer, install it, then stop the broken one (bounded: it may hang)."""
    fresh = build()
    await fresh.start()
    install(fresh)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(current.stop(), STOP_OLD_TIMEOUT_S)
    return fresh


def record_rebuild(metrics: Metrics, log: logging.Logger, component: str, label: str) -> None:
    metrics.producer_rebuilds.labels(component, label).inc()
    logs.event(log, "producer_rebuilt", logging.WARNING, component=component, error=label)


class HealingProducer:
    """The relay's producer: ``send`` as aiokafka's, plus ``heal(exc)`` after a failure."""

    def __init__(
        self,
        build: Callable[[], AIOKafkaProducer],
        metrics: Metrics,
        component: str,
        log: logging.Logger,
    ) -> None:
        self._build = build
        self._metrics = metrics
        self._component = component
        self._log = log
        self.producer = build()

    async def start(self) -> None:
        await self.producer.start()

    async def stop(self) -> None:
        await self.producer.stop()

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> Any:
        return await self.producer.send(topic, value, key=key)

    async def heal(self, exc: BaseException) -> bool:
        """Rebuild the producer if ``exc`` broke it; True if it did."""
        label = fatal_idempotence_error(exc)
        if label is None:
            return False

        def install(p: AIOKafkaProducer) -> None:
            self.producer = p

        await replace_producer(self.producer, self._build, install)
        record_rebuild(self._metrics, self._log, self._component, label)
        return True
