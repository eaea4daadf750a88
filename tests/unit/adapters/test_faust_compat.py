"""Each private name pipeline/adapters/faust_compat.py relies on still exists and does what it says.

A faust, mode or aiokafka upgrade that moves one of them fails here, not in production.
"""

from __future__ import annotations

import asyncio
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
from mode.services import Service as ModeService
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


# --- deliver_eagerly -------------------------------------------------------------------------


def test_fausts_drain_loop_hands_each_message_over_through_wait_first() -> None:
    source = " ".join(inspect.getsource(faust_consumer.Consumer._drain_messages).split())
    assert "await self.wait_first( callback(message), self.suspend_flow.wait() )" in source
    params = inspect.signature(ModeService.wait_first).parameters
    assert list(params) == ["self", "coros", "timeout"]


async def test_the_suspend_flow_wait_is_recognised(app: faust.App) -> None:
    waiting = app.consumer.suspend_flow.wait()
    assert waiting.__qualname__ == "Event.wait"
    waiting.close()


class TaskCounter:
    def __init__(self) -> None:
        self.created = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        self.created += 1
        return asyncio.Task(coro, loop=loop, **kwargs)


async def test_a_delivery_that_does_not_wait_runs_in_place(app: faust.App) -> None:
    consumer = app.consumer
    faust_compat.deliver_eagerly(consumer)
    faust_compat.deliver_eagerly(consumer)  # idempotent
    delivered: list[int] = []

    async def deliver() -> str:
        delivered.append(1)
        return "ok"

    loop = asyncio.get_running_loop()
    counter = TaskCounter()
    loop.set_task_factory(counter)
    try:
        result = await consumer.wait_first(deliver(), consumer.suspend_flow.wait())
    finally:
        loop.set_task_factory(None)
    assert delivered == [1]
    assert counter.created == 0  # faust's wait_first makes four
    assert result.results == ["ok"] and not result.stopped


async def test_a_delivery_that_waits_finishes_as_a_task(app: faust.App) -> None:
    consumer = app.consumer
    faust_compat.deliver_eagerly(consumer)
    gate: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    steps: list[str] = []

    async def deliver() -> int:
        steps.append("before")
        value = await gate
        steps.append(f"after {value}")
        return value

    waiting = asyncio.ensure_future(consumer.wait_first(deliver(), consumer.suspend_flow.wait()))
    await asyncio.sleep(0.01)
    assert steps == ["before"] and not waiting.done()
    gate.set_result(7)
    result = await asyncio.wait_for(waiting, 1)
    assert steps == ["before", "after 7"]
    assert result.results == [7]


@pytest.mark.parametrize("waits_by", ["future", "yielding"])
async def test_a_waiting_delivery_is_abandoned_when_flow_is_suspended(
    app: faust.App, waits_by: str
) -> None:
    consumer = app.consumer
    faust_compat.deliver_eagerly(consumer)
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    ends: list[str] = []

    async def deliver() -> None:
        try:
            if waits_by == "future":
                await gate  # a full stream buffer: the put waits on a future
            else:
                while True:  # noqa: ASYNC110 (the cancellation arrives between steps)
                    await asyncio.sleep(0)
            ends.append("delivered")
        except asyncio.CancelledError:
            ends.append("cancelled")
            raise

    waiting = asyncio.ensure_future(consumer.wait_first(deliver(), consumer.suspend_flow.wait()))
    await asyncio.sleep(0.01)
    consumer.suspend_flow.set()
    try:
        await asyncio.wait_for(waiting, 1)
        await asyncio.sleep(0.01)
    finally:
        consumer.suspend_flow.clear()
    assert ends == ["cancelled"]  # as faust's own wait_first would have


async def test_a_failing_delivery_raises_from_wait_first(app: faust.App) -> None:
    consumer = app.consumer
    faust_compat.deliver_eagerly(consumer)

    async def deliver() -> None:
        raise ValueError("bad message")

    with pytest.raises(ValueError, match="bad message"):
        await consumer.wait_first(deliver(), consumer.suspend_flow.wait())


# --- hold_delivery_under_pressure -----------------------------------------------------------


def test_fausts_conductor_puts_into_the_channel_queue_with_the_pressure_callbacks() -> None:
    from faust.transport import conductor

    source = " ".join(inspect.getsource(conductor.ConductorCompiler.build).split())
    assert "queue = chan.queue" in source
    assert "queue.put_nowait_enhanced( event, on_pressure_high=on_pressure_high," in source
    # and why the hold is needed: faust's remedy drops the partition from the next fetch
    full = " ".join(inspect.getsource(faust_consumer.Consumer.on_buffer_full).split())
    assert "active_partitions.discard(tp)" in full


class Partition:
    def high(self) -> None:
        pass

    def drop(self) -> None:
        pass


ONE_PARTITION = Partition()


async def test_modes_queue_calls_its_pressure_hooks_at_the_high_and_low_marks(
    app: faust.App,
) -> None:
    queue = app.FlowControlQueue(maxsize=10)  # high mark 8 (10 / 1.25), low mark 4 (10 * 0.4)
    calls: list[tuple[str, int]] = []
    queue.on_pressure_high = lambda: calls.append(("high", queue.qsize()))
    queue.on_pressure_drop = lambda: calls.append(("drop", queue.qsize()))
    partition = Partition()  # the conductor's callbacks for one partition
    for i in range(10):
        queue.put_nowait_enhanced(
            i, on_pressure_high=partition.high, on_pressure_drop=partition.drop
        )
    assert calls == [("high", 8)]  # once per partition until the drop
    for _ in range(6):  # a get looks at the size before it takes
        queue.get_nowait()
    assert calls == [("high", 8)]
    queue.get_nowait()
    assert calls == [("high", 8), ("drop", 4)]


def pressing(queue: Any, value: int) -> Any:
    """A delivery as the conductor makes it: the value into the stream's buffer."""

    async def deliver() -> int:
        p = ONE_PARTITION
        queue.put_nowait_enhanced(value, on_pressure_high=p.high, on_pressure_drop=p.drop)
        return value

    return deliver()


async def test_a_delivery_that_fills_the_buffer_holds_the_loop_until_it_drains(
    app: faust.App,
) -> None:
    consumer = app.consumer
    faust_compat.deliver_eagerly(consumer)
    queue = app.FlowControlQueue(maxsize=10)
    holds: list[int] = []
    faust_compat.hold_delivery_under_pressure(consumer, queue, lambda: holds.append(queue.qsize()))
    for i in range(8):  # below the high mark: each returns at once
        done = await asyncio.wait_for(
            consumer.wait_first(pressing(queue, i), consumer.suspend_flow.wait()), 1
        )
        assert done.results == [i]
    ninth = asyncio.ensure_future(
        consumer.wait_first(pressing(queue, 8), consumer.suspend_flow.wait())
    )
    await asyncio.sleep(0.01)
    assert queue.qsize() == 9 and not ninth.done()  # delivered, and the loop held
    assert holds == [8]  # counted once, as the delivery crossed the high mark
    queue.on_pressure_high()  # another partition's delivery past the mark: the same hold
    assert holds == [8]
    for _ in range(5):
        queue.get_nowait()
        await asyncio.sleep(0)
    assert queue.qsize() == 4 and not ninth.done()  # no get has seen the low mark yet
    queue.get_nowait()
    result = await asyncio.wait_for(ninth, 1)
    assert result.results == [8]
    assert holds == [8]


async def held_at_the_high_mark(app: faust.App, queue: Any) -> asyncio.Future[Any]:
    """The drain loop's ninth delivery into ``queue`` (of 10), held by the hold."""
    consumer = app.consumer
    faust_compat.deliver_eagerly(consumer)
    faust_compat.hold_delivery_under_pressure(consumer, queue)
    for i in range(8):
        await consumer.wait_first(pressing(queue, i), consumer.suspend_flow.wait())
    held = asyncio.ensure_future(
        consumer.wait_first(pressing(queue, 8), consumer.suspend_flow.wait())
    )
    await asyncio.sleep(0.01)
    assert not held.done()
    return held


async def test_a_hold_ends_when_flow_is_suspended(app: faust.App) -> None:
    consumer = app.consumer
    queue = app.FlowControlQueue(maxsize=10)
    held = await held_at_the_high_mark(app, queue)
    consumer.suspend_flow.set()
    try:
        result = await asyncio.wait_for(held, 1)
    finally:
        consumer.suspend_flow.clear()
    assert result.results == [8] and queue.qsize() == 9  # a rebalance clears the buffer


async def test_a_new_buffer_releases_a_loop_held_on_the_old_one(app: faust.App) -> None:
    held = await held_at_the_high_mark(app, app.FlowControlQueue(maxsize=10))
    faust_compat.hold_delivery_under_pressure(app.consumer, app.FlowControlQueue(maxsize=10))
    result = await asyncio.wait_for(held, 1)  # an agent restarted with a buffer of its own
    assert result.results == [8]


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
