"""Consumer lag as operators watch it: ``pipeline lag`` and the lag gauges.

Per consumer group, topic and partition: the committed offset, the end offset, the lag in
messages and the lag in seconds (the age of the oldest unconsumed record, read at the
committed offset; 0 when caught up). Two kinds of consumer are measured: Kafka consumer
groups (the faust processor) and projections whose offsets live in Postgres
(``projection_checkpoints``). The outbox backlog (due rows not yet published) comes along.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

# The report's values live in lag_report; importers keep using this module's names.
from pipeline.components.lag_report import LagReport, PartitionLag, Source, pipeline_sources
from pipeline.domain.errors import BrokerError, PipelineError, StoreError
from pipeline.domain.events import utcnow
from pipeline.runtime import logs
from pipeline.runtime.metrics import Metrics
from pipeline.store.db import AsyncConn, connect_async
from pipeline.store.outbox import OutboxStore
from pipeline.store.projection import ProjectionStore

_log = logs.get("lag")
_FETCH_TIMEOUT_S = 5.0
T = TypeVar("T")
__all__ = [
    "LagMonitor",
    "LagProbe",
    "LagReport",
    "PartitionLag",
    "Source",
    "earliest_retained",
    "measure",
    "pipeline_sources",
]


class LagProbe:
    """Kafka and Postgres clients for repeated measurements; ``async with`` or start/close."""

    def __init__(
        self,
        client_kwargs: dict[str, Any],
        database_url: str | None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._kafka = client_kwargs
        self._url = database_url
        self._clock = clock
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._conn: AsyncConn | None = None

    async def __aenter__(self) -> LagProbe:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        try:
            self._admin = AIOKafkaAdminClient(**self._kafka)
            await self._admin.start()
            self._consumer = AIOKafkaConsumer(
                **self._kafka, group_id=None, enable_auto_commit=False
            )
            await self._consumer.start()
        except KafkaError as exc:
            await self.close()
            raise BrokerError(f"cannot reach Kafka for lag: {exc}") from exc
        if self._url:
            try:
                self._conn = await connect_async(
                    self._url, what="cannot connect to Postgres for lag"
                )
            except StoreError:
                await self.close()
                raise

    async def close(self) -> None:
        for closer in (
            self._consumer.stop if self._consumer else None,
            self._admin.close if self._admin else None,
            self._conn.close if self._conn else None,
        ):
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()
        self._admin = self._consumer = self._conn = None

    async def measure(
        self, sources: Sequence[Source], outbox: bool = True, within_s: float | None = None
    ) -> LagReport:
        """With ``within_s``, every broker call is bounded so the answer comes in about that
        long: what could not be measured in time is listed as ``unavailable``."""
        if self._admin is None or self._consumer is None:
            raise PipelineError("LagProbe.measure before start")
        now = self._clock()
        try:
            return await self._measure(self._admin, self._consumer, sources, outbox, now, within_s)
        except (KafkaError, TimeoutError) as exc:
            raise BrokerError(f"lag measurement failed: {exc!r}") from exc

    async def _measure(
        self,
        admin: AIOKafkaAdminClient,
        consumer: AIOKafkaConsumer,
        sources: Sequence[Source],
        outbox: bool,
        now: datetime,
        within_s: float | None = None,
    ) -> LagReport:
        budget = _Budget(within_s)
        topics = sorted({s.topic for s in sources})
        partitions, missing = await budget.retry(lambda: _partitions(admin, topics), 0.3)
        tps = [TopicPartition(t, p) for t in topics for p in partitions.get(t, [])]
        ends = await budget.per_partition(consumer.end_offsets, tps, 0.35)
        starts = await budget.per_partition(consumer.beginning_offsets, tps, 0.35)
        positions: list[tuple[Source, TopicPartition, int | None, int]] = []
        unavailable: list[tuple[str, str, int]] = []
        for src in sources:
            parts = partitions.get(src.topic, [])
            try:
                offsets = await budget.bound(self._committed(admin, src, parts), 0.5)
            except (TimeoutError, KafkaError):
                if within_s is None:
                    raise
                offsets = None
            for p in parts:
                tp = TopicPartition(src.topic, p)
                if offsets is None or tp not in ends or tp not in starts:
                    unavailable.append((src.group, src.topic, p))
                    continue
                committed = offsets.get(p)
                # The oldest unconsumed record: the one at the committed offset, or the log
                # start if retention removed it (or nothing was committed yet).
                base = starts[tp] if committed is None else max(committed, starts[tp])
                positions.append((src, tp, committed, base))
        stamps = await _timestamps(
            consumer,
            {tp: base for _s, tp, _c, base in positions if base < ends[tp]},
            budget.left(_FETCH_TIMEOUT_S),
        )
        now_ms = now.timestamp() * 1000
        out = []
        for src, tp, committed, base in positions:
            lag = max(0, ends[tp] - base)
            ts = stamps.get((tp, base))
            seconds = max(0.0, (now_ms - ts) / 1000) if lag and ts is not None else 0.0
            out.append(
                PartitionLag(src.group, tp.topic, tp.partition, committed, ends[tp], lag, seconds)
            )
        backlog = await OutboxStore(self._conn).backlog() if outbox and self._conn else None
        measured = {tp: o for tp, o in starts.items() if tp in ends}
        earliest = await _earliest(consumer, measured, ends, budget.left(_FETCH_TIMEOUT_S))
        return LagReport(now, out, backlog, missing, earliest, unavailable)

    async def _committed(
        self, admin: AIOKafkaAdminClient, src: Source, partitions: list[int]
    ) -> dict[int, int]:
        if src.offsets == "postgres":
            if self._conn is None:
                raise PipelineError(f"lag of projection {src.group} needs a database URL")
            return await ProjectionStore(self._conn, src.group).load_checkpoints(src.topic)
        if not partitions:
            return {}
        offsets = await admin.list_consumer_group_offsets(
            src.group, partitions=[TopicPartition(src.topic, p) for p in partitions]
        )
        return {tp.partition: om.offset for tp, om in offsets.items() if om.offset >= 0}


async def _partitions(
    admin: AIOKafkaAdminClient, topics: list[str]
) -> tuple[dict[str, list[int]], list[str]]:
    described = await admin.describe_topics(topics)
    found = {
        t["topic"]: sorted(p["partition"] for p in t["partitions"])
        for t in described
        if not t["error_code"]
    }
    return found, [t for t in topics if t not in found]


async def _timestamps(
    consumer: AIOKafkaConsumer, wanted: dict[TopicPartition, int], within_s: float
) -> dict[tuple[TopicPartition, int], float]:
    """Timestamp (ms) of the first record at or after each wanted offset, keyed by the ask."""
    if not wanted:
        return {}
    consumer.assign(list(wanted))
    for tp, offset in wanted.items():
        consumer.seek(tp, offset)
    found: dict[tuple[TopicPartition, int], float] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    pending = dict(wanted)
    while pending and loop.time() < deadline:
        batch = await consumer.getmany(*pending, timeout_ms=200, max_records=len(pending) * 50)
        for tp, messages in batch.items():
            if tp in pending and messages:
                found[(tp, pending.pop(tp))] = float(messages[0].timestamp)
    consumer.unsubscribe()
    return found


class _Budget:
    """Time left of a measurement; unbounded (the old behaviour) without ``within_s``."""

    def __init__(self, within_s: float | None) -> None:
        self._end = None if within_s is None else time.monotonic() + within_s
        self._total = within_s

    def left(self, default: float) -> float:
        if self._end is None:
            return default
        return max(0.05, min(default, self._end - time.monotonic()))

    def share(self, fraction: float) -> float | None:
        """``fraction`` of the whole budget, never past its end."""
        if self._end is None or self._total is None:
            return None
        return self.left(self._total * fraction)

    async def bound(self, aw: Awaitable[T], fraction: float) -> T:
        return await asyncio.wait_for(aw, self.share(fraction))

    async def retry(self, make: Callable[[], Awaitable[T]], fraction: float) -> T:
        """``bound``, asked again on a broker error while the share lasts: a metadata
        request sent to a broker that just died fails at once, another broker answers."""
        if self._end is None:
            return await make()
        until = time.monotonic() + (self.share(fraction) or 0.0)
        while True:
            try:
                return await asyncio.wait_for(make(), max(0.05, until - time.monotonic()))
            except KafkaError:
                if time.monotonic() + 0.1 >= until:
                    raise
                await asyncio.sleep(0.1)

    async def per_partition(
        self,
        ask: Callable[[list[TopicPartition]], Awaitable[dict[TopicPartition, int]]],
        tps: list[TopicPartition],
        fraction: float,
    ) -> dict[TopicPartition, int]:
        """One request per partition when bounded, so a partition whose leader is away
        costs only itself; the partitions that did not answer are left out."""
        if not tps:
            return {}
        if self._end is None:
            return await ask(tps)
        timeout = self.share(fraction)
        answers = await asyncio.gather(
            *(asyncio.wait_for(ask([tp]), timeout) for tp in tps), return_exceptions=True
        )
        out: dict[TopicPartition, int] = {}
        for a in answers:
            if isinstance(a, dict):
                out.update(a)
            elif not isinstance(a, (TimeoutError, KafkaError)):
                raise a
        return out


async def _earliest(
    consumer: AIOKafkaConsumer,
    starts: dict[TopicPartition, int],
    ends: dict[TopicPartition, int],
    within_s: float = _FETCH_TIMEOUT_S,
) -> dict[str, datetime | None]:
    """Per topic, the timestamp of the oldest record still on the log (at the log start)."""
    wanted = {tp: o for tp, o in starts.items() if o < ends[tp]}
    stamps = await _timestamps(consumer, wanted, within_s)
    out: dict[str, datetime | None] = {tp.topic: None for tp in starts}
    for (tp, _offset), ms in stamps.items():
        at = datetime.fromtimestamp(ms / 1000, tz=UTC)
        seen = out[tp.topic]
        out[tp.topic] = at if seen is None else min(seen, at)
    return out


async def earliest_retained(client_kwargs: dict[str, Any], topic: str) -> datetime | None:
    """The oldest retained record's timestamp of one topic (``pipeline status``)."""
    from pipeline.adapters.topics import partitions_for

    tps = [TopicPartition(topic, p) for p in await partitions_for(client_kwargs, topic)]
    consumer = AIOKafkaConsumer(**client_kwargs, group_id=None, enable_auto_commit=False)
    try:
        await consumer.start()
        starts = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        return (await _earliest(consumer, starts, ends))[topic]
    except KafkaError as exc:
        raise BrokerError(f"cannot read the log start of {topic}: {exc}") from exc
    finally:
        await consumer.stop()


async def measure(
    client_kwargs: dict[str, Any],
    database_url: str | None,
    sources: Sequence[Source],
    outbox: bool = True,
) -> LagReport:
    """One measurement with clients opened and closed for it (the CLI and tests)."""
    async with LagProbe(client_kwargs, database_url) as probe:
        return await probe.measure(sources, outbox)


class LagMonitor:
    """Updates the lag gauges every ``interval`` seconds until ``stop`` is set.

    With ``outbox=True`` it also sets the outbox backlog gauges (off by default: the relay
    samples those itself).

    Label values are bounded: groups and topics come from ``sources`` (configuration), and
    partitions are those of the configured topics, at most ``max_partitions`` per topic.
    """

    def __init__(
        self,
        *,
        client_kwargs: dict[str, Any],
        database_url: str | None,
        sources: Sequence[Source],
        metrics: Metrics,
        interval: float = 15.0,
        max_partitions: int = 1000,
        outbox: bool = False,
    ) -> None:
        self._kafka = client_kwargs
        self._url = database_url
        self._sources = list(sources)
        self._metrics = metrics
        self._interval = interval
        self._max_partitions = max_partitions
        self._outbox = outbox  # the relay samples the backlog gauges itself
        self.last: LagReport | None = None

    async def run(self, stop: asyncio.Event) -> None:
        probe: LagProbe | None = None
        logs.event(_log, "monitor_started", interval_s=self._interval)
        try:
            while not stop.is_set():
                try:
                    if probe is None:
                        probe = LagProbe(self._kafka, self._url)
                        await probe.start()
                    self.update(await probe.measure(self._sources, self._outbox))
                except PipelineError as exc:
                    logs.event(_log, "measure_failed", error=str(exc)[:500])
                    if probe is not None:
                        await probe.close()
                        probe = None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self._interval)
        finally:
            if probe is not None:
                await probe.close()
            logs.event(_log, "monitor_stopped")

    def update(self, report: LagReport) -> None:
        m = self._metrics
        for p in report.partitions:
            if p.partition >= self._max_partitions:
                continue
            labels = (p.group, p.topic, str(p.partition))
            m.consumer_lag.labels(*labels).set(p.lag)
            m.consumer_lag_seconds.labels(*labels).set(p.lag_seconds)
        if report.outbox is not None:
            m.outbox_backlog.set(report.outbox.due_unpublished)
            m.outbox_backlog_age.set(report.outbox.oldest_age_seconds)
        self.last = report
