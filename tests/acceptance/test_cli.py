"""The ``pipeline`` command end to end, as an operator drives it.

``dev up`` (its own Kafka, Postgres and provisioner under a temporary state dir), ``migrate``,
``run`` in the background, ``enqueue``, ``status``, ``lag``, ``show``, ``retry`` of a
dead-lettered propagation, ``dev down``: every step a subprocess of the real console script.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from psycopg.types.json import Jsonb

pytestmark = pytest.mark.acceptance

CLI = [sys.executable, "-m", "pipeline.ops.cli"]


class Operator:
    """Runs ``pipeline`` subcommands with one environment, like a shell with exports."""

    def __init__(self, env: dict[str, str], logdir: Path) -> None:
        self.env = env
        self.logdir = logdir

    def run(
        self, *args: str, check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [*CLI, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"pipeline {' '.join(args)} exited {res.returncode}\n"
                f"stdout:\n{res.stdout}\nstderr:\n{res.stderr[-4000:]}\n{self.logs()}"
            )
        return res

    def json(self, *args: str) -> Any:
        return orjson.loads(self.run(*args, "--json").stdout)

    def logs(self) -> str:
        out = []
        for f in sorted(self.logdir.glob("*.log")):
            lines = f.read_text(errors="replace").splitlines()[-40:]
            out.append(f"--- {f.name}\n" + "\n".join(lines))
        return "\n".join(out)

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}\n{self.logs()}")
            time.sleep(0.5)


def base_env() -> dict[str, str]:
    # A clean slate: no PIPELINE_* of the caller may point us at someone else's stack (the
    # jar cache location is kept, so the broker does not download again).
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    if "PIPELINE_STACK_CACHE" in os.environ:
        env["PIPELINE_STACK_CACHE"] = os.environ["PIPELINE_STACK_CACHE"]
    return env


def parse_exports(text: str) -> dict[str, str]:
    exports = {}
    for line in text.splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            exports[name] = shlex.split(value)[0]
    return exports


@pytest.fixture
def operator(tmp_path: Path) -> Iterator[Operator]:
    state_dir = tmp_path / "stack"
    env = base_env()
    up = subprocess.run(
        [*CLI, "dev", "up", "--state-dir", str(state_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    try:
        assert up.returncode == 0, f"dev up failed:\n{up.stderr[-4000:]}"
        exports = parse_exports(up.stdout)
        assert sorted(exports) == [
            "PIPELINE_DATABASE_URL",
            "PIPELINE_KAFKA_BOOTSTRAP",
            "PIPELINE_PROVISIONER_ADDR",
        ]
        env.update(exports)
        env.update(
            PIPELINE_TOPIC_PREFIX=f"acc-{uuid.uuid4().hex[:8]}-",
            PIPELINE_BACKOFF_SCALE="0.0001",
            PIPELINE_METRICS_PORT="0",
            PIPELINE_PARTITIONS="3",
            PIPELINE_RELAY_POLL_INTERVAL="0.05",
            PIPELINE_DATA_DIR=str(tmp_path / "data"),
            PIPELINE_LOG_LEVEL="WARNING",
        )
        yield Operator(env, tmp_path)
    finally:
        down = subprocess.run(
            [*CLI, "dev", "down", "--state-dir", str(state_dir)],
            env=base_env(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert down.returncode == 0, f"dev down failed:\n{down.stderr[-4000:]}"


def insert_invalid(database_url: str) -> int:
    """A row written by other means than enqueue(): its payload breaks its kind's schema."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "INSERT INTO pending_propagations (kind, team_id, resource_type, resource_id, payload)"
            " VALUES ('tier_elevation', 'acme', 'redis', 'cache-9', %s) RETURNING id",
            (Jsonb({"target_tier": ""}),),
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_operator_session(operator: Operator) -> None:
    op = operator
    assert "applied: 0001_outbox.sql" in op.run("migrate").stdout
    assert op.run("migrate").stdout.strip() == "schema is up to date"

    run_log = open(op.logdir / "run.log", "ab")  # noqa: SIM115 - owned by the child
    run = subprocess.Popen([*CLI, "run"], env=op.env, stdout=run_log, stderr=subprocess.STDOUT)
    run_log.close()
    try:
        session(op)
    finally:
        run.send_signal(signal.SIGTERM)
        try:
            assert run.wait(timeout=60) == 0, f"pipeline run exited badly\n{op.logs()}"
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()
            raise


def session(op: Operator) -> None:
    out = op.run(
        "enqueue",
        "tier_elevation",
        "--team",
        "acme",
        "--resource-type",
        "postgres",
        "--resource-id",
        "db",
        "--target-tier",
        "pro",
        "--count",
        "5",
    ).stdout
    ids = [int(x) for x in out.split()]
    assert len(ids) == 5
    bad = insert_invalid(op.env["PIPELINE_DATABASE_URL"])

    def settled() -> bool:
        totals = op.json("status")["totals"]
        return bool(totals["applied"] == 5 and totals["dead_lettered"] == 1)

    op.wait_for("5 applied and 1 dead-lettered", settled)
    doc = op.json("status")
    assert doc["totals"] == {
        "pending": 0,
        "in_flight": 0,
        "retrying": 0,
        "applied": 5,
        "dead_lettered": 1,
    }
    assert doc["by_kind"] == {
        "tier_elevation": {
            "pending": 0,
            "in_flight": 0,
            "retrying": 0,
            "applied": 5,
            "dead_lettered": 1,
        }
    }
    assert doc["dead_lettered_last_hour"] == 1
    assert doc["oldest_pending"] == {"id": None, "age_seconds": 0.0}

    prefix = op.env["PIPELINE_TOPIC_PREFIX"]
    group, projection = f"{prefix}propagation-processor", f"{prefix}propagation-projection"

    def caught_up() -> bool:
        lag = op.json("lag")
        groups = lag["groups"]
        return bool(
            groups[group]["lag"] == 0
            and groups[projection]["lag"] == 0
            and lag["outbox"]["due_unpublished"] == 0
        )

    op.wait_for("zero lag", caught_up, timeout=60)
    lag = op.json("lag")
    commands = [p for p in lag["partitions"] if p["group"] == group]
    outcomes = [p for p in lag["partitions"] if p["group"] == projection]
    assert [p["partition"] for p in commands] == [0, 1, 2]
    assert sum(p["end"] for p in commands) == 6  # one command each, first attempt
    assert sum(p["end"] for p in outcomes) == 6  # one outcome each
    assert all(p["lag_seconds"] == 0 for p in lag["partitions"])

    # The human forms: tab-separated when piped.
    lines = op.run("status").stdout.splitlines()
    assert lines[0].split("\t") == [
        "kind",
        "pending",
        "in_flight",
        "retrying",
        "applied",
        "dead_lettered",
    ]
    assert lines[1:3] == ["tier_elevation\t0\t0\t0\t5\t1", "total\t0\t0\t0\t5\t1"]
    assert lines[3:5] == ["oldest pending: none", "dead-lettered in the last hour: 1"]
    # How far back a replay can reach: the outcome log's oldest retained record.
    assert len(lines) == 7 and lines[5].startswith(
        f"outcome log {prefix}propagation-outcomes: earliest retained record 20"
    )
    assert lines[6] == "kafka topics: replicated as configured"  # one broker: factor 1
    lag_lines = op.run("lag").stdout.splitlines()
    assert lag_lines[0].split("\t") == [
        "group",
        "topic",
        "partition",
        "committed",
        "end",
        "lag",
        "lag_seconds",
    ]
    assert len(lag_lines) == 1 + 6 + 2 + 1 and lag_lines[-1].startswith("outbox: 0 due unpublished")
    assert [line.split(": earliest retained record 20")[0] for line in lag_lines[-3:-1]] == [
        f"{prefix}propagation-outcomes",
        f"{prefix}propagations",
    ]

    # Refusals: an applied propagation, an unknown id.
    res = op.run("retry", str(ids[0]), check=False)
    assert res.returncode == 2
    assert f"propagation {ids[0]} is applied; there is nothing to retry" in res.stderr
    res = op.run("retry", "999999", check=False)
    assert (res.returncode, "propagation 999999 does not exist" in res.stderr) == (2, True)

    # The operator fixes the payload, then retries the dead letter on purpose.
    with psycopg.connect(op.env["PIPELINE_DATABASE_URL"]) as conn:
        conn.execute(
            "UPDATE pending_propagations SET payload = %s WHERE id = %s",
            (Jsonb({"target_tier": "pro"}), bad),
        )
    out = op.run("retry", str(bad), "--reason", "payload fixed", "--actor", "alice").stdout
    assert out.startswith(f"propagation {bad} (dead_lettered): attempt 2 is due now")
    op.wait_for(
        "the retried propagation applied", lambda: op.json("status")["totals"]["applied"] == 6
    )
    doc = op.json("status")
    assert doc["totals"]["dead_lettered"] == 0
    assert doc["dead_lettered_last_hour"] == 0
    with psycopg.connect(op.env["PIPELINE_DATABASE_URL"]) as conn:
        row = conn.execute(
            "SELECT attempts, attempt_budget_base, last_outcome, failed_at IS NULL"
            " FROM pending_propagations WHERE id = %s",
            (bad,),
        ).fetchone()
        actions = conn.execute(
            "SELECT action, reason, actor FROM propagation_operator_actions"
            " WHERE propagation_id = %s",
            (bad,),
        ).fetchall()
    assert row == (2, 1, "applied", True)
    assert actions == [("retry_dead_lettered", "payload fixed", "alice")]

    # One propagation's history: both attempts, the first dead-lettered, the second applied.
    shown = [orjson.loads(line) for line in op.run("show", str(bad), "--json").stdout.splitlines()]
    assert shown[0]["type"] == "propagation" and shown[0]["id"] == bad
    assert shown[0]["attempts"] == 2
    assert sorted(e["attempt"] for e in shown[1:] if e["type"] == "command") == [1, 2]
    assert [(e["attempt"], e["outcome"]) for e in shown[1:] if e["type"] == "outcome"] == [
        (1, "dead_lettered"),
        (2, "applied"),
    ]
    op.wait_for("zero lag after the retry", caught_up, timeout=60)
