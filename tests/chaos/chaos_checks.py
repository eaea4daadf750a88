"""The invariants I1..I5 checked on a finished run (the pure parts are in ``invariants``)."""

from __future__ import annotations

import contextlib
import itertools
import json
import signal
import time
from collections.abc import Callable
from typing import Any

import orjson
import psycopg
from chaos_diagnose import _stalled, command_holes, diagnose_stuck
from chaos_record import Check
from chaos_run import ChaosRun
from chaos_workload import MAX_ATTEMPTS, TERMINAL
from harness import cli, dedupe
from invariants import (
    CommandAt,
    budget_problems,
    doubled_effects,
    oracle_differences,
    oracle_fold,
    provisioner_order,
    unprocessed,
    window_allowances,
)

from pipeline.domain.errors import PipelineError
from pipeline.domain.events import COMMAND_SCHEMA, idempotency_key

TERMINAL_BOUND_S = 150.0  # every row terminal within this long after the fault healed
LIVENESS_BOUND_S = 60.0  # lag back to 0 on every partition within this long after that
STALL_S = 20.0  # no progress this long, nothing in flight: a lost command, fail at once


def _outcomes(run: ChaosRun) -> dict[int, list[dict[str, Any]]]:
    events: dict[int, list[dict[str, Any]]] = run.p.outcomes()
    # A scenario that trimmed the log's head (retention) kept a copy of what it deleted.
    for pid, gone in run.notes.get("trimmed_outcomes", {}).items():
        events[pid] = gone + events.get(pid, [])
    return events


def check_i1(run: ChaosRun) -> Check:
    """Every row terminal within the bound, exactly one terminal column, the expected one."""
    ids = list(run.workload.expected)
    deadline = time.monotonic() + TERMINAL_BOUND_S
    started = last_change = time.monotonic()
    last_open = -1
    while True:
        rows = run.p.rows()
        open_ids = [
            i for i in ids if rows[i]["applied_at"] is None and rows[i]["failed_at"] is None
        ]
        if not open_ids:
            break
        if len(open_ids) != last_open:
            last_open, last_change = len(open_ids), time.monotonic()
        run.p.supervise()
        dead = {n: p.returncode for n, p in run.p.procs.items() if p.poll() is not None}
        why = ""
        if dead:
            why = f"components exited {dead}"
        elif time.monotonic() > deadline:
            why = f"bound {TERMINAL_BOUND_S:.0f}s passed"
        elif time.monotonic() - last_change > STALL_S and _stalled(run, open_ids, rows):
            why = (
                f"stalled: no progress for {STALL_S:.0f}s, every open row is published without"
                " an outcome while the processor and projector have no lag (only the relay's"
                " 25-minute rescue could move them)"
            )
        if why:
            return Check(
                False,
                f"{len(open_ids)} rows never terminal ({why})\n"
                + command_holes(run)
                + "\n"
                + diagnose_stuck(run, open_ids, rows),
            )
        time.sleep(0.2)
    waited = time.monotonic() - started
    problems = []
    outcomes = _outcomes(run)
    for pid, path in run.workload.expected.items():
        row = rows[pid]
        both = row["applied_at"] is not None and row["failed_at"] is not None
        if both or row["last_outcome"] != path.terminal:
            problems.append(
                f"{pid} {path.prefix}: last_outcome={row['last_outcome']} "
                f"expected {path.terminal} applied_at={row['applied_at']} "
                f"failed_at={row['failed_at']}"
            )
            continue
        want_applied = path.terminal == "applied"
        if (row["applied_at"] is not None) != want_applied:
            problems.append(f"{pid} {path.prefix}: wrong terminal column {row}")
        events = dedupe(outcomes.get(pid, []))
        terminal_events = [e for e in events if e["outcome"] in TERMINAL]
        if len(terminal_events) != 1 or events[-1]["outcome"] != path.terminal:
            problems.append(
                f"{pid} {path.prefix}: log outcomes "
                f"{[(e['attempt'], e['outcome']) for e in events]}"
            )
        if row["attempts"] != len(events):
            problems.append(
                f"{pid} {path.prefix}: attempts={row['attempts']} but "
                f"{len(events)} distinct outcome events"
            )
    budget = {pid: (path.prefix, path.attempts()) for pid, path in run.workload.expected.items()}
    problems += budget_problems(
        budget, {pid: dedupe(evs) for pid, evs in outcomes.items()}, MAX_ATTEMPTS
    )
    holes = command_holes(run)
    if holes:
        problems.insert(0, holes)
    if problems:
        return Check(False, f"{len(problems)} problems: " + "; ".join(problems[:8]))
    return Check(
        True,
        f"{len(ids)} rows terminal as expected ({waited:.1f}s after the heal), attempts within"
        f" the budget of {MAX_ATTEMPTS} (dead-letter paths exactly at it); every command"
        " offset reached a worker",
    )


def commands_at(run: ChaosRun) -> list[CommandAt]:
    """Every command on the log with the propagation attempt it names, if it names one."""
    out = []
    for m in run.read_raw(run.commands_topic):
        doc: Any = None
        with contextlib.suppress(orjson.JSONDecodeError):
            doc = orjson.loads(m.value or b"")
        named = isinstance(doc, dict) and doc.get("schema") == COMMAND_SCHEMA
        pid = doc.get("propagation_id") if named else None
        attempt = doc.get("attempt") if named else None
        ok = type(pid) is int and type(attempt) is int
        out.append(CommandAt(m.partition, m.offset, pid if ok else None, attempt if ok else None))
    return out


def check_i2(run: ChaosRun) -> Check:
    applications = run.provisioner.applications()
    effects = run.provisioner.effects()
    allowed = window_allowances(run.windows, commands_at(run))
    expected = {idempotency_key(pid): p.effect for pid, p in run.workload.expected.items()}
    problems = doubled_effects(applications, effects, expected, allowed)
    if problems:
        return Check(False, f"{len(problems)} problems: " + "; ".join(problems[:10]))
    calls = sum(len(v) for v in applications.values())
    return Check(
        True,
        f"{len(effects)} keys applied, each exactly once; {calls} applying calls, none outside"
        f" lost replies and {len(run.windows)} crash windows ({sum(allowed.values())} commands)",
    )


def check_i3(run: ChaosRun) -> Check:
    outcomes = _outcomes(run)
    rows = run.p.rows()
    problems = []
    for pid in run.workload.expected:
        attempts = [e["attempt"] for e in dedupe(outcomes.get(pid, []))]
        if attempts != list(range(1, len(attempts) + 1)):
            problems.append(f"{pid}: attempts on the log in order {attempts}")
    groups = 0
    for resource, ids in run.workload.resources.items():
        if len(ids) < 2:
            continue
        groups += 1
        firsts = [dedupe(outcomes.get(pid, [])) for pid in ids]
        parts = {e["_partition"] for evs in firsts for e in evs}
        if len(parts) != 1:
            problems.append(f"{resource}: outcomes on partitions {sorted(parts)}")
            continue
        spans = [
            (min(e["_offset"] for e in evs), max(e["_offset"] for e in evs))
            for evs in firsts
            if evs
        ]
        if len(spans) != len(ids) or any(a[1] >= b[0] for a, b in itertools.pairwise(spans)):
            problems.append(
                f"{resource}: outcome offsets per row {spans} not in enqueue order {ids}"
            )
        terminal_offsets = [
            next(e["_offset"] for e in evs if e["outcome"] in TERMINAL) for evs in firsts if evs
        ]
        if terminal_offsets != sorted(terminal_offsets):
            problems.append(f"{resource}: terminal outcomes at {terminal_offsets}")
        times = [rows[pid]["applied_at"] or rows[pid]["failed_at"] for pid in ids]
        if None in times or times != sorted(times):
            problems.append(f"{resource}: terminal times {times} not non-decreasing")
    applies = {pid: path.effect for pid, path in run.workload.expected.items()}
    problems += provisioner_order(run.workload.resources, applies, run.provisioner.effects(), rows)
    if problems:
        return Check(False, f"{len(problems)} ordering problems: " + "; ".join(problems[:8]))
    return Check(
        True,
        f"{groups} multi-row resources in enqueue order, on the log and by the provisioner's"
        " own call sequence; every effect is its row's; attempts in order",
    )


def oracle_state(run: ChaosRun) -> tuple[dict[int, tuple[Any, ...]], dict[str, tuple[Any, ...]]]:
    """The workload's projected rows and audit rows, shaped as :func:`oracle_fold`'s."""
    ids = list(run.workload.expected)
    with psycopg.connect(run.p.database_url) as conn:
        rows = conn.execute(
            "SELECT id, attempts, applied_at, failed_at, last_outcome, last_error,"
            " last_skip_reason FROM pending_propagations WHERE id = ANY(%s)",
            (ids,),
        ).fetchall()
        audit = conn.execute(
            "SELECT event_id::text, propagation_id, audit_kind, outcome, attempt, skip_reason,"
            " skip_reason_bucket, error, dead_letter_reason, occurred_at, source_topic,"
            " source_partition, source_offset FROM propagation_audit"
            " WHERE propagation_id = ANY(%s)",
            (ids,),
        ).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}, {a[0]: tuple(a[1:]) for a in audit}


def check_i4(run: ChaosRun) -> Check:
    """Compare the projection with the oracle; stop the projector, rebuild from the outcome
    log, compare every projected column with before and with the oracle."""
    rc = run.stop_component("projector", signal.SIGTERM)
    events = [{**e, "_topic": run.outcomes_topic} for evs in _outcomes(run).values() for e in evs]
    oracle = oracle_fold(events, run.workload.expected)
    problems = [f"projection: {p}" for p in oracle_differences(oracle, *oracle_state(run))]
    before = run.projected_state()
    # On a trimmed log (a retention scenario), I4 holds for the range the log still covers.
    covered = ["--covered-only"] if run.notes.get("log_trimmed") else []
    code, report, err = replay(run.p.env(), "--from-beginning", "--rebuild", *covered)
    if report is None:
        return Check(False, f"replay --rebuild rc={code}: {err}")
    after = run.projected_state()
    problems += [f"rebuild: {p}" for p in oracle_differences(oracle, *oracle_state(run))]
    if report.get("rows_differing") != 0 or not report.get("committed"):
        problems.append(f"replay report: {report}")
    b_rows = {r[0]: r for r in before[0]}
    a_rows = {r[0]: r for r in after[0]}
    differ = [
        (b_rows.get(i), a_rows.get(i))
        for i in sorted(set(b_rows) | set(a_rows))
        if b_rows.get(i) != a_rows.get(i)
    ]
    if differ:
        problems.append(f"{len(differ)} rows differ (before, after): {differ[:4]}")
    if before[1] != after[1]:
        only_b = set(before[1]) - set(after[1])
        only_a = set(after[1]) - set(before[1])
        problems.append(
            f"audit differs: {len(only_b)} only before {list(only_b)[:3]}, "
            f"{len(only_a)} only after {list(only_a)[:3]}"
        )
    if problems:
        return Check(False, "; ".join(problems))
    return Check(
        True,
        f"projection and rebuild of {report['events_read']} events both equal the oracle's"
        f" {len(oracle[0])} rows and {len(oracle[1])} audit rows and each other"
        f" ({len(before[0])} rows, {len(before[1])} audit rows; projector rc={rc})",
    )


def replay(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any] | None, str]:
    """``pipeline replay``: (exit code, its JSON report or None, the end of its stderr)."""
    done = cli("replay", *args, env=env, timeout=300)
    if done.returncode == 0:  # stderr holds only progress log lines then
        return 0, json.loads(done.stdout.strip().splitlines()[-1]), ""
    return done.returncode, None, done.stderr[-2000:]


def check_processed(run: ChaosRun) -> Check:
    """Every command on the log naming a propagation attempt has an outcome for that attempt:
    it was processed, not only received (``command_received`` is logged before deciding)."""
    # .get: hand-made outcome events on the topic may lack fields (bad_input)
    answered = {(pid, e.get("attempt")) for pid, evs in _outcomes(run).items() for e in evs}
    commands = commands_at(run)
    missing = unprocessed(commands, answered)
    if missing:
        return Check(False, f"{len(missing)} commands without an outcome: {missing[:8]}")
    named = sum(1 for c in commands if c.propagation_id is not None)
    return Check(True, f"all {named} commands naming an attempt have its outcome")


def check_i5(run: ChaosRun, bound: float = LIVENESS_BOUND_S) -> Check:
    started = time.monotonic()
    deadline = started + bound
    problems: list[str] = []
    while True:
        run.p.supervise()  # a worker that asked for a restart gets one, as in production
        try:
            rep = run.lag()
        except PipelineError as exc:
            problems = [f"lag measurement failed: {exc}"]
        else:
            problems = []
            for pl in rep.partitions:
                if pl.lag != 0 or (pl.end > 0 and pl.committed != pl.end):
                    problems.append(
                        f"{pl.group} {pl.topic}[{pl.partition}] committed="
                        f"{pl.committed} end={pl.end} lag={pl.lag}"
                    )
            if rep.topics_missing:
                problems.append(f"topics missing: {rep.topics_missing}")
            if rep.outbox is not None and rep.outbox.due_unpublished:
                problems.append(f"outbox: {rep.outbox.due_unpublished} due rows unpublished")
            if not problems:
                n = len(rep.partitions)
                return Check(
                    True,
                    f"lag 0 and committed on all {n} partitions after "
                    f"{time.monotonic() - started:.1f}s (bound {bound:.0f}s)",
                )
        run.p.supervise()
        dead = {n: p.returncode for n, p in run.p.procs.items() if p.poll() is not None}
        if dead or time.monotonic() > deadline:
            return Check(
                False,
                f"after {time.monotonic() - started:.0f}s (bound {bound:.0f}s)"
                f"{' components exited ' + str(dead) if dead else ''}: " + "; ".join(problems),
            )
        time.sleep(0.5)


def quiet_redelivery(run: ChaosRun, action: Callable[[], str]) -> Check:
    """Run ``action`` on the quiet pipeline; effects and projected state must not change."""
    before_state = run.projected_state()
    before_effects = run.provisioner.effects()
    before_calls = len(run.provisioner.calls())
    what = action()
    live = check_i5(run)
    if not live.ok:
        return Check(False, f"{what}; never caught up: {live.detail}")
    after_state = run.projected_state()
    after_effects = run.provisioner.effects()
    calls = len(run.provisioner.calls()) - before_calls
    problems = []
    if after_effects != before_effects:
        problems.append("provisioner effects changed")
    if calls:
        problems.append(f"{calls} provisioner calls for redelivered commands")
    if after_state != before_state:
        b = {r[0]: r for r in before_state[0]}
        changed = [r for r in after_state[0] if b.get(r[0]) != r]
        problems.append(
            f"projected state changed: {changed[:4]}, audit "
            f"{len(before_state[1])} -> {len(after_state[1])}"
        )
    if problems:
        return Check(False, f"{what}: " + "; ".join(problems))
    return Check(True, f"{what}: no call, no effect, no projected change")
