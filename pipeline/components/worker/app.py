"""The faust-streaming processor: ``propagations`` -> handlers -> ``propagation-outcomes``.

One agent instance (faust concurrency 1) per worker process feeds ``OrderedLanes``: many
commands in flight, one at a time per resource, acknowledged in offset order, so faust never
commits past a command whose outcome is not yet in the producer (faust flushes the producer
before each commit). faust's own agent concurrency > 1 is avoided: it can commit past an
in-flight message (faust-streaming issue #606).

Redelivered (propagation_id, attempt) pairs are recognised with a faust table backed by
its changelog topic, so de-duplication survives restarts and rebalances; the table and its
changelog are bounded (streams/seen.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import time
from pathlib import Path
from typing import Any, NoReturn

import faust

from pipeline.adapters.replication import Replication
from pipeline.components.worker.lanes import OrderedLanes
from pipeline.components.worker.outcome_sender import OutcomeSender
from pipeline.components.worker.processor import CommandProcessor
from pipeline.components.worker.progress import (
    STALL_AFTER_S,
    EndOffsets,
    PartitionView,
    stalled_partitions,
)
from pipeline.components.worker.replicated import SEEN_TABLE
from pipeline.components.worker.seen import seen_table
from pipeline.components.worker.sequencer import Admit, Sequencer
from pipeline.components.worker.shutdown import BoundedStopWorker, exit_not_drained
from pipeline.domain import codec
from pipeline.domain.decide import RetryPolicy, dedupe_action
from pipeline.domain.handlers import ProvisionerPort
from pipeline.domain.registry import build_registry
from pipeline.runtime import logs
from pipeline.runtime.config import (
    DEDUPE_CHANGELOG_RETENTION,
    DEDUPE_MAX_ENTRIES,
    RESTART_EXIT_CODE,
    Config,
)
from pipeline.runtime.httpd import Health
from pipeline.runtime.metrics import Metrics

_log = logs.get("worker")
RECOVERY_STALL_S = 60.0  # table recovery here takes well under a second per 10k entries
DRAIN_TIMEOUT_S = 15.0  # in-flight commands at stop; the stop deadline (25 s) bounds the rest


class AckGuard:
    """Lets faust record only the acknowledgements that come from the lanes.

    faust acknowledges messages it *skips* while flow is paused (shutdown, rebalance) even
    on a noack stream, and its commit logic lets a one-offset hole through; together they can
    commit past a command no worker ever saw. Commands of our topic are acknowledged only
    after their outcome was produced.
    """

    def __init__(self, topic: str) -> None:
        self._topic = topic
        self._approved: set[tuple[int, int]] = set()
        self._installed: Any = None

    def install(self, consumer: Any) -> None:
        if self._installed is consumer:
            return
        original = consumer.ack

        def guarded(message: Any) -> bool:
            if message.topic == self._topic:
                key = (message.partition, message.offset)
                if key not in self._approved:
                    # Not ours to acknowledge: it will be delivered again. Forget it so a
                    # shutdown does not wait for an ack that will never come.
                    unacked = getattr(consumer, "_unacked_messages", None)
                    if unacked is not None:
                        unacked.discard(message)
                    return False
                self._approved.discard(key)
            return bool(original(message))

        consumer.ack = guarded
        self._installed = consumer

    def ack(self, event: Any) -> None:
        self._approved.add((event.message.partition, event.message.offset))
        event.ack()


# faust builds its consumer with fetch_max_wait_ms=1500, hard-coded. aiokafka keeps one fetch
# in flight per broker, so a partition whose records arrive while a fetch for other, quiet
# partitions is parked on the broker waits up to that long: the bench saw commands sit for
# ~1.5 s before the worker got them at 500/s. A shorter wait costs a few empty fetches a second.
FETCH_MAX_WAIT_MS = 50


def _shorten_fetch_wait() -> None:
    from faust.transport.drivers import aiokafka as faust_aiokafka

    thread_cls: Any = faust_aiokafka.AIOKafkaConsumerThread
    if getattr(thread_cls, "_pipeline_fetch_wait", False):
        return
    original = thread_cls._create_worker_consumer

    def create(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer

    thread_cls._create_worker_consumer = create
    thread_cls._pipeline_fetch_wait = True


def _faust_broker(bootstrap: str) -> str:
    return ";".join(f"kafka://{host.strip()}" for host in bootstrap.split(","))


def _credentials(cfg: Config) -> Any:
    if cfg.kafka_security_protocol == "PLAINTEXT":
        return None
    import ssl

    ssl_ctx = None
    if cfg.kafka_security_protocol in ("SSL", "SASL_SSL"):
        ssl_ctx = ssl.create_default_context(cafile=cfg.kafka_ssl_cafile)
        if cfg.kafka_ssl_certfile:
            ssl_ctx.load_cert_chain(cfg.kafka_ssl_certfile, cfg.kafka_ssl_keyfile)
    if cfg.kafka_security_protocol.startswith("SASL"):
        password = cfg.kafka_sasl_password.reveal() if cfg.kafka_sasl_password else ""
        return faust.SASLCredentials(
            username=cfg.kafka_sasl_username,
            password=password,
            ssl_context=ssl_ctx,
            mechanism=cfg.kafka_sasl_mechanism,
        )
    return faust.SSLCredentials(ssl_ctx)


def _datadir(cfg: Config) -> str:
    path = Path(cfg.data_dir).resolve() / f"faust-{cfg.processor_group}"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def build_app(
    cfg: Config,
    metrics: Metrics,
    port_factory: Any,
    health: Health | None = None,
    replication: Replication | None = None,
) -> faust.App:
    """The worker's faust app. ``port_factory()`` builds the provisioner port in the loop."""
    _shorten_fetch_wait()
    want = replication or Replication(cfg.replication_factor or 1, cfg.min_insync_replicas or 1)
    app = faust.App(
        cfg.processor_group,
        broker=_faust_broker(cfg.kafka_bootstrap),
        broker_credentials=_credentials(cfg),
        store="memory://",
        topic_partitions=cfg.partitions,
        topic_replication_factor=want.factor,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger=0.002,
        broker_commit_every=500,
        broker_commit_interval=0.5,
        datadir=_datadir(cfg),
        table_standby_replicas=0,
        # A killed worker's partitions move after this long; faust's 60 s default leaves
        # them idle for a minute.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
    )
    commands = app.topic(
        cfg.commands_topic, key_serializer="raw", value_serializer="raw", allow_empty=True
    )
    outcomes = app.topic(cfg.outcomes_topic, key_serializer="raw", value_serializer="raw")
    seen = seen_table(
        app,
        SEEN_TABLE,
        partitions=cfg.partitions,
        max_entries=DEDUPE_MAX_ENTRIES,
        retention=DEDUPE_CHANGELOG_RETENTION,
        extra_configs=want.topic_configs(),
    )
    state: dict[str, Any] = {}
    outcome_sender = OutcomeSender(app, outcomes, metrics)

    def processor() -> CommandProcessor:
        if "processor" not in state:
            port: ProvisionerPort = port_factory()
            state["port"] = port
            state["processor"] = CommandProcessor(
                registry=build_registry(),
                port=port,
                policy=RetryPolicy(cfg.max_attempts, cfg.backoff_scale),
                metrics=metrics,
                topic=cfg.commands_topic,
            )
        proc: CommandProcessor = state["processor"]
        return proc

    debug = _log.isEnabledFor(logging.DEBUG)

    async def on_command(raw: bytes | None) -> None:
        proc = processor()
        decoded = proc.decode(raw)
        if isinstance(decoded, codec.Undecodable):
            bad = proc.handle_undecodable(decoded)
            if bad is not None:
                await outcome_sender.send(bad.key.encode(), codec.encode(bad))
            return
        seen_key = str(decoded.propagation_id).encode()
        prior: bytes | None = seen.get(seen_key)
        last_attempt = int(prior.split(b"|", 1)[0]) if prior else None
        action = dedupe_action(last_attempt, decoded.attempt)
        if debug:
            logs.event(
                _log,
                "command_seen",
                logging.DEBUG,
                propagation_id=decoded.propagation_id,
                attempt=decoded.attempt,
                action=action,
            )
        if action == "drop":
            metrics.duplicates.labels("processor").inc()
            return
        if action == "reemit" and prior is not None:
            # Same attempt again (redelivery or rescue): emit the recorded outcome with its
            # event_id instead of calling the provisioner a second time.
            metrics.duplicates.labels("processor").inc()
            await outcome_sender.send(decoded.key.encode(), prior.split(b"|", 1)[1])
            return
        event = await proc.handle(decoded)
        body = codec.encode_validated(event)
        seen[seen_key] = str(decoded.attempt).encode() + b"|" + body
        await outcome_sender.send(event.key.encode(), body)

    async def restart_for_gap(partition: int, expected: int | None, got: int) -> None:
        # faust dropped offsets before this one (its pause-time skip) and a seek does not
        # reliably bring them back. Nothing at or past the hole is acknowledged (AckGuard),
        # so restart from the committed offset, which is the hole.
        metrics.offset_gaps.labels(str(partition)).inc()
        await restart("offset_gap", partition=partition, expected=expected, got=got)

    async def restart(reason: str, **fields: Any) -> NoReturn:
        # Finish what is in flight, commit it, and exit; the supervisor (`pipeline run`)
        # restarts exit code 3 and the new process starts at the committed offsets.
        logs.event(_log, reason, logging.WARNING, action="restart", **fields)
        await lanes.drain()
        with contextlib.suppress(Exception):
            await app.consumer.commit()
        os._exit(RESTART_EXIT_CODE)

    async def fatal(exc: BaseException) -> None:
        # An outcome that could not be produced: end the worker rather than move on. The
        # unacknowledged command is delivered again after the restart. Not app.crash():
        # faust then neither exits nor recovers (issue 12); a supervisor restarts an exit.
        logs.event(_log, "fatal", level=logging.ERROR, error=repr(exc)[:500])
        exit_not_drained("fatal", error=repr(exc)[:200])

    lanes = OrderedLanes(cfg.worker_concurrency, fatal)
    guard = AckGuard(cfg.commands_topic)
    sequencer = Sequencer()
    baselines_set = asyncio.Event()
    state["lanes"] = lanes

    # One agent instance (faust concurrency=1) reads every assigned partition in order and
    # hands commands to the lanes; acks are manual (noack) and happen in offset order.
    @app.agent(commands, concurrency=1, name="process-commands")
    async def process(stream: Any) -> None:
        async for event in stream.noack().events():
            msg = event.message
            if debug:
                logs.event(
                    _log,
                    "command_received",
                    logging.DEBUG,
                    partition=msg.partition,
                    offset=msg.offset,
                )
            await baselines_set.wait()  # an assignment's baselines come from the broker
            verdict = sequencer.admit(msg.partition, msg.offset)
            if verdict is Admit.PROCESS:
                admitted_at[msg.partition] = time.monotonic()
            else:
                if verdict is Admit.SEEK:
                    await restart_for_gap(msg.partition, sequencer.seek_to, msg.offset)
                continue
            value = event.value
            key = event.message.key if event.message.key is not None else event.message.offset
            await lanes.submit(
                key=(event.message.partition, key),
                partition=event.message.partition,
                work=functools.partial(on_command, value),
                ack=functools.partial(guard.ack, event),
            )

    stalled_since: dict[str, float] = {}
    admitted_at: dict[int, float] = {}
    end_offsets = EndOffsets(cfg.kafka_client_kwargs(), cfg.commands_topic)

    @app.timer(5.0)  # type: ignore[untyped-decorator]
    async def progress_watchdog() -> None:
        # A partition with commands waiting that faust does not hand over (seen after the
        # group's offsets were reset on a quiet pipeline) is a stall the AckGuard keeps from
        # becoming a loss; a restart resumes it from the committed offset.
        try:
            tps = [tp for tp in app.consumer.assignment() if tp.topic == cfg.commands_topic]
            if not tps:
                return
            # A client of its own: asking faust's consumer (highwaters) holds up its fetch
            # loop for a second or more, which the bench saw as latency spikes.
            end_by_partition = await asyncio.wait_for(
                end_offsets.fetch([tp.partition for tp in tps]), 5.0
            )
        except Exception:  # not started, rebalancing or broker away: try on the next tick
            return
        now = time.monotonic()
        views = [
            PartitionView(
                partition=tp.partition,
                end_offset=end_by_partition.get(tp.partition),
                next_offset=sequencer.next_offset.get(tp.partition),
                unacked=lanes.unacked(tp.partition),
                idle_s=now - admitted_at.setdefault(tp.partition, now),
            )
            for tp in tps
        ]
        stalled = stalled_partitions(
            views,
            stall_after=STALL_AFTER_S,
            lanes_full=lanes.full,
            in_recovery=bool(app.in_recovery or app.rebalancing),
        )
        if stalled:
            lag = {v.partition: (v.end_offset or 0) - (v.next_offset or 0) for v in views}
            await restart(
                "progress_stalled",
                partitions=stalled,
                lag={p: lag[p] for p in stalled},
                stalled_s=STALL_AFTER_S,
            )

    @app.timer(5.0)  # type: ignore[untyped-decorator]
    async def recovery_watchdog() -> None:
        # faust can wait forever for a changelog partition after a quick join-and-leave
        # rebalance, with every partition idle and the process healthy-looking. A worker
        # that cannot finish recovery is useless: exit, and let the supervisor restart it.
        if not app.in_recovery:
            stalled_since.clear()
            return
        now = time.monotonic()
        for p in admitted_at:  # recovery is not idleness
            admitted_at[p] = now
        since = stalled_since.setdefault("t", time.monotonic())
        if time.monotonic() - since > RECOVERY_STALL_S:
            logs.event(_log, "recovery_stalled", logging.ERROR, stalled_s=RECOVERY_STALL_S)
            os._exit(RESTART_EXIT_CODE)

    if health is not None:
        beat_health = health

        @app.timer(1.0)  # type: ignore[untyped-decorator]
        async def beat() -> None:
            beat_health.beat()

        def ready() -> dict[str, bool]:
            return {"consumer_running": not app.should_stop and app.consumer is not None}

        health.set_ready_check(ready)

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
        guard.install(app.consumer)
        mine = sorted(tp.partition for tp in assigned if tp.topic == cfg.commands_topic)
        baselines_set.clear()
        try:
            baselines = await end_offsets.baselines_within(cfg.processor_group, mine)
        except Exception as exc:  # starting from the first message delivered can lose commands
            await restart("baselines_unavailable", partitions=mine, error=repr(exc)[:200])
        sequencer.reset(baselines)  # after a rebalance the stream restarts at committed offsets
        baselines_set.set()
        now = time.monotonic()
        admitted_at.clear()
        admitted_at.update({p: now for p in mine})
        logs.event(_log, "partitions_assigned", partitions=mine)

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
        # Finish what is in flight so its outcomes are produced before the partitions move.
        await lanes.drain()
        gone = sorted(tp.partition for tp in revoked if tp.topic == cfg.commands_topic)
        logs.event(_log, "partitions_revoked", partitions=gone)

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def on_shutdown(sender: Any, **kwargs: Any) -> None:
        try:
            await asyncio.wait_for(lanes.drain(), DRAIN_TIMEOUT_S)
        except TimeoutError:
            exit_not_drained("drain_timeout", drain_timeout_s=DRAIN_TIMEOUT_S)
        await end_offsets.close()
        port = state.get("port")
        close = getattr(port, "close", None)
        if close is not None:
            await close()
        logs.event(_log, "stopping")

    return app


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
