"""The whole pipeline on the real stack: every outcome path reaches its one terminal state."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from harness import Pipeline, dedupe
from psycopg.types.json import Jsonb

from pipeline.devtools.fake_provisioner import FakeProvisioner, Rule
from pipeline.domain.events import idempotency_key
from pipeline.store.outbox import enqueue

pytestmark = pytest.mark.integration

U = "unexpected_skip"
R = "retrying"


@dataclass(frozen=True)
class Path_:
    prefix: str
    count: int
    expected: tuple[str, ...]
    effect: bool  # the provisioner applied it exactly once
    kind: str = "tier_elevation"
    payload: Any = None


PATHS = [
    Path_("ok", 120, ("applied",), True),
    Path_("allowed", 40, ("applied",), False),
    Path_("flakyskip", 30, (U, U, "applied"), True),
    Path_("deadskip", 10, (U,) * 9 + ("dead_lettered",), False),
    Path_("transient", 30, (R, "applied"), True),
    Path_("perm", 10, (R,) * 9 + ("dead_lettered",), False),
    Path_("ambiguous", 20, ("applied",), True),
    Path_("unknown", 20, (R,) * 9 + ("unknown_kind_dead_lettered",), False, kind="UNKNOWN"),
    Path_("invalid", 20, ("dead_lettered",), False, payload={"target_tier": ""}),
]
RULES = [
    Rule(match="allowed-*", action="skip", reason="Already at target tier"),
    Rule(match="flakyskip-*", action="skip", reason="postgres-admin secret missing", times=2),
    Rule(match="deadskip-*", action="skip", reason="namespace team-x not found"),
    # 4 failures: the adapter's 3 tries within attempt 1 fail, attempt 2 succeeds
    Rule(match="transient-*", action="error", code="UNAVAILABLE", times=4),
    Rule(match="perm-*", action="error", code="FAILED_PRECONDITION"),
    # the effect lands but the reply is lost; the in-attempt retry sees it applied
    Rule(match="ambiguous-*", action="apply_then_error", code="UNAVAILABLE", times=1),
]
KINDS = ["tier_elevation", "tier_demotion", "resource_suspend", "resource_resume"]
# Several commands on one resource: their outcomes must follow enqueue order.
ORDERED = [("tier_elevation", "pro"), ("tier_demotion", "free"), ("tier_elevation", "team")]


def seed_workload(
    database_url: str, paths: tuple[Path_, ...] = tuple(PATHS)
) -> tuple[dict[int, Path_], list[list[int]]]:
    """Enqueue every path; returns id -> path and the ids of each ordered resource."""
    unknown_kind = f"kind_{uuid.uuid4().hex[:8]}"
    by_id: dict[int, Path_] = {}
    ordered: list[list[int]] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        # A value the running worker does not know: a newer API enqueued it.
        conn.execute(f"ALTER TYPE propagation_kind ADD VALUE '{unknown_kind}'")
    with psycopg.connect(database_url) as conn:
        for path in paths:
            for i in range(path.count):
                kind = unknown_kind if path.kind == "UNKNOWN" else path.kind
                if path.prefix == "ok":
                    kind = KINDS[i % 4]
                rid = f"{path.prefix}-{i}"
                if path.payload is not None:
                    # bypass enqueue()'s validation: a bad row written by other means
                    row = conn.execute(
                        "INSERT INTO pending_propagations"
                        " (kind, team_id, resource_type, resource_id, payload)"
                        " VALUES (%s, 'team-1', 'postgres', %s, %s) RETURNING id",
                        (kind, rid, Jsonb(path.payload)),
                    ).fetchone()
                    assert row is not None
                    pid = int(row[0])
                else:
                    payload = (
                        {"target_tier": "pro"} if "tier" in kind or kind == unknown_kind else {}
                    )
                    pid = enqueue(conn, kind, f"team-{i % 7}", "postgres", rid, payload)
                by_id[pid] = path
        for r in range(5):
            ids = [
                enqueue(conn, kind, "team-ord", "redis", f"ordered-{r}", {"target_tier": tier})
                for kind, tier in ORDERED
            ]
            ordered.append(ids)
            for pid in ids:
                by_id[pid] = Path_("ordered", 1, ("applied",), True)
        conn.commit()
    return by_id, ordered


def seeded(
    make_pipeline: Callable[..., Pipeline], provisioner: FakeProvisioner
) -> tuple[Pipeline, dict[int, Path_], list[list[int]]]:
    """A migrated pipeline (not started) with this module's rules and workload enqueued."""
    provisioner.set_rules(RULES)
    p = make_pipeline()
    by_id, ordered = seed_workload(p.database_url)
    return p, by_id, ordered


# Rules that count calls per key ("times"): a killed worker's lost call still counts at the
# provisioner, so after a crash these may need fewer attempts. Their terminal state may not.
COUNTED = frozenset({"flakyskip", "transient", "ambiguous"})


def check_final_state(
    p: Pipeline,
    provisioner: FakeProvisioner,
    by_id: dict[int, Path_],
    ordered: list[list[int]],
    crashed: bool = False,
) -> None:
    rows = p.wait_terminal(list(by_id), timeout=240)
    outcomes = p.outcomes()
    effects = provisioner.effects()
    for pid, path in by_id.items():
        row = rows[pid]
        events = dedupe(outcomes.get(pid, []))
        got = tuple(e["outcome"] for e in events)
        if crashed and path.prefix in COUNTED:
            assert got[-1] == path.expected[-1], (pid, path.prefix, got)
            assert got[:-1] == path.expected[: len(got) - 1], (pid, path.prefix, got)
        else:
            assert got == path.expected, (pid, path.prefix, got)
        assert [e["attempt"] for e in events] == list(range(1, len(events) + 1))
        terminal = path.expected[-1]
        assert row["last_outcome"] == terminal
        assert row["attempts"] == len(got)
        if terminal == "applied":
            assert row["applied_at"] is not None and row["failed_at"] is None, row
        else:
            assert row["failed_at"] is not None and row["applied_at"] is None, row
        applied_effects = effects.get(idempotency_key(pid), [])
        assert len(applied_effects) == (1 if path.effect else 0), (pid, path.prefix)
    for ids in ordered:
        times = [dedupe(outcomes[pid])[-1]["_offset"] for pid in ids]
        assert times == sorted(times), "outcomes of one resource out of enqueue order"
        parts = {dedupe(outcomes[pid])[-1]["_partition"] for pid in ids}
        assert len(parts) == 1
        assert [rows[pid]["applied_at"] for pid in ids] == sorted(
            rows[pid]["applied_at"] for pid in ids
        )
    with psycopg.connect(p.database_url) as conn:
        audit = conn.execute("SELECT count(*) FROM propagation_audit").fetchone()
    assert audit is not None
    assert audit[0] == sum(len(dedupe(outcomes[pid])) for pid in by_id)


def test_every_path_reaches_its_one_terminal_state(
    make_pipeline: Callable[..., Pipeline], provisioner: FakeProvisioner
) -> None:
    p, by_id, ordered = seeded(make_pipeline, provisioner)
    assert len(by_id) >= 300
    p.start()
    check_final_state(p, provisioner, by_id, ordered)
    relay_log = (p.logdir / "relay.log").read_text()
    assert '"event":"started"' in relay_log and '"rescue_stuck_after_s":1500.0' in relay_log
    assert (
        p.metric(
            "worker",
            "instant_propagation_dead_lettered_total",
            {"reason": "max_attempts", "kind": "tier_elevation"},
        )
        == 20.0
    )  # deadskip + perm
    assert (
        p.metric(
            "worker",
            "instant_propagation_dead_lettered_total",
            {"reason": "unknown_kind", "kind": "unknown_kind"},
        )
        == 20.0
    )
    assert (
        p.metric(
            "worker",
            "instant_propagation_dead_lettered_total",
            {"reason": "invalid_payload", "kind": "tier_elevation"},
        )
        == 20.0
    )
    # De-duplication writes no changelog topic (components/worker/recall.py, issue 16).
    topics = asyncio.run(_topics(p.bootstrap))
    assert [t for t in topics if t.startswith(p.prefix) and t.endswith("-changelog")] == []


async def _topics(bootstrap: str) -> list[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return list(await admin.list_topics())
    finally:
        await admin.close()


async def _topic_configs(bootstrap: str, topic: str) -> dict[str, str]:
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    [(_err, _msg, _type, _name, entries)] = response.resources
    return {name: value for name, value, *_rest in entries}


@pytest.mark.parametrize("victim", ["worker", "projector"])
def test_sigkill_midway_changes_nothing(
    make_pipeline: Callable[..., Pipeline], provisioner: FakeProvisioner, victim: str
) -> None:
    p, by_id, ordered = seeded(make_pipeline, provisioner)
    p.start()
    p.wait_count_terminal(len(by_id) // 3, timeout=120)
    p.signal(victim, signal.SIGKILL)
    time.sleep(1.0)
    p.start(victim)
    check_final_state(p, provisioner, by_id, ordered, crashed=True)
