"""The chaos invariants' verdicts as pure functions over a recorded run.

``chaoslib`` gathers the record (the fake provisioner's calls and effects, the topics, the
projected tables, the faults) and hands it here; the unit tests in ``test_invariants.py``
feed the same functions planted defects. Each function returns a list of problems (empty:
the invariant holds), so a soak can count failures instead of raising.

The witnesses are independent of what they check: effects and their order come from the
fake provisioner's own record (its call sequence and monotonic clock), the expected rows
and audit come from :func:`oracle_fold`, a fold of the outcome events written from SPEC.md
section 3/4 rather than from the projector's code.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pipeline.devtools.fake_provisioner import Call, Effect
from pipeline.domain.events import idempotency_key

TERMINAL = ("applied", "dead_lettered", "unknown_kind_dead_lettered")
DEAD = ("dead_lettered", "unknown_kind_dead_lettered")

# -- I2: effects applied once --------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """Commands a component may legitimately process twice: those at offsets ``[start, end)``
    of a command partition when a worker died or lost its partitions (a crash window).

    A command in the window may have been handled (the provisioner called) without its
    outcome being recorded, so its key is allowed one more applying call per command there.
    """

    reason: str
    start: dict[int, int]  # partition -> first offset in the window (the committed offset)
    end: dict[int, int] = field(default_factory=dict)  # partition -> end; missing: no end

    def covers(self, partition: int, offset: int) -> bool:
        if partition not in self.start or offset < self.start[partition]:
            return False
        return partition not in self.end or offset < self.end[partition]


@dataclass(frozen=True)
class CommandAt:
    """A command on the log: where it is and which propagation attempt it carries."""

    partition: int
    offset: int
    propagation_id: int | None
    attempt: int | None


def window_allowances(windows: Iterable[Window], commands: Iterable[CommandAt]) -> Counter[str]:
    """Extra applying calls each key may have because of crash windows (one per command)."""
    allowed: Counter[str] = Counter()
    cmds = [c for c in commands if c.propagation_id is not None]
    for w in windows:
        for c in cmds:
            if w.covers(c.partition, c.offset):
                allowed[idempotency_key(int(c.propagation_id))] += 1  # type: ignore[arg-type]
    return allowed


def doubled_effects(
    applications: Mapping[str, Sequence[Call]],
    effects: Mapping[str, Sequence[Effect]],
    expected: Mapping[str, bool],
    allowed: Mapping[str, int],
) -> list[str]:
    """I2 from the provisioner's record.

    ``expected``: key -> whether its path applies. A key may see one applying call, plus one
    more after each applying call answered with an error (the ambiguous reply: the effect
    landed, the worker could not know), plus ``allowed[key]`` (crash windows). Any other
    applying call is a second application; any effect or applying call under a key outside
    the workload is a failure too.
    """
    problems: list[str] = []
    unknown = sorted((set(applications) | set(effects)) - set(expected))
    if unknown:
        problems.append(f"{len(unknown)} keys outside the workload applied: {unknown[:5]}")
    for key, calls in applications.items():
        if key not in expected:
            continue
        lost_replies = sum(1 for c in calls[:-1] if c.outcome.startswith("error:"))
        budget = 1 + lost_replies + allowed.get(key, 0)
        if len(calls) > budget:
            seqs = [(c.seq, c.outcome) for c in calls]
            problems.append(
                f"{key}: {len(calls)} applying calls {seqs}, at most {budget} allowed"
                f" ({lost_replies} lost replies, {allowed.get(key, 0)} in crash windows)"
            )
    for key, wants in expected.items():
        n = len(effects.get(key, []))
        if n != int(wants):
            problems.append(f"{key}: {n} effects, expected {int(wants)}")
    return problems


# -- I3: order on the provisioner's side -------------------------------------------------------

_METHODS = {
    "tier_elevation": "RegradeResource",
    "tier_demotion": "RegradeResource",
    "resource_suspend": "SuspendResource",
    "resource_resume": "ResumeResource",
}


def effect_mismatch(effect: Effect, row: Mapping[str, Any]) -> str | None:
    """Why ``effect`` is not the change row ``row`` asks for (None: it is)."""
    payload = row.get("payload") or {}
    want = (
        _METHODS.get(str(row["kind"])),
        row["team_id"],
        row["resource_type"],
        row["resource_id"],
        payload.get("target_tier", "") if str(row["kind"]).startswith("tier_") else "",
    )
    got = (
        effect.method,
        effect.team_id,
        effect.resource_type,
        effect.resource_id,
        effect.target_tier,
    )
    return None if want == got else f"effect {got} but the row asks for {want}"


def provisioner_order(
    resources: Mapping[Any, Sequence[int]],
    applies: Mapping[int, bool],
    effects: Mapping[str, Sequence[Effect]],
    rows: Mapping[int, Mapping[str, Any]],
) -> list[str]:
    """I3 from the provisioner's side: each effect is its row's change, and a resource's
    effects were applied in enqueue order by the fake's own call sequence and clock."""
    problems: list[str] = []
    for pid, wants in applies.items():
        for e in effects.get(idempotency_key(pid), [])[:1] if wants else []:
            why = effect_mismatch(e, rows[pid])
            if why:
                problems.append(f"{pid}: {why}")
    for resource, ids in resources.items():
        firsts = [effects[k][0] for k in (idempotency_key(p) for p in ids) if effects.get(k)]
        seqs = [e.seq for e in firsts]
        clock = [e.mono for e in firsts]
        if seqs != sorted(seqs) or len(set(seqs)) != len(seqs) or clock != sorted(clock):
            problems.append(
                f"{resource}: effects of rows {list(ids)} applied at calls {seqs}"
                f" (clock {[round(c, 3) for c in clock]}), not in enqueue order"
            )
    return problems


# -- I4: the oracle ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpectedRow:
    attempts: int = 0
    applied_at: datetime | None = None
    failed_at: datetime | None = None
    last_outcome: str | None = None
    last_error: str | None = None
    last_skip_reason: str | None = None

    def as_tuple(self) -> tuple[Any, ...]:
        return (
            self.attempts,
            self.applied_at,
            self.failed_at,
            self.last_outcome,
            self.last_error,
            self.last_skip_reason,
        )


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def oracle_fold(
    events: Iterable[Mapping[str, Any]], ids: Iterable[int]
) -> tuple[dict[int, ExpectedRow], dict[str, tuple[Any, ...]]]:
    """Expected rows and audit rows from outcome events in log order (SPEC sections 3-4).

    Each row starts untouched. An event for an attempt above the row's ``attempts`` of a row
    that is not terminal sets attempts, last_outcome, last_error, last_skip_reason, and the
    terminal column of a terminal outcome (at ``occurred_at``); any other event changes
    nothing. The audit holds one row per distinct event_id, from its first place on the log.
    Events carry ``_topic``, ``_partition`` and ``_offset``.
    """
    rows = {pid: ExpectedRow() for pid in ids}
    audit: dict[str, tuple[Any, ...]] = {}
    for e in events:
        pid = e["propagation_id"]
        if pid not in rows:
            continue
        eid = str(uuid.UUID(str(e["event_id"])))
        if eid not in audit:
            audit[eid] = (
                pid,
                e["audit_kind"],
                e["outcome"],
                e["attempt"],
                e.get("skip_reason"),
                e.get("skip_reason_bucket"),
                e.get("error"),
                e.get("dead_letter_reason"),
                _ts(e["occurred_at"]),
                e["_topic"],
                e["_partition"],
                e["_offset"],
            )
        row = rows[pid]
        if row.applied_at or row.failed_at or e["attempt"] <= row.attempts:
            continue
        at = _ts(e["occurred_at"])
        rows[pid] = ExpectedRow(
            attempts=e["attempt"],
            applied_at=at if e["outcome"] == "applied" else None,
            failed_at=at if e["outcome"] in DEAD else None,
            last_outcome=e["outcome"],
            last_error=e.get("error"),
            last_skip_reason=e.get("skip_reason"),
        )
    return rows, audit


def oracle_differences(
    expected: tuple[dict[int, ExpectedRow], dict[str, tuple[Any, ...]]],
    rows: Mapping[int, tuple[Any, ...]],
    audit: Mapping[str, tuple[Any, ...]],
) -> list[str]:
    """Where the projected ``rows`` (pid -> row tuple as ExpectedRow.as_tuple) and ``audit``
    (event_id -> the audit row without its key) differ from the oracle."""
    want_rows, want_audit = expected
    problems = []
    differ = [
        (pid, want.as_tuple(), rows.get(pid))
        for pid, want in sorted(want_rows.items())
        if rows.get(pid) != want.as_tuple()
    ]
    if differ:
        problems.append(
            f"{len(differ)} rows differ from the oracle (id, oracle, got): {differ[:3]}"
        )
    missing = sorted(set(want_audit) - set(audit))
    extra = sorted(set(audit) - set(want_audit))
    changed = [
        (k, want_audit[k], audit[k]) for k in want_audit if k in audit and audit[k] != want_audit[k]
    ]
    if missing or extra or changed:
        problems.append(
            f"audit differs from the oracle: {len(missing)} missing {missing[:3]},"
            f" {len(extra)} extra {extra[:3]}, {len(changed)} changed {changed[:2]}"
        )
    return problems


# -- I1: the retry budget ----------------------------------------------------------------------


def budget_problems(
    expected_attempts: Mapping[int, tuple[str, int | None]],
    outcomes: Mapping[int, Sequence[Mapping[str, Any]]],
    max_attempts: int,
) -> list[str]:
    """Each propagation's distinct outcome events: attempts 1..n, n within ``max_attempts``,
    and, where the path fixes it (``expected_attempts[pid] = (path, n)``), exactly n: a
    dead-letter path ends at the budget (or at attempt 1 for an invalid command)."""
    problems = []
    for pid, (what, want) in expected_attempts.items():
        attempts = [e["attempt"] for e in outcomes.get(pid, [])]
        n = max(attempts, default=0)
        if n > max_attempts or (want is not None and n != want):
            bound = f"exactly {want}" if want is not None else f"at most {max_attempts}"
            problems.append(f"{pid} {what}: {n} attempts, expected {bound}")
    return problems


# -- faults ----------------------------------------------------------------------------------------


def unlanded(faults: Iterable[Any]) -> list[str]:
    """A fault that could not prove it landed fails the run, and so does a run without one
    fault proven to have landed (``landed`` None: a record, e.g. a heal, proves nothing)."""
    faults = list(faults)
    problems = [f"fault did not land: {f.what} ({f.proof})" for f in faults if f.landed is False]
    if not any(f.landed for f in faults):
        problems.append(f"no fault proved it landed ({len(faults)} recorded)")
    return problems


# -- processing --------------------------------------------------------------------------------


def unprocessed(commands: Iterable[CommandAt], answered: set[tuple[int, int]]) -> list[CommandAt]:
    """Commands carrying a (propagation_id, attempt) without an outcome for that pair."""
    return [
        c
        for c in commands
        if c.propagation_id is not None
        and c.attempt is not None
        and (c.propagation_id, c.attempt) not in answered
    ]
