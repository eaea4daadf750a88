"""The worker's de-duplication memory stays bounded, in memory and on the changelog."""

from __future__ import annotations

from datetime import timedelta

import pytest

from pipeline.components.worker.app import SEEN_TABLE, build_app
from pipeline.components.worker.seen import BoundedDict, SeenTable, changelog_configs
from pipeline.runtime.config import DEDUPE_CHANGELOG_RETENTION, DEDUPE_MAX_ENTRIES, Config
from pipeline.runtime.metrics import Metrics


def test_forgets_the_least_recently_set_keys() -> None:
    d: BoundedDict[str, int] = BoundedDict(3)
    for i, k in enumerate("abcd"):
        d[k] = i
    assert list(d.items()) == [("b", 1), ("c", 2), ("d", 3)]
    assert d.evicted == 1
    d["b"] = 10  # set again: now the most recent
    d["e"] = 4
    assert list(d.items()) == [("d", 3), ("b", 10), ("e", 4)]
    assert d.evicted == 2


def test_bulk_updates_are_bounded_too() -> None:
    # faust's memory store applies a recovered changelog batch with dict.update.
    d: BoundedDict[int, int] = BoundedDict(100)
    d.update((i, i) for i in range(1_000))
    assert list(d) == list(range(900, 1_000))
    assert d.evicted == 900


def test_a_bound_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        BoundedDict(0)


@pytest.mark.parametrize(
    ("retention", "expected"),
    [
        (timedelta(minutes=15), {"retention.ms": "900000", "segment.ms": "300000"}),
        (timedelta(minutes=1), {"retention.ms": "60000", "segment.ms": "60000"}),
    ],
)
def test_changelog_configs(retention: timedelta, expected: dict[str, str]) -> None:
    assert changelog_configs(retention) == {"cleanup.policy": "compact,delete", **expected}


def test_the_worker_builds_its_table_bounded(tmp_path: object) -> None:
    cfg = Config(
        database_url="postgresql://x/y",
        kafka_bootstrap="127.0.0.1:9",
        provisioner_addr="127.0.0.1:9",
        topic_prefix="t-",
        data_dir=str(tmp_path),
    )
    app = build_app(cfg, Metrics(["tier_elevation"]), port_factory=lambda: None)
    table = app.tables[SEEN_TABLE]
    assert isinstance(table, SeenTable)
    assert isinstance(table.data.data, BoundedDict)
    assert table.data.data.max_entries == DEDUPE_MAX_ENTRIES
    # plus the replication's min ISR (1 without a cluster to ask; streams/replicated.py)
    assert table.changelog_topic.config == changelog_configs(DEDUPE_CHANGELOG_RETENTION) | {
        "min.insync.replicas": "1"
    }
    assert (
        table.changelog_topic.get_topic_name()
        == "t-propagation-processor-processed-attempts-changelog"
    )


async def test_the_worker_consumer_waits_at_most_50_ms_per_fetch(tmp_path: object) -> None:
    # faust hard-codes fetch_max_wait_ms=1500; the worker shortens it (streams/app.py).
    from pipeline.components.worker.app import FETCH_MAX_WAIT_MS

    cfg = Config(
        database_url="postgresql://x/y",
        kafka_bootstrap="127.0.0.1:9",
        provisioner_addr="127.0.0.1:9",
        data_dir=str(tmp_path),
    )
    app = build_app(cfg, Metrics(["tier_elevation"]), port_factory=lambda: None)
    consumer = app.consumer._thread._create_worker_consumer(app.transport)
    try:
        assert consumer._fetch_max_wait_ms == FETCH_MAX_WAIT_MS == 50
    finally:
        await consumer.stop()
