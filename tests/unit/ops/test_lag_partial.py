"""`pipeline lag` with a broker away: bounded, partial, and saying so."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError

from pipeline.components.lag import LagReport, PartitionLag, _Budget
from pipeline.ops.lag import _footer, _rows


async def _ask(tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    tp = tps[0]
    if tp.partition == 1:  # its leader is away: aiokafka would retry for 40 s
        await asyncio.sleep(60)
    if tp.partition == 2:
        raise KafkaTimeoutError()
    return {t: 100 + t.partition for t in tps}


def test_a_partition_that_does_not_answer_costs_only_itself() -> None:
    tps = [TopicPartition("t", p) for p in range(4)]
    started = time.monotonic()
    got = asyncio.run(_Budget(1.0).per_partition(_ask, tps, 0.5))
    assert time.monotonic() - started < 5
    assert got == {tps[0]: 100, tps[3]: 103}


def test_unbounded_asks_once_for_all() -> None:
    calls: list[int] = []

    async def ask(tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        calls.append(len(tps))
        return dict.fromkeys(tps, 1)

    tps = [TopicPartition("t", p) for p in range(3)]
    assert len(asyncio.run(_Budget(None).per_partition(ask, tps, 0.5))) == 3
    assert calls == [3]


def test_the_report_marks_unavailable_partitions() -> None:
    report = LagReport(
        datetime(2026, 1, 1, tzinfo=UTC),
        [PartitionLag("g", "t", 0, 5, 7, 2, 1.0)],
        unavailable=[("g", "t", 1)],
    )
    doc = report.to_dict()
    assert doc["partial"] is True
    assert doc["unavailable"] == [{"group": "g", "topic": "t", "partition": 1}]
    assert _rows(report)[1] == ["g", "t", "1", *["unavailable"] * 4]
    assert any("partial answer: 1 partition(s) unavailable" in x for x in _footer(report))
    whole = LagReport(datetime(2026, 1, 1, tzinfo=UTC), [])
    assert not whole.partial and whole.to_dict()["partial"] is False


def test_a_broker_error_is_asked_again_within_the_share() -> None:
    from aiokafka.errors import NodeNotReadyError

    tries: list[int] = []

    async def metadata() -> str:
        tries.append(1)
        if len(tries) < 3:  # the first asks went to the broker that just died
            raise NodeNotReadyError()
        return "ok"

    assert asyncio.run(_Budget(2.0).retry(metadata, 0.5)) == "ok"
    assert len(tries) == 3

    async def never() -> str:
        raise NodeNotReadyError()

    started = time.monotonic()
    try:
        asyncio.run(_Budget(1.0).retry(never, 0.3))
    except NodeNotReadyError:
        pass
    else:
        raise AssertionError("a broker that never answers must end in the error")
    assert time.monotonic() - started < 3
