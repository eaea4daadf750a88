"""Chaos on a three-node KRaft cluster: broker and controller faults under load.

Each scenario runs on a freshly formatted cluster (``ClusterStack.reformat``), with the chaos
suite's workload plus a steady offered load, and uses chaoslib's run and invariants I1..I5
unchanged. Beside them each run records:

- the stall: the worst insert-to-applied time of the load rows inserted during the fault;
- every process restart: components restarted by the supervisor (exit 3 or a crash), the
  worker's self-restarts (from its logs), and producer rebuilds (not restarts, but counted);
- how long ``pipeline lag`` took to answer during the fault, and whether it was partial.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from chaoslib import ChaosRun, PathSpec, Scenario, ScenarioError, Stack, port_refused
from psycopg.types.json import Jsonb

from pipeline.devtools.stack import procs
from pipeline.devtools.stack.kafka import KafkaBroker
from pipeline.devtools.stack.kafka_cluster import KafkaCluster
from pipeline.devtools.stack.postgres import PostgresCluster

NODES = 3
STALL_BOUND_S = 15.0  # issue 12: worst insert-to-applied during a broker's loss
LAG_ANSWER_BOUND_S = 5.0  # issue 12: `pipeline lag` answers within this with a broker down
LOAD_PATH = PathSpec("load", 0, "applied", True)


# -- the stack ---------------------------------------------------------------------------------


class ClusterKafka:
    """The cluster behind the ``stack.kafka`` attributes chaoslib uses (bootstrap, running,
    start, stop, log_path); ``start`` brings back the nodes that are down."""

    def __init__(self, cluster: KafkaCluster) -> None:
        self.cluster = cluster

    @property
    def bootstrap(self) -> str:
        return self.cluster.bootstrap

    @property
    def running(self) -> bool:
        return all(n.running for n in self.cluster.nodes)

    @property
    def log_path(self) -> Path:
        return self.cluster.nodes[0].log_path

    def start(self, timeout: float = 120) -> None:
        down = [n for n in self.cluster.nodes if not n.running]
        for n in down:
            n.launch()
        for n in down:
            n.wait_ready(timeout)

    def stop(self) -> None:
        self.cluster.stop()


class ClusterStack(Stack):
    """Postgres once, and a three-node cluster formatted anew for every scenario."""

    def __init__(self, workdir: Path, cache_dir: Path) -> None:
        self.workdir = workdir
        self.cache_dir = cache_dir
        self.postgres = PostgresCluster(workdir / "postgres")
        self.generation = 0
        self.cluster: KafkaCluster | None = None
        self.kafka: Any = None

    def start(self) -> None:
        self.postgres.start()
        self.reformat()

    def reformat(self) -> None:
        if self.cluster is not None:
            self.cluster.kill()
        self.generation += 1
        self.cluster = KafkaCluster(
            self.workdir / f"kafka-{self.generation}", self.cache_dir, NODES
        )
        self.cluster.start(timeout=180)
        self.kafka = ClusterKafka(self.cluster)

    def stop(self) -> None:
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.kill()
        with contextlib.suppress(Exception):
            self.postgres.stop()
        with contextlib.suppress(Exception):
            self.postgres.remove_files()

    def logs(self, tail: int = 40) -> str:
        out = [
            f"--- postgres ({self.postgres.log_path})\n{procs.tail(self.postgres.log_path, tail)}"
        ]
        for n in self.cluster.nodes if self.cluster else []:
            out.append(f"--- kafka node {n.node_id} ({n.log_path})\n{procs.tail(n.log_path, tail)}")
        return "\n".join(out)


def _cluster(run: ChaosRun) -> KafkaCluster:
    stack = run.stack
    assert isinstance(stack, ClusterStack) and stack.cluster is not None
    return stack.cluster


# -- measuring the fault ---------------------------------------------------------------------


@dataclass
class LagAnswer:
    seconds: float
    rc: int
    partial: bool


class FaultWatch:
    """During a fault: a steady load of plain regrades, and ``pipeline lag`` asked repeatedly.

    Started before the fault, stopped after it healed; the stall is measured afterwards on the
    load rows inserted in between.
    """

    def __init__(self, run: ChaosRun, rate: int, lag_every_s: float = 5.0) -> None:
        self.run = run
        self.rate = rate
        self.lag_every_s = lag_every_s
        self.ids: list[int] = []
        self.lag_answers: list[LagAnswer] = []  # in process
        self.cli_answers: list[LagAnswer] = []  # the command, interpreter start included
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._load, daemon=True),
            threading.Thread(target=self._ask_lag, daemon=True),
        ]
        self.errors: list[str] = []
        self.lag_errors: list[str] = []
        self.seconds = 0.0

    def __enter__(self) -> FaultWatch:
        self._t0 = time.monotonic()
        self.pids = {n: p.pid for n, p in self.run.p.procs.items()}
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.seconds = time.monotonic() - self._t0
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def _load(self) -> None:
        tick = 0.2
        per_tick = max(1, round(self.rate * tick))
        n = 0
        try:
            with psycopg.connect(self.run.p.database_url) as conn:
                while not self._stop.is_set():
                    started = time.monotonic()
                    rids = [f"load-{n + i}" for i in range(per_tick)]
                    n += per_tick
                    rows = conn.execute(
                        "INSERT INTO pending_propagations"
                        " (kind, team_id, resource_type, resource_id, payload)"
                        " SELECT 'tier_elevation', 'team-load', 'postgres', rid, %s"
                        " FROM unnest(%s::text[]) AS rid RETURNING id, resource_id",
                        (Jsonb({"target_tier": "pro"}), rids),
                    ).fetchall()
                    conn.commit()
                    for pid, rid in rows:
                        self.ids.append(int(pid))
                        self.run.workload.add(int(pid), LOAD_PATH, ("team-load", "postgres", rid))
                    self._stop.wait(max(0.0, tick - (time.monotonic() - started)))
        except Exception as exc:  # recorded: the scenario fails on it
            self.errors.append(f"load: {exc!r}")

    def _ask_lag(self) -> None:
        """``pipeline lag --json`` as an operator runs it (wall time recorded, interpreter
        start included), and the same measurement in process (its answer time, asserted)."""
        env = self.run.p.env()
        while not self._stop.wait(self.lag_every_s):
            self.lag_answers.append(self._in_process())
            started = time.monotonic()
            try:
                res = subprocess.run(
                    [sys.executable, "-m", "pipeline.ops.cli", "lag", "--json"],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=120,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                self.cli_answers.append(LagAnswer(120.0, -1, True))
                continue
            seconds = time.monotonic() - started
            partial = False
            with contextlib.suppress(ValueError):
                partial = bool(json.loads(res.stdout).get("partial"))
            self.cli_answers.append(LagAnswer(round(seconds, 2), res.returncode, partial))

    def _in_process(self) -> LagAnswer:
        from pipeline.components.lag import LagProbe, pipeline_sources
        from pipeline.ops.lag import LAG_WITHIN_S

        run = self.run
        sources = pipeline_sources(
            run.processor_group, run.commands_topic, run.projection, run.outcomes_topic
        )

        async def ask() -> bool:
            kw = {"bootstrap_servers": run.stack.kafka.bootstrap}
            async with LagProbe(kw, run.p.database_url) as probe:
                return (await probe.measure(sources, within_s=LAG_WITHIN_S)).partial

        started = time.monotonic()
        try:
            partial = asyncio.run(ask())
        except Exception as exc:
            self.lag_errors.append(f"{exc!r}"[:300])
            return LagAnswer(round(time.monotonic() - started, 2), 1, True)
        return LagAnswer(round(time.monotonic() - started, 2), 4 if partial else 0, partial)

    # -- after the run's checks ----------------------------------------------------------------

    def stall_s(self) -> float | None:
        """Worst insert-to-applied of the load rows (all terminal once I1 passed)."""
        if not self.ids:
            return None
        with psycopg.connect(self.run.p.database_url) as conn:
            row = conn.execute(
                "SELECT max(extract(epoch FROM applied_at - created_at)) FROM"
                " pending_propagations WHERE id = ANY(%s)",
                (self.ids,),
            ).fetchone()
        return None if row is None or row[0] is None else round(float(row[0]), 2)

    def restarts(self) -> dict[str, Any]:
        """Every process restart of this run so far, of any kind."""
        p = self.run.p
        now = {n: proc.pid for n, proc in p.procs.items()}
        replaced = sorted(n for n, pid in self.pids.items() if now.get(n) != pid)
        events = ("fatal", "stopped_without_draining", "producer_rebuilt")
        seen: dict[str, int] = {}
        for name in ("relay", "worker", "projector"):
            for e in self.run.log_events(name):
                if e.get("event") in events:
                    key = f"{name}:{e['event']}"
                    seen[key] = seen.get(key, 0) + 1
        return {
            "supervisor_restarts": list(p.restarts),
            "replaced_processes": replaced,
            "events": seen,
        }


def record(run: ChaosRun, watch: FaultWatch, *, strict: bool) -> None:
    """Record the stall, restarts and lag answers; ``strict`` asserts issue 12's bounds."""
    stall = watch.stall_s()
    restarts = watch.restarts()
    answers = watch.lag_answers
    worst_lag = max((a.seconds for a in answers), default=None)
    run.notes["stall_s"] = stall
    run.notes["restarts"] = restarts
    run.notes["lag_answers"] = [a.__dict__ for a in answers]
    cli_worst = max((a.seconds for a in watch.cli_answers), default=None)
    run.fault(
        "measured",
        stall_s=stall,
        load_rows=len(watch.ids),
        offered_per_s=round(len(watch.ids) / max(watch.seconds, 1e-9), 1),
        restarts=restarts,
        lag_worst_s=worst_lag,
        lag_partial=sum(a.partial for a in answers),
        lag_cli_worst_s=cli_worst,
        lag_cli_rcs=sorted({a.rc for a in watch.cli_answers}),
    )
    run.check(
        "load_ran", not watch.errors and bool(watch.ids), f"{len(watch.ids)} rows {watch.errors}"
    )
    if not strict:
        return
    run.check(
        "stall_under_15s",
        stall is not None and stall < STALL_BOUND_S,
        f"worst insert-to-applied {stall}s (bound {STALL_BOUND_S:.0f}s)",
    )
    restarted = (
        restarts["supervisor_restarts"]
        or restarts["replaced_processes"]
        or any(not k.endswith("producer_rebuilt") for k in restarts["events"])
    )
    self_restarts = _self_restarts(run)
    run.check(
        "no_component_restart",
        not restarted and not self_restarts,
        f"{restarts} self-restarts {self_restarts}",
    )
    slow = [a for a in answers if a.seconds >= LAG_ANSWER_BOUND_S or a.rc not in (0, 4)]
    run.check(
        "lag_answers_in_5s",
        bool(answers) and not slow,
        f"{len(answers)} answers, worst {worst_lag}s, failing {[a.__dict__ for a in slow]}"
        f" {watch.lag_errors}",
    )


def _self_restarts(run: ChaosRun) -> dict[str, int]:
    from chaoslib import count_self_restarts

    return count_self_restarts(run.logdir)


# -- cluster helpers -----------------------------------------------------------------------------


async def _leaders(bootstrap: str, topic: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return {p["partition"]: p["leader"] for t in described for p in t["partitions"]}


async def _ends(bootstrap: str, topic: str, partitions: list[int]) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
    finally:
        await consumer.stop()
    return {tp.partition: off for tp, off in ends.items()}


def busiest_partition_leader(run: ChaosRun) -> tuple[int, int]:
    """(partition, leader node) of the command partition with the most records."""
    bootstrap = run.stack.kafka.bootstrap
    leaders = asyncio.run(_leaders(bootstrap, run.commands_topic))
    ends = asyncio.run(_ends(bootstrap, run.commands_topic, list(leaders)))
    partition = max(ends, key=lambda p: (ends[p], -p))
    return partition, leaders[partition]


def sigkill(node: KafkaBroker) -> dict[str, Any]:
    """SIGKILL a node; returns the proof it is gone (``run.fault``'s landed and proof)."""
    return _gone(node, lambda: node.kill(signal.SIGKILL))


def _gone(node: KafkaBroker, end: Any) -> dict[str, Any]:
    pid, port = node.pid, node.port
    assert pid is not None and port is not None
    end()
    refused = port_refused(port)
    dead = not procs.pid_alive(pid)
    return {
        "landed": dead and refused,
        "proof": f"pid {pid} dead: {dead}, connection to {port} refused: {refused}",
    }


def restart(node: KafkaBroker, timeout: float = 120) -> float:
    started = time.monotonic()
    node.launch()
    node.wait_ready(timeout)
    return round(time.monotonic() - started, 1)


def _wait_in_sync(run: ChaosRun, timeout: float = 120) -> None:
    """Until every partition of the command topic has its full ISR again."""

    async def shrunk() -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=run.stack.kafka.bootstrap)
        await admin.start()
        try:
            described = await admin.describe_topics([run.commands_topic, run.outcomes_topic])
        finally:
            await admin.close()
        return sum(len(p["isr"]) < len(p["replicas"]) for t in described for p in t["partitions"])

    run.wait_for("every partition back in sync", lambda: asyncio.run(shrunk()) == 0, timeout)


# -- the faults ----------------------------------------------------------------------------------


def kill_busiest_leader(run: ChaosRun, rate: int = 150) -> None:
    with FaultWatch(run, rate) as watch:
        time.sleep(2.0)
        partition, leader = busiest_partition_leader(run)
        node = _cluster(run).node(leader)
        gone = sigkill(node)
        run.fault(
            "SIGKILL leader of the busiest command partition",
            partition=partition,
            node=leader,
            **gone,
        )
        time.sleep(run.rng.uniform(8, 12))
        took = restart(node)
        run.fault("restarted", node=leader, ready_in_s=took)
        _wait_in_sync(run)
    run.notes["watch"] = watch


def rolling_restart(run: ChaosRun, rate: int = 150) -> None:
    with FaultWatch(run, rate) as watch:
        order = list(range(1, NODES + 1))
        run.rng.shuffle(order)
        for node_id in order:
            node = _cluster(run).node(node_id)
            # A controlled shutdown, as an operator's rolling restart.
            gone = _gone(node, lambda n=node: n.stop(timeout=60))
            run.fault("stopped (SIGTERM) for a rolling restart", node=node_id, **gone)
            took = restart(node)
            run.fault("restarted", node=node_id, ready_in_s=took)
            _wait_in_sync(run)
    run.notes["watch"] = watch


def kill_active_controller(run: ChaosRun, rate: int = 150) -> None:
    cluster = _cluster(run)
    with FaultWatch(run, rate) as watch:
        time.sleep(2.0)
        leader = cluster.leader()
        if leader is None:
            raise ScenarioError("no quorum leader recorded by any node")
        node = cluster.node(leader)
        gone = sigkill(node)
        run.fault("SIGKILL active controller (quorum leader)", node=leader, **gone)
        run.wait_for("a new quorum leader", lambda: cluster.leader() not in (None, leader), 60)
        run.fault("new quorum leader", node=cluster.leader())
        time.sleep(run.rng.uniform(3, 6))
        took = restart(node)
        run.fault("restarted", node=leader, ready_in_s=took)
        _wait_in_sync(run)
    run.notes["watch"] = watch


def broker_down_60s(run: ChaosRun, rate: int = 300, down_s: float = 60.0) -> None:
    """issue 12's broker loss: 300/s offered, one broker SIGKILLed for 60 s, then back."""
    with FaultWatch(run, rate) as watch:
        time.sleep(2.0)
        node_id = run.rng.randint(1, NODES)
        node = _cluster(run).node(node_id)
        gone = sigkill(node)
        run.fault("SIGKILL one broker", node=node_id, down_s=down_s, offered_per_s=rate, **gone)
        time.sleep(down_s)
        took = restart(node)
        run.fault("restarted", node=node_id, ready_in_s=took)
        time.sleep(5.0)  # load keeps coming after the broker's return
    run.notes["watch"] = watch


def _recorded(run: ChaosRun) -> None:
    record(run, run.notes["watch"], strict=False)


def _recorded_strict(run: ChaosRun) -> None:
    record(run, run.notes["watch"], strict=True)


# ``after`` runs once every row is terminal (I1) and the lag is 0 (I5): the stall is then known.
CLUSTER_SCENARIOS = [
    Scenario("cluster_kill_busiest_leader", kill_busiest_leader, seed=12_001, after=_recorded),
    Scenario("cluster_rolling_restart", rolling_restart, seed=12_002, after=_recorded),
    Scenario("cluster_kill_controller", kill_active_controller, seed=12_003, after=_recorded),
    Scenario("cluster_broker_down_60s", broker_down_60s, seed=12_004, after=_recorded_strict),
]
BY_NAME = {s.name: s for s in CLUSTER_SCENARIOS}
