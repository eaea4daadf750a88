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
from typing import Any

import orjson
import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition
from chaos_run import ChaosRun, Scenario
from chaos_services import port_refused
from delivery_scenarios import (
    offset_reset,
    offset_reset_when_quiet,
    provisioner_faults,
    republish_commands,
    republish_when_quiet,
)
from input_scenarios import BAD_OUTBOX, bad_input, bad_input_checks, cardinality, cardinality_checks
from retention_scenarios import RETENTION_SCENARIOS

from pipeline.adapters.topics import partitions_for
from pipeline.devtools.stack import procs


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
    run.keep_busy()
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
        tps = [
            TopicPartition(topic, p)
            for p in await partitions_for({"bootstrap_servers": bootstrap}, topic)
        ]
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
    run.keep_busy(200, 4.0)
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
    run.keep_busy(200, 8.0)
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
    run.keep_busy(200, 8.0)
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
    run.keep_busy(400, 16.0)
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
