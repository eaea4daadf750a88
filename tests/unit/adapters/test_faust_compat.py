"""Each private name pipeline/adapters/faust_compat.py relies on still exists and does what it says.

A faust, mode or aiokafka upgrade that moves one of them fails here, not in production.
"""

from __future__ import annotations

import inspect
import signal
from collections.abc import AsyncIterator
from typing import Any
from weakref import WeakSet

import faust
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import ConsumerMessage
from faust_factories import consumer_message, offline_app
from mode.worker import Worker as ModeWorker

from pipeline.adapters import faust_compat

TOPIC = "cmds"


@pytest.fixture
async def app(tmp_path: Any) -> AsyncIterator[faust.App]:
    # Built in a running loop: faust takes it (a loop of its own would be left unclosed).
    app = offline_app("compat-test", tmp_path)
    app.topic(TOPIC, key_serializer="raw", value_serializer="raw")
    yield app
    # The consumer's thread made a loop of its own that only a started thread would close.
    app.consumer._thread.thread_loop.close()


def message(offset: int, topic: str = TOPIC) -> ConsumerMessage:
    return consumer_message(offset, topic)


def acking_consumer(app: faust.App, monkeypatch: pytest.MonkeyPatch) -> Any:
    """faust's real aiokafka Consumer, with acks enabled for every topic (as for a topic an
    agent subscribed to; subscribing needs a running conductor)."""
    consumer = app.consumer
    monkeypatch.setattr(app.topics, "acks_enabled_for", lambda topic: True)
    return consumer


# --- filter_acks / forget_unacked ------------------------------------------------------------


async def test_fausts_consumer_keeps_the_ack_names_filter_acks_uses(app: faust.App) -> None:
    consumer = app.consumer
    assert isinstance(consumer, faust_consumer.Consumer)
    assert isinstance(consumer._unacked_messages, WeakSet)
    assert list(inspect.signature(faust_consumer.Consumer.ack).parameters) == ["self", "message"]
    # Message.ack reaches the consumer through an attribute lookup, so an instance attribute
    # replaces it; shutdown waits on _unacked_messages.
    assert "consumer.ack(self)" in inspect.getsource(ConsumerMessage.on_final_ack)
    assert "self._unacked_messages" in inspect.getsource(faust_consumer.Consumer.wait_empty)


@pytest.mark.parametrize(
    ("allowed", "acked"),
    [(True, [0]), (False, [])],  # a refused ack leaves nothing to commit
    ids=["allowed-reaches-faust", "refused-is-forgotten"],
)
async def test_filter_acks(
    app: faust.App, monkeypatch: pytest.MonkeyPatch, allowed: bool, acked: list[int]
) -> None:
    consumer = acking_consumer(app, monkeypatch)
    faust_compat.filter_acks(consumer, lambda m: allowed)
    m = message(0)
    consumer.track_message(m)
    assert set(consumer._unacked_messages) == {m}
    assert m.ack(consumer) is allowed
    assert consumer._acked[TP(TOPIC, 0)] == acked
    assert set(consumer._unacked_messages) == set()  # either way, nothing for shutdown to wait on


async def test_forget_unacked_drops_only_that_message(app: faust.App) -> None:
    consumer = app.consumer
    a, b = message(0), message(1)
    consumer.track_message(a)
    consumer.track_message(b)
    faust_compat.forget_unacked(consumer, a)
    assert set(consumer._unacked_messages) == {b}


# --- set_fetch_max_wait ----------------------------------------------------------------------


def test_faust_still_hard_codes_the_fetch_wait() -> None:
    source = inspect.getsource(faust_aiokafka.AIOKafkaConsumerThread)
    assert "def _create_worker_consumer(\n        self, transport" in source
    assert "fetch_max_wait_ms=1500," in source
    # aiokafka hands the attribute to its Fetcher when the consumer starts.
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in inspect.getsource(AIOKafkaConsumer.start)


async def test_set_fetch_max_wait_changes_the_worker_consumer(app: faust.App) -> None:
    faust_compat.set_fetch_max_wait(70)
    try:
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        try:
            assert isinstance(consumer, AIOKafkaConsumer)
            assert consumer._fetch_max_wait_ms == 70
        finally:
            await consumer.stop()
    finally:
        from pipeline.components.worker.app import FETCH_MAX_WAIT_MS

        faust_compat.set_fetch_max_wait(FETCH_MAX_WAIT_MS)  # what every worker sets


# --- the producer ----------------------------------------------------------------------------


def test_fausts_producer_keeps_the_names_the_sender_swaps() -> None:
    producer_cls = faust_aiokafka.Producer
    params = inspect.signature(producer_cls._new_producer).parameters
    assert next(iter(params)) == "self"
    assert all(p.default is not p.empty for p in list(params.values())[1:])
    assert "self._producer = self._new_producer()" in inspect.getsource(producer_cls.on_start)
    assert "self._ensure_producer()" in inspect.getsource(producer_cls.send)
    assert "return self._producer" in inspect.getsource(producer_cls._ensure_producer)


async def test_the_producer_functions_on_fausts_producer(app: faust.App) -> None:
    faust_producer = app.producer
    assert faust_compat.aiokafka_producer(faust_producer) is None  # not started
    fresh = faust_compat.new_aiokafka_producer(faust_producer)
    try:
        assert isinstance(fresh, AIOKafkaProducer)
        faust_compat.install_aiokafka_producer(faust_producer, fresh)
        assert faust_compat.aiokafka_producer(faust_producer) is fresh
    finally:
        await fresh.stop()


# --- the worker's stop signal ----------------------------------------------------------------


def test_modes_signal_handlers_go_through_schedule_shutdown() -> None:
    assert "_schedule_shutdown" in ModeWorker.__dict__
    params = list(inspect.signature(ModeWorker._schedule_shutdown).parameters)
    assert params == ["self", "signal"]
    assert "self._schedule_shutdown(signal.SIGTERM)" in inspect.getsource(ModeWorker._on_sigterm)
    assert "self._schedule_shutdown(signal.SIGINT)" in inspect.getsource(ModeWorker._on_sigint)


async def test_the_stop_hook_runs_before_modes_shutdown(
    app: faust.App, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, signal.Signals]] = []

    class Recorder(faust_compat.StopSignalWorker):
        def on_stop_signal(self, signal: signal.Signals) -> None:
            calls.append(("hook", signal))

    def mode_shutdown(self: Any, signal: signal.Signals) -> None:
        calls.append(("mode", signal))

    monkeypatch.setattr(ModeWorker, "_schedule_shutdown", mode_shutdown)
    worker = Recorder(app, loglevel="INFO", quiet=True)
    worker._on_sigterm()
    worker._on_sigint()
    assert calls == [
        ("hook", signal.SIGTERM),
        ("mode", signal.SIGTERM),
        ("hook", signal.SIGINT),
        ("mode", signal.SIGINT),
    ]


# --- names and clients -----------------------------------------------------------------------


async def test_leader_topic_name_is_fausts(app: faust.App) -> None:
    assert faust_compat.leader_topic_name(app.conf.id) == app._leader_assignor._leader_topic_name
    assert faust_compat.leader_topic_name("g") == "g-__assignor-__leader"


async def test_the_admin_clients_kafka_client_can_ask_one_broker() -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers="127.0.0.1:1")
    try:
        client = faust_compat.admin_kafka_client(admin)
        assert isinstance(client, AIOKafkaClient)
        assert list(inspect.signature(client.send).parameters)[:2] == ["node_id", "request"]
        assert inspect.iscoroutinefunction(client.send)
        assert inspect.iscoroutinefunction(client.ready)
        assert callable(client.cluster.brokers)
    finally:
        await admin.close()
