"""Retention settings (issue 13): outcomes forever by default, commands bounded."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pipeline.components.lag import LagReport
from pipeline.domain.errors import ConfigError
from pipeline.runtime.config import Config, duration_ms

BASE = {
    "PIPELINE_DATABASE_URL": "postgresql://u@h/db",
    "PIPELINE_KAFKA_BOOTSTRAP": "127.0.0.1:9092",
    "PIPELINE_PROVISIONER_ADDR": "127.0.0.1:50051",
    "PIPELINE_TOPIC_PREFIX": "t-",
}


def test_topics_are_created_with_a_decided_retention() -> None:
    assert Config.from_env(BASE).topic_configs() == {
        "t-propagations": {"retention.ms": "604800000"},
        "t-propagation-outcomes": {"retention.ms": "-1"},
    }
    cfg = Config.from_env(
        {**BASE, "PIPELINE_OUTCOME_RETENTION": "90d", "PIPELINE_COMMAND_RETENTION": "12h"}
    )
    assert cfg.topic_configs() == {
        "t-propagations": {"retention.ms": "43200000"},
        "t-propagation-outcomes": {"retention.ms": "7776000000"},
    }


@pytest.mark.parametrize(
    ("text", "ms"),
    [("forever", -1), ("-1", -1), ("FOREVER", -1), ("500ms", 500), ("45s", 45_000),
     ("30m", 1_800_000), ("2h", 7_200_000), ("7d", 604_800_000)],
)  # fmt: skip
def test_durations(text: str, ms: int) -> None:
    assert duration_ms(text) == ms


def test_bad_retention_is_reported_with_the_setting_name() -> None:
    with pytest.raises(ConfigError) as err:
        Config.from_env({**BASE, "PIPELINE_OUTCOME_RETENTION": "a week"})
    assert "PIPELINE_OUTCOME_RETENTION='a week': expected 'forever' or a whole number" in str(
        err.value
    )
    with pytest.raises(ConfigError) as err:
        Config.from_env({**BASE, "PIPELINE_COMMAND_RETENTION": "10s"})
    assert "PIPELINE_COMMAND_RETENTION must be at least 1m, or 'forever'" in str(err.value)


def test_lag_json_carries_the_earliest_retained_record() -> None:
    at = datetime(2026, 11, 29, 12, 0, 1, 500_000, tzinfo=UTC)
    report = LagReport(at, [], earliest_retained={"o": at, "empty": None})
    assert report.to_dict()["earliest_retained"] == {
        "empty": None,
        "o": "2026-11-29T12:00:01.500000Z",
    }
