"""``pipeline lag`` against a consumer that is deliberately stopped.

The worker is stopped, N more propagations are relayed, and the processor group's lag must
grow by exactly N (and the projector's stay put, as no outcome is produced); after a restart
both return to zero.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import orjson
import psycopg
import pytest
from harness import Pipeline, cli

from pipeline.components import lag
from pipeline.devtools.stack.kafka import KafkaBroker
from pipeline.runtime.config import Config
from pipeline.store.outbox import enqueue

pytestmark = pytest.mark.integration

N = 7


def enqueue_n(database_url: str, prefix: str, n: int) -> list[int]:
    with psycopg.connect(database_url) as conn:
        return [
            enqueue(
                conn, "tier_elevation", "acme", "postgres", f"{prefix}-{i}", {"target_tier": "pro"}
            )
            for i in range(n)
        ]


def wait_for(what: str, check: Callable[[], bool], p: Pipeline, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{p.logs()}")
        time.sleep(0.25)


def test_processor_lag_grows_by_exactly_the_unconsumed_commands(
    make_pipeline: Callable[..., Pipeline], kafka_broker: KafkaBroker
) -> None:
    p = make_pipeline(partitions=3)
    cfg = Config(topic_prefix=p.prefix)
    group, projection = cfg.processor_group, cfg.projection_name
    sources = lag.pipeline_sources(group, cfg.commands_topic, projection, cfg.outcomes_topic)
    kw = {"bootstrap_servers": kafka_broker.bootstrap}

    def measure() -> lag.LagReport:
        return asyncio.run(lag.measure(kw, p.database_url, sources))

    def caught_up() -> bool:
        r = measure()
        return len(r.partitions) == 6 and r.total(group) == 0 and r.total(projection) == 0

    p.start()
    warm = enqueue_n(p.database_url, "warm", 6)
    p.wait_terminal(warm)
    wait_for("the worker and projector to catch up", caught_up, p)
    before = measure()
    assert before.total(group) == 0
    assert before.max_seconds(group) == 0.0
    ends_before = sum(x.end for x in before.partitions if x.group == group)
    assert ends_before == 6  # one command per warm-up propagation, one attempt each
    outcomes_before = sum(x.end for x in before.partitions if x.group == projection)

    p.signal("worker", signal.SIGTERM)
    t0 = time.time()
    ids = enqueue_n(p.database_url, "late", N)
    wait_for(
        f"the relay to publish {N} rows", lambda: p.count(ids, "published_attempt >= 1") == N, p
    )

    during = measure()
    assert during.total(group) == before.total(group) + N
    assert during.total(projection) == 0  # no worker, no outcomes
    assert sum(x.end for x in during.partitions if x.group == group) == ends_before + N
    for x in during.partitions:
        assert x.lag == x.end - (x.committed or 0)
        if x.group == group and x.lag:
            assert 0 < x.lag_seconds <= time.time() - t0 + 1
        else:
            assert x.lag_seconds == 0.0
    assert during.outbox is not None
    assert during.outbox.due_unpublished == 0

    # The CLI prints the same figures for scripts.
    env = {**p.env(), "PIPELINE_LOG_LEVEL": "WARNING"}
    out = cli("lag", "--json", env=env, check=True)
    doc = orjson.loads(out.stdout)
    assert doc["groups"][group]["lag"] == N
    assert doc["groups"][projection]["lag"] == 0
    assert doc["outbox"]["due_unpublished"] == 0
    assert {(x["topic"], x["partition"]) for x in doc["partitions"] if x["group"] == group} == {
        (cfg.commands_topic, i) for i in range(3)
    }

    # The monitor's gauges carry the same figures.
    from pipeline.runtime.metrics import Metrics

    metrics = Metrics(["tier_elevation"])
    monitor = lag.LagMonitor(
        client_kwargs=kw,
        database_url=p.database_url,
        sources=sources,
        metrics=metrics,
        interval=0.2,
    )

    async def one_round() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(monitor.run(stop))
        for _ in range(600):  # 30 s at most
            if monitor.last is not None or task.done():
                break
            await asyncio.sleep(0.05)
        stop.set()
        await task

    asyncio.run(one_round())
    total_gauge = sum(
        metrics.sample(
            "instant_propagation_consumer_lag",
            {"group": group, "topic": cfg.commands_topic, "partition": str(i)},
        )
        for i in range(3)
    )
    assert total_gauge == N
    assert (
        metrics.sample(
            "instant_propagation_consumer_lag",
            {"group": projection, "topic": cfg.outcomes_topic, "partition": "0"},
        )
        == 0
    )
    assert (
        max(
            metrics.sample(
                "instant_propagation_consumer_lag_seconds",
                {"group": group, "topic": cfg.commands_topic, "partition": str(i)},
            )
            for i in range(3)
        )
        > 0
    )

    p.start("worker")
    p.wait_terminal(ids)
    wait_for("the lag to return to zero", caught_up, p)
    after = measure()
    assert after.total(group) == 0
    assert sum(x.end for x in after.partitions if x.group == group) == ends_before + N
    assert sum(x.end for x in after.partitions if x.group == projection) == outcomes_before + N
