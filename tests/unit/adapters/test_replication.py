"""Replication decisions: the configured factor and min ISR, and what counts as under-replicated."""

from __future__ import annotations

import logging

import pytest

from pipeline.adapters import replication as rep
from pipeline.devtools.stack.kafka_cluster import cluster_properties, quorum_leader
from pipeline.domain.errors import ConfigError
from pipeline.runtime.config import Config
from pipeline.runtime.metrics import Metrics


@pytest.mark.parametrize(
    ("factor", "min_isr", "cluster_default", "live", "want"),
    [
        (0, 0, 3, 3, rep.Replication(3, 2)),  # the cluster's default
        (0, 0, 3, 2, rep.Replication(2, 1)),  # capped by live brokers
        (0, 0, 1, 3, rep.Replication(1, 1)),  # a cluster that says 1 gets 1
        (0, 0, 5, 5, rep.Replication(5, 2)),
        (2, 0, 3, 3, rep.Replication(2, 1)),  # configured wins
        (3, 3, 1, 1, rep.Replication(3, 3)),  # both configured: the cluster is not asked
    ],
)
def test_decide(factor: int, min_isr: int, cluster_default: int, live: int, want: object) -> None:
    assert rep.decide(factor, min_isr, cluster_default, live) == want


def test_a_well_replicated_topic_passes() -> None:
    got = rep.assess("t", [3, 3, 3], [3, 3, 2], 2, rep.Replication(3, 2))
    assert got == rep.TopicReplication("t", 3, 2, 3, shrunk_partitions=1, problems=())
    assert not got.under_replicated


def test_planted_factor_one_topic_is_under_replicated() -> None:
    got = rep.assess("t", [1, 1], [1, 1], 1, rep.Replication(3, 2))
    assert got.under_replicated
    assert got.problems == (
        "replication factor 1 < configured 3",
        "min.insync.replicas 1 < configured 2",
    )


def test_planted_min_isr_one_on_factor_three_is_under_replicated() -> None:
    got = rep.assess("t", [3, 3], [3, 3], 1, rep.Replication(3, 2))
    assert got.problems == ("min.insync.replicas 1 < configured 2",)


def test_one_partition_with_fewer_replicas_counts() -> None:
    got = rep.assess("t", [3, 2, 3], [3, 2, 3], 2, rep.Replication(3, 2))
    assert got.factor == 2 and got.under_replicated


def test_report_sets_the_gauge_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics(["tier_elevation"])
    good = rep.assess("a", [3], [3], 2, rep.Replication(3, 2))
    bad = rep.assess("b", [1], [1], 1, rep.Replication(3, 2))
    with caplog.at_level(logging.WARNING):
        rep.report([good, bad], metrics, logging.getLogger("test"))
    g = "instant_propagation_topic_under_replicated"
    assert metrics.sample(g, {"topic": "a"}) == 0
    assert metrics.sample(g, {"topic": "b"}) == 1
    assert [r.getMessage() for r in caplog.records] == ["topic_under_replicated"]


def test_config_reads_and_checks_replication() -> None:
    env = {"PIPELINE_REPLICATION_FACTOR": "3", "PIPELINE_MIN_INSYNC_REPLICAS": "2"}
    cfg = Config.from_env(env, required=())
    assert (cfg.replication_factor, cfg.min_insync_replicas) == (3, 2)
    assert (Config().replication_factor, Config().min_insync_replicas) == (0, 0)
    with pytest.raises(ConfigError, match="must not exceed the replication factor"):
        Config.from_env(
            {"PIPELINE_REPLICATION_FACTOR": "2", "PIPELINE_MIN_INSYNC_REPLICAS": "3"}, required=()
        )


def test_cluster_defaults_replicate_from_three_nodes() -> None:
    three = cluster_properties(3)
    assert three["default.replication.factor"] == "3"
    assert three["min.insync.replicas"] == "2"
    assert three["offsets.topic.replication.factor"] == "3"
    assert cluster_properties(2)["min.insync.replicas"] == "1"
    assert cluster_properties(1) == {}  # a quorum of one is the lone broker, unchanged


def test_quorum_leader_is_the_newest_epoch(tmp_path: pytest.TempPathFactory) -> None:
    import json
    from pathlib import Path

    base = Path(str(tmp_path))
    for node, (leader, epoch) in {1: (1, 4), 2: (2, 5), 3: (-1, 6)}.items():
        d = base / f"n{node}" / "data" / "__cluster_metadata-0"
        d.mkdir(parents=True)
        (d / "quorum-state").write_text(json.dumps({"leaderId": leader, "leaderEpoch": epoch}))
    dirs = [base / f"n{i}" for i in (1, 2, 3)]
    assert quorum_leader(dirs) == 2  # node 3 is mid-election (no leader): ignored
    assert quorum_leader([base / "missing"]) is None
