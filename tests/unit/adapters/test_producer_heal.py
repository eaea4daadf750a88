"""Producers heal: a producer-state error gets a new producer, counted, and the send retried."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiokafka.errors import (
    InvalidProducerEpoch,
    NotLeaderForPartitionError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
)
from faust.exceptions import ProducerSendError

from pipeline.adapters.kafka_producer import HealingProducer, fatal_idempotence_error
from pipeline.components.worker.outcome_sender import OutcomeSender
from pipeline.runtime.metrics import Metrics

REBUILDS = "instant_propagation_producer_rebuilds_total"


@pytest.mark.parametrize(
    ("exc", "label"),
    [
        (OutOfOrderSequenceNumber(), "out_of_order_sequence_number"),
        (UnknownProducerId(), "unknown_producer_id"),
        (InvalidProducerEpoch(), "invalid_producer_epoch"),
        (ProducerFenced(), "producer_fenced"),
        (NotLeaderForPartitionError(), None),  # retried by aiokafka itself: no rebuild
        (RuntimeError("x"), None),
    ],
)
def test_which_errors_break_a_producer(exc: BaseException, label: str | None) -> None:
    assert fatal_idempotence_error(exc) == label


def test_a_wrapped_error_is_found_through_its_cause() -> None:
    try:
        try:
            raise OutOfOrderSequenceNumber()
        except OutOfOrderSequenceNumber as inner:
            raise ProducerSendError("Error while sending") from inner
    except ProducerSendError as outer:
        assert fatal_idempotence_error(outer) == "out_of_order_sequence_number"


class Broker:
    """What reached the broker; fails the first ``failures`` deliveries with a wrapped
    producer-state error."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.delivered: list[tuple[str, bytes, bytes]] = []


class FakeProducer:
    built = 0

    def __init__(self, broker: Broker | None = None) -> None:
        FakeProducer.built += 1
        self.started = self.stopped = False
        self.broker = broker or Broker()

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def send(self, topic: str, value: bytes, *, key: bytes) -> asyncio.Future[None]:
        """aiokafka's shape: queued now, the returned future resolves at delivery."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await asyncio.sleep(0)
        if self.broker.failures:
            self.broker.failures -= 1
            try:
                raise ProducerSendError("Error while sending") from OutOfOrderSequenceNumber()
            except ProducerSendError as exc:
                fut.set_exception(exc)
        else:
            self.broker.delivered.append((topic, key, value))
            fut.set_result(None)
        return fut


def test_healing_producer_rebuilds_only_for_producer_state_errors() -> None:
    metrics = Metrics(["tier_elevation"])
    hp = HealingProducer(FakeProducer, metrics, "relay", logging.getLogger("t"))  # type: ignore[arg-type]
    first = hp.producer

    async def run() -> tuple[bool, bool]:
        await hp.start()
        no = await hp.heal(NotLeaderForPartitionError())
        yes = await hp.heal(OutOfOrderSequenceNumber())
        return no, yes

    assert asyncio.run(run()) == (False, True)
    assert hp.producer is not first and hp.producer.started and first.stopped  # type: ignore[attr-defined]
    labels = {"component": "relay", "error": "out_of_order_sequence_number"}
    assert metrics.sample(REBUILDS, labels) == 1


class FakeFaustProducer:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._producer: Any = FakeProducer(broker)

    def _new_producer(self) -> FakeProducer:
        return FakeProducer(self.broker)


class FakeApp:
    def __init__(self, broker: Broker) -> None:
        self.producer = FakeFaustProducer(broker)


def test_outcome_sender_heals_once_for_concurrent_lanes_and_resends() -> None:
    metrics = Metrics(["tier_elevation"])
    broker = Broker(failures=3)
    app = FakeApp(broker)
    sender = OutcomeSender(app, "outcomes", metrics)
    broken = app.producer._producer

    async def run() -> None:
        await asyncio.gather(*(sender.send(b"k", str(i).encode()) for i in range(3)))

    asyncio.run(run())
    assert sorted(broker.delivered) == [("outcomes", b"k", str(i).encode()) for i in range(3)]
    assert app.producer._producer is not broken and broken.stopped
    labels = {"component": "worker", "error": "out_of_order_sequence_number"}
    assert metrics.sample(REBUILDS, labels) == 1  # one rebuild for the three lanes


def test_outcome_sender_gives_up_after_one_rebuild() -> None:
    metrics = Metrics(["tier_elevation"])
    broker = Broker(failures=2)
    sender = OutcomeSender(FakeApp(broker), "outcomes", metrics)
    with pytest.raises(ProducerSendError):
        asyncio.run(sender.send(b"k", b"v"))
    assert broker.delivered == []


def test_outcome_sender_refuses_before_the_producer_started() -> None:
    app = FakeApp(Broker())
    app.producer._producer = None
    sender = OutcomeSender(app, "outcomes", Metrics(["tier_elevation"]))
    with pytest.raises(RuntimeError, match="not started"):
        asyncio.run(sender.send(b"k", b"v"))
