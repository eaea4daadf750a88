"""The processor's core, free of faust: commands in, one outcome event each out.

The faust agent in ``worker.app`` adds the plumbing (consuming, de-duplication, producing);
everything that decides lives here and in ``decide``/``handlers``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import Any

from pipeline.domain import codec
from pipeline.domain.codec import Undecodable
from pipeline.domain.decide import RetryPolicy, decide_invalid, decide_unknown_kind
from pipeline.domain.events import (
    CallFailed,
    Command,
    Decision,
    OutcomeEvent,
    iso,
    outcome_event_id,
    utcnow,
)
from pipeline.domain.handlers import Answered, Handler, ProvisionCall, ProvisionerPort
from pipeline.domain.registry import HandlerRegistry
from pipeline.runtime import logs
from pipeline.runtime.metrics import Metrics

_log = logs.get("processor")

# Outcomes as they are decided: (index of the command in its batch, event).
Outcomes = list[tuple[int, OutcomeEvent]]


class CommandProcessor:
    def __init__(
        self,
        *,
        registry: HandlerRegistry,
        port: ProvisionerPort,
        policy: RetryPolicy,
        metrics: Metrics,
        topic: str = "propagations",
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._registry = registry
        self._port = port
        self._policy = policy
        self._metrics = metrics
        self._topic = topic
        self._clock = clock

    def decode(self, raw: bytes | None) -> Command | Undecodable:
        return codec.decode_command(raw)

    async def handle(self, cmd: Command) -> OutcomeEvent:
        """Run one well-formed command through its handler; returns the outcome event."""
        [event] = [event async for outcomes in self.handle_many([cmd]) for _, event in outcomes]
        return event

    async def handle_many(self, cmds: Sequence[Command]) -> AsyncIterator[Outcomes]:
        """Outcome events for well-formed commands as (index, event) lists, each command's
        once, as their replies arrive; the provisioner calls go to the port as one batch.
        The caller keeps two commands of one resource out of one batch."""
        now = self._clock()
        ready: Outcomes = []
        calls: list[ProvisionCall] = []
        called: list[tuple[int, Handler]] = []
        for i, cmd in enumerate(cmds):
            handler = self._registry.get(cmd.kind)
            if handler is None:
                self._metrics.record_unknown_kind(cmd.kind)
                decision = decide_unknown_kind(cmd.budget_attempt, cmd.kind, now, self._policy)
            else:
                problem = handler.validate(cmd.payload)
                if problem is None:
                    calls.append(handler.request(cmd))
                    called.append((i, handler))
                    continue
                self._metrics.record_invalid("schema_violation", self._topic)
                decision = decide_invalid(problem)
            ready.append((i, self._stamped(cmd, decision, iso(now))))
        if ready:
            yield ready
        if not calls:
            return
        async for answered in self._apply(calls, [cmds[i].kind for i, _ in called]):
            after = self._clock()  # after the call: a retry counts from its end
            at = iso(after)
            outcomes: Outcomes = []
            for j, reply in answered:
                i, handler = called[j]
                decision = handler.decide(cmds[i], reply, after, self._policy)
                outcomes.append((i, self._stamped(cmds[i], decision, at)))
            yield outcomes

    async def _apply(self, calls: list[ProvisionCall], kinds: list[str]) -> AsyncIterator[Answered]:
        # Every call answered exactly once, whatever the adapter does: a bug there costs
        # the commands a retry, never the worker nor a command's outcome.
        started = time.perf_counter()
        waiting = set(range(len(calls)))
        try:
            async for answered in self._port.apply(calls):
                fresh: Answered = []
                for j, reply in answered:
                    if j in waiting:
                        waiting.discard(j)
                        fresh.append((j, reply))
                self._observe(kinds, fresh, time.perf_counter() - started)
                if fresh:
                    yield fresh
            if waiting:
                raise RuntimeError(f"no reply to {len(waiting)} of {len(calls)} calls")
        except Exception as exc:
            failed = CallFailed("INTERNAL", f"{type(exc).__name__}: {exc}"[:500], True)
            yield [(j, failed) for j in sorted(waiting)]

    def _observe(self, kinds: list[str], answered: Answered, elapsed: float) -> None:
        for kind, n in Counter(kinds[j] for j, _ in answered).items():
            observe = self._metrics.handler_seconds.labels(kind).observe
            for _ in range(n):
                observe(elapsed)

    def _stamped(self, cmd: Command, decision: Decision, at: str) -> OutcomeEvent:
        # one reading of the clock per lot (``at``, the time the decision was made at, in ISO
        # form): occurred_at and next_attempt_at agree
        return self._emit(
            _stamp(
                cmd.propagation_id,
                cmd.attempt,
                (cmd.kind, cmd.team_id, cmd.resource_type, cmd.resource_id),
                decision,
                at,
                cmd.event_id,
            )
        )

    def handle_undecodable(self, bad: Undecodable) -> OutcomeEvent | None:
        """Dead-letter what can be attributed to a propagation; count and skip the rest."""
        self._metrics.record_invalid(bad.reason, self._topic)
        if bad.propagation_id is None:
            logs.event(_log, "invalid_command_skipped", reason=bad.reason, detail=bad.detail)
            return None
        fields = bad.fields or {}
        attempt = fields.get("attempt")
        if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
            attempt = 1
        names = tuple(_text(fields, n) for n in ("kind", "team_id", "resource_type", "resource_id"))
        decision = decide_invalid(f"{bad.reason}: {bad.detail}")
        at = iso(self._clock())
        return self._emit(_stamp(bad.propagation_id, attempt, names, decision, at, None))

    def _emit(self, event: OutcomeEvent) -> OutcomeEvent:
        self._metrics.record_outcome(event)
        if event.dead_letter_reason is not None:
            logs.event(
                _log,
                "dead_lettered",
                propagation_id=event.propagation_id,
                attempt=event.attempt,
                reason=event.dead_letter_reason.value,
                kind=event.kind[:64],
            )
        return event


def _text(fields: dict[str, Any], name: str) -> str:
    value = fields.get(name)
    return value[:256] if isinstance(value, str) else ""


def _stamp(
    pid: int,
    attempt: int,
    names: tuple[str, ...],
    d: Decision,
    at: str,
    command_event_id: str | None,
) -> OutcomeEvent:
    kind, team_id, resource_type, resource_id = names
    return OutcomeEvent(
        event_id=outcome_event_id(pid, attempt),
        propagation_id=pid,
        kind=kind[:128],
        attempt=attempt,
        team_id=team_id[:256],
        resource_type=resource_type[:256],
        resource_id=resource_id[:256],
        timestamp=at,
        outcome=d.outcome,
        occurred_at=at,
        skip_reason=d.skip_reason[:2048] if d.skip_reason else None,
        skip_reason_bucket=d.skip_reason_bucket,
        error=d.error[:4096] if d.error else None,
        next_attempt_at=iso(d.next_attempt_at) if d.next_attempt_at else None,
        dead_letter_reason=d.dead_letter_reason,
        command_event_id=command_event_id,
    )
