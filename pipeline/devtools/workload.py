"""The outcome-path workload: one path per way a propagation can end, and how to check each one.

``pipeline demo`` runs it, and the chaos suite (``tests/chaos/chaos_workload.py``) seeds the same
paths under the same rules, with fixed counts and a few paths of its own. Each path is a
resource-id prefix. The fake provisioner's rules match on that prefix, so the
path decides what the provisioner answers, and the prefix lets an operator group the rows in
Postgres by path (``split_part(resource_id, '-', 1)``) to check the summary by hand.
Pure: no I/O here, so the expected counts and the comparison are easy to reason about.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.devtools.fake_provisioner.rules import Rule
from pipeline.runtime.config import CALL_TRIES_PER_ATTEMPT

KINDS = ("tier_elevation", "tier_demotion", "resource_suspend", "resource_resume")
REGRADES = frozenset(KINDS[:2])
TERMINAL_OUTCOMES = frozenset({"applied", "dead_lettered", "unknown_kind_dead_lettered"})
RESOURCE_TYPES = ("postgres", "redis")
TIERS = ("pro", "team", "free")
# Stands for the enum value the demo adds at run time (a kind this worker image lacks).
UNKNOWN = "<unknown>"


@dataclass(frozen=True, slots=True)
class OutcomePath:
    name: str  # also the resource_id prefix, so it must not contain '-'
    weight: int  # share of the workload, in percent
    terminal: str  # the one terminal outcome every propagation of the path must reach
    attempts: int | None  # attempts the row must show; None = the configured max attempts
    effect: bool  # the provisioner applies it exactly once (else never)
    what: str
    rule: Rule | None = None
    invalid: bool = False  # rows written by SQL around enqueue()'s validation
    unknown_kind: bool = False


# Calls that fail for one whole attempt and one more: attempt 2 succeeds on its second call.
TRANSIENT_TIMES = CALL_TRIES_PER_ATTEMPT + 1

PATHS: tuple[OutcomePath, ...] = (
    OutcomePath("ok", 38, "applied", 1, True, "applied at once"),
    OutcomePath(
        "allowed",
        10,
        "applied",
        1,
        False,
        "allowed skip (already at target tier)",
        Rule(match="allowed-*", action="skip", reason="Already at target tier"),
    ),
    OutcomePath(
        "flakyskip",
        10,
        "applied",
        3,
        True,
        "unexpected skip twice, then applied",
        Rule(match="flakyskip-*", action="skip", reason="postgres-admin secret missing", times=2),
    ),
    OutcomePath(
        "deadskip",
        4,
        "dead_lettered",
        None,
        False,
        "unexpected skip until dead-lettered",
        Rule(match="deadskip-*", action="skip", reason="namespace team-x not found"),
    ),
    OutcomePath(
        "transient",
        16,
        "applied",
        2,
        True,
        "transient gRPC errors (UNAVAILABLE), then applied",
        Rule(match="transient-*", action="error", code="UNAVAILABLE", times=TRANSIENT_TIMES),
    ),
    OutcomePath(
        "ambiguous",
        6,
        "applied",
        1,
        True,
        "applied but the reply was lost; the retry sees it applied",
        Rule(match="ambiguous-*", action="apply_then_error", code="UNAVAILABLE", times=1),
    ),
    OutcomePath(
        "perm",
        4,
        "dead_lettered",
        None,
        False,
        "permanent failure (FAILED_PRECONDITION) until dead-lettered",
        Rule(match="perm-*", action="error", code="FAILED_PRECONDITION"),
    ),
    OutcomePath(
        "unknown",
        6,
        "unknown_kind_dead_lettered",
        None,
        False,
        "kind added to the enum after the worker started",
        unknown_kind=True,
    ),
    OutcomePath(
        "invalid", 6, "dead_lettered", 1, False, "invalid payload, written by SQL", invalid=True
    ),
)
PATHS_BY_NAME = {p.name: p for p in PATHS}
# A little latency on every other call, so the handler latency histogram has a shape.
BASELINE_RULE = Rule(action="ok", latency_ms=2)
MIN_COUNT = len(PATHS)


def path_rules() -> list[Rule]:
    """The rules that make each path end as it must (chaos runs them without the baseline)."""
    return [p.rule for p in PATHS if p.rule is not None]


def provisioner_rules() -> list[Rule]:
    return [*path_rules(), BASELINE_RULE]


def counts(total: int) -> dict[str, int]:
    """Propagations per path: proportional to the weights, at least one each, summing to total."""
    if total < MIN_COUNT:
        raise ValueError(f"the demo needs at least {MIN_COUNT} propagations, one per path")
    weight_sum = sum(p.weight for p in PATHS)
    out = {p.name: max(1, total * p.weight // weight_sum) for p in PATHS}
    # The rounding remainder goes to the plain applied path (the bulk of real traffic).
    out[PATHS[0].name] += total - sum(out.values())
    return out


@dataclass(frozen=True, slots=True)
class PlannedRow:
    path: str
    kind: str  # a propagation_kind value, or UNKNOWN
    team_id: str
    resource_type: str
    resource_id: str
    payload: Any


def plan(total: int, seed: int = 7) -> list[PlannedRow]:
    """Every row the demo enqueues, paths mixed as real traffic would be (seeded: reproducible)."""
    rows: list[PlannedRow] = []
    for path in PATHS:
        for i in range(counts(total)[path.name]):
            kind = UNKNOWN if path.unknown_kind else KINDS[i % len(KINDS)]
            payload: Any = {}
            if kind in REGRADES or kind == UNKNOWN:
                payload = {"target_tier": TIERS[i % len(TIERS)]}
            if path.invalid:
                # Regrades without a tier; suspend/resume with a payload that is not an object.
                payload = {"target_tier": ""} if kind in REGRADES else ["not", "an", "object"]
            rows.append(
                PlannedRow(
                    path.name,
                    kind,
                    f"team-{i % 50}",
                    RESOURCE_TYPES[i % len(RESOURCE_TYPES)],
                    f"{path.name}-{i}",
                    payload,
                )
            )
    random.Random(seed).shuffle(rows)
    return rows


@dataclass(frozen=True, slots=True)
class PathResult:
    path: OutcomePath
    enqueued: int
    attempts: int  # what each row must show
    in_postgres: int  # rows in the expected terminal state with the expected attempts
    on_topic: int  # propagations whose terminal outcome events are exactly the expected one
    effects_expected: int
    effects: int  # propagations with exactly one provisioner effect
    double_effects: int  # propagations applied more than once (must be 0)

    @property
    def ok(self) -> bool:
        return (
            self.in_postgres == self.enqueued
            and self.on_topic == self.enqueued
            and self.effects == self.effects_expected
            and self.double_effects == 0
        )

    def row(self) -> tuple[str, ...]:
        """One line of the summary table; columns are SUMMARY_HEADERS."""
        double = f" ({self.double_effects} double)" if self.double_effects else ""
        return (
            self.path.name,
            self.path.what,
            f"{self.path.terminal} @{self.attempts}",
            str(self.enqueued),
            str(self.in_postgres),
            str(self.on_topic),
            f"{self.effects}/{self.effects_expected}{double}",
            "OK" if self.ok else "MISMATCH",
        )


SUMMARY_HEADERS = ("path", "what", "expect", "n", "postgres", "topic", "effects", "result")
SUMMARY_LEGEND = (
    "postgres = rows in the expected terminal state with the expected attempts; topic = "
    "propagations whose only terminal outcome event is the expected one; effects = "
    "propagations the provisioner applied exactly once (expected)"
)
CHECK_SQL = (
    "SELECT split_part(resource_id, '-', 1) AS path, last_outcome, attempts, count(*) "
    "FROM pending_propagations GROUP BY 1, 2, 3 ORDER BY 1"
)


def compare(
    ids_by_path: Mapping[str, Sequence[int]],
    pg_states: Sequence[tuple[str, str, int, int]],
    terminal_events: Mapping[int, set[tuple[int, str]]],
    effects_by_id: Mapping[int, int],
    max_attempts: int,
) -> list[PathResult]:
    """Per path, what Postgres, the outcome topic and the provisioner show against expectation.

    ``pg_states``: (path, state, attempts, rows) where state is ``applied``, the last outcome of
    a failed row, or ``open``. ``terminal_events``: per propagation id, its distinct terminal
    (attempt, outcome) pairs on the topic. ``effects_by_id``: effects the provisioner recorded.
    """
    results = []
    for path in PATHS:
        ids = ids_by_path.get(path.name, ())
        attempts = max_attempts if path.attempts is None else path.attempts
        in_pg = sum(
            n
            for name, state, att, n in pg_states
            if name == path.name and state == path.terminal and att == attempts
        )
        on_topic = sum(
            1
            for i in ids
            if {o for _a, o in terminal_events.get(i, set())} == {path.terminal}
            and len(terminal_events[i]) == 1
        )
        results.append(
            PathResult(
                path=path,
                enqueued=len(ids),
                attempts=attempts,
                in_postgres=in_pg,
                on_topic=on_topic,
                effects_expected=len(ids) if path.effect else 0,
                effects=sum(1 for i in ids if effects_by_id.get(i, 0) == 1),
                double_effects=sum(1 for i in ids if effects_by_id.get(i, 0) > 1),
            )
        )
    return results
