"""The faust-streaming processor: ``propagations`` -> handlers -> ``propagation-outcomes``.

One agent instance (faust concurrency 1) per worker process feeds ``OrderedLanes`` a batch
at a time: many commands in flight, one at a time per resource, acknowledged in offset
order, so faust never commits past a command whose outcome is not yet in the producer
(faust flushes the producer before each commit). faust's own agent concurrency > 1 is
avoided: it can commit past an in-flight message (faust-streaming issue #606).

Redelivered (propagation_id, attempt) pairs are recognised from a bounded memory of the
answers given, read back from the outcome topic at each assignment (recall.py), so
de-duplication survives restarts and rebalances without a changelog record per command.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, NoReturn

import faust

from pipeline.adapters.faust_compat import (
    deliver_eagerly,
    hold_delivery_under_pressure,
    set_fetch_max_wait,
)
from pipeline.adapters.replication import Replication
from pipeline.components.worker.ack_guard import AckGuard
from pipeline.components.worker.faust_app import new_faust_app
from pipeline.components.worker.lanes import Entry, OrderedLanes
from pipeline.components.worker.outcome_sender import OutcomeSender
from pipeline.components.worker.processor import CommandProcessor
from pipeline.components.worker.progress import (
    STALL_AFTER_S,
    EndOffsets,
    PartitionView,
    stalled_partitions,
)
from pipeline.components.worker.recall import recall
from pipeline.components.worker.rounds import Rounds
from pipeline.components.worker.seen import BoundedDict
from pipeline.components.worker.sequencer import Admit, Sequencer
from pipeline.components.worker.shutdown import BoundedStopWorker, exit_not_drained
from pipeline.domain.decide import RetryPolicy
from pipeline.domain.handlers import ProvisionerPort
from pipeline.domain.registry import build_registry
from pipeline.runtime import logs
from pipeline.runtime.config import DEDUPE_MAX_ENTRIES, DEDUPE_RECALL_WINDOW, Config
from pipeline.runtime.exit_codes import ExitCode, exit_now
from pipeline.runtime.gc_tuning import freeze_after_startup
from pipeline.runtime.httpd import Health
from pipeline.runtime.metrics import Metrics

_log = logs.get("worker")
RECOVERY_STALL_S = 60.0  # table recovery here takes well under a second per 10k entries
DRAIN_TIMEOUT_S = 15.0  # in-flight commands at stop; the stop deadline (25 s) bounds the rest
RECALL_TIMEOUT_S = 60.0  # reading back at most DEDUPE_MAX_ENTRIES outcomes per partition
TAKE_WITHIN_S = 0.005  # a batch waits this long for more commands (2 ms measured worse)
# A batch is at most this share of the commands in flight, so later batches' calls go out
# while one waits for its replies and acks, and a batch stuck on a slow call holds a quarter
# of the slots. Bench (issue 16), end to end: 512 in flight in batches of 128, 5,490-5,661/s;
# 512 in batches of 256, 5,198-5,755/s; 128 in batches of 64, 4,938-5,319/s.
UNITS_IN_FLIGHT = 4


# faust builds its consumer with fetch_max_wait_ms=1500, hard-coded. aiokafka keeps one fetch
# in flight per broker, so a partition whose records arrive while a fetch for other, quiet
# partitions is parked on the broker waits up to that long: the bench saw commands sit for
# ~1.5 s before the worker got them at 500/s. A shorter wait costs a few empty fetches a second.
FETCH_MAX_WAIT_MS = 50


class WorkerApp:
    """The worker's faust app and the state its agent, timers and signal handlers share."""

    def __init__(
        self,
        cfg: Config,
        metrics: Metrics,
        port_factory: Callable[[], ProvisionerPort],
        health: Health | None = None,
        replication: Replication | None = None,
    ) -> None:
        set_fetch_max_wait(FETCH_MAX_WAIT_MS)
        want = replication or Replication(cfg.replication_factor or 1, cfg.min_insync_replicas or 1)
        self.cfg = cfg
        self.metrics = metrics
        self.app = new_faust_app(cfg, want)
        commands = self.app.topic(
            cfg.commands_topic, key_serializer="raw", value_serializer="raw", allow_empty=True
        )
        self.seen: BoundedDict[bytes, bytes] = BoundedDict(DEDUPE_MAX_ENTRIES)
        self.outcome_sender = OutcomeSender(self.app, cfg.outcomes_topic, metrics)
        self.lanes = OrderedLanes(cfg.worker_concurrency, self.fatal)
        self.take_size = max(1, cfg.worker_concurrency // UNITS_IN_FLIGHT)
        self.guard = AckGuard(cfg.commands_topic)
        self.sequencer = Sequencer()
        self.baselines_set = asyncio.Event()
        self.end_offsets = EndOffsets(cfg.kafka_client_kwargs(), cfg.commands_topic)
        self.admitted_at: dict[int, float] = {}
        self.recovery_stalled_since: float | None = None
        self._port_factory = port_factory
        self._port: ProvisionerPort | None = None
        self._processor: CommandProcessor | None = None
        self._debug = _log.isEnabledFor(logging.DEBUG)
        self.rounds = Rounds(self.processor, self.seen, self.metrics, self.outcome_sender)
        self._wire(commands, health)

    def _wire(self, commands: Any, health: Health | None) -> None:
        app = self.app
        # One agent instance (faust concurrency=1) reads every assigned partition in order and
        # hands commands to the lanes a batch at a time; acks are manual and in offset order.
        app.agent(commands, concurrency=1, name="process-commands")(self.process)
        app.timer(5.0)(self.progress_watchdog)
        app.timer(5.0)(self.recovery_watchdog)
        if health is not None:
            app.timer(1.0)(self.beat_for(health))
            health.set_ready_check(self.ready)
        app.on_partitions_assigned.connect(self.on_assigned)  # type: ignore[arg-type]
        app.on_partitions_revoked.connect(self.on_revoked)  # type: ignore[arg-type]
        app.on_before_shutdown.connect(self.on_shutdown)  # type: ignore[arg-type]

    def processor(self) -> CommandProcessor:
        if self._processor is None:
            self._port = self._port_factory()
            self._processor = CommandProcessor(
                registry=build_registry(),
                port=self._port,
                policy=RetryPolicy(self.cfg.max_attempts, self.cfg.backoff_scale),
                metrics=self.metrics,
                topic=self.cfg.commands_topic,
            )
            freeze_after_startup()  # built at the first command: the gRPC client stays too
        return self._processor

    @staticmethod
    def _trace(event: str, **fields: Any) -> None:
        logs.event(_log, event, logging.DEBUG, **fields)

    async def process(self, stream: Any) -> None:
        # A batch is the unit of work: one task and one batch of provisioner calls for all its
        # commands, not a task and futures each (issue 16). take_events acknowledges a
        # batch itself when it takes the next; AckGuard refuses those acks, and the lanes
        # acknowledge each command once its outcome is produced.
        # A full buffer holds faust's fetch loop instead of parking its fetch (issue 16).
        hold_delivery_under_pressure(
            self.app.consumer, stream.channel.queue, self.metrics.buffer_holds.inc
        )
        batches = stream.noack().take_events(self.take_size, TAKE_WITHIN_S)
        async for batch in batches:
            entries: list[Entry] = []
            # Round k holds the k-th command of each resource in the batch: the rounds run
            # one after another, so one resource's commands keep their order.
            rounds: list[list[bytes | None]] = []
            depth: dict[Hashable, int] = {}
            for event in batch:
                msg = event.message
                if not await self.admit(msg.partition, msg.offset):
                    continue
                key = (msg.partition, msg.key if msg.key is not None else msg.offset)
                k = depth.get(key, 0)
                depth[key] = k + 1
                if k == len(rounds):
                    rounds.append([])
                rounds[k].append(event.value)
                entries.append((key, msg.partition, functools.partial(self.guard.ack, event)))
            if entries:
                work = functools.partial(self.rounds.run, rounds)
                await self.lanes.submit_batch(entries, work)

    async def admit(self, partition: int, offset: int) -> bool:
        if self._debug:  # the check first: the hot path builds no fields when off
            self._trace("command_received", partition=partition, offset=offset)
        if not self.baselines_set.is_set():
            await self.baselines_set.wait()  # an assignment's baselines come from the broker
        verdict = self.sequencer.admit(partition, offset)
        if verdict is Admit.PROCESS:
            self.admitted_at[partition] = time.monotonic()
            return True
        if verdict is Admit.SEEK:
            await self.restart_for_gap(partition, self.sequencer.seek_to, offset)
        return False

    async def restart_for_gap(self, partition: int, expected: int | None, got: int) -> None:
        # faust dropped offsets before this one (its pause-time skip) and a seek does not
        # reliably bring them back. Nothing at or past the hole is acknowledged (AckGuard),
        # so restart from the committed offset, which is the hole.
        self.metrics.offset_gaps.labels(str(partition)).inc()
        await self.restart("offset_gap", partition=partition, expected=expected, got=got)

    async def restart(self, reason: str, **fields: Any) -> NoReturn:
        # Finish what is in flight, commit it, and exit; the supervisor (`pipeline run`)
        # restarts the worker and the new process starts at the committed offsets.
        logs.event(_log, reason, logging.WARNING, action="restart", **fields)
        await self.lanes.drain()
        with contextlib.suppress(Exception):
            await self.app.consumer.commit()
        exit_now(ExitCode.RESTART)

    async def fatal(self, exc: BaseException) -> None:
        # An outcome that could not be produced: end the worker rather than move on. The
        # unacknowledged command is delivered again after the restart. Not app.crash():
        # faust then neither exits nor recovers (issue 12); a supervisor restarts an exit.
        logs.event(_log, "fatal", level=logging.ERROR, error=repr(exc)[:500])
        exit_not_drained("fatal", error=repr(exc)[:200])

    async def progress_watchdog(self) -> None:
        # A partition with commands waiting that faust does not hand over (seen after the
        # group's offsets were reset on a quiet pipeline) is a stall the AckGuard keeps from
        # becoming a loss; a restart resumes it from the committed offset.
        topic = self.cfg.commands_topic
        try:
            tps = [tp for tp in self.app.consumer.assignment() if tp.topic == topic]
            if not tps:
                return
            # A client of its own: asking faust's consumer (highwaters) holds up its fetch
            # loop for a second or more, which the bench saw as latency spikes.
            end_by_partition = await asyncio.wait_for(
                self.end_offsets.fetch([tp.partition for tp in tps]), 5.0
            )
        except Exception:  # not started, rebalancing or broker away: try on the next tick
            return
        now = time.monotonic()
        views = [
            PartitionView(
                partition=tp.partition,
                end_offset=end_by_partition.get(tp.partition),
                next_offset=self.sequencer.next_offset.get(tp.partition),
                unacked=self.lanes.unacked(tp.partition),
                idle_s=now - self.admitted_at.setdefault(tp.partition, now),
            )
            for tp in tps
        ]
        stalled = stalled_partitions(
            views,
            stall_after=STALL_AFTER_S,
            lanes_full=self.lanes.full,
            in_recovery=bool(self.app.in_recovery or self.app.rebalancing),
        )
        if stalled:
            lag = {v.partition: (v.end_offset or 0) - (v.next_offset or 0) for v in views}
            await self.restart(
                "progress_stalled",
                partitions=stalled,
                lag={p: lag[p] for p in stalled},
                stalled_s=STALL_AFTER_S,
            )

    async def recovery_watchdog(self) -> None:
        # faust can wait forever for a changelog partition after a quick join-and-leave
        # rebalance, with every partition idle and the process healthy-looking. A worker
        # that cannot finish recovery is useless: exit, and let the supervisor restart it.
        if not self.app.in_recovery:
            self.recovery_stalled_since = None
            return
        now = time.monotonic()
        for p in self.admitted_at:  # recovery is not idleness
            self.admitted_at[p] = now
        if self.recovery_stalled_since is None:
            self.recovery_stalled_since = now
        if time.monotonic() - self.recovery_stalled_since > RECOVERY_STALL_S:
            logs.event(_log, "recovery_stalled", logging.ERROR, stalled_s=RECOVERY_STALL_S)
            exit_now(ExitCode.RESTART)

    @staticmethod
    def beat_for(health: Health) -> Callable[[], Awaitable[None]]:
        async def beat() -> None:
            health.beat()

        return beat

    def ready(self) -> dict[str, bool]:
        return {"consumer_running": not self.app.should_stop and self.app.consumer is not None}

    async def on_assigned(self, sender: Any, assigned: Any, **kwargs: Any) -> None:
        self.guard.install(self.app.consumer)
        # faust spends four tasks per fetched message handing it to the stream (issue 16).
        deliver_eagerly(self.app.consumer)
        mine = sorted(tp.partition for tp in assigned if tp.topic == self.cfg.commands_topic)
        self.baselines_set.clear()
        try:
            baselines = await self.end_offsets.baselines_within(self.cfg.processor_group, mine)
        except Exception as exc:  # starting from the first message delivered can lose commands
            await self.restart("baselines_unavailable", partitions=mine, error=repr(exc)[:200])
        try:
            recalled = await asyncio.wait_for(
                recall(
                    self.cfg.kafka_client_kwargs(),
                    self.cfg.outcomes_topic,
                    mine,
                    self.seen,
                    within=DEDUPE_RECALL_WINDOW,
                    max_entries=DEDUPE_MAX_ENTRIES,
                ),
                RECALL_TIMEOUT_S,
            )
        except Exception as exc:  # without it a redelivery would call the provisioner again
            await self.restart("recall_unavailable", partitions=mine, error=repr(exc)[:200])
        # After a rebalance the stream restarts at the committed offsets.
        self.sequencer.reset(baselines)
        self.baselines_set.set()
        now = time.monotonic()
        self.admitted_at.clear()
        self.admitted_at.update({p: now for p in mine})
        logs.event(_log, "partitions_assigned", partitions=mine, recalled=recalled)
        freeze_after_startup()  # the app and its clients live as long as the process

    async def on_revoked(self, sender: Any, revoked: Any, **kwargs: Any) -> None:
        # Finish what is in flight so its outcomes are produced before the partitions move.
        await self.lanes.drain()
        gone = sorted(tp.partition for tp in revoked if tp.topic == self.cfg.commands_topic)
        logs.event(_log, "partitions_revoked", partitions=gone)

    async def on_shutdown(self, sender: Any, **kwargs: Any) -> None:
        try:
            await asyncio.wait_for(self.lanes.drain(), DRAIN_TIMEOUT_S)
        except TimeoutError:
            exit_not_drained("drain_timeout", drain_timeout_s=DRAIN_TIMEOUT_S)
        await self.end_offsets.close()
        close = getattr(self._port, "close", None)
        if close is not None:
            await close()
        logs.event(_log, "stopping")


def build_app(
    cfg: Config,
    metrics: Metrics,
    port_factory: Any,
    health: Health | None = None,
    replication: Replication | None = None,
) -> faust.App:
    """The worker's faust app. ``port_factory()`` builds the provisioner port in the loop."""
    return WorkerApp(cfg, metrics, port_factory, health, replication).app


def run_worker(
    cfg: Config, metrics: Metrics, port_factory: Any, health: Health | None = None
) -> int:
    """Run the faust worker in this process until SIGTERM/SIGINT; returns the exit code."""
    from pipeline.adapters.replication import resolve_for
    from pipeline.components.worker.replicated import ensure_worker_topics

    want = asyncio.run(
        resolve_for(cfg.kafka_client_kwargs(), cfg.replication_factor, cfg.min_insync_replicas)
    )
    app = build_app(cfg, metrics, port_factory, health, want)
    # In a thread of its own: asyncio.run here would close the loop faust took at build time.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, ensure_worker_topics(cfg, app, want, metrics)).result()
    logs.event(_log, "started", group=cfg.processor_group, **cfg.pinned())
    worker = BoundedStopWorker(app, loglevel="INFO", quiet=True)
    worker.execute_from_commandline()
    return 0
