"""A multi-node KRaft cluster: N combined broker+controller nodes, one quorum, one cluster id.

Every node is a ``KafkaBroker`` with its own ports and data folder under ``workdir/node-<id>``.
The cluster's defaults are what a production cluster of that size would say: replication
factor min(3, nodes) for every topic and internal topic, ``min.insync.replicas`` 2 from three
nodes on.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.devtools.stack import procs
from pipeline.devtools.stack.kafka import KafkaBroker, _random_cluster_id
from pipeline.domain.errors import StackError

__all__ = ["KafkaCluster", "NodeState", "cluster_properties", "quorum_leader"]

MAX_NODES = 9
_QUORUM_STATE = Path("data") / "__cluster_metadata-0" / "quorum-state"


def cluster_properties(nodes: int) -> dict[str, str]:
    """Broker settings of an ``nodes``-node cluster (a lone broker keeps its own defaults)."""
    if nodes == 1:
        return {}
    factor = min(3, nodes)
    min_isr = 2 if factor >= 3 else 1
    return {
        "default.replication.factor": str(factor),
        "min.insync.replicas": str(min_isr),
        "offsets.topic.replication.factor": str(factor),
        "transaction.state.log.replication.factor": str(factor),
        "transaction.state.log.min.isr": str(min_isr),
        # The controller fences a silent broker after this long and only then moves its
        # partitions' leadership; Kafka's 9 s default is most of a 15 s stall budget.
        "broker.session.timeout.ms": "4000",
        "broker.heartbeat.interval.ms": "1000",
    }


@dataclass(frozen=True)
class NodeState:
    node_id: int
    pid: int | None
    address: str
    running: bool
    log: Path


class KafkaCluster:
    """``nodes`` KRaft nodes on 127.0.0.1 that vote for each other, formatted together."""

    def __init__(
        self,
        workdir: Path,
        cache_dir: Path,
        nodes: int = 3,
        *,
        detached: bool = False,
        run_dir: Path | None = None,
        extra_properties: dict[str, str] | None = None,
    ) -> None:
        if not 1 <= nodes <= MAX_NODES:
            raise StackError(f"a cluster has 1 to {MAX_NODES} nodes, not {nodes}")
        self.workdir = workdir.resolve()
        self.cache_dir = cache_dir
        self.size = nodes
        self.detached = detached
        self.run_dir = run_dir
        self.extra_properties = dict(extra_properties or {})
        self.nodes: list[KafkaBroker] = []

    # -- public --------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    def node(self, node_id: int) -> KafkaBroker:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise StackError(f"no node {node_id} in this cluster")

    def start(self, timeout: float = 120) -> None:
        if not self.nodes:
            self._build()
        for n in self.nodes:
            n.launch()
        try:
            deadline = time.monotonic() + timeout
            for n in self.nodes:
                n.wait_ready(max(deadline - time.monotonic(), 1.0))
        except BaseException:
            self.kill()
            raise

    def stop(self, timeout: float = 30) -> None:
        # Brokers first, then the rest: a controlled shutdown needs a live controller quorum.
        for n in self.nodes:
            n.stop(timeout)

    def kill(self) -> None:
        for n in self.nodes:
            n.kill()

    def states(self) -> list[NodeState]:
        return [NodeState(n.node_id, n.pid, n.bootstrap, n.running, n.log_path) for n in self.nodes]

    def leader(self) -> int | None:
        """The quorum leader (active controller) as the live nodes last recorded it."""
        return quorum_leader([n.workdir for n in self.nodes if n.running])

    # -- internals -----------------------------------------------------------------------

    def _build(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        ids = list(range(1, self.size + 1))
        dirs = {i: self.workdir / f"node-{i}" for i in ids}
        formatted = [(d / "data" / "meta.properties").is_file() for d in dirs.values()]
        cluster_id = self._cluster_id()
        if not all(formatted) or cluster_id is None:
            # A half-formatted cluster would never form one quorum: start it over.
            for d in dirs.values():
                _remove_data(d)
            cluster_id = _random_cluster_id()
            (self.workdir / "cluster.json").write_text(json.dumps({"cluster_id": cluster_id}))
        taken: list[int] = []
        ports: dict[int, tuple[int, int]] = {}
        for i in ids:
            saved = _saved_ports(dirs[i])
            port = procs.pick_port(saved.get("port"), required=False, taken=taken)
            taken.append(port)
            ctl = procs.pick_port(saved.get("controller_port"), required=False, taken=taken)
            taken.append(ctl)
            ports[i] = (port, ctl)
        voters = ",".join(f"{i}@{procs.LOCALHOST}:{ports[i][1]}" for i in ids)
        props = cluster_properties(self.size) | self.extra_properties
        self.nodes = [
            KafkaBroker(
                dirs[i],
                self.cache_dir,
                port=ports[i][0],
                controller_port=ports[i][1],
                extra_properties=props,
                detached=self.detached,
                run_dir=self.run_dir,
                node_id=i,
                voters=voters,
                cluster_id=cluster_id,
            )
            for i in ids
        ]

    def _cluster_id(self) -> str | None:
        try:
            cid = json.loads((self.workdir / "cluster.json").read_text())["cluster_id"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return str(cid)


def quorum_leader(node_dirs: list[Path]) -> int | None:
    """The leader named by the newest epoch among the nodes' ``quorum-state`` files.

    Clients cannot ask a KRaft cluster who leads its quorum (metadata answers name a random
    broker as "controller"); each voter records the leader and epoch it knows on disk, and
    the highest epoch with a leader is the current one.
    """
    best: tuple[int, int] | None = None
    for d in node_dirs:
        try:
            doc = json.loads((d / _QUORUM_STATE).read_text())
        except (OSError, ValueError):
            continue
        epoch, leader = int(doc.get("leaderEpoch", -1)), int(doc.get("leaderId", -1))
        if leader >= 0 and (best is None or epoch > best[0]):
            best = (epoch, leader)
    return None if best is None else best[1]


def _saved_ports(node_dir: Path) -> dict[str, int]:
    try:
        data = json.loads((node_dir / "ports.json").read_text())
    except (OSError, ValueError):
        return {}
    return {k: int(v) for k, v in data.items() if v is not None}


def _remove_data(node_dir: Path) -> None:
    import shutil

    shutil.rmtree(node_dir / "data", ignore_errors=True)
