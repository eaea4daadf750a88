"""A round's commands give their lanes slots back as their outcomes are acknowledged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import orjson

from pipeline.components.worker.processor import CommandProcessor
from pipeline.components.worker.recall import remember
from pipeline.components.worker.rounds import Rounds
from pipeline.domain import codec
from pipeline.domain.decide import RetryPolicy
from pipeline.domain.events import Applied, Command, command_event_id
from pipeline.domain.handlers import Answered, ProvisionCall
from pipeline.domain.registry import build_registry
from pipeline.runtime.metrics import Metrics

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class HangingPort:
    """Answers every call at once except those of resource ``hung``, which wait for ``go``.
    Records the resources of every call it receives."""

    def __init__(self, hung: str) -> None:
        self.hung = hung
        self.go = asyncio.Event()
        self.calls: list[str] = []

    async def apply(self, calls: Sequence[ProvisionCall]) -> AsyncIterator[Answered]:
        ids = [str(c.resource["resource_id"]) for c in calls]
        self.calls.extend(ids)
        yield [(i, Applied()) for i, r in enumerate(ids) if r != self.hung]
        await self.go.wait()
        yield [(i, Applied()) for i, r in enumerate(ids) if r == self.hung]


class RecordingSender:
    """Records every lot it is asked to produce; acknowledges each at once."""

    def __init__(self) -> None:
        self.lots: list[list[bytes]] = []

    async def send_many(self, records: list[tuple[bytes, bytes]]) -> None:
        self.lots.append([key for key, _ in records])


def raw(pid: int, resource: str) -> bytes:
    return codec.encode(
        Command(
            event_id=command_event_id(pid, 1),
            propagation_id=pid,
            kind="tier_elevation",
            attempt=1,
            team_id="acme",
            resource_type="postgres",
            resource_id=resource,
            payload={"target_tier": "pro"},
            timestamp="2026-01-01T00:00:00Z",
        )
    )


def rounds_with(port: HangingPort, seen: dict[bytes, bytes]) -> tuple[Rounds, RecordingSender]:
    metrics = Metrics(build_registry().kinds)
    proc = CommandProcessor(
        registry=build_registry(),
        port=port,
        policy=RetryPolicy(10, 1.0),
        metrics=metrics,
        clock=lambda: NOW,
    )
    sender = RecordingSender()
    return Rounds(lambda: proc, seen, metrics, sender), sender  # type: ignore[arg-type]


async def test_a_hung_call_keeps_only_its_own_slot() -> None:
    port = HangingPort(hung="db-3")
    seen: dict[bytes, bytes] = {}
    rounds, sender = rounds_with(port, seen)
    released: list[int] = []
    # db-2's attempt 1 is stale (attempt 2 was answered) and one message is unattributable:
    # neither produces a call nor an outcome, and both give their slot back at once.
    remember(seen, 2, 2, b"{}")
    batch = [raw(1, "db-1"), raw(2, "db-2"), raw(3, "db-3"), raw(4, "db-4"), b"not json"]
    unit = asyncio.ensure_future(rounds.run([batch], released.append))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not unit.done()
    assert port.calls == ["db-1", "db-3", "db-4"]
    assert released == [2, 2]  # the two that end here, then db-1 and db-4 once produced
    assert sender.lots == [[b"acme:postgres:db-1", b"acme:postgres:db-4"]]
    port.go.set()
    await asyncio.wait_for(unit, 1)
    assert released == [2, 2, 1]  # five slots, each given back once
    assert sender.lots[-1] == [b"acme:postgres:db-3"]
    assert orjson.loads(seen[b"3"].partition(b"|")[2])["outcome"] == "applied"
