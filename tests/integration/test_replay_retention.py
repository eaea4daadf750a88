"""Replay and rebuild on an outcome log that retention has trimmed (issue 13).

The measured case: 60 propagations applied, every record below offset 5 deleted on every
outcome partition, then ``pipeline replay --rebuild --from-beginning``. It must refuse
(exit 5) and change nothing; with ``--covered-only`` it rebuilds only the rows whose whole
history the log still holds, never un-applies a row and never deletes an audit row. A dry
run beside the live projector (which holds the lock) reports exactly what the real run
then does.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from harness import Pipeline
from test_end_to_end import _topic_configs
from test_lag import enqueue_n
from test_replay import _log_records, run_cli, state, wait_caught_up
from trimlog import first_positions, trim

from pipeline.domain.events import iso

pytestmark = pytest.mark.integration

N, CUT = 60, 5
# What a dry run must predict of the real run, field by field.
PREDICTED = (
    "events_read", "rows_reset", "rows_kept", "kept_reasons", "rows_differing",
    "differing_ids", "audit_rows_added", "partitions",
)  # fmt: skip


def cli_json(p: Pipeline, *args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.ops.cli", *args, "--json"],
        env=p.env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def audit_count(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM propagation_audit").fetchone()
    assert row is not None
    return int(row[0])


def test_rebuild_on_a_trimmed_log(make_pipeline: Callable[..., Pipeline]) -> None:
    p = make_pipeline()
    url, topic = p.database_url, f"{p.prefix}propagation-outcomes"
    ids = enqueue_n(url, "ret", N)
    p.start()
    p.wait_terminal(ids, timeout=240)
    ends = wait_caught_up(p, topic)
    p.stop()
    p.start("projector")  # the live projector holds the lock from here on

    # Retention is a decision: outcomes forever, commands bounded.
    assert asyncio.run(_topic_configs(p.bootstrap, topic))["retention.ms"] == "-1"
    commands = asyncio.run(_topic_configs(p.bootstrap, f"{p.prefix}propagations"))
    assert commands["retention.ms"] == str(7 * 24 * 3600 * 1000)

    first = first_positions(p.outcomes())  # witness: the log before it was trimmed
    records = asyncio.run(_log_records(p.bootstrap, topic))
    assert len(first) == N and min(ends.values()) > CUT, ends
    assert trim(p.bootstrap, topic, {q: CUT for q in ends}) == {q: CUT for q in ends}
    trimmed = sorted(pid for pid, (_q, off) in first.items() if off < CUT)
    covered = sorted(set(first) - set(trimmed))
    assert len(trimmed) == CUT * len(ends)  # one outcome per applied row

    # How far back a replay can reach: the oldest retained record's timestamp.
    earliest = min(dict(recs)[CUT] for recs in records.values())
    at = iso(datetime.fromtimestamp(earliest / 1000, tz=UTC))
    assert cli_json(p, "status")["outcome_log"] == {
        "topic": topic, "earliest_retained": at, "error": None,
    }  # fmt: skip
    assert cli_json(p, "lag")["earliest_retained"][topic] == at

    live = state(url)
    # A dry run works beside the live projector and refuses as the real run would.
    refused = run_cli(p, "--rebuild", "--from-beginning", "--dry-run", rc=5)["stderr"]
    assert f"{len(trimmed)} rows have outcome history" in refused, refused
    assert "--covered-only" in refused
    # A rebuild from a later point needs even more history; one offset for every partition.
    later = sum(1 for _q, off in first.values() if off < CUT + 2)
    refused = run_cli(p, "--rebuild", f"--from-offset={CUT + 2}", "--dry-run", rc=5)["stderr"]
    assert f"refusing to rebuild: {later} rows" in refused, refused
    refused = run_cli(p, "--rebuild", "--from-offset=0:7", rc=2)["stderr"]
    assert "--rebuild reads every partition" in refused
    dry = run_cli(p, "--rebuild", "--covered-only", "--dry-run")
    assert dry["committed"] is False
    assert (dry["rows_reset"], dry["rows_kept"], dry["rows_differing"]) == (
        len(covered), len(trimmed), 0,
    )  # fmt: skip
    assert dry["kept_reasons"] == {"first_outcome_before_range": len(trimmed)}
    assert dry["audit_rows_added"] == 0
    assert state(url) == live

    # Drift to repair, made by hand with the projector stopped: three covered rows lose
    # their projection and their audit rows, and one covered row is flipped to failed.
    p.stop()
    lost, flipped = covered[:3], covered[3]
    with psycopg.connect(url) as conn:
        conn.execute(
            "UPDATE pending_propagations SET attempts = 0, applied_at = NULL,"
            " last_outcome = NULL WHERE id = ANY(%s)",
            (lost,),
        )
        conn.execute("DELETE FROM propagation_audit WHERE propagation_id = ANY(%s)", (lost,))
        conn.execute(
            "UPDATE pending_propagations SET failed_at = applied_at, applied_at = NULL,"
            " last_outcome = 'dead_lettered' WHERE id = %s",
            (flipped,),
        )
    drifted = state(url)
    audit_counts = [audit_count(url)]

    # The measured case: refuses, with a distinct exit code, and changes nothing.
    refused = run_cli(p, "--rebuild", "--from-beginning", rc=5)["stderr"]
    assert "refusing to rebuild" in refused and "[5, " in refused, refused
    assert state(url) == drifted
    audit_counts.append(audit_count(url))

    dry = run_cli(p, "--rebuild", "--covered-only", "--dry-run")
    assert state(url) == drifted
    real = run_cli(p, "--rebuild", "--covered-only")
    audit_counts.append(audit_count(url))
    assert real["committed"] is True
    assert {k: dry[k] for k in PREDICTED} == {k: real[k] for k in PREDICTED}
    assert real["kept_reasons"] == {
        "first_outcome_before_range": len(trimmed),
        "terminal_kept": 1,
    }
    assert (real["rows_reset"], real["rows_differing"], real["differing_ids"]) == (
        len(covered) - 1, 3, lost,
    )  # fmt: skip
    assert real["audit_rows_added"] == len(lost)

    # Every row applied but the flipped one (never reopened, never un-applied), the lost
    # rows repaired to exactly what they were, every audit row back, none deleted.
    after = state(url)
    assert after[1] == live[1]
    by_id = {r[0]: r for r in after[0]}
    assert {i: by_id[i] for i in ids if i != flipped} == {
        r[0]: r for r in live[0] if r[0] != flipped
    }
    assert by_id[flipped] == {r[0]: r for r in drifted[0]}[flipped]
    assert audit_counts == sorted(audit_counts)  # the audit count never drops

    # An incremental replay from before the log start reads what is left; no change.
    r = run_cli(p, "--from-timestamp", "2000-01-01T00:00:00Z")
    assert r["events_read"] == sum(ends.values()) - CUT * len(ends)
    assert (r["rows_changed"], r["audit_rows_added"]) == (0, 0)
    assert state(url) == after

    # The live projector resumes and folds new traffic, recording where it starts.
    p.start()
    more = enqueue_n(url, "ret-more", 6)
    rows = p.wait_terminal(more, timeout=180)
    assert all(rows[i]["first_outcome_topic"] == topic for i in more)
    assert all(rows[i]["first_outcome_offset"] >= CUT for i in more)
