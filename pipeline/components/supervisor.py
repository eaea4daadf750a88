"""Long-running components as processes: wiring config into relay, worker and projector.

This is the composition root: the only place that turns a ``Config`` into objects.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

from pipeline.adapters.replication import report
from pipeline.adapters.topics import ensure_topics
from pipeline.domain.registry import build_registry
from pipeline.runtime import httpd, logs
from pipeline.runtime.config import CALL_TRIES_PER_ATTEMPT, HANDLER_DEADLINE, Config
from pipeline.runtime.exit_codes import ExitCode
from pipeline.runtime.gc_tuning import freeze_after_startup
from pipeline.runtime.metrics import Metrics

_log = logs.get("services")


def use_uvloop() -> None:
    """uvloop for every loop of this process (faust's consumer thread too): about a fifth
    less CPU per propagation in the worker (issue 16)."""
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def new_metrics() -> Metrics:
    return Metrics(build_registry().kinds)


def provisioner_factory(cfg: Config) -> Callable[[], object]:
    def factory() -> object:
        from pipeline.adapters.provisioner import GrpcProvisioner

        return GrpcProvisioner(
            cfg.provisioner_addr,
            deadline=HANDLER_DEADLINE.total_seconds(),
            tries=CALL_TRIES_PER_ATTEMPT,
            tls_ca=cfg.provisioner_tls_ca,
            tls_cert=cfg.provisioner_tls_cert,
            tls_key=cfg.provisioner_tls_key,
            batch=cfg.provisioner_batch,
        )

    return factory


def _run_until_signal(
    cfg: Config,
    metrics: Metrics,
    health: httpd.Health,
    component: str,
    run: Callable[[asyncio.Event], Awaitable[None]],
) -> int:
    """An asyncio component: its topics first, then ``run`` until SIGTERM or SIGINT."""

    async def main(stop: asyncio.Event) -> None:
        await ensure_pipeline_topics(cfg, metrics, component)
        await run(stop)

    asyncio.run(_serve_until_signal(main, health))
    return 0


async def _serve_until_signal(
    run: Callable[[asyncio.Event], Awaitable[None]], health: httpd.Health
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    beat = asyncio.create_task(httpd.heartbeat(health, stop))
    try:
        await run(stop)
    finally:
        stop.set()
        await beat


async def ensure_pipeline_topics(cfg: Config, metrics: Metrics, component: str) -> None:
    """Create (replicated) or find the two pipeline topics, wait until every broker shows
    them, and log and export any under-replication."""
    results = await ensure_topics(
        cfg.kafka_client_kwargs(),
        [cfg.commands_topic, cfg.outcomes_topic],
        cfg.partitions,
        cfg.replication_factor,
        cfg.min_insync_replicas,
        configs=cfg.topic_configs(),
    )
    report(results, metrics, logs.get(component))


def _serve_http(cfg: Config, metrics: Metrics, component: str) -> httpd.Health:
    """Serve /metrics, /healthz and /readyz of one component; its health, to report to."""
    health = httpd.Health(stale_after=30.0)
    port = httpd.serve(metrics.registry, cfg.metrics_port, cfg.metrics_host, health)
    logs.event(logs.get(component), "http_serving", port=port, host=cfg.metrics_host)
    return health


def run_relay(cfg: Config) -> int:
    use_uvloop()
    from pipeline.adapters.kafka_producer import HealingProducer
    from pipeline.components.lag import LagMonitor, pipeline_sources
    from pipeline.components.relay import Relay, make_producer

    metrics = new_metrics()
    health = _serve_http(cfg, metrics, "relay")

    async def main(stop: asyncio.Event) -> None:
        kw = cfg.kafka_client_kwargs()
        producer = HealingProducer(lambda: make_producer(kw), metrics, "relay", logs.get("relay"))
        await producer.start()
        relay = Relay(
            database_url=cfg.database_url,
            producer=producer,
            topic=cfg.commands_topic,
            metrics=metrics,
            batch_size=cfg.relay_batch_size,
            poll_interval=cfg.relay_poll_interval,
        )
        health.set_ready_check(lambda: {"outbox_and_broker": relay.healthy(60.0)})
        # The relay process also watches the consumers' lag, so the gauges exist once
        # per deployment rather than once per worker.
        monitor = LagMonitor(
            client_kwargs=kw,
            database_url=cfg.database_url,
            sources=pipeline_sources(
                cfg.processor_group, cfg.commands_topic, cfg.projection_name, cfg.outcomes_topic
            ),
            metrics=metrics,
        )
        lag_task = asyncio.create_task(monitor.run(stop))
        freeze_after_startup()
        try:
            await relay.run(stop)
        finally:
            stop.set()
            await lag_task
            await producer.stop()  # flushes what was sent

    return _run_until_signal(cfg, metrics, health, "relay", main)


def run_projector(cfg: Config) -> int:
    use_uvloop()
    from pipeline.components.projector import Projector

    metrics = new_metrics()
    health = _serve_http(cfg, metrics, "projector")

    async def main(stop: asyncio.Event) -> None:
        projector = Projector(
            database_url=cfg.database_url,
            client_kwargs=cfg.kafka_client_kwargs(),
            topic=cfg.outcomes_topic,
            projection=cfg.projection_name,
            metrics=metrics,
        )
        # A standby (another projector holds the lock) is ready: it is doing its job.
        health.set_ready_check(lambda: {"projection": projector.state in ("active", "standby")})
        freeze_after_startup()
        await projector.run(stop)

    return _run_until_signal(cfg, metrics, health, "projector", main)


def run_worker(cfg: Config) -> int:
    use_uvloop()
    from pipeline.components.worker.app import run_worker as faust_worker

    metrics = new_metrics()
    metrics.expose_dead_letter_series()  # before /metrics serves: the first scrape sees 0s
    health = _serve_http(cfg, metrics, "worker")
    return faust_worker(cfg, metrics, provisioner_factory(cfg), health)


# The one table of the long-running roles: role name -> the `pipeline` subcommand that runs
# it, in start order (`run` serves each one's /metrics on the port plus its index). The demo,
# the bench and the integration harness start the components from it too.
COMPONENTS = {"relay": "relay", "worker": "worker", "projector": "project"}


def run_all(cfg: Config, env: dict[str, str]) -> int:
    """Relay, worker and projector as three supervised processes on one machine.

    Separate processes because faust owns its event loop and signal handling; metrics are
    served on PIPELINE_METRICS_PORT and the next two ports.
    """
    procs: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop_all(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop_all)
    signal.signal(signal.SIGINT, stop_all)
    child_env_for: dict[str, dict[str, str]] = {}
    for offset, name in enumerate(COMPONENTS.values()):
        child_env = dict(env)
        if cfg.metrics_port:
            child_env["PIPELINE_METRICS_PORT"] = str(cfg.metrics_port + offset)
        child_env_for[name] = child_env
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "pipeline.ops.cli", name], env=child_env
        )
    logs.event(_log, "run_started", pids={n: p.pid for n, p in procs.items()}, **cfg.pinned())
    rc = ExitCode.OK
    restarts: list[float] = []
    while True:
        for name, proc in list(procs.items()):
            # A component that asks for a restart (ExitCode.RESTART: the worker after a
            # stall or an offset gap) or ended on a failure (any code but OK) gets one, at
            # most 5 a minute; beyond that, or a clean exit, stops the run.
            if proc.poll() not in (None, ExitCode.OK) and not stopping:
                restarts[:] = [t for t in restarts if time.monotonic() - t < 60] + [
                    time.monotonic()
                ]
                if len(restarts) <= 5:
                    logs.event(_log, "component_restarted", component=name)
                    procs[name] = subprocess.Popen(
                        [sys.executable, "-m", "pipeline.ops.cli", name], env=child_env_for[name]
                    )
        alive = {n: p for n, p in procs.items() if p.poll() is None}
        dead = {n: p.returncode for n, p in procs.items() if p.returncode is not None}
        if dead and not stopping:
            logs.event(_log, "component_exited", exited=dead)
            rc = ExitCode.FAILED
            stop_all(signal.SIGTERM, None)
        if not alive:
            break
        time.sleep(0.2)
    logs.event(_log, "run_stopped", rc=rc)
    return rc
