"""The worker's de-duplication memory stays bounded and writes no changelog."""

from __future__ import annotations

import pytest

from pipeline.components.worker.app import build_app
from pipeline.components.worker.recall import recorded, remember
from pipeline.components.worker.seen import BoundedDict
from pipeline.runtime.config import Config
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
    d: BoundedDict[int, int] = BoundedDict(100)
    d.update((i, i) for i in range(1_000))
    assert list(d) == list(range(900, 1_000))
    assert d.evicted == 900


def test_a_bound_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        BoundedDict(0)


def test_remembers_the_last_answer_per_propagation() -> None:
    memory: BoundedDict[bytes, bytes] = BoundedDict(10)
    assert recorded(memory, 7) is None
    remember(memory, 7, 1, b'{"a": 1}')
    remember(memory, 7, 2, b'{"a": "x|y"}')  # the body may hold the separator
    assert recorded(memory, 7) == (2, b'{"a": "x|y"}')


def test_the_worker_writes_no_changelog(tmp_path: object) -> None:
    # No faust table: the broker no longer writes each propagation a third time (issue 16);
    # the memory is read back from the outcome topic instead (components/worker/recall.py).
    cfg = Config(
        database_url="postgresql://x/y",
        kafka_bootstrap="127.0.0.1:9",
        provisioner_addr="127.0.0.1:9",
        topic_prefix="t-",
        data_dir=str(tmp_path),
    )
    app = build_app(cfg, Metrics(["tier_elevation"]), port_factory=lambda: None)
    assert list(app.tables) == []


async def test_the_worker_consumer_waits_at_most_50_ms_per_fetch(tmp_path: object) -> None:
    # faust hard-codes fetch_max_wait_ms=1500; the worker shortens it (components/worker/app.py).
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
