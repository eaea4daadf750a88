"""Replication of the pipeline's topics: what to create, and whether what exists is enough.

The decisions (``decide``, ``assess``) are pure; the admin-client calls around them ask the
cluster for its default factor, live brokers, each topic's replicas and ``min.insync.replicas``,
and wait until freshly created topics are visible with their partitions on every broker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from pipeline.domain.errors import BrokerError, login_hint
from pipeline.runtime import logs
from pipeline.runtime.metrics import Metrics

MIN_ISR = "min.insync.replicas"
DEFAULT_FACTOR = "default.replication.factor"
VISIBLE_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Replication:
    factor: int
    min_insync: int

    def topic_configs(self) -> dict[str, str]:
        return {MIN_ISR: str(self.min_insync)}


@dataclass(frozen=True, slots=True)
class TopicReplication:
    """One topic as the cluster describes it."""

    topic: str
    factor: int  # the smallest replica count of any partition
    min_insync: int
    partitions: int
    shrunk_partitions: int = 0  # partitions whose in-sync set is below their replica count
    problems: tuple[str, ...] = field(default=())

    @property
    def under_replicated(self) -> bool:
        return bool(self.problems)


def decide(
    requested_factor: int, requested_min_insync: int, cluster_default: int, live_brokers: int
) -> Replication:
    """0 means "not set": the cluster's default factor capped by live brokers; min ISR 2 from
    factor 3 on (one replica may be lost without refusing writes), else 1."""
    factor = requested_factor or max(1, min(cluster_default, live_brokers))
    min_insync = requested_min_insync or (2 if factor >= 3 else 1)
    return Replication(factor, min_insync)


def assess(
    topic: str,
    replicas: list[int],
    isr: list[int],
    min_insync: int,
    want: Replication,
) -> TopicReplication:
    """Compare one topic's described state (per-partition replica and ISR counts) to ``want``."""
    factor = min(replicas) if replicas else 0
    problems: list[str] = []
    if factor < want.factor:
        problems.append(f"replication factor {factor} < configured {want.factor}")
    if min_insync < want.min_insync:
        problems.append(f"min.insync.replicas {min_insync} < configured {want.min_insync}")
    shrunk = sum(1 for r, i in zip(replicas, isr, strict=True) if i < r)
    return TopicReplication(topic, factor, min_insync, len(replicas), shrunk, tuple(problems))


# -- adapters ---------------------------------------------------------------------------------


async def resolve(admin: AIOKafkaAdminClient, factor: int, min_insync: int) -> Replication:
    """The configured replication, filling what is unset from the cluster."""
    if factor and min_insync:
        return Replication(factor, min_insync)
    cluster = await admin.describe_cluster()
    brokers = [b["node_id"] for b in cluster.get("brokers", [])]
    if not brokers:
        raise BrokerError("the cluster lists no live brokers")
    configs = await _configs(admin, ConfigResourceType.BROKER, [str(brokers[0])], [DEFAULT_FACTOR])
    default = int(configs.get(str(brokers[0]), {}).get(DEFAULT_FACTOR, "1"))
    return decide(factor, min_insync, default, len(brokers))


async def describe(
    admin: AIOKafkaAdminClient, topics: list[str], want: Replication
) -> list[TopicReplication]:
    """Every topic of ``topics`` that exists, assessed against ``want``."""
    described = {t["topic"]: t for t in await admin.describe_topics(topics) if not t["error_code"]}
    configs = await _configs(admin, ConfigResourceType.TOPIC, list(described), [MIN_ISR])
    out = []
    for name in topics:
        t = described.get(name)
        if t is None:
            continue
        parts = t["partitions"]
        out.append(
            assess(
                name,
                [len(p["replicas"]) for p in parts],
                [len(p["isr"]) for p in parts],
                int(configs.get(name, {}).get(MIN_ISR, "1")),
                want,
            )
        )
    return out


async def wait_visible(
    admin: AIOKafkaAdminClient,
    topics: list[str],
    within_s: float = VISIBLE_TIMEOUT_S,
) -> None:
    """Until every broker the client knows lists each topic with all partitions led.

    A topic just created is in the controller's log before every broker's metadata cache has
    it; faust reading 0 partitions there raises PartitionsMismatch at start-up.
    """
    deadline = time.monotonic() + within_s
    # Imported here: faust_compat imports faust, which the relay and `status` do not need.
    from pipeline.adapters.faust_compat import admin_kafka_client

    client = admin_kafka_client(admin)
    while True:
        missing = await _not_visible(admin, client, topics)
        if missing is None:
            return
        if time.monotonic() > deadline:
            raise BrokerError(
                f"topics not visible on every broker after {within_s:.0f}s: {missing}"
            )
        await asyncio.sleep(0.25)


async def _not_visible(admin: AIOKafkaAdminClient, client: Any, topics: list[str]) -> str | None:
    from aiokafka.protocol.metadata import MetadataRequest

    nodes = [b.nodeId for b in client.cluster.brokers()]
    for node in nodes:
        try:
            resp = await client.send(node, MetadataRequest(topics, False))
        except Exception as exc:  # a broker that is down does not hold up start-up
            if await client.ready(node):
                return f"broker {node}: {type(exc).__name__}"
            continue
        seen = {t["topic"]: t for t in resp.to_object()["topics"]}
        for name in topics:
            t = seen.get(name)
            if t is None or t["error_code"] != 0 or not t["partitions"]:
                return f"{name} on broker {node}"
            if any(p["leader"] < 0 for p in t["partitions"]):  # a partition without a leader
                return f"{name} on broker {node} (leader pending)"
    return None


async def _configs(
    admin: AIOKafkaAdminClient, kind: ConfigResourceType, names: list[str], keys: list[str]
) -> dict[str, dict[str, str]]:
    if not names:
        return {}
    res = [ConfigResource(kind, n, configs=dict.fromkeys(keys)) for n in names]
    out: dict[str, dict[str, str]] = {}
    for response in await admin.describe_configs(res):
        for entry in response.resources:
            error, _msg, _type, name, entries = entry[:5]
            if error == 0:
                out[name] = {e[0]: e[1] for e in entries}
    return out


def report(results: list[TopicReplication], metrics: Metrics, log: logging.Logger) -> None:
    """Log each under-replicated topic and set the gauge of every topic (1 = under)."""
    for r in results:
        metrics.topic_under_replicated.labels(r.topic).set(1 if r.under_replicated else 0)
        if r.under_replicated:
            logs.event(
                log,
                "topic_under_replicated",
                logging.WARNING,
                topic=r.topic,
                factor=r.factor,
                min_insync_replicas=r.min_insync,
                problems=list(r.problems),
            )


async def resolve_for(client_kwargs: dict[str, Any], factor: int, min_insync: int) -> Replication:
    """``resolve`` with an admin client of its own (for a process that needs the answer
    before it builds anything else, like the faust worker)."""
    return (await _with_admin(client_kwargs, factor, min_insync, None))[0]


async def check(
    client_kwargs: dict[str, Any], topics: list[str], factor: int, min_insync: int
) -> list[TopicReplication]:
    """The existing ones of ``topics`` assessed against the configured replication."""
    return (await _with_admin(client_kwargs, factor, min_insync, topics))[1]


async def _with_admin(
    client_kwargs: dict[str, Any], factor: int, min_insync: int, topics: list[str] | None
) -> tuple[Replication, list[TopicReplication]]:
    from aiokafka.errors import KafkaError

    admin = AIOKafkaAdminClient(**client_kwargs)
    try:
        await admin.start()
        want = await resolve(admin, factor, min_insync)
        return want, (await describe(admin, topics, want) if topics else [])
    except KafkaError as exc:
        raise BrokerError(
            f"could not ask the cluster about replication: {exc}{login_hint(client_kwargs)}"
        ) from exc
    finally:
        await admin.close()
