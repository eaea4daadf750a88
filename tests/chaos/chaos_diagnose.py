"""Evidence for a run whose rows never ended: lost command offsets and stuck rows."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import Any

import orjson
from chaos_run import ChaosRun
from harness import RawMessage

from pipeline.domain.errors import PipelineError


def command_holes(run: ChaosRun) -> str:
    """Command offsets no worker ever received: commands committed past without being seen.

    The relay's idempotent producer leaves no gaps in offsets, so every offset below the end
    must appear in some worker's ``command_received`` lines (DEBUG) at least once.
    """
    received: dict[int, set[int]] = defaultdict(set)
    timeline: list[dict[str, Any]] = []
    for comp in ("worker", "worker2"):
        for e in run.log_events(comp):
            e["_component"] = comp
            if e.get("event") == "command_received":
                received[int(e["partition"])].add(int(e["offset"]))
            timeline.append(e)
    raw = run.read_raw(run.commands_topic)
    ends: dict[int, int] = defaultdict(int)
    by_offset: dict[tuple[int, int], RawMessage] = {}
    for m in raw:
        ends[m.partition] = max(ends[m.partition], m.offset + 1)
        by_offset[(m.partition, m.offset)] = m
    holes = sorted((p, o) for p, end in ends.items() for o in range(end) if o not in received[p])
    if not holes:
        return ""
    out = [f"LOST COMMANDS: {len(holes)} command offsets never reached a worker: {holes[:20]}"]
    timeline.sort(key=lambda e: str(e.get("ts")))
    for p, o in holes[:5]:
        hole = by_offset.get((p, o))
        doc = orjson.loads(hole.value) if hole is not None and hole.value else {}
        what = {k: doc.get(k) for k in ("propagation_id", "attempt", "kind", "resource_id")}
        before = max((x for x in received[p] if x < o), default=None)
        after = min((x for x in received[p] if x > o), default=None)
        ctx = [
            {
                k: e.get(k)
                for k in (
                    "ts",
                    "_component",
                    "event",
                    "partition",
                    "offset",
                    "partitions",
                    "expected",
                    "got",
                )
            }
            for e in timeline
            if (e.get("partition") == p and e.get("offset") in (before, after))
            or e.get("event")
            in (
                "started",
                "stopping",
                "partitions_assigned",
                "partitions_revoked",
                "offset_gap",
                "progress_stalled",
                "recovery_stalled",
                "fatal",
            )
        ]
        out.append(
            f"partition {p} offset {o} {what}: last received before it {before},"
            f" next received {after}; worker timeline: {ctx[-16:]}"
        )
    return " | ".join(out)


def _stalled(run: ChaosRun, open_ids: list[int], rows: dict[int, dict[str, Any]]) -> bool:
    """Nothing in flight can move these rows: each waits for an outcome nobody will produce."""
    try:
        rep = run.lag()
    except PipelineError:
        return False
    if any(pl.lag for pl in rep.partitions):
        return False
    # An open row that is not published-without-outcome is either due (relay) or held back
    # behind an earlier row of its resource; it is stuck if that earlier row is.
    stuck = {i for i in open_ids if rows[i]["published_attempt"] > rows[i]["attempts"]}
    if not stuck:
        return False
    for i in open_ids:
        if i in stuck:
            continue
        r = rows[i]
        earlier = [
            j
            for j in run.workload.resources.get(
                (r["team_id"], r["resource_type"], r["resource_id"]), []
            )
            if j < i and j in stuck
        ]
        if not earlier:
            return False
    return True


def diagnose_stuck(run: ChaosRun, open_ids: list[int], rows: dict[int, dict[str, Any]]) -> str:
    """Evidence for rows that never ended: published but no outcome is a lost command."""
    out: list[str] = []
    commands: dict[int, list[dict[str, Any]]] = {}
    outcomes: dict[int, list[dict[str, Any]]] = {}
    with contextlib.suppress(Exception):
        commands = run.p.commands()
        outcomes = run.p.outcomes()
    worker_events = {c: run.log_events(c) for c in ("worker", "worker2")}
    gaps = [e for evs in worker_events.values() for e in evs if e.get("event") == "offset_gap"]
    out.append(f"worker offset_gap warnings: {gaps[:20]}")
    for pid in open_ids[:10]:
        row = rows[pid]
        lost = row["published_attempt"] > row["attempts"]
        out.append(
            f"row {pid} ({run.workload.expected[pid].prefix}): attempts={row['attempts']} "
            f"published_attempt={row['published_attempt']} published_at={row['published_at']} "
            f"next_attempt_at={row['next_attempt_at']} last_outcome={row['last_outcome']}"
            + (" -- PUBLISHED BUT NO OUTCOME" if lost else "")
        )
        cmds = [(c["_partition"], c["_offset"], c["attempt"]) for c in commands.get(pid, [])]
        outs = [
            (o["_partition"], o["_offset"], o["attempt"], o["outcome"])
            for o in outcomes.get(pid, [])
        ]
        out.append(f"  commands on the log (partition, offset, attempt): {cmds}")
        out.append(f"  outcomes on the log: {outs}")
        where = {(p_, o_) for p_, o_, _a in cmds}
        for comp, evs in worker_events.items():
            hits = [
                e
                for e in evs
                if e.get("propagation_id") == pid
                or (e.get("partition"), e.get("offset")) in where
                or (
                    e.get("event") == "offset_gap"
                    and any(e.get("partition") == p_ for p_, _o in where)
                )
            ]
            out.append(f"  {comp} log lines for it: {hits[:12]}")
            for p_, o_ in sorted(where):
                near = [
                    e
                    for e in evs
                    if e.get("partition") == p_
                    and isinstance(e.get("offset"), int)
                    and abs(int(e["offset"]) - o_) <= 3
                ]
                out.append(f"  {comp} around partition {p_} offset {o_}: {near[:8]}")
            lifecycle = [
                {k: e.get(k) for k in ("ts", "event", "partitions", "error")}
                for e in evs
                if e.get("event")
                in ("started", "partitions_assigned", "partitions_revoked", "stopping", "fatal")
            ]
            out.append(f"  {comp} lifecycle: {lifecycle[-12:]}")
    return "\n".join(out)
