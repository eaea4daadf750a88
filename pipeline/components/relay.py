"""The relay: due outbox rows -> command events on the ``propagations`` topic.

A batch is claimed with ``FOR UPDATE SKIP LOCKED``, published, and stamped only after the
broker acknowledged every message, all inside one transaction: a crash before the stamp
leaves the rows due (they are published again, and the processor de-duplicates), and two
relays never publish the same row at the same time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from pipeline.adapters.kafka_producer import HealingProducer
from pipeline.domain import codec
from pipeline.domain.errors import StoreError
from pipeline.domain.events import Command, utcnow
from pipeline.runtime import logs
from pipeline.runtime.config import RESCUE_STUCK_AFTER
from pipeline.runtime.metrics import Metrics
from pipeline.store.db import AsyncConn, connect_async
from pipeline.store.outbox import OutboxStore, notifications

SLOW_CLAIM_S = 0.2  # a healthy claim of 500 rows takes a few milliseconds
BACKLOG_SAMPLE_INTERVAL = 5.0  # seconds; the backlog query is cheap but not free
_log = logs.get("relay")


def make_producer(client_kwargs: dict[str, Any]) -> AIOKafkaProducer:
    # Idempotent, acks=all: a broker-side retry never duplicates or reorders within a key.
    return AIOKafkaProducer(
        **client_kwargs,
        enable_idempotence=True,
        acks="all",
        linger_ms=2,
        max_batch_size=256 * 1024,
        compression_type=None,
    )


class Relay:
    def __init__(
        self,
        *,
        database_url: str,
        producer: AIOKafkaProducer | HealingProducer,
        topic: str,
        metrics: Metrics,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        rescue_after: timedelta = RESCUE_STUCK_AFTER,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._url = database_url
        self._producer = producer
        self._topic = topic
        self._metrics = metrics
        self._batch = batch_size
        self._poll = poll_interval
        self._rescue_after = rescue_after
        self._clock = clock
        self._wake = asyncio.Event()
        self._conn: AsyncConn | None = None
        self._backlog_sampled = float("-inf")
        self._last_ok = float("-inf")

    async def relay_once(self) -> int:
        """Claim, publish and stamp one batch; returns how many rows were published."""
        conn = await self._connection()
        store = OutboxStore(conn)
        try:
            async with store.transaction():
                started = time.monotonic()
                rows = await store.claim(self._batch)
                claim_s = time.monotonic() - started
                if not rows:
                    self._last_ok = time.monotonic()
                    return 0
                now = self._clock()
                futures = []
                for row in rows:
                    cmd = Command.from_row(row, now)
                    futures.append(
                        await self._producer.send(
                            self._topic, codec.encode(cmd), key=cmd.key.encode()
                        )
                    )
                await asyncio.gather(*futures)
                await store.stamp_published([r.id for r in rows], self._rescue_after)
        except StoreError:
            await self._reset_connection()
            raise
        self._last_ok = time.monotonic()
        if claim_s > SLOW_CLAIM_S:
            await self._on_slow_claim(claim_s)
        rescued = [r.id for r in rows if r.rescued]
        self._metrics.relay_published.inc(len(rows))
        if rescued:
            self._metrics.relay_rescued.inc(len(rescued))
            logs.event(_log, "rescued", count=len(rescued), ids=rescued[:20])
        return len(rows)

    async def run(self, stop: asyncio.Event) -> None:
        logs.event(
            _log,
            "started",
            topic=self._topic,
            batch_size=self._batch,
            poll_interval_s=self._poll,
            rescue_stuck_after_s=self._rescue_after.total_seconds(),
        )
        listener = asyncio.create_task(self._listen(stop))
        failures = 0
        try:
            while not stop.is_set():
                # Cleared before the claim, not before the nap: a NOTIFY that arrives while
                # this batch is claimed or published must wake the next round, or its row
                # waits for the poll interval.
                self._wake.clear()
                try:
                    n = await self.relay_once()
                    failures = 0
                except (StoreError, KafkaError) as exc:
                    if isinstance(self._producer, HealingProducer):
                        # A broken idempotent producer never recovers by itself: a new one,
                        # and the rows of the failed batch (still due) go out at once.
                        with contextlib.suppress(KafkaError):
                            if await self._producer.heal(exc):
                                continue
                    failures += 1
                    pause = min(0.2 * 2**failures, 10.0)
                    logs.event(_log, "batch_failed", error=str(exc)[:500], retry_in_s=pause)
                    await _sleep_or_stop(stop, pause)
                    continue
                await self._maybe_sample_backlog()
                if n >= self._batch:
                    continue  # more is waiting: no nap between full batches
                await self._nap(stop)
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener
            await self._reset_connection()
            logs.event(_log, "stopped")

    async def _maybe_sample_backlog(self) -> None:
        now = time.monotonic()
        if now - self._backlog_sampled < BACKLOG_SAMPLE_INTERVAL:
            return
        self._backlog_sampled = now
        try:
            backlog = await OutboxStore(await self._connection()).backlog()
        except StoreError as exc:
            logs.event(_log, "backlog_sample_failed", error=str(exc)[:300])
            return
        self._metrics.outbox_backlog.set(backlog.due_unpublished)
        self._metrics.outbox_backlog_age.set(backlog.oldest_age_seconds)

    async def _on_slow_claim(self, seconds: float) -> None:
        """A slow claim is a sign of stale statistics: refresh them (the claim's plan does not
        depend on them, but the backlog and console queries do)."""
        analyzed = await OutboxStore(await self._connection()).analyze()
        logs.event(
            _log,
            "slow_claim",
            claim_s=round(seconds, 3),
            analyzed=analyzed,
        )

    def healthy(self, within: float) -> bool:
        """Did a claim (with or without rows) succeed in the last ``within`` seconds?"""
        return time.monotonic() - self._last_ok <= within

    async def close(self) -> None:
        await self._reset_connection()

    async def _nap(self, stop: asyncio.Event) -> None:
        waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait(waiters, timeout=self._poll, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    async def _listen(self, stop: asyncio.Event) -> None:
        """LISTEN for inserts; reconnects on failure, the poll covers any gap."""
        while not stop.is_set():
            try:
                async for _ in notifications(self._url):
                    self._wake.set()
            except StoreError as exc:
                logs.event(_log, "listen_failed", error=str(exc)[:300])
                await _sleep_or_stop(stop, 1.0)

    async def _connection(self) -> AsyncConn:
        if self._conn is None or self._conn.closed:
            self._conn = await connect_async(self._url)
        return self._conn

    async def _reset_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
