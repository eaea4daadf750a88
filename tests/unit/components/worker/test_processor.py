"""The processor core with a stub provisioner port: command bytes in, outcome event out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime

import orjson
import pytest

from pipeline.components.worker.processor import CommandProcessor
from pipeline.domain import codec
from pipeline.domain.decide import RetryPolicy
from pipeline.domain.events import (
    Applied,
    CallFailed,
    Command,
    DeadLetterReason,
    Outcome,
    ProvisionReply,
    Skipped,
    command_event_id,
    outcome_event_id,
)
from pipeline.domain.handlers import Answered, ProvisionCall
from pipeline.domain.registry import build_registry
from pipeline.runtime.metrics import Metrics

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class StubPort:
    """Records every call it receives, in order, batch by batch; answers each with ``reply``."""

    def __init__(self, reply: ProvisionReply) -> None:
        self.reply = reply
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.batches: list[int] = []

    async def apply(self, calls: Sequence[ProvisionCall]) -> AsyncIterator[Answered]:
        self.record(calls)
        yield [(i, self.reply) for i in range(len(calls))]

    def record(self, calls: Sequence[ProvisionCall]) -> None:
        self.batches.append(len(calls))
        for call in calls:
            fields = {k: str(v) for k, v in call.resource.items()}
            if call.target_tier is not None:
                fields["target_tier"] = call.target_tier
            self.calls.append((call.method, fields))


def make(
    reply: ProvisionReply, max_attempts: int = 10, port: StubPort | None = None
) -> tuple[CommandProcessor, StubPort, Metrics]:
    port = port or StubPort(reply)
    metrics = Metrics(build_registry().kinds)
    proc = CommandProcessor(
        registry=build_registry(),
        port=port,
        policy=RetryPolicy(max_attempts, 1.0),
        metrics=metrics,
        clock=lambda: NOW,
    )
    return proc, port, metrics


def dead_lettered(metrics: Metrics, reason: str, kind: str) -> float:
    """The dead-letter counter of one reason and kind."""
    return metrics.sample(
        "instant_propagation_dead_lettered_total", {"reason": reason, "kind": kind}
    )


def command(kind: str = "tier_elevation", attempt: int = 1, payload: object = None) -> Command:
    return Command(
        event_id=command_event_id(7, attempt),
        propagation_id=7,
        kind=kind,
        attempt=attempt,
        team_id="acme",
        resource_type="postgres",
        resource_id="db-1",
        payload={"target_tier": "pro"} if payload is None else payload,
        timestamp="2026-01-01T00:00:00Z",
    )


async def test_applied_regrade_calls_regrade_with_the_propagation_key() -> None:
    proc, port, metrics = make(Applied())
    event = await proc.handle(command())
    assert port.calls == [
        (
            "regrade",
            {
                "idempotency_key": "propagation-7",
                "team_id": "acme",
                "resource_type": "postgres",
                "resource_id": "db-1",
                "target_tier": "pro",
            },
        )
    ]
    assert event.outcome is Outcome.APPLIED
    assert event.event_id == outcome_event_id(7, 1)
    assert event.audit_kind == "propagation.applied"
    assert (
        metrics.sample(
            "instant_propagation_outcomes_total", {"outcome": "applied", "kind": "tier_elevation"}
        )
        == 1.0
    )


@pytest.mark.parametrize(
    ("kind", "rpc"), [("resource_suspend", "suspend"), ("resource_resume", "resume")]
)
async def test_suspend_and_resume_route_to_their_rpcs(kind: str, rpc: str) -> None:
    proc, port, _ = make(Applied())
    await proc.handle(command(kind=kind, payload={}))
    assert [c[0] for c in port.calls] == [rpc]


async def test_unexpected_skip_emits_unexpected_skip_and_counts_the_bucket() -> None:
    proc, _, metrics = make(Skipped("redis-auth secret missing"))
    event = await proc.handle(command())
    assert event.outcome is Outcome.UNEXPECTED_SKIP
    assert event.skip_reason_bucket == "redis_auth_secret_missing"
    assert event.next_attempt_at == "2026-01-01T00:01:00Z"
    labels = {
        "kind": "tier_elevation",
        "resource_type": "postgres",
        "skip_reason": "redis_auth_secret_missing",
    }
    assert metrics.sample("instant_propagation_unexpected_skip_total", labels) == 1.0


async def test_persistent_failure_moves_the_max_attempts_dead_letter_counter() -> None:
    proc, _, metrics = make(CallFailed("UNAVAILABLE", "down", True), max_attempts=3)
    event = await proc.handle(command(attempt=2))
    assert event.outcome is Outcome.RETRYING
    assert dead_lettered(metrics, "max_attempts", "tier_elevation") == 0.0
    event = await proc.handle(command(attempt=3))
    assert event.outcome is Outcome.DEAD_LETTERED
    assert event.dead_letter_reason is DeadLetterReason.MAX_ATTEMPTS
    assert dead_lettered(metrics, "max_attempts", "tier_elevation") == 1.0


async def test_unknown_kind_is_counted_retried_then_dead_lettered() -> None:
    proc, port, metrics = make(Applied(), max_attempts=2)
    first = await proc.handle(command(kind="tier_teleport", attempt=1))
    assert first.outcome is Outcome.RETRYING
    last = await proc.handle(command(kind="tier_teleport", attempt=2))
    assert last.outcome is Outcome.UNKNOWN_KIND_DEAD_LETTERED
    assert port.calls == []
    assert metrics.sample("instant_propagation_unknown_kind_total", {"kind": "tier_teleport"}) == 2
    assert dead_lettered(metrics, "unknown_kind", "unknown_kind") == 1.0


async def test_invalid_payload_is_dead_lettered_without_calling_the_provisioner() -> None:
    proc, port, metrics = make(Applied())
    event = await proc.handle(command(payload={"target_tier": ""}))
    assert event.outcome is Outcome.DEAD_LETTERED
    assert event.dead_letter_reason is DeadLetterReason.INVALID_PAYLOAD
    assert port.calls == []
    assert dead_lettered(metrics, "invalid_payload", "tier_elevation") == 1.0


async def test_adapter_exception_costs_a_retry_not_the_worker() -> None:
    proc, port, _ = make(Applied())

    async def boom(calls: Sequence[ProvisionCall]) -> AsyncIterator[Answered]:
        raise RuntimeError("adapter bug")
        yield []  # an async generator, as the port's apply is

    port.apply = boom  # type: ignore[method-assign]
    event = await proc.handle(command())
    assert event.outcome is Outcome.RETRYING
    assert event.error is not None and "adapter bug" in event.error


def test_undecodable_with_an_id_is_dead_lettered_and_without_is_skipped() -> None:
    proc, _, metrics = make(Applied())
    with_id = proc.decode(orjson.dumps({"propagation_id": 9, "kind": "tier_elevation"}))
    assert isinstance(with_id, codec.Undecodable)
    event = proc.handle_undecodable(with_id)
    assert event is not None
    assert event.propagation_id == 9
    assert event.outcome is Outcome.DEAD_LETTERED
    assert event.dead_letter_reason is DeadLetterReason.INVALID_PAYLOAD
    codec.validator("propagation.outcome.v1")(event.to_dict())  # still a valid event

    garbage = proc.decode(b"{not json")
    assert isinstance(garbage, codec.Undecodable)
    assert proc.handle_undecodable(garbage) is None
    assert (
        metrics.sample(
            "instant_propagation_invalid_commands_total",
            {"reason": "bad_json", "topic": "propagations"},
        )
        == 1.0
    )


def test_oversized_message_is_not_parsed_but_its_id_is_found() -> None:
    big = b'{"schema":"propagation.command.v1","propagation_id":42,"pad":"' + b"x" * 300_000 + b'"}'
    decoded = codec.decode_command(big)
    assert isinstance(decoded, codec.Undecodable)
    assert decoded.reason == "oversized"
    assert decoded.propagation_id == 42


def test_commands_round_trip_through_the_schema() -> None:
    cmd = command()
    assert codec.decode_command(codec.encode_validated(cmd)) == cmd


async def test_an_operator_retry_restarts_the_budget_and_the_backoff() -> None:
    from dataclasses import replace

    proc, _, _ = make(CallFailed("UNAVAILABLE", "down", True), max_attempts=10)
    # attempt 12 after an operator retry at 10 attempts: second attempt of a fresh budget
    event = await proc.handle(replace(command(attempt=12), attempt_budget_base=10))
    assert event.outcome is Outcome.RETRYING
    assert event.attempt == 12
    assert event.next_attempt_at == "2026-01-01T00:05:00Z"
    event = await proc.handle(replace(command(attempt=20), attempt_budget_base=10))
    assert event.outcome is Outcome.DEAD_LETTERED


async def _outcomes(proc: CommandProcessor, cmds: list[Command]) -> list[list[tuple[int, str]]]:
    """What handle_many yields: per yield, (index, outcome) pairs."""
    return [
        [(i, e.outcome.value) for i, e in outcomes] async for outcomes in proc.handle_many(cmds)
    ]


async def test_a_batch_makes_one_port_call_and_answers_what_needs_no_call_first() -> None:
    proc, port, metrics = make(Applied())
    cmds = [
        command(),
        command(kind="no_such_kind"),
        command(kind="resource_suspend", payload={}),
        command(payload={"target_tier": 7}),
    ]
    assert await _outcomes(proc, cmds) == [
        [(1, "retrying"), (3, "dead_lettered")],  # an unknown kind waits for a deploy
        [(0, "applied"), (2, "applied")],
    ]
    assert port.batches == [2]
    assert [c[0] for c in port.calls] == ["regrade", "suspend"]
    assert (
        metrics.sample("instant_propagation_handler_seconds_count", {"kind": "tier_elevation"}),
        metrics.sample("instant_propagation_handler_seconds_count", {"kind": "resource_suspend"}),
    ) == (1.0, 1.0)


class StreamingPort(StubPort):
    """Answers call 1 first, then call 0 once ``later`` is set, as a provisioner that is
    slow on one resource streams its batch."""

    def __init__(self) -> None:
        super().__init__(Applied())
        self.later = asyncio.Event()

    async def apply(self, calls: Sequence[ProvisionCall]) -> AsyncIterator[Answered]:
        self.record(calls)
        yield [(1, Applied())]
        await self.later.wait()
        yield [(0, Skipped("legacy"))]


async def test_replies_are_decided_as_they_arrive() -> None:
    port = StreamingPort()
    proc, _, _ = make(Applied(), port=port)
    stream = proc.handle_many([command(), command(kind="resource_suspend", payload={})])
    [(index, first)] = await anext(stream)
    assert (index, first.outcome, first.kind) == (1, Outcome.APPLIED, "resource_suspend")
    port.later.set()
    [(index, second)] = await anext(stream)
    assert (index, second.outcome) == (0, Outcome.UNEXPECTED_SKIP)
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


class WrongPort(StubPort):
    """An adapter bug: answers call 0 twice, an index that does not exist, and not call 1."""

    async def apply(self, calls: Sequence[ProvisionCall]) -> AsyncIterator[Answered]:
        self.record(calls)
        yield [(0, Applied()), (0, Skipped("again")), (7, Applied())]


async def test_a_call_the_adapter_leaves_unanswered_costs_a_retry_and_nothing_doubles() -> None:
    port = WrongPort(Applied())
    proc, _, _ = make(Applied(), port=port)
    events = [e async for out in proc.handle_many([command(), command()]) for e in out]
    assert [(i, e.outcome) for i, e in events] == [(0, Outcome.APPLIED), (1, Outcome.RETRYING)]
    assert events[1][1].error == "INTERNAL: RuntimeError: no reply to 1 of 2 calls"
