"""The worker's topics, faust's own included, created replicated before faust starts.

faust creates a table's changelog and its assignor topic itself, with one replication factor
and without ``min.insync.replicas``, and on a fresh cluster it may read a topic it has just
created as having 0 partitions (PartitionsMismatch). Creating them here first, replicated and
visible on every broker, leaves faust nothing to create.
"""

from __future__ import annotations

from typing import Any

import faust

from pipeline.adapters.faust_compat import leader_topic_name
from pipeline.adapters.replication import Replication, TopicReplication, report
from pipeline.adapters.topics import ensure_topics
from pipeline.domain.errors import ConfigError
from pipeline.runtime import logs
from pipeline.runtime.config import Config
from pipeline.runtime.metrics import Metrics

_log = logs.get("worker")


def faust_topics(app: faust.App, default_partitions: int) -> list[tuple[str, int, dict[str, str]]]:
    """(name, partitions, topic configs) of every topic faust would create for ``app``."""
    out = [
        (t.changelog_topic.get_topic_name(), int(t.partitions or default_partitions), _configs(t))
        for t in app.tables.values()
    ]
    out.append((leader_topic_name(app.conf.id), 1, {}))
    return out


def _configs(table: Any) -> dict[str, str]:
    # faust's own defaults for a changelog it declares, then the table's explicit configs.
    topic = table.changelog_topic
    policy = [p for p, on in (("compact", topic.compacting), ("delete", topic.deleting)) if on]
    out = {"cleanup.policy": ",".join(policy)} if policy else {}
    return out | {k: str(v) for k, v in (topic.config or {}).items()}


async def ensure_worker_topics(
    cfg: Config, app: faust.App, want: Replication, metrics: Metrics
) -> list[TopicReplication]:
    kw = cfg.kafka_client_kwargs()
    results = await ensure_topics(
        kw,
        [cfg.commands_topic, cfg.outcomes_topic],
        cfg.partitions,
        want.factor,
        want.min_insync,
        configs=cfg.topic_configs(),
    )
    for name, partitions, configs in faust_topics(app, cfg.partitions):
        results += await ensure_topics(
            kw, [name], partitions, want.factor, want.min_insync, configs={name: configs}
        )
    report(results, metrics, _log)
    check_partition_counts(results, cfg.commands_topic, cfg.outcomes_topic)
    return results


def check_partition_counts(results: list[TopicReplication], commands: str, outcomes: str) -> None:
    """Refuse to run on a commands and an outcomes topic of different partition counts.

    The worker reads its answers to command partition p back from outcome partition p at each
    assignment (recall.py), which holds only while both topics have one count: after one of
    them alone gained partitions, redelivered commands would run again with no memory of
    their answers.
    """
    counts = {r.topic: r.partitions for r in results}
    have, answered = counts.get(commands), counts.get(outcomes)
    if have != answered:
        raise ConfigError(
            f"topic {commands} has {have} partitions but {outcomes} has {answered}: the worker "
            "reads the answers to command partition p from outcome partition p, so both need "
            "the same count (add partitions to the smaller one: kafka-topics.sh --alter "
            "--partitions N)"
        )


def worker_topic_names(cfg: Config) -> list[str]:
    """Every topic the pipeline creates, by name, without building the faust app (for
    ``pipeline status``); tests/unit/components/worker/test_worker_topics.py checks it against
    faust_topics."""
    group = cfg.processor_group
    return [
        cfg.commands_topic,
        cfg.outcomes_topic,
        leader_topic_name(group),
    ]
