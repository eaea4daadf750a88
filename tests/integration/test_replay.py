"""``pipeline replay``: the projection equals a replay of the log, on the real stack.

One end-to-end run covering every outcome path (the workload of test_end_to_end) feeds
every check, so the whole file costs one pipeline run.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from harness import Pipeline
from test_end_to_end import seeded

from pipeline.adapters.topics import partitions_for
from pipeline.devtools.fake_provisioner import FakeProvisioner

pytestmark = pytest.mark.integration

PROJECTED = "id, attempts, applied_at, failed_at, last_outcome, last_error, last_skip_reason"
State = tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]


def state(url: str) -> State:
    """Every projected row and every audit row, in a stable order."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(f"SELECT {PROJECTED} FROM pending_propagations ORDER BY id").fetchall()
        audit = conn.execute("SELECT * FROM propagation_audit ORDER BY event_id").fetchall()
    return rows, audit


def checkpoints(url: str) -> dict[str, dict[int, int]]:
    out: dict[str, dict[int, int]] = {}
    with psycopg.connect(url) as conn:
        for name, part, off in conn.execute(
            "SELECT projection, partition, next_offset FROM projection_checkpoints"
        ):
            out.setdefault(name, {})[part] = off
    return out


def wipe(url: str) -> None:
    """Lose the projected state (not the checkpoints): what a replay exists to repair."""
    with psycopg.connect(url) as conn:
        conn.execute(
            "UPDATE pending_propagations SET attempts = 0, applied_at = NULL, failed_at = NULL,"
            " last_outcome = NULL, last_error = NULL, last_skip_reason = NULL,"
            " next_attempt_at = created_at"
        )
        conn.execute("DELETE FROM propagation_audit")


async def _log_records(bootstrap: str, topic: str) -> dict[int, list[tuple[int, int]]]:
    """partition -> [(offset, timestamp ms)] of the whole topic; and the end offsets."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [
            TopicPartition(topic, p)
            for p in await partitions_for({"bootstrap_servers": bootstrap}, topic)
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: dict[int, list[tuple[int, int]]] = {tp.partition: [] for tp in tps}
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for tp, msgs in (await consumer.getmany(timeout_ms=500)).items():
                out[tp.partition] += [(m.offset, m.timestamp) for m in msgs if m.offset < ends[tp]]
        out_end = {tp.partition: ends[tp] for tp in tps}
        return {p: [*recs, (out_end[p], -1)] for p, recs in out.items()}
    finally:
        await consumer.stop()


def run_cli(p: Pipeline, *args: str, rc: int = 0, timeout: float = 120) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.ops.cli", "replay", *args],
        env=p.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == rc, (done.returncode, done.stdout, done.stderr)
    if rc != 0:
        return {"stderr": done.stderr}
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def wait_caught_up(p: Pipeline, topic: str) -> dict[int, int]:
    deadline = time.monotonic() + 60
    while True:
        ends = {
            p_: recs[-1][0] for p_, recs in asyncio.run(_log_records(p.bootstrap, topic)).items()
        }
        if checkpoints(p.database_url).get(f"{p.prefix}propagation-projection") == ends:
            return ends
        assert time.monotonic() < deadline, (ends, checkpoints(p.database_url), p.logs())
        time.sleep(0.3)


def kill_midway(p: Pipeline, *args: str) -> None:
    """Start a throttled replay, SIGKILL it once progress shows it is partway through."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.ops.cli", "replay", "--batch-size", "50",
         "--max-rate", "400", "--progress-interval", "0.1", *args],
        env=p.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:
        doc = json.loads(line)
        if doc["event"] == "replay_progress" and 0.3 * doc["total"] < doc["done"]:
            assert doc["done"] < doc["total"], doc
            break
    else:
        raise AssertionError(f"no progress seen before exit {proc.wait()}")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    assert proc.stdout is not None
    proc.stdout.close()


def test_projection_equals_replay(
    make_pipeline: Callable[..., Pipeline], provisioner: FakeProvisioner
) -> None:
    p, by_id, _ordered = seeded(make_pipeline, provisioner)
    url, projection = p.database_url, f"{p.prefix}propagation-projection"
    topic = f"{p.prefix}propagation-outcomes"
    p.start()
    p.wait_terminal(list(by_id), timeout=240)
    ends = wait_caught_up(p, topic)
    total = sum(ends.values())
    live = state(url)
    assert len(live[0]) == len(by_id) and len(live[1]) >= len(by_id)
    assert {r[4] for r in live[0]} == {
        "applied",
        "dead_lettered",
        "unknown_kind_dead_lettered",
    }

    # A live projector holds the lock: replay refuses and names the holder...
    refused = run_cli(p, "--from-end", rc=5)["stderr"]
    assert "locked by a live projector" in refused and "pid " in refused, refused
    # ...or, with --wait, waits until the projector stops.
    waiting = subprocess.Popen(
        [sys.executable, "-m", "pipeline.ops.cli", "replay", "--wait", "--from-end"],
        env=p.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(2.0)
    assert waiting.poll() is None
    p.stop()  # relay and worker too: nothing new may reach the log from here on
    out, _ = waiting.communicate(timeout=60)
    assert waiting.returncode == 0 and json.loads(out)["events_read"] == 0
    assert state(url) == live

    # From the middle, by offset: only the later events are read, and on a caught-up
    # projection folding them is a no-op.
    mids = {part: end // 2 for part, end in ends.items()}
    r = run_cli(p, *[f"--from-offset={part}:{off}" for part, off in mids.items()])
    assert r["events_read"] == sum(ends[q] - mids[q] for q in ends)
    assert (r["rows_changed"], r["audit_rows_added"], r["interrupted"]) == (0, 0, False)
    assert state(url) == live

    # From the middle, by timestamp: each partition starts at its first event at or after it.
    records = asyncio.run(_log_records(p.bootstrap, topic))
    stamps = sorted(ts for recs in records.values() for _o, ts in recs[:-1])
    cut = stamps[len(stamps) // 2]
    first = {q: next(o for o, ts in recs if ts >= cut or ts == -1) for q, recs in records.items()}
    iso_cut = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(cut / 1000)) + f".{cut % 1000:03d}Z"
    r = run_cli(p, "--from-timestamp", iso_cut)
    assert {int(q): v[0] for q, v in r["partitions"].items()} == first
    assert r["events_read"] == sum(ends[q] - first[q] for q in ends) < total
    assert (r["rows_changed"], r["audit_rows_added"]) == (0, 0)
    assert state(url) == live

    # Rebuild on a caught-up projection: nothing differs, nothing is added.
    r = run_cli(p, "--rebuild")
    assert (r["events_read"], r["rows_differing"], r["audit_rows_added"]) == (total, 0, 0)
    assert state(url) == live
    assert checkpoints(url) == {projection: ends}

    # The projection lost: a dry run reports the repair and writes nothing.
    wipe(url)
    lost = state(url)
    before_cp = checkpoints(url)
    r = run_cli(p, "--rebuild", "--dry-run")
    assert r["rows_differing"] == len(by_id) and r["audit_rows_added"] == len(live[1])
    assert r["committed"] is False
    r = run_cli(p, "--dry-run")
    assert r["rows_changed"] == sum(row[1] for row in live[0])  # one change per attempt
    assert state(url) == lost and checkpoints(url) == before_cp

    # Projection equals replay: a rebuild from the log alone gives every row back.
    r = run_cli(p, "--rebuild")
    assert (r["rows_differing"], r["audit_rows_added"]) == (len(by_id), len(live[1]))
    assert state(url) == live
    # Replaying twice changes nothing the second time.
    r = run_cli(p, "--rebuild")
    assert (r["rows_differing"], r["audit_rows_added"]) == (0, 0)
    r = run_cli(p)
    assert (r["events_read"], r["rows_changed"], r["audit_rows_added"]) == (total, 0, 0)
    assert state(url) == live and checkpoints(url) == {projection: ends}

    # Killed midway, an incremental replay has committed part of the work; the re-run
    # resumes from its saved position and ends where an uninterrupted one does.
    wipe(url)
    kill_midway(p)
    partial = state(url)
    assert lost[0] != partial[0] != live[0]
    assert 0 < len(partial[1]) < len(live[1])
    r = run_cli(p)
    assert r["resumed"] is True and r["events_read"] < total
    assert state(url) == live
    assert checkpoints(url) == {projection: ends}  # the replay's cursor is gone

    # Killed midway, a rebuild rolls back whole; the re-run starts over.
    wipe(url)
    kill_midway(p, "--rebuild")
    assert state(url) == lost
    r = run_cli(p, "--rebuild")
    assert r["events_read"] == total and state(url) == live

    # The live projector, restarted, resumes from the checkpoints the replays left.
    p.start("projector")
    time.sleep(3)
    p.assert_running()
    assert state(url) == live and checkpoints(url) == {projection: ends}
