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
import signal
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from chaos_record import ScenarioError
from chaos_run import ChaosRun, Scenario
from chaos_services import Stack, port_refused
from cluster_watch import FaultWatch, record

from pipeline.devtools.stack import procs
from pipeline.devtools.stack.kafka import KafkaBroker
from pipeline.devtools.stack.kafka_cluster import KafkaCluster
from pipeline.devtools.stack.postgres import PostgresCluster

NODES = 3


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

    def stop_kafka(self) -> None:
        if self.cluster is not None:
            self.cluster.kill()

    def kafka_logs(self) -> list[tuple[str, Path]]:
        nodes = self.cluster.nodes if self.cluster is not None else []
        return [(f"kafka node {n.node_id}", n.log_path) for n in nodes]


def _cluster(run: ChaosRun) -> KafkaCluster:
    stack = run.stack
    assert isinstance(stack, ClusterStack) and stack.cluster is not None
    return stack.cluster


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
