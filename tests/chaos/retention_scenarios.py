"""Chaos scenarios of replays on a trimmed log and on a database shared by two prefixes.

* ``retention_trim``: with traffic flowing, records below the middle of what the projector
  has folded are deleted on every outcome partition (``delete_records``, what retention
  does to an old log head). A plain rebuild must refuse and change nothing; a
  ``--covered-only`` rebuild keeps every row whose first outcome was trimmed; a replay from
  a timestamp runs; more traffic follows. No row may be un-applied, the audit count may
  never drop, and I4 (with ``--covered-only``) must hold for the covered range. I1 and I3
  see the deleted events through ``run.notes["trimmed_outcomes"]``, a copy taken before
  the deletion.
* ``shared_database``: a second topic prefix runs its own relay, worker and projector on
  the same database for a batch of rows of its own. A rebuild of either prefix must leave
  the other prefix's rows and audit rows as they were.
"""

from __future__ import annotations

import signal
from itertools import pairwise
from typing import Any

import psycopg
from chaos_checks import replay
from chaos_run import BACKOFF_SCALE, PARTITIONS, ChaosRun, Scenario
from chaos_workload import MAX_ATTEMPTS
from harness import Pipeline
from trimlog import first_positions, trim

from pipeline.devtools.fake_provisioner import FakeProvisioner

Rows = dict[int, tuple[Any, ...]]
# The projected columns and the audit rows of some propagations, for "left untouched".
_ROWS_SQL = (
    "SELECT id, attempts, applied_at, failed_at, last_outcome, last_error, last_skip_reason,"
    " first_outcome_topic, first_outcome_offset FROM pending_propagations WHERE id = ANY(%s)"
)
_AUDIT_SQL = "SELECT * FROM propagation_audit WHERE propagation_id = ANY(%s) ORDER BY event_id"


# -- checks (pure, so a unit test can feed each its defect) -----------------------------------


def unapplied(before: Rows, after: Rows) -> list[int]:
    """Rows terminal before (applied_at, failed_at at indexes 1, 2) that are not after."""
    return sorted(
        i
        for i, b in before.items()
        if (b[1] is not None and after[i][1] is None) or (b[2] is not None and after[i][2] is None)
    )


def dropped(counts: list[int]) -> list[tuple[int, int]]:
    """Every step at which the audit count went down."""
    return [(a, b) for a, b in pairwise(counts) if b < a]


def changed(before: tuple[Any, Any], after: tuple[Any, Any]) -> str:
    """Empty when rows and audit rows are identical, else what differs."""
    rows = [i for i, (b, a) in enumerate(zip(before[0], after[0], strict=False)) if b != a]
    out = []
    if rows or len(before[0]) != len(after[0]):
        out.append(f"{len(rows)} rows changed (of {len(before[0])} -> {len(after[0])})")
    if before[1] != after[1]:
        out.append(f"audit rows {len(before[1])} -> {len(after[1])}, not identical")
    return "; ".join(out)


# -- helpers -----------------------------------------------------------------------------------


def terminal_rows(run: ChaosRun) -> Rows:
    """id -> (id, applied_at, failed_at) of every terminal row."""
    with psycopg.connect(run.p.database_url) as conn:
        got = conn.execute(
            "SELECT id, applied_at, failed_at FROM pending_propagations"
            " WHERE applied_at IS NOT NULL OR failed_at IS NOT NULL"
        ).fetchall()
    return {r[0]: r for r in got}


def all_rows(run: ChaosRun) -> Rows:
    with psycopg.connect(run.p.database_url) as conn:
        got = conn.execute("SELECT id, applied_at, failed_at FROM pending_propagations").fetchall()
    return {r[0]: r for r in got}


def audit_count(run: ChaosRun) -> int:
    with psycopg.connect(run.p.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM propagation_audit").fetchone()
    assert row is not None
    return int(row[0])


def snapshot(url: str, ids: list[int]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(_ROWS_SQL + " ORDER BY id", (ids,)).fetchall()
        audit = conn.execute(_AUDIT_SQL, (ids,)).fetchall()
    return rows, audit


def checkpoints(run: ChaosRun) -> dict[int, int]:
    with psycopg.connect(run.p.database_url) as conn:
        got = conn.execute(
            "SELECT partition, next_offset FROM projection_checkpoints"
            " WHERE projection = %s AND topic = %s",
            (run.projection, run.outcomes_topic),
        ).fetchall()
    return {int(p): int(o) for p, o in got}


# -- retention_trim ----------------------------------------------------------------------------


def retention_trim(run: ChaosRun) -> None:
    run.enqueue_burst("trimbusy", 60, spread_s=4.0)  # traffic throughout
    rc = run.stop_component("projector", signal.SIGTERM)
    before = terminal_rows(run)
    counts = [audit_count(run)]
    cut = {q: cp // 2 for q, cp in checkpoints(run).items() if cp >= 2}
    log = run.p.outcomes()
    first = first_positions(log)
    gone = {
        pid: [e for e in events if e["_offset"] < cut.get(e["_partition"], 0)]
        for pid, events in log.items()
    }
    run.notes["trimmed_outcomes"] = {pid: evs for pid, evs in gone.items() if evs}
    run.notes["log_trimmed"] = True
    starts = trim(run.stack.kafka.bootstrap, run.outcomes_topic, cut)
    lost_first = sum(1 for q, off in first.values() if off < cut.get(q, 0))
    # Landed: the broker reports every cut partition's log start at or past the cut, and the
    # cut took some row's first outcome with it (what a rebuild must not misread).
    moved = all(starts.get(q, -1) >= off for q, off in cut.items())
    run.fault(
        "delete_records below mid-log on every outcome partition",
        landed=moved and lost_first > 0,
        proof=f"log starts {starts} at or past the cut {cut}: {moved};"
        f" {lost_first} rows lost their first outcome",
        log_starts={str(q): low for q, low in starts.items()},
        events_deleted=sum(len(v) for v in gone.values()),
        rows_first_outcome_trimmed=lost_first,
        projector_rc=rc,
    )

    # A plain rebuild refuses (exit 5) and changes nothing.
    code, _report, err = replay(run.p.env(), "--rebuild", "--from-beginning")
    counts.append(audit_count(run))
    lost = unapplied(before, all_rows(run))
    run.check(
        "plain_rebuild_refuses",
        code == 5 and "refusing to rebuild" in err and not lost and not dropped(counts),
        f"rc={code}, un-applied {lost[:5]}, audit counts {counts}: {err[-300:]}",
    )
    # Narrowed to what the log covers: the trimmed rows keep their projection and audit.
    code, report, err = replay(run.p.env(), "--rebuild", "--from-beginning", "--covered-only")
    counts.append(audit_count(run))
    lost = unapplied(before, all_rows(run))
    kept = (report or {}).get("kept_reasons", {})
    run.check(
        "covered_rebuild_keeps_trimmed_rows",
        code == 0
        and kept == {"first_outcome_before_range": lost_first}
        and not lost
        and not dropped(counts),
        f"rc={code}, kept {kept} (witness: {lost_first} rows' first outcome trimmed), "
        f"un-applied {lost[:5]}, audit counts {counts} {err[-300:]}",
    )
    # A backfill from a timestamp in the middle of what is left.
    stamps = sorted(e["occurred_at"] for evs in log.values() for e in evs)
    code, report, err = replay(run.p.env(), "--from-timestamp", stamps[len(stamps) * 3 // 4])
    counts.append(audit_count(run))
    run.check(
        "replay_from_timestamp",
        code == 0 and report is not None and report["committed"] and not dropped(counts),
        f"rc={code}, events read {(report or {}).get('events_read')} {err[-300:]}",
    )
    run.notes["trim_before"], run.notes["audit_counts"] = before, counts
    run.start_component("projector")
    run.enqueue_burst("trimafter", 40, spread_s=2.0)  # and traffic after it


def retention_trim_after(run: ChaosRun) -> None:
    counts = [*run.notes["audit_counts"], audit_count(run)]
    lost = unapplied(run.notes["trim_before"], all_rows(run))
    run.check(
        "nothing_unapplied_audit_never_drops",
        not lost and not dropped(counts),
        f"un-applied {lost[:5]}, audit counts {counts}",
    )


# -- shared_database ---------------------------------------------------------------------------


def shared_database(run: ChaosRun) -> None:
    """A second prefix on the same database: each rebuild leaves the other's rows alone."""
    run.stop_component("relay")  # this prefix's relay must not claim the other's rows
    logdir = run.logdir / "other-prefix"
    logdir.mkdir(exist_ok=True)
    # A provisioner of its own: the run's fake is I2's witness of this prefix's workload, and
    # the other prefix's effects would count there as keys outside it.
    their_provisioner = FakeProvisioner(seed=run.seed)
    their_provisioner.start()
    other = Pipeline(
        database_url=run.p.database_url,
        bootstrap=run.stack.kafka.bootstrap,
        provisioner_addr=str(their_provisioner.address),
        prefix=f"{run.prefix}b-",
        logdir=logdir,
        backoff_scale=BACKOFF_SCALE,
        max_attempts=MAX_ATTEMPTS,
        partitions=PARTITIONS,
    )
    with psycopg.connect(run.p.database_url) as conn:
        theirs = [
            int(r[0])
            for r in conn.execute(
                "INSERT INTO pending_propagations (kind, team_id, resource_type, resource_id,"
                " payload) SELECT 'tier_elevation', 'team-b', 'postgres', 'b-' || i,"
                ' \'{"target_tier": "pro"}\' FROM generate_series(1, 40) i RETURNING id'
            ).fetchall()
        ]
    try:
        other.start()
        other.wait_terminal(theirs, timeout=150)
    finally:
        other.stop()
        their_provisioner.stop()
    run.fault(
        "second prefix on the same database",
        landed=len(theirs) == 40,  # wait_terminal raised unless all of them ended
        proof=f"{len(theirs)} rows of prefix {other.prefix} ended in the shared database",
        prefix=other.prefix,
        rows=len(theirs),
    )
    run.stop_component("projector", signal.SIGTERM)
    ours = sorted(run.p.outcomes())  # witness: the rows with outcomes on our topic
    url = run.p.database_url

    before = snapshot(url, theirs), snapshot(url, ours)
    code, report, err = replay(run.p.env(), "--rebuild")
    kept = (report or {}).get("kept_reasons", {})
    run.check(
        "our_rebuild_leaves_theirs",
        code == 0
        and kept == {"other_topic": len(theirs)}
        and not changed(before[0], snapshot(url, theirs)),
        f"rc={code} kept {kept} {changed(before[0], snapshot(url, theirs))} {err[-300:]}",
    )
    code, report, err = replay(other.env(), "--rebuild")
    kept = (report or {}).get("kept_reasons", {})
    run.check(
        "their_rebuild_leaves_ours",
        code == 0
        and kept == {"other_topic": len(ours)}
        and (report or {}).get("rows_differing") == 0
        and not changed(before[1], snapshot(url, ours)),
        f"rc={code} kept {kept} {changed(before[1], snapshot(url, ours))} {err[-300:]}",
    )
    run.start_component("projector")
    run.start_component("relay")
    run.enqueue_burst("sharedafter", 40, spread_s=2.0)


RETENTION_SCENARIOS = [
    Scenario(
        "retention_trim", retention_trim, seed=1301, inject_at=0.5, after=retention_trim_after
    ),
    Scenario("shared_database", shared_database, seed=1302, inject_at=1.0),
]
