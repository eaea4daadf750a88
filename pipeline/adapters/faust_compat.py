"""Every use of faust's, mode's and aiokafka's private API in the package, in one place.

Pinned against faust-streaming 0.15.3, mode-streaming 0.7.1 and aiokafka 0.14.0. Each function
names the private attribute it relies on; tests/unit/adapters/test_faust_compat.py fails when an
upgrade moves or renames one, so an upgrade is checked here and nowhere else.
"""

from __future__ import annotations

import asyncio
import inspect
import signal
from collections.abc import Callable, Generator
from typing import Any

import faust
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from mode.services import WaitResults

# --- the consumer's acknowledgements (faust.transport.consumer.Consumer) ---------------------


def filter_acks(consumer: Any, allow: Callable[[Any], bool]) -> None:
    """Route ``consumer.ack`` through ``allow(message)``; a refused message is not acked.

    faust calls ``Consumer.ack`` (an instance attribute lookup, so replacing it on the
    instance is seen) from ``Message.ack`` and from its pause-time skip. A refused message is
    also dropped from the set that shutdown waits on (:func:`forget_unacked`).
    """
    original = consumer.ack

    def guarded(message: Any) -> bool:
        if not allow(message):
            forget_unacked(consumer, message)
            return False
        return bool(original(message))

    consumer.ack = guarded


def forget_unacked(consumer: Any, message: Any) -> None:
    """Drop ``message`` from ``Consumer._unacked_messages``, the WeakSet ``wait_empty`` waits
    on at shutdown, so a stop does not wait for an ack that will never come."""
    consumer._unacked_messages.discard(message)


# --- the consumer's per-message hand-over (faust.transport.consumer.Consumer) ---------------


def deliver_eagerly(consumer: Any) -> None:
    """Hand a fetched message to the streams in place when that does not have to wait.

    faust's ``Consumer._drain_messages`` delivers each message with
    ``await self.wait_first(callback(message), self.suspend_flow.wait())`` (mode's
    ``Service.wait_first``): four tasks and an ``asyncio.wait`` per message, so that a
    delivery blocked on a full stream buffer is abandoned when flow is suspended for a
    rebalance. Most deliveries never wait; those now run to completion in the drain loop.
    One that does wait goes on as a task under the original ``wait_first``, so the
    abandon-on-suspend rule still holds. Patches the instance's ``wait_first``; idempotent.
    """
    if getattr(consumer, "_pipeline_eager_delivery", False):
        return
    original = consumer.wait_first
    suspend_flow = consumer.suspend_flow

    async def wait_first(*coros: Any, timeout: Any = None) -> Any:  # noqa: ASYNC109 (mode's signature)
        if (
            len(coros) == 2
            and timeout is None
            and inspect.iscoroutine(coros[0])
            and getattr(coros[1], "__qualname__", "") == "Event.wait"
            and not suspend_flow.is_set()
        ):
            delivery, flow = coros
            try:
                waiting_on = delivery.send(None)
            except StopIteration as done:
                flow.close()
                await _held(consumer, original, suspend_flow)
                return WaitResults([delivery], [done.value], False)
            except BaseException:
                flow.close()
                raise
            results = await original(_Resumed(delivery, waiting_on), flow)
            await _held(consumer, original, suspend_flow)
            return results
        return await original(*coros, timeout=timeout)

    consumer.wait_first = wait_first
    consumer._pipeline_eager_delivery = True


def hold_delivery_under_pressure(
    consumer: Any, queue: Any, on_hold: Callable[[], None] = lambda: None
) -> None:
    """Hold faust's drain loop while ``queue`` (a stream's buffer) is under pressure, so the
    fetch is never parked on a partial set of partitions.

    faust's back-pressure takes a partition whose stream buffer is past the high mark out of
    ``Consumer._active_partitions`` (``on_buffer_full``) and puts it back when the buffer
    drains (``on_buffer_drop``). The drain loop meanwhile asks for the next records: the
    consumer thread's ``Fetcher.fetched_records`` then waits on the remaining partitions with
    the 1 s timeout ``_drain_messages`` hard-codes, and putting a partition back does not
    wake it (aiokafka fetches nothing more for a partition with records buffered, so no new
    records arrive to wake it); with every partition out, faust sleeps a second instead. At
    a burst the worker then did nothing for up to a second each time its buffer filled
    (issue 16). Held here, the loop asks for more only after the buffer has drained and
    every partition is back. faust's own partition bookkeeping is left as it is.

    Uses mode's ``FlowControlQueue.on_pressure_high``/``on_pressure_drop`` hooks (no-ops
    there, called as the buffer crosses its high and low marks) and works through
    :func:`deliver_eagerly`'s ``wait_first``. A hold ends early when flow is suspended (a
    rebalance), as faust's own delivery wait does. ``on_hold()`` runs once per hold.
    """
    previous: asyncio.Event | None = getattr(consumer, "_pipeline_pressure_gate", None)
    if previous is not None:
        previous.set()  # a loop held on an agent's old buffer goes on
    gate = asyncio.Event()
    gate.set()

    def high() -> None:  # called for each partition that delivers past the high mark
        if gate.is_set():
            gate.clear()
            on_hold()

    queue.on_pressure_high = high
    queue.on_pressure_drop = gate.set
    consumer._pipeline_pressure_gate = gate


async def _held(consumer: Any, original: Any, suspend_flow: Any) -> None:
    gate: asyncio.Event | None = getattr(consumer, "_pipeline_pressure_gate", None)
    if gate is not None and not gate.is_set() and not suspend_flow.is_set():
        await original(gate.wait(), suspend_flow.wait())


class _Resumed:
    """A coroutine that already ran up to its first wait, awaitable for the rest of its run.

    Passes on what the coroutine yields and what the awaiting task sends or throws back
    (its cancellation included), as ``await`` would have.
    """

    def __init__(self, coro: Any, waiting_on: Any) -> None:
        self._coro = coro
        self._waiting_on = waiting_on

    def __await__(self) -> Generator[Any, None, Any]:
        coro, waiting_on = self._coro, self._waiting_on
        while True:
            try:
                yield waiting_on
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                try:
                    waiting_on = coro.throw(exc)
                except StopIteration as done:
                    return done.value
                continue
            try:
                waiting_on = coro.send(None)
            except StopIteration as done:
                return done.value


# --- the worker consumer's fetch wait (faust.transport.drivers.aiokafka) ---------------------


def set_fetch_max_wait(ms: int) -> None:
    """Make faust's worker consumers use ``fetch_max_wait_ms=ms`` (faust hard-codes 1500).

    Wraps ``AIOKafkaConsumerThread._create_worker_consumer(transport)`` and sets the built
    ``AIOKafkaConsumer._fetch_max_wait_ms``, which aiokafka hands to its Fetcher at
    ``start()``. Idempotent: the latest ``ms`` wins.
    """
    from faust.transport.drivers import aiokafka as faust_aiokafka

    thread_cls: Any = faust_aiokafka.AIOKafkaConsumerThread
    thread_cls._pipeline_fetch_max_wait_ms = ms
    if getattr(thread_cls, "_pipeline_unpatched_create", None) is not None:
        return
    original = thread_cls._create_worker_consumer

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = thread_cls._pipeline_fetch_max_wait_ms
        return consumer

    thread_cls._pipeline_unpatched_create = original
    thread_cls._create_worker_consumer = create


# --- the app's aiokafka producer (faust.transport.drivers.aiokafka.Producer) ----------------


def aiokafka_producer(faust_producer: Any) -> AIOKafkaProducer | None:
    """The aiokafka producer faust's Producer sends with (``_producer``, set at start)."""
    producer: AIOKafkaProducer | None = getattr(faust_producer, "_producer", None)
    return producer


def new_aiokafka_producer(faust_producer: Any) -> AIOKafkaProducer:
    """A new aiokafka producer with faust's settings (``Producer._new_producer()``)."""
    producer: AIOKafkaProducer = faust_producer._new_producer()
    return producer


def install_aiokafka_producer(faust_producer: Any, producer: AIOKafkaProducer) -> None:
    """Make faust's Producer send with ``producer`` from now on."""
    faust_producer._producer = producer


# --- the worker's signal handling (mode.Worker) ---------------------------------------------


class StopSignalWorker(faust.Worker):
    """faust's Worker with a hook that runs when SIGTERM or SIGINT asks it to stop.

    Overrides ``mode.Worker._schedule_shutdown(signal)``, which both signal handlers call.
    """

    def _schedule_shutdown(self, signal: signal.Signals) -> None:
        self.on_stop_signal(signal)
        super()._schedule_shutdown(signal)

    def on_stop_signal(self, signal: signal.Signals) -> None:
        """Runs before faust starts its shutdown."""


# --- topic names faust derives itself --------------------------------------------------------


def leader_topic_name(app_id: str) -> str:
    """The topic faust's LeaderAssignor creates for app ``app_id`` (its private
    ``_leader_topic_name``; building that service here would bind it to the wrong loop)."""
    return f"{app_id}-__assignor-__leader"


# --- aiokafka's admin client -----------------------------------------------------------------


def admin_kafka_client(admin: AIOKafkaAdminClient) -> Any:
    """The admin client's ``AIOKafkaClient`` (``_client``): aiokafka offers no per-broker
    metadata call, and this client can ``send`` a request to a chosen node."""
    return admin._client
