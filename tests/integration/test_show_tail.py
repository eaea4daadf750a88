"""``pipeline show`` and ``pipeline tail`` against a small real run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from harness import Pipeline, dedupe

from pipeline.devtools.fake_provisioner import FakeProvisioner, Rule
from pipeline.store.outbox import enqueue

pytestmark = pytest.mark.integration


def cli(p: Pipeline, *args: str, rc: int = 0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.ops.cli", *args],
        env=p.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == rc, (done.returncode, done.stdout, done.stderr)
    return done


def lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_show_and_tail(
    make_pipeline: Callable[..., Pipeline], provisioner: FakeProvisioner
) -> None:
    provisioner.set_rules(
        [
            Rule(match="flaky-*", action="skip", reason="postgres-admin secret missing", times=2),
            Rule(match="perm-*", action="error", code="FAILED_PRECONDITION"),
        ]
    )
    p = make_pipeline(max_attempts=3)
    with psycopg.connect(p.database_url) as conn:
        flaky = enqueue(
            conn, "tier_elevation", "acme", "postgres", "flaky-1", {"target_tier": "pro"}
        )
        ok = [
            enqueue(conn, kind, f"team-{i}", "redis", f"ok-{i}", {"target_tier": "pro"})
            for i, kind in enumerate(["tier_elevation", "tier_demotion", "tier_elevation"])
        ]
        perm = enqueue(conn, "tier_elevation", "acme", "redis", "perm-1", {"target_tier": "pro"})
        conn.commit()
    p.start()
    p.wait_terminal([flaky, *ok, perm], timeout=120)
    outcomes = p.outcomes()
    commands = p.commands()

    # show: the whole history, each event where it is on the log.
    shown = lines(cli(p, "show", str(flaky), "--json").stdout)
    head, entries = shown[0], shown[1:]
    assert head["type"] == "propagation" and head["id"] == flaky
    assert (head["last_outcome"], head["attempts"]) == ("applied", 3)
    got_commands = [e for e in entries if e["type"] == "command"]
    got_outcomes = [e for e in entries if e["type"] == "outcome"]
    assert [(e["attempt"], e["partition"], e["offset"]) for e in got_commands] == [
        (c["attempt"], c["_partition"], c["_offset"]) for c in commands[flaky]
    ]
    assert [
        (e["attempt"], e["outcome"], e["partition"], e["offset"], e["event_id"])
        for e in got_outcomes
    ] == [
        (o["attempt"], o["outcome"], o["_partition"], o["_offset"], o["event_id"])
        for o in outcomes[flaky]
    ]
    assert [e["outcome"] for e in dedupe(got_outcomes)] == [
        "unexpected_skip",
        "unexpected_skip",
        "applied",
    ]
    assert "skip_reason_bucket=postgres_admin_secret_missing" in got_outcomes[0]["reason"]
    assert {e["note"] for e in dedupe(got_outcomes)} == {"projected"}
    assert {e["topic"] for e in got_outcomes} == {f"{p.prefix}propagation-outcomes"}
    table = cli(p, "show", str(perm)).stdout
    assert "dead_lettered" in table and "retrying" in table and "FAILED_PRECONDITION" in table
    assert "no propagation 999999" in cli(p, "show", "999999", rc=2).stderr

    # tail: every matching event of the log, duplicates included, as a consumer sees it.
    everything = [o for pid in sorted(outcomes) for o in outcomes[pid]]
    tailed = lines(
        cli(p, "tail", "--from-beginning", "--until-end", "--outcome", "applied",
            "--kind", "tier_elevation").stdout
    )  # fmt: skip
    assert sorted((e["event_id"], e["_partition"], e["_offset"]) for e in tailed) == sorted(
        (o["event_id"], o["_partition"], o["_offset"])
        for o in everything
        if o["outcome"] == "applied" and o["kind"] == "tier_elevation"
    )
    assert {e["propagation_id"] for e in tailed} == {flaky, ok[0], ok[2]}
    old = lines(cli(p, "tail", "--from-timestamp", "2000-01-01T00:00:00Z", "--until-end").stdout)
    assert len(old) == len(everything)
    future = cli(p, "tail", "--from-timestamp", "2999-01-01T00:00:00Z", "--until-end").stdout
    assert future == ""
    assert len(lines(cli(p, "tail", "--from-offset", "0", "--until-end", "--max", "2").stdout)) == 2

    # Following from the end (the default) sees an event that arrives later.
    follower = subprocess.Popen(
        [sys.executable, "-m", "pipeline.ops.cli", "tail", "--team", "late"],
        env=p.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stderr is not None and follower.stdout is not None
        for line in follower.stderr:
            if '"tail_started"' in line:
                break
        with psycopg.connect(p.database_url) as conn:
            late = enqueue(
                conn, "tier_elevation", "late", "redis", "late-1", {"target_tier": "pro"}
            )
            conn.commit()
        deadline = time.monotonic() + 60
        event = json.loads(follower.stdout.readline())
        assert time.monotonic() < deadline
        assert (event["propagation_id"], event["outcome"]) == (late, "applied")
    finally:
        follower.terminate()
        follower.communicate(timeout=30)
    assert follower.returncode == 0
