"""The chaos scenarios: one fault function each (inject, then heal), plus their own checks.

Each fault records what it hit and the proof that it landed (``run.fault(..., landed=,
proof=)``: a SIGKILLed process exited -9, a killed broker's pid is dead and a client was
refused, a stopped Postgres refused connections, produced messages were acknowledged...);
a fault that did not land fails the run. Scenario-specific expectations go to ``run.check``
beside I1..I5.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from typing import Any

import orjson
import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition
from chaos_checks import quiet_redelivery
from chaos_run import ChaosRun, Scenario
from chaos_services import port_refused
from chaos_workload import RULES, PathSpec
from harness import dedupe
from prometheus_client.parser import text_string_to_metric_families
from retention_scenarios import RETENTION_SCENARIOS

from pipeline.devtools.fake_provisioner import Rule
from pipeline.devtools.stack import procs
from pipeline.domain.events import COMMAND_SCHEMA, OUTCOME_SCHEMA, command_event_id, iso, utcnow
from pipeline.runtime.metrics import Metrics

BIG = 300 * 1024  # over the 256 KiB event limit


def _keep_busy(run: ChaosRun, n: int = 150, spread_s: float = 6.0) -> list[int]:
    """Rows coming due throughout the fault, so it hits a pipeline at work."""
    return run.enqueue_burst(f"busy{len(run.result.faults)}", n, spread_s=spread_s)


def _wait_uncommitted(run: ChaosRun, timeout: float = 15) -> int:
    """Wait until the processor has work past its committed offsets (a batch in flight)."""
    deadline = time.monotonic() + timeout
    while True:
        n = run.uncommitted_commands()
        if n > 0 or time.monotonic() > deadline:
            return n
        time.sleep(0.02)


# -- process kills -----------------------------------------------------------------------------


def _killed(rc: int) -> bool:
    return rc == -signal.SIGKILL


def sigkill_worker(run: ChaosRun) -> None:
    _keep_busy(run)
    pending = _wait_uncommitted(run)
    calls = len(run.provisioner.calls())
    rc = run.stop_component("worker", signal.SIGKILL)
    run.fault(
        "SIGKILL worker mid-batch",
        landed=_killed(rc) and pending > 0,
        proof=f"exit {rc}, {pending} commands uncommitted at the kill",
        uncommitted_commands=pending,
        provisioner_calls=calls,
    )
    time.sleep(run.rng.uniform(0.2, 1.5))
    run.start_component("worker")


def _commands_for(run: ChaosRun, ids: list[int]) -> int:
    wanted = set(ids)
    n = 0
    for m in run.read_raw(run.commands_topic):
        doc = orjson.loads(m.value) if m.value else None
        if isinstance(doc, dict) and doc.get("propagation_id") in wanted:
            n += 1
    return n


def _published_unstamped(run: ChaosRun, conn: psycopg.Connection[Any]) -> int:
    """Open rows whose next attempt is on the log but not stamped as published."""
    on_log = set()
    for m in run.read_raw(run.commands_topic):
        doc = orjson.loads(m.value) if m.value else None
        if isinstance(doc, dict):
            on_log.add((doc.get("propagation_id"), doc.get("attempt")))
    rows = conn.execute(
        "SELECT id, attempts, published_attempt FROM pending_propagations"
        " WHERE applied_at IS NULL AND failed_at IS NULL"
    ).fetchall()
    return sum(1 for pid, att, pub in rows if (pid, att + 1) in on_log and pub <= att)


def sigkill_relay(run: ChaosRun) -> None:
    """Kill the relay twice between claim and commit: while publishing, and after it."""
    # 1. While it publishes a large batch (big commands, so publishing takes a while): the
    #    first of them reaching the log is the signal.
    ids = run.enqueue_burst("burst-a", 600, due_in_s=1.0, pad=16 * 1024)
    grew = asyncio.run(
        _kill_when_log_grows(
            run.stack.kafka.bootstrap, run.commands_topic, run.p.procs["relay"].pid, ids
        )
    )
    rc = run.stop_component("relay", signal.SIGKILL, expect_running=False)
    stamped = run.p.count(ids, "published_attempt >= 1")
    on_log = _commands_for(run, ids)
    run.fault(
        "SIGKILL relay while publishing",
        landed=_killed(rc) and grew > 0,
        proof=f"exit {rc}, {grew} burst commands on the log at the kill",
        burst=len(ids),
        seen_on_log_at_kill=grew,
        on_log=on_log,
        stamped=stamped,
    )
    run.check(
        "relay_killed_mid_publish",
        grew > 0 and on_log > 0 and stamped == 0,
        f"{grew} burst commands seen on the log at the kill, {on_log} of {len(ids)} there"
        f" after it, {stamped} stamped",
    )
    run.start_component("relay")
    # 2. After it published a batch, before the stamp commits: a SHARE lock on the outbox
    #    lets the claim (FOR UPDATE) through and blocks the stamp (UPDATE). While it is held
    #    nothing can fold or stamp, so the published-but-unstamped rows can be counted.
    run.enqueue_burst("burst-b", 300, due_in_s=0.3)
    with run.blocked_at(
        "pending_propagations",
        "SET published_attempt = p.attempts + 1",
        "the relay's stamp to wait on the lock",
    ) as lock:
        unstamped = _published_unstamped(run, lock)
        rc = run.stop_component("relay", signal.SIGKILL)
    run.fault(
        "SIGKILL relay after publishing, before its commit",
        landed=_killed(rc) and unstamped > 0,
        proof=f"exit {rc}, {unstamped} rows published but unstamped",
    )
    run.check(
        "relay_killed_before_commit",
        unstamped > 0,
        f"{unstamped} rows published but not stamped when killed",
    )
    run.start_component("relay")


async def _kill_when_log_grows(bootstrap: str, topic: str, pid: int, ids: list[int]) -> int:
    """SIGKILL ``pid`` as soon as one command of ``ids`` is on the log; returns how many were."""
    wanted = set(ids)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=64 << 20
    )
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(tps)
        for tp, end in (await consumer.end_offsets(tps)).items():
            consumer.seek(tp, end)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while loop.time() < deadline:
            for msgs in (await consumer.getmany(timeout_ms=5)).values():
                hits = sum(1 for m in msgs if m.value and _pid_of(m.value) in wanted)
                if hits:
                    os.kill(pid, signal.SIGKILL)
                    return hits
        return 0
    finally:
        await consumer.stop()


def _pid_of(raw: bytes) -> int | None:
    with contextlib.suppress(orjson.JSONDecodeError):
        doc = orjson.loads(raw)
        if isinstance(doc, dict) and isinstance(doc.get("propagation_id"), int):
            return int(doc["propagation_id"])
    return None


def sigkill_projector(run: ChaosRun) -> None:
    """Kill the projector inside its fold transaction (held at the checkpoint write)."""
    _keep_busy(run, 200, 4.0)
    with run.blocked_at(
        "projection_checkpoints",
        "INSERT INTO projection_checkpoints",
        "the projector's checkpoint write to wait on the lock",
    ):
        with psycopg.connect(run.p.database_url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE a.query LIKE '%%INSERT INTO projection_checkpoints%%'"
                " AND l.locktype = 'transactionid' AND l.granted"
            ).fetchone()
        rc = run.stop_component("projector", signal.SIGKILL)
    held = bool(row and row[0])
    run.fault(
        "SIGKILL projector mid-transaction",
        landed=_killed(rc) and held,
        proof=f"exit {rc}, fold transaction open at the kill: {held}",
    )
    time.sleep(run.rng.uniform(0.2, 1.0))
    run.start_component("projector")


def sigterm_each(run: ChaosRun) -> None:
    """SIGTERM relay, worker and projector in turn during a burst; each drains and exits 0.

    The burst's provisioner calls are slow ("slow-*", 150 ms), so the worker has a backlog
    when it is told to stop: commands fetched and buffered but not yet handed to a lane.
    """
    ids = run.enqueue_burst("slow-burst", 600, spread_s=2.0)
    rcs: dict[str, int] = {}
    for name in ("relay", "worker", "projector"):
        if name == "worker":
            _wait_uncommitted(run)
            time.sleep(run.rng.uniform(0.2, 0.6))
            backlog = run.uncommitted_commands()
        else:
            time.sleep(run.rng.uniform(0.05, 0.5))
            backlog = None
        rcs[name] = run.stop_component(name, signal.SIGTERM)
        run.fault(
            f"SIGTERM {name} during a burst",
            # stop_component signals only a running process; it exited on the signal
            landed=True,
            proof=f"running when signalled, exit {rcs[name]}",
            burst=len(ids),
            uncommitted_commands=backlog,
        )
        run.start_component(name)
    run.check("graceful_exit", all(rc == 0 for rc in rcs.values()), f"exit codes {rcs}")


# -- services ----------------------------------------------------------------------------------


def _settled(run: ChaosRun, timeout: float = 60) -> dict[int, int]:
    """Wait until the processor committed past today's end offsets; returns the end then."""
    _committed, ends = run.committed_offsets()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run.p.supervise()
        committed, now = run.committed_offsets()
        if all(committed.get(p, 0) >= end for p, end in ends.items()):
            return now
        time.sleep(0.5)
    return run.committed_offsets()[1]


def kafka_restart(run: ChaosRun) -> None:
    broker = run.stack.kafka
    port = broker.port
    _keep_busy(run, 200, 8.0)
    time.sleep(0.5)
    # While the broker is away the worker can neither commit nor produce; what it had
    # fetched past its commit may come again after a rebalance: a crash window.
    committed, _end = run.committed_offsets()
    pid = broker.pid
    assert pid is not None
    broker.kill()
    refused = port_refused(port)
    dead = not procs.pid_alive(pid)
    down = run.rng.uniform(1.0, 5.0)
    run.fault(
        "Kafka broker killed",
        landed=dead and refused,
        proof=f"pid {pid} dead: {dead}, connection to {port} refused: {refused}",
        down_s=round(down, 2),
    )
    time.sleep(down)
    broker.start()
    run.fault("Kafka broker restarted on the same data dir", port=broker.port)
    run.check("broker_port_kept", broker.port == port, f"port {port} -> {broker.port}")
    run.declare_window("Kafka broker restart", committed, _settled(run))


def postgres_restart(run: ChaosRun) -> None:
    cluster = run.stack.postgres
    _keep_busy(run, 200, 8.0)
    time.sleep(0.5)
    cluster.stop(mode="fast")
    down = run.rng.uniform(0.5, 4.0)
    # A client tries to connect all the while it is down: each refusal is the proof.
    refused = tries = 0
    until = time.monotonic() + down
    while tries == 0 or time.monotonic() < until:
        tries += 1
        try:
            psycopg.connect(run.p.database_url, connect_timeout=2).close()
        except psycopg.OperationalError:
            refused += 1
        time.sleep(0.2)
    run.fault(
        "Postgres stopped (fast)",
        landed=refused > 0,
        proof=f"{refused} of {tries} connection attempts refused over {down:.1f}s",
        down_s=round(down, 2),
    )
    cluster.start()
    with psycopg.connect(run.p.database_url, connect_timeout=10):
        pass
    run.fault("Postgres restarted", landed=None, proof="a connection succeeds again")


# -- rebalances --------------------------------------------------------------------------------


def worker_joins_and_leaves(run: ChaosRun) -> None:
    _keep_busy(run, 400, 16.0)
    # The rebalance moves partitions with commands fetched past their commit: a crash window
    # from the commit before the join to the end once the new worker has partitions.
    committed, _end = run.committed_offsets()
    run.start_component("worker2")

    def assigned() -> bool:
        return any(
            e.get("event") == "partitions_assigned" and e.get("partitions")
            for e in run.log_events("worker2")
        )

    run.wait_for("worker2 to get partitions", assigned, timeout=60)
    got = [
        e["partitions"]
        for e in run.log_events("worker2")
        if e.get("event") == "partitions_assigned"
    ]
    run.declare_window("worker2 joined", committed, run.committed_offsets()[1])
    run.fault(
        "second worker joins",
        landed=any(got),
        proof=f"worker2 assigned partitions {got}",
    )
    time.sleep(run.rng.uniform(1.0, 3.0))
    sig = run.rng.choice([signal.SIGTERM, signal.SIGKILL])
    rc = run.stop_component("worker2", sig)
    run.fault(
        "second worker leaves",
        landed=rc == -signal.SIGKILL if sig == signal.SIGKILL else True,
        proof=f"running when signalled, {sig.name}, exit {rc}",
        signal=sig.name,
    )


# -- duplicate delivery ------------------------------------------------------------------------


def _duplicates(run: ChaosRun) -> float:
    """Redeliveries the worker recognised, over every worker process of this run.

    Counted from the worker's DEBUG log rather than its counter: a worker that restarts
    itself (an offset gap, a stalled recovery) starts its counters again at zero.
    """
    log = run.p.logdir / "worker.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    return float(
        sum(
            1
            for line in text.splitlines()
            if '"event":"command_seen"' in line
            and ('"action":"reemit"' in line or '"action":"drop"' in line)
        )
    )


def republish_commands(run: ChaosRun) -> None:
    raw = [m for m in run.read_raw(run.commands_topic) if m.value]
    sample = run.rng.sample(raw, min(80, len(raw)))
    acked = run.produce(run.commands_topic, [(m.key, m.value or b"") for m in sample])
    run.fault(
        "commands re-published by hand",
        landed=acked == len(sample) > 0,
        proof=f"{acked} of {len(sample)} acknowledged by the broker",
        of=len(raw),
    )


def republish_when_quiet(run: ChaosRun) -> None:
    def action() -> str:
        raw = [m for m in run.read_raw(run.commands_topic) if m.value]
        sample = run.rng.sample(raw, min(150, len(raw)))
        run.notes["dup_before"] = _duplicates(run)
        acked = run.produce(run.commands_topic, [(m.key, m.value or b"") for m in sample])
        run.notes["dup_sent"] = len(sample)
        run.fault(
            "commands re-published on the quiet pipeline",
            landed=acked == len(sample) > 0,
            proof=f"{acked} of {len(sample)} acknowledged by the broker",
        )
        return f"{len(sample)} commands re-published"

    run.check("quiet_republish_changes_nothing", *_as_pair(quiet_redelivery(run, action)))
    seen = _duplicates(run) - run.notes["dup_before"]
    run.check(
        "redelivery_recognised",
        seen == run.notes["dup_sent"],
        f"duplicates counter +{seen:.0f} for {run.notes['dup_sent']} re-published commands",
    )


def _reset_offsets(run: ChaosRun, what: str, **detail: Any) -> None:
    """Stop the worker, commit offset 0 for its group, prove it, start the worker again."""
    rc = run.stop_component("worker", signal.SIGTERM)
    run.reset_processor_offsets()
    # The group's own committed offsets (None: no commit at all, which would not be a reset)
    mine = [pl for pl in run.lag().partitions if pl.group == run.processor_group]
    committed = {pl.partition: pl.committed for pl in mine}
    end = {pl.partition: pl.end for pl in mine}
    run.fault(
        what,
        landed=bool(mine) and all(c == 0 for c in committed.values()) and any(end.values()),
        proof=f"committed {committed} over ends {end} before the restart (worker exit {rc})",
        **detail,
    )
    run.start_component("worker")


def offset_reset(run: ChaosRun) -> None:
    _keep_busy(run, 150, 6.0)
    _reset_offsets(run, "processor group offsets reset to 0 (mid-run)")


def offset_reset_when_quiet(run: ChaosRun) -> None:
    def action() -> str:
        commands = len(run.read_raw(run.commands_topic))
        run.notes["dup_before"] = _duplicates(run)
        run.notes["commands"] = commands
        _reset_offsets(run, "processor group offsets reset to 0 (quiet)", commands=commands)
        return f"offsets reset over {commands} commands"

    run.check("quiet_reset_changes_nothing", *_as_pair(quiet_redelivery(run, action)))
    run.p.wait_metrics_up("worker")
    seen = _duplicates(run) - run.notes["dup_before"]
    run.check(
        "every_command_recognised",
        seen == run.notes["commands"],
        f"the restarted worker counted {seen:.0f} duplicates of {run.notes['commands']} commands",
    )


def _as_pair(check: Any) -> tuple[bool, str]:
    return check.ok, check.detail


# -- provisioner faults ------------------------------------------------------------------------

FAULT_RULES = (
    # the effect lands and the reply is lost (the ambiguous case), on paths that apply
    Rule(match="ok-*", action="apply_then_error", code="UNAVAILABLE", rate=0.3, times=3),
    Rule(match="busy*", action="apply_then_error", code="DEADLINE_EXCEEDED", rate=0.3, times=3),
    Rule(match="*", action="error", code="UNAVAILABLE", rate=0.2, times=3),
    Rule(match="*", action="error", code="DEADLINE_EXCEEDED", rate=0.2, times=3),
)


def provisioner_faults(run: ChaosRun) -> None:
    before = len(run.provisioner.calls())
    run.provisioner.set_rules(FAULT_RULES + RULES)
    _keep_busy(run, 200, 4.0)
    run.wait_progress(0.7)
    time.sleep(1.0)
    run.provisioner.set_rules(RULES)
    calls = run.provisioner.calls()[before:]
    effects = run.provisioner.effects()
    errors: dict[str, int] = {}
    for c in calls:
        if c.outcome.startswith("error:"):
            errors[c.outcome] = errors.get(c.outcome, 0) + 1
    lost_replies = sum(
        1
        for c in calls
        if c.outcome.startswith("error:")
        and c.idempotency_key in effects
        and effects[c.idempotency_key][0].at <= c.at
        and not c.resource_id.startswith(("transient-", "ordflaky-", "ambiguous-"))
    )
    fired = (
        errors.get("error:UNAVAILABLE", 0) > 0
        and errors.get("error:DEADLINE_EXCEEDED", 0) > 0
        and lost_replies > 0
    )
    run.fault(
        "provisioner UNAVAILABLE / DEADLINE_EXCEEDED / apply_then_error at a rate, healed",
        landed=fired,
        proof=f"{errors} over {len(calls)} calls, {lost_replies} errors after the effect landed",
    )
    run.check("faults_fired", fired, f"{errors}, {lost_replies} errors after the effect landed")


# -- bad input ---------------------------------------------------------------------------------

BAD_OUTBOX = (
    PathSpec("badempty", 3, "dead_lettered", False, payload={}),
    PathSpec("badtype", 3, "dead_lettered", False, payload=["not", "an", "object"]),
    PathSpec(
        "badbig", 2, "dead_lettered", False, payload={"target_tier": "pro", "blob": "x" * BIG}
    ),
)
BAD_BASE = 1_000_000_000  # propagation ids of hand-made commands: no such row


def _about(pid: int) -> dict[str, Any]:
    """What a hand-made command and outcome both name: attempt 1 of propagation ``pid``."""
    return {
        "propagation_id": pid,
        "kind": "tier_elevation",
        "attempt": 1,
        "team_id": "team-bad",
        "resource_type": "postgres",
        "resource_id": f"bad-{pid}",
    }


def _command(pid: int, **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema": COMMAND_SCHEMA,
        "event_id": command_event_id(pid, 1),
        **_about(pid),
        "payload": {"target_tier": "pro"},
        "timestamp": iso(utcnow()),
    }
    doc.update(over)
    return {k: v for k, v in doc.items() if v is not None}


def _outcome(pid: int, **over: Any) -> dict[str, Any]:
    now = iso(utcnow())
    doc: dict[str, Any] = {
        "schema": OUTCOME_SCHEMA,
        "event_id": str(uuid.uuid4()),
        **_about(pid),
        "timestamp": now,
        "outcome": "applied",
        "audit_kind": "propagation.applied",
        "occurred_at": now,
    }
    doc.update(over)
    return doc


def bad_input(run: ChaosRun) -> None:
    j = orjson.dumps
    p = BAD_BASE + run.rng.randrange(1_000_000) * 10
    dead = {
        p + 1: "wrong schema",
        p + 2: "oversized",
        p + 4: "missing fields",
        p + 5: "payload missing target_tier",
    }
    commands: list[tuple[bytes | None, bytes]] = [
        (b"k1", b'{"schema": "propagation.command.v1", "propagation_id": 12,'),  # bad_json
        (None, b"\xff\xfe not json at all"),  # bad_json
        (b"k3", b""),  # empty
        (b"k4", b"[1, 2, 3]"),  # schema_violation, no id
        (b"k5", j(_command(p + 1, schema="propagation.command.v0"))),  # schema_violation
        (b"k6", j(_command(p + 2, payload={"target_tier": "pro", "blob": "x" * BIG}))),
        (b"k7", j({"blob": "y" * BIG})),  # oversized, no id
        (b"k8", j(_command(p + 3, kind="kind_nobody_knows"))),  # unknown kind
        (b"k9", j(_command(p + 4, team_id=None, resource_type=None, resource_id=None))),
        (b"k10", j(_command(p + 5, payload={}))),  # payload missing target_tier
        (b"k11", j(_command(p + 6, propagation_id="abc"))),  # schema_violation, no id
    ]
    outcomes: list[tuple[bytes | None, bytes]] = [
        (b"o1", b'{"schema": "propagation.outcome.v1", "event_id": '),  # bad_json
        (b"o2", b""),  # empty
        (b"o3", b'"just a string"'),  # schema_violation
        (b"o4", j(_outcome(p + 7, schema="propagation.outcome.v9"))),  # schema_violation
        (b"o5", j(_outcome(p + 8, error="z" * BIG))),  # oversized
        (b"o6", j(_outcome(p + 9, outcome="teleported"))),  # schema_violation
        (b"o7", j({"schema": OUTCOME_SCHEMA, "event_id": "e", "propagation_id": p + 10})),
        (b"o8", j(_outcome(p + 11, kind="kind_nobody_knows"))),  # valid: folds into no row
    ]
    acked = run.produce(run.commands_topic, commands)
    run.fault(
        "bad commands produced by hand",
        landed=acked == len(commands),
        proof=f"{acked} of {len(commands)} acknowledged by the broker",
    )
    acked = run.produce(run.outcomes_topic, outcomes)
    run.fault(
        "bad outcomes produced by hand",
        landed=acked == len(outcomes),
        proof=f"{acked} of {len(outcomes)} acknowledged by the broker",
    )
    run.notes.update(bad_base=p, dead=dead)


def bad_input_checks(run: ChaosRun) -> None:
    run.assert_running()
    p = run.notes["bad_base"]
    out = run.p.outcomes()
    problems = []
    for pid, what in run.notes["dead"].items():
        got = [(e["outcome"], e.get("dead_letter_reason")) for e in dedupe(out.get(pid, []))]
        if got != [("dead_lettered", "invalid_payload")]:
            problems.append(f"{what} ({pid}): {got}")
    unknown = [(e["outcome"], e["attempt"]) for e in dedupe(out.get(p + 3, []))]
    if unknown != [("retrying", 1)]:
        problems.append(f"unknown kind ({p + 3}): {unknown}")
    run.check("bad_commands_dead_lettered", not problems, "; ".join(problems) or "as expected")

    def invalid(component: str, topic: str) -> dict[str, float]:
        return {
            r: run.p.metric(
                component,
                "instant_propagation_invalid_commands_total",
                {"reason": r, "topic": topic},
            )
            for r in ("bad_json", "empty", "schema_violation", "oversized")
        }

    # workload rows: invalid (6) + badempty (3) + badtype (3) fail validation; badbig (2)
    want_worker = {"bad_json": 2.0, "empty": 1.0, "schema_violation": 17.0, "oversized": 4.0}
    want_proj = {"bad_json": 1.0, "empty": 1.0, "schema_violation": 4.0, "oversized": 1.0}
    for component, topic, want in (
        ("worker", run.commands_topic, want_worker),
        ("projector", run.outcomes_topic, want_proj),
    ):
        got = invalid(component, topic)
        run.check(
            f"{component}_counted_invalid",
            got == want,
            f"{component} counted {got}, expected {want}",
        )
    with psycopg.connect(run.p.database_url) as conn:
        audit = conn.execute(
            "SELECT outcome FROM propagation_audit WHERE propagation_id = %s", (p + 11,)
        ).fetchall()
        row = conn.execute(
            "SELECT count(*) FROM pending_propagations WHERE id = %s", (p + 11,)
        ).fetchone()
    run.check(
        "foreign_valid_outcome_is_audited_only",
        audit == [("applied",)] and row == (0,),
        f"audit {audit}, rows {row}",
    )


# -- cardinality -------------------------------------------------------------------------------

CARDINALITY = 10_000
CARD_BASE = 2_000_000_000
# Series a worker may expose per family, whatever the input: label values are bounded.
KINDS_LABELS = 5  # the 4 known kinds and "unknown_kind"
SERIES_BUDGET = {
    "instant_propagation_unknown_kind_total": Metrics.UNKNOWN_KIND_BUDGET + 1,
    "instant_propagation_outcomes_total": 5 * KINDS_LABELS,
    "instant_propagation_dead_lettered_total": 3 * KINDS_LABELS,
    "instant_propagation_unexpected_skip_total": KINDS_LABELS * 9 * 7,
    "instant_propagation_invalid_commands_total": 4,
    "instant_propagation_duplicates_total": 3,
    "instant_propagation_handler_seconds": KINDS_LABELS * 17,
    "instant_propagation_offset_gaps_total": 3,
}


def cardinality(run: ChaosRun) -> None:
    base = CARD_BASE + run.rng.randrange(1_000_000) * CARDINALITY
    msgs: list[tuple[bytes | None, bytes]] = []
    for i in range(CARDINALITY):
        tag = uuid.UUID(int=run.rng.getrandbits(128)).hex[:12]
        doc = _command(
            base + i, kind=f"kind_{tag}", resource_type=f"rt_{tag}", resource_id=f"card-{i}"
        )
        msgs.append((f"card-{tag}".encode(), orjson.dumps(doc)))
    acked = run.produce(run.commands_topic, msgs)
    run.notes["card_base"] = base
    run.fault(
        "10,000 commands with distinct unknown kinds produced by hand",
        landed=acked == len(msgs),
        proof=f"{acked} of {len(msgs)} acknowledged by the broker",
    )


def cardinality_checks(run: ChaosRun) -> None:
    run.assert_running()
    body = run.metrics_text("worker")
    per_family: dict[str, int] = {}
    unknown_total = 0.0
    for family in text_string_to_metric_families(body):
        per_family[family.name] = len(family.samples)
        if family.name == "instant_propagation_unknown_kind":
            unknown_total = sum(s.value for s in family.samples)
    over = {}
    for name, n in per_family.items():
        budget = SERIES_BUDGET.get(name + "_total", SERIES_BUDGET.get(name, 12))
        if n > budget:
            over[name] = (n, budget)
    total = sum(per_family.values())
    ceiling = sum(SERIES_BUDGET.values()) + 12 * (len(per_family) - len(SERIES_BUDGET))
    run.check(
        "metrics_within_budget",
        not over and total <= ceiling and unknown_total >= CARDINALITY,
        f"{total} series (ceiling {ceiling}), over budget: {over}, "
        f"unknown_kind counted {unknown_total:.0f}",
    )
    base = run.notes["card_base"]
    out = run.p.outcomes()
    got = sum(
        1
        for pid in range(base, base + CARDINALITY)
        if [e["outcome"] for e in dedupe(out.get(pid, []))] == ["retrying"]
    )
    run.check(
        "every_bad_kind_answered",
        got == CARDINALITY,
        f"{got} of {CARDINALITY} got exactly one retrying outcome",
    )


# -- the catalogue -----------------------------------------------------------------------------

SCENARIOS = [
    Scenario("sigkill_worker", sigkill_worker, seed=101),
    Scenario("sigkill_relay", sigkill_relay, seed=102, relay_batch_size=1000),
    Scenario("sigkill_projector", sigkill_projector, seed=103),
    Scenario("sigterm_each", sigterm_each, seed=104),
    Scenario("kafka_restart", kafka_restart, seed=105),
    Scenario("postgres_restart", postgres_restart, seed=106),
    Scenario("worker_rebalance", worker_joins_and_leaves, seed=107, inject_at=0.2),
    Scenario("duplicate_delivery", republish_commands, seed=108, after=republish_when_quiet),
    Scenario("offset_reset", offset_reset, seed=109, after=offset_reset_when_quiet),
    Scenario("provisioner_faults", provisioner_faults, seed=110, inject_at=0.05),
    Scenario("bad_input", bad_input, seed=111, extra_paths=BAD_OUTBOX, after=bad_input_checks),
    Scenario("cardinality", cardinality, seed=112, after=cardinality_checks),
]
SCENARIOS += RETENTION_SCENARIOS  # replays on a trimmed log, two prefixes on one database
BY_NAME = {s.name: s for s in SCENARIOS}
