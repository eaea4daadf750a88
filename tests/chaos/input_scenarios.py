"""Chaos scenarios of hostile input: bad outbox rows, hand-made commands and outcomes that break
the schema or the size limit, and a flood of distinct kinds and reasons (metric cardinality)."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import psycopg
from chaos_run import ChaosRun
from chaos_workload import PathSpec
from harness import dedupe
from prometheus_client.parser import text_string_to_metric_families

from pipeline.domain.events import COMMAND_SCHEMA, OUTCOME_SCHEMA, command_event_id, iso, utcnow
from pipeline.runtime.metrics import Metrics

BIG = 300 * 1024  # over the 256 KiB event limit


# -- bad input ---------------------------------------------------------------------------------

BAD_OUTBOX = (
    PathSpec("badempty", 3, "dead_lettered", False, payload={}),
    PathSpec("badtype", 3, "dead_lettered", False, payload=["not", "an", "object"]),
    PathSpec(
        "badbig", 2, "dead_lettered", False, payload={"target_tier": "pro", "blob": "x" * BIG}
    ),
)
BAD_BASE = 1_000_000_000  # propagation ids of hand-made commands: no such row


def _about(pid: int) -> dict[str, Any]:
    """What a hand-made command and outcome both name: attempt 1 of propagation ``pid``."""
    return {
        "propagation_id": pid,
        "kind": "tier_elevation",
        "attempt": 1,
        "team_id": "team-bad",
        "resource_type": "postgres",
        "resource_id": f"bad-{pid}",
    }


def _command(pid: int, **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema": COMMAND_SCHEMA,
        "event_id": command_event_id(pid, 1),
        **_about(pid),
        "payload": {"target_tier": "pro"},
        "timestamp": iso(utcnow()),
    }
    doc.update(over)
    return {k: v for k, v in doc.items() if v is not None}


def _outcome(pid: int, **over: Any) -> dict[str, Any]:
    now = iso(utcnow())
    doc: dict[str, Any] = {
        "schema": OUTCOME_SCHEMA,
        "event_id": str(uuid.uuid4()),
        **_about(pid),
        "timestamp": now,
        "outcome": "applied",
        "audit_kind": "propagation.applied",
        "occurred_at": now,
    }
    doc.update(over)
    return doc


def bad_input(run: ChaosRun) -> None:
    j = orjson.dumps
    p = BAD_BASE + run.rng.randrange(1_000_000) * 10
    dead = {
        p + 1: "wrong schema",
        p + 2: "oversized",
        p + 4: "missing fields",
        p + 5: "payload missing target_tier",
    }
    commands: list[tuple[bytes | None, bytes]] = [
        (b"k1", b'{"schema": "propagation.command.v1", "propagation_id": 12,'),  # bad_json
        (None, b"\xff\xfe not json at all"),  # bad_json
        (b"k3", b""),  # empty
        (b"k4", b"[1, 2, 3]"),  # schema_violation, no id
        (b"k5", j(_command(p + 1, schema="propagation.command.v0"))),  # schema_violation
        (b"k6", j(_command(p + 2, payload={"target_tier": "pro", "blob": "x" * BIG}))),
        (b"k7", j({"blob": "y" * BIG})),  # oversized, no id
        (b"k8", j(_command(p + 3, kind="kind_nobody_knows"))),  # unknown kind
        (b"k9", j(_command(p + 4, team_id=None, resource_type=None, resource_id=None))),
        (b"k10", j(_command(p + 5, payload={}))),  # payload missing target_tier
        (b"k11", j(_command(p + 6, propagation_id="abc"))),  # schema_violation, no id
    ]
    outcomes: list[tuple[bytes | None, bytes]] = [
        (b"o1", b'{"schema": "propagation.outcome.v1", "event_id": '),  # bad_json
        (b"o2", b""),  # empty
        (b"o3", b'"just a string"'),  # schema_violation
        (b"o4", j(_outcome(p + 7, schema="propagation.outcome.v9"))),  # schema_violation
        (b"o5", j(_outcome(p + 8, error="z" * BIG))),  # oversized
        (b"o6", j(_outcome(p + 9, outcome="teleported"))),  # schema_violation
        (b"o7", j({"schema": OUTCOME_SCHEMA, "event_id": "e", "propagation_id": p + 10})),
        (b"o8", j(_outcome(p + 11, kind="kind_nobody_knows"))),  # valid: folds into no row
    ]
    acked = run.produce(run.commands_topic, commands)
    run.fault(
        "bad commands produced by hand",
        landed=acked == len(commands),
        proof=f"{acked} of {len(commands)} acknowledged by the broker",
    )
    acked = run.produce(run.outcomes_topic, outcomes)
    run.fault(
        "bad outcomes produced by hand",
        landed=acked == len(outcomes),
        proof=f"{acked} of {len(outcomes)} acknowledged by the broker",
    )
    run.notes.update(bad_base=p, dead=dead)


def bad_input_checks(run: ChaosRun) -> None:
    run.assert_running()
    p = run.notes["bad_base"]
    out = run.p.outcomes()
    problems = []
    for pid, what in run.notes["dead"].items():
        got = [(e["outcome"], e.get("dead_letter_reason")) for e in dedupe(out.get(pid, []))]
        if got != [("dead_lettered", "invalid_payload")]:
            problems.append(f"{what} ({pid}): {got}")
    unknown = [(e["outcome"], e["attempt"]) for e in dedupe(out.get(p + 3, []))]
    if unknown != [("retrying", 1)]:
        problems.append(f"unknown kind ({p + 3}): {unknown}")
    run.check("bad_commands_dead_lettered", not problems, "; ".join(problems) or "as expected")

    def invalid(component: str, topic: str) -> dict[str, float]:
        return {
            r: run.p.metric(
                component,
                "instant_propagation_invalid_commands_total",
                {"reason": r, "topic": topic},
            )
            for r in ("bad_json", "empty", "schema_violation", "oversized")
        }

    # workload rows: invalid (6) + badempty (3) + badtype (3) fail validation; badbig (2)
    want_worker = {"bad_json": 2.0, "empty": 1.0, "schema_violation": 17.0, "oversized": 4.0}
    want_proj = {"bad_json": 1.0, "empty": 1.0, "schema_violation": 4.0, "oversized": 1.0}
    for component, topic, want in (
        ("worker", run.commands_topic, want_worker),
        ("projector", run.outcomes_topic, want_proj),
    ):
        counted = invalid(component, topic)
        run.check(
            f"{component}_counted_invalid",
            counted == want,
            f"{component} counted {counted}, expected {want}",
        )
    with psycopg.connect(run.p.database_url) as conn:
        audit = conn.execute(
            "SELECT outcome FROM propagation_audit WHERE propagation_id = %s", (p + 11,)
        ).fetchall()
        row = conn.execute(
            "SELECT count(*) FROM pending_propagations WHERE id = %s", (p + 11,)
        ).fetchone()
    run.check(
        "foreign_valid_outcome_is_audited_only",
        audit == [("applied",)] and row == (0,),
        f"audit {audit}, rows {row}",
    )


# -- cardinality -------------------------------------------------------------------------------

CARDINALITY = 10_000
CARD_BASE = 2_000_000_000
# Series a worker may expose per family, whatever the input: label values are bounded.
KINDS_LABELS = 5  # the 4 known kinds and "unknown_kind"
SERIES_BUDGET = {
    "instant_propagation_unknown_kind_total": Metrics.UNKNOWN_KIND_BUDGET + 1,
    "instant_propagation_outcomes_total": 5 * KINDS_LABELS,
    "instant_propagation_dead_lettered_total": 3 * KINDS_LABELS,
    "instant_propagation_unexpected_skip_total": KINDS_LABELS * 9 * 7,
    "instant_propagation_invalid_commands_total": 4,
    "instant_propagation_duplicates_total": 3,
    "instant_propagation_handler_seconds": KINDS_LABELS * 17,
    "instant_propagation_offset_gaps_total": 3,
}


def cardinality(run: ChaosRun) -> None:
    base = CARD_BASE + run.rng.randrange(1_000_000) * CARDINALITY
    msgs: list[tuple[bytes | None, bytes]] = []
    for i in range(CARDINALITY):
        tag = uuid.UUID(int=run.rng.getrandbits(128)).hex[:12]
        doc = _command(
            base + i, kind=f"kind_{tag}", resource_type=f"rt_{tag}", resource_id=f"card-{i}"
        )
        msgs.append((f"card-{tag}".encode(), orjson.dumps(doc)))
    acked = run.produce(run.commands_topic, msgs)
    run.notes["card_base"] = base
    run.fault(
        "10,000 commands with distinct unknown kinds produced by hand",
        landed=acked == len(msgs),
        proof=f"{acked} of {len(msgs)} acknowledged by the broker",
    )


def cardinality_checks(run: ChaosRun) -> None:
    run.assert_running()
    body = run.metrics_text("worker")
    per_family: dict[str, int] = {}
    unknown_total = 0.0
    for family in text_string_to_metric_families(body):
        per_family[family.name] = len(family.samples)
        if family.name == "instant_propagation_unknown_kind":
            unknown_total = sum(s.value for s in family.samples)
    over = {}
    for name, n in per_family.items():
        budget = SERIES_BUDGET.get(name + "_total", SERIES_BUDGET.get(name, 12))
        if n > budget:
            over[name] = (n, budget)
    total = sum(per_family.values())
    ceiling = sum(SERIES_BUDGET.values()) + 12 * (len(per_family) - len(SERIES_BUDGET))
    run.check(
        "metrics_within_budget",
        not over and total <= ceiling and unknown_total >= CARDINALITY,
        f"{total} series (ceiling {ceiling}), over budget: {over}, "
        f"unknown_kind counted {unknown_total:.0f}",
    )
    base = run.notes["card_base"]
    out = run.p.outcomes()
    got = sum(
        1
        for pid in range(base, base + CARDINALITY)
        if [e["outcome"] for e in dedupe(out.get(pid, []))] == ["retrying"]
    )
    run.check(
        "every_bad_kind_answered",
        got == CARDINALITY,
        f"{got} of {CARDINALITY} got exactly one retrying outcome",
    )
