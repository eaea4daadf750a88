"""The worker creates faust's topics itself: their names and settings must be faust's."""

from __future__ import annotations

from typing import Any

from pipeline.adapters.replication import Replication
from pipeline.components.worker.app import build_app
from pipeline.components.worker.replicated import faust_topics
from pipeline.runtime.config import Config
from pipeline.runtime.metrics import Metrics


def _app(tmp_path: Any) -> Any:
    cfg = Config(topic_prefix="x-", partitions=4, data_dir=str(tmp_path))
    return build_app(cfg, Metrics(["tier_elevation"]), lambda: None, None, Replication(3, 2))


def test_the_leader_topic_with_its_settings(tmp_path: Any) -> None:
    app = _app(tmp_path)
    assert app.conf.topic_replication_factor == 3
    topics = {name: (parts, cfg) for name, parts, cfg in faust_topics(app, 4)}
    assert topics == {"x-propagation-processor-__assignor-__leader": (1, {})}


def test_status_names_the_same_topics_as_the_worker_creates(tmp_path: Any) -> None:
    from pipeline.components.worker.replicated import worker_topic_names

    cfg = Config(topic_prefix="x-", partitions=4, data_dir=str(tmp_path))
    app = build_app(cfg, Metrics(["tier_elevation"]), lambda: None, None, Replication(3, 2))
    made = [cfg.commands_topic, cfg.outcomes_topic] + [n for n, _p, _c in faust_topics(app, 4)]
    assert worker_topic_names(cfg) == made


def test_commands_and_outcomes_need_one_partition_count() -> None:
    import pytest

    from pipeline.adapters.replication import TopicReplication
    from pipeline.components.worker.replicated import check_partition_counts
    from pipeline.domain.errors import ConfigError

    def topics(commands: int, outcomes: int) -> list[TopicReplication]:
        return [TopicReplication("c", 1, 1, commands), TopicReplication("o", 1, 1, outcomes)]

    check_partition_counts(topics(8, 8), "c", "o")
    with pytest.raises(ConfigError, match="topic c has 8 partitions but o has 12"):
        check_partition_counts(topics(8, 12), "c", "o")
    with pytest.raises(ConfigError, match="topic c has 12 partitions but o has 8"):
        check_partition_counts(topics(12, 8), "c", "o")
