"""SPEC section 3-4 semantics, each checked on the real stack with exact rows and counters."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import orjson
import psycopg
import pytest
from aiokafka import AIOKafkaProducer
from factories import outcome_event
from harness import Pipeline, dedupe, read_topic
from psycopg.types.json import Jsonb

from pipeline.adapters.topics import ensure_topics
from pipeline.components.projector import Projector
from pipeline.components.relay import Relay, make_producer
from pipeline.devtools.fake_provisioner import FakeProvisioner, Rule
from pipeline.devtools.stack.kafka import KafkaBroker
from pipeline.domain.events import Outcome, outcome_event_id, parse_iso
from pipeline.domain.registry import build_registry
from pipeline.runtime.metrics import Metrics
from pipeline.store.migrate import migrate
from pipeline.store.outbox import enqueue, kind_enum_values

pytestmark = pytest.mark.integration


def insert_row(url: str, kind: str, resource_id: str, attempts: int = 0) -> int:
    """A row as a past run would have left it: ``attempts`` already projected."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "INSERT INTO pending_propagations"
            " (kind, team_id, resource_type, resource_id, payload, attempts, published_attempt)"
            " VALUES (%s, 'team-1', 'postgres', %s, %s, %s, %s) RETURNING id",
            (kind, resource_id, Jsonb({"target_tier": "pro"}), attempts, attempts),
        ).fetchone()
        conn.commit()
    assert row is not None
    return int(row[0])


def wait_for(pred: Callable[[], Any], p: Pipeline, timeout: float = 60) -> Any:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p.assert_running()
        value = pred()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"condition not met in {timeout}s\n{p.logs()}")


def test_unexpected_skip_unknown_kind_and_max_attempts_paths(
    make_pipeline: Callable[..., Pipeline], provisioner: FakeProvisioner
) -> None:
    # Production schedule (1 minute after attempt 1): a retried row stays visibly retrying.
    p = make_pipeline(backoff_scale=1.0)
    new_kind = f"kind_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(p.database_url, autocommit=True) as conn:
        conn.execute(f"ALTER TYPE propagation_kind ADD VALUE '{new_kind}'")
    provisioner.set_rules(
        [
            Rule(match="skip-*", action="skip", reason="pod db-0 not found"),
            Rule(match="fail-*", action="error", code="FAILED_PRECONDITION"),
        ]
    )
    skip_first = insert_row(p.database_url, "tier_elevation", "skip-1")
    skip_last = insert_row(p.database_url, "tier_elevation", "skip-2", attempts=9)
    fail_last = insert_row(p.database_url, "tier_elevation", "fail-1", attempts=9)
    unknown_first = insert_row(p.database_url, new_kind, "unknown-1")
    unknown_last = insert_row(p.database_url, new_kind, "unknown-2", attempts=9)
    everyone = [skip_first, skip_last, fail_last, unknown_first, unknown_last]

    p.start()
    p.wait_metrics_up("worker")
    dl = "instant_propagation_dead_lettered_total"
    assert p.metric("worker", dl, {"reason": "unknown_kind", "kind": "unknown_kind"}) == 0.0

    rows = wait_for(
        lambda: (r := p.rows()) and all(r[i]["last_outcome"] for i in everyone) and r, p
    )
    events = {pid: dedupe(evs) for pid, evs in p.outcomes().items()}

    # An unexpected skip is never applied: it retries on the schedule.
    row = rows[skip_first]
    (event,) = events[skip_first]
    assert event["outcome"] == "unexpected_skip"
    assert event["audit_kind"] == "propagation.unexpected_skip"
    assert event["skip_reason"] == "pod db-0 not found"
    assert event["skip_reason_bucket"] == "pod_not_found"
    assert row["applied_at"] is None and row["failed_at"] is None
    assert row["attempts"] == 1 and row["last_outcome"] == "unexpected_skip"
    assert row["last_skip_reason"] == "pod db-0 not found"
    assert row["next_attempt_at"] == parse_iso(event["occurred_at"]) + timedelta(minutes=1)

    # ... and at max attempts it is dead-lettered through `dead_lettered`.
    (event,) = events[skip_last]
    assert (event["outcome"], event["attempt"], event["dead_letter_reason"]) == (
        "dead_lettered",
        10,
        "max_attempts",
    )
    assert rows[skip_last]["failed_at"] is not None and rows[skip_last]["applied_at"] is None

    # Persistent gRPC failure at the last attempt: dead letter, reason max_attempts.
    (event,) = events[fail_last]
    assert (event["outcome"], event["dead_letter_reason"]) == ("dead_lettered", "max_attempts")
    assert event["error"].startswith("FAILED_PRECONDITION")
    assert p.metric("worker", dl, {"reason": "max_attempts", "kind": "tier_elevation"}) == 2.0

    # Unknown kind below max: retried, not dead-lettered at attempt 1.
    (event,) = events[unknown_first]
    assert (event["outcome"], event["attempt"]) == ("retrying", 1)
    assert rows[unknown_first]["failed_at"] is None and rows[unknown_first]["attempts"] == 1
    # Unknown kind at max attempts - 1 before this run: its own dead-letter outcome.
    (event,) = events[unknown_last]
    assert (event["outcome"], event["attempt"]) == ("unknown_kind_dead_lettered", 10)
    assert rows[unknown_last]["failed_at"] is not None
    assert p.metric("worker", dl, {"reason": "unknown_kind", "kind": "unknown_kind"}) == 1.0
    assert p.metric("worker", "instant_propagation_unknown_kind_total", {"kind": new_kind}) == 2.0
    assert (
        p.metric(
            "worker",
            "instant_propagation_unexpected_skip_total",
            {"kind": "tier_elevation", "resource_type": "postgres", "skip_reason": "pod_not_found"},
        )
        == 2.0
    )
    assert provisioner.effects() == {}


def test_every_enum_value_has_a_handler(database_url: str) -> None:
    migrate(database_url)
    with psycopg.connect(database_url) as conn:
        values = kind_enum_values(conn)
    assert values == ["tier_elevation", "tier_demotion", "resource_suspend", "resource_resume"]
    registry = build_registry()
    missing = [v for v in values if registry.get(v) is None]
    assert missing == []


def test_migrate_twice_is_a_no_op(database_url: str) -> None:
    from pipeline.store.migrate import available

    names = [m.name for m in available()]
    assert names[0] == "0001_outbox.sql"
    assert migrate(database_url) == names
    assert migrate(database_url) == []


async def _relay_setup(
    broker: KafkaBroker, url: str, prefix: str, n: int
) -> tuple[list[int], dict[str, Any]]:
    migrate(url)
    kw = {"bootstrap_servers": broker.bootstrap}
    await ensure_topics(kw, [f"{prefix}propagations"], 3)
    with psycopg.connect(url) as conn:
        ids = [
            enqueue(conn, "tier_elevation", "t", "postgres", f"r-{i}", {"target_tier": "pro"})
            for i in range(n)
        ]
        conn.commit()
    return ids, kw


async def test_two_relays_racing_publish_each_row_at_most_once(
    kafka_broker: KafkaBroker, database_url: str, topic_prefix: str
) -> None:
    ids, kw = await _relay_setup(kafka_broker, database_url, topic_prefix, 300)
    producers = [make_producer(kw), make_producer(kw)]
    for prod in producers:
        await prod.start()
    metrics = [Metrics(build_registry().kinds) for _ in producers]
    relays = [
        Relay(
            database_url=database_url,
            producer=prod,
            topic=f"{topic_prefix}propagations",
            metrics=m,
            batch_size=7,
        )
        for prod, m in zip(producers, metrics, strict=True)
    ]

    async def drain(relay: Relay) -> int:
        total = 0
        while (n := await relay.relay_once()) > 0:
            total += n
        return total

    try:
        counts = await asyncio.gather(*(drain(r) for r in relays))
    finally:
        for prod in producers:
            await prod.stop()
        for r in relays:
            await r.close()
    published = await read_topic(kafka_broker.bootstrap, f"{topic_prefix}propagations")
    assert sorted(published) == sorted(ids)
    assert all(len(events) == 1 for events in published.values())
    assert sum(counts) == len(ids)
    assert min(counts) > 0, "both relays should have claimed work"


async def test_an_attempt_without_outcome_is_rescued_with_the_same_event(
    kafka_broker: KafkaBroker, database_url: str, topic_prefix: str
) -> None:
    ids, kw = await _relay_setup(kafka_broker, database_url, topic_prefix, 5)
    producer = make_producer(kw)
    await producer.start()
    metrics = Metrics(build_registry().kinds)
    relay = Relay(
        database_url=database_url,
        producer=producer,
        topic=f"{topic_prefix}propagations",
        metrics=metrics,
        rescue_after=timedelta(seconds=1),
    )
    try:
        assert await relay.relay_once() == 5
        assert await relay.relay_once() == 0  # published, not yet stuck
        await asyncio.sleep(1.2)
        assert await relay.relay_once() == 5
    finally:
        await producer.stop()
        await relay.close()
    assert metrics.sample("instant_propagation_relay_rescued_total") == 5.0
    assert metrics.sample("instant_propagation_relay_published_total") == 10.0
    published = await read_topic(kafka_broker.bootstrap, f"{topic_prefix}propagations")
    for pid in ids:
        first, second = published[pid]
        assert first["event_id"] == second["event_id"]
        assert first["attempt"] == second["attempt"] == 1


def _outcome(pid: int, attempt: int, outcome: Outcome, **kw: Any) -> bytes:
    event = outcome_event(
        pid,
        attempt,
        outcome,
        event_id=outcome_event_id(pid, attempt),
        resource_id=f"r-{pid}",
        occurred_at=f"2026-01-01T00:00:0{attempt}Z",
        **kw,
    )
    return orjson.dumps(event.to_dict())


async def test_projector_folds_idempotently_and_skips_garbage(
    kafka_broker: KafkaBroker, database_url: str, topic_prefix: str
) -> None:
    ids, kw = await _relay_setup(kafka_broker, database_url, topic_prefix, 2)
    a, b = ids
    topic = f"{topic_prefix}propagation-outcomes"
    await ensure_topics(kw, [topic], 1)
    retry = {"next_attempt_at": "2026-01-01T00:01:00Z", "error": "UNAVAILABLE: x"}
    messages = [
        _outcome(a, 1, Outcome.RETRYING, **retry),
        _outcome(a, 1, Outcome.RETRYING, **retry),  # duplicate delivery
        b"{not json",  # garbage: counted, skipped, never stalls the partition
        _outcome(a, 2, Outcome.APPLIED),
        _outcome(a, 3, Outcome.RETRYING, **retry),  # after terminal: ignored
        _outcome(b, 1, Outcome.DEAD_LETTERED, dead_letter_reason=None, error="x"),
        _outcome(b, 1, Outcome.APPLIED),  # same attempt again, different verdict: ignored
    ]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    await producer.start()
    try:
        for m in messages:
            await producer.send_and_wait(topic, m, key=b"k")
    finally:
        await producer.stop()

    metrics = Metrics(build_registry().kinds)
    projector = Projector(
        database_url=database_url,
        client_kwargs=kw,
        topic=topic,
        projection="test",
        metrics=metrics,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run(stop))
    for _ in range(200):
        if projector.folded >= 6:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await task

    with psycopg.connect(database_url) as conn:
        rows = {
            r[0]: r[1:]
            for r in conn.execute(
                "SELECT id, attempts, last_outcome, applied_at IS NOT NULL,"
                " failed_at IS NOT NULL FROM pending_propagations"
            )
        }
        audit = conn.execute(
            "SELECT propagation_id, attempt, outcome FROM propagation_audit ORDER BY source_offset"
        ).fetchall()
        checkpoint = conn.execute(
            "SELECT next_offset FROM projection_checkpoints WHERE projection = 'test'"
        ).fetchone()
    assert rows[a] == (2, "applied", True, False)
    assert rows[b] == (1, "dead_lettered", False, True)
    assert audit == [
        (a, 1, "retrying"),
        (a, 2, "applied"),
        (a, 3, "retrying"),
        (b, 1, "dead_lettered"),
    ]
    assert checkpoint == (len(messages),)
    assert (
        metrics.sample(
            "instant_propagation_invalid_commands_total", {"reason": "bad_json", "topic": topic}
        )
        == 1.0
    )
    assert (
        metrics.sample(
            "instant_propagation_projected_total", {"outcome": "retrying", "changed": "false"}
        )
        == 2.0
    )
