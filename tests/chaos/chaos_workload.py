"""The chaos suite's workload: the outcome paths of ``pipeline.devtools.workload`` (the demo's, one
definition of each path's rule and expected end) at fixed counts, plus the paths only chaos
checks: a slow provisioner call and resources with several rows (for ordering).
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from pipeline.devtools import workload as wl
from pipeline.devtools.fake_provisioner import Rule
from pipeline.store.outbox import enqueue

MAX_ATTEMPTS = 5  # the retry budget the runs are configured with; dead-letter paths end at it
TERMINAL = tuple(sorted(wl.TERMINAL_OUTCOMES))

# Only chaos runs these paths: a call slow enough to be in flight when a fault lands, and
# resources with several rows whose order I3 checks, one of them failing once on every row.
SLOW_RULE = Rule(match="slow-*", action="ok", latency_ms=150)
ORDFLAKY_RULE = Rule(
    match="ordflaky-*", action="error", code="UNAVAILABLE", times=wl.TRANSIENT_TIMES
)
RULES = (SLOW_RULE, ORDFLAKY_RULE, *wl.path_rules())


@dataclass(frozen=True)
class PathSpec:
    """One outcome path of the workload: ``count`` resources, each with one or more rows."""

    prefix: str
    count: int
    terminal: str  # the row's expected last_outcome
    effect: bool  # the provisioner applies it (exactly once)
    kind: str = "tier_elevation"  # or "rotate" (every known kind) or "unknown"
    payload: Any = None  # written raw, bypassing enqueue()'s validation (a bad outbox row)
    rows_per_resource: int = 1
    # The attempt a dead-letter path ends at; None: the budget (MAX_ATTEMPTS), or 1 for a raw
    # payload (an invalid command is dead-lettered at once). Unused for applied paths.
    dead_at: int | None = None

    def attempts(self) -> int | None:
        """The exact number of attempts this path takes, where the retry budget fixes it."""
        if self.terminal == "applied":
            return None
        if self.dead_at is not None:
            return self.dead_at
        return 1 if self.payload is not None else MAX_ATTEMPTS


ORDERED_STEPS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("tier_elevation", {"target_tier": "pro"}),
    ("tier_demotion", {"target_tier": "free"}),
    ("resource_suspend", {}),
    ("resource_resume", {}),
)
UNKNOWN_KIND = "kind_from_the_future"
INVALID_PAYLOAD = {"target_tier": ""}


def shared(name: str, count: int, kind: str = "tier_elevation") -> PathSpec:
    """The workload's path ``name`` (its rule, expected end and effect) at ``count`` resources."""
    path = wl.PATHS_BY_NAME[name]
    return PathSpec(
        path.name,
        count,
        path.terminal,
        path.effect,
        kind="unknown" if path.unknown_kind else kind,
        payload=INVALID_PAYLOAD if path.invalid else None,
        dead_at=None if path.terminal == "applied" else path.attempts,
    )


PATHS = (
    shared("ok", 50, kind="rotate"),
    PathSpec("slow", 16, "applied", True),
    shared("allowed", 12),
    shared("flakyskip", 12),
    shared("deadskip", 6),
    shared("transient", 12),
    shared("perm", 6),
    shared("ambiguous", 12),
    shared("unknown", 6),
    shared("invalid", 6),
    # several rows per resource, in enqueue order; some fail once on every row
    PathSpec("ordered", 16, "applied", True, rows_per_resource=len(ORDERED_STEPS)),
    PathSpec("ordflaky", 6, "applied", True, rows_per_resource=len(ORDERED_STEPS)),
)

Resource = tuple[str, str, str]


@dataclass
class Workload:
    expected: dict[int, PathSpec] = field(default_factory=dict)
    resources: dict[Resource, list[int]] = field(default_factory=lambda: defaultdict(list))

    def add(self, pid: int, path: PathSpec, resource: Resource) -> None:
        self.expected[pid] = path
        self.resources[resource].append(pid)


def seed_workload(database_url: str, rng: random.Random, paths: Iterable[PathSpec]) -> Workload:
    """Enqueue every path, interleaved at random; rows of one resource keep their order."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        # A value the running worker lacks: a newer API enqueued it.
        conn.execute(f"ALTER TYPE propagation_kind ADD VALUE IF NOT EXISTS '{UNKNOWN_KIND}'")
    tokens: list[tuple[PathSpec, int]] = []
    for path in paths:
        for i in range(path.count):
            tokens += [(path, i)] * path.rows_per_resource
    rng.shuffle(tokens)
    step: Counter[tuple[str, int]] = Counter()
    work = Workload()
    with psycopg.connect(database_url) as conn:
        for path, i in tokens:
            n = step[(path.prefix, i)]
            step[(path.prefix, i)] += 1
            rid = f"{path.prefix}-{i}"
            team = "team-ord" if path.rows_per_resource > 1 else f"team-{rng.randrange(12)}"
            rtype = "redis" if path.rows_per_resource > 1 else "postgres"
            if path.rows_per_resource > 1:
                kind, payload = ORDERED_STEPS[n % len(ORDERED_STEPS)]
            elif path.kind == "rotate":
                kind = wl.KINDS[i % len(wl.KINDS)]
                payload = {"target_tier": "pro"} if "tier" in kind else {}
            elif path.kind == "unknown":
                kind, payload = UNKNOWN_KIND, {"target_tier": "pro"}
            else:
                kind, payload = path.kind, {"target_tier": "pro"}
            if path.payload is not None:
                row = conn.execute(
                    "INSERT INTO pending_propagations"
                    " (kind, team_id, resource_type, resource_id, payload)"
                    " VALUES (%s, %s, %s, %s, %s) RETURNING id",
                    (kind, team, rtype, rid, Jsonb(path.payload)),
                ).fetchone()
                assert row is not None
                pid = int(row[0])
            else:
                pid = enqueue(conn, kind, team, rtype, rid, payload)
            work.add(pid, path, (team, rtype, rid))
        conn.commit()
    return work
