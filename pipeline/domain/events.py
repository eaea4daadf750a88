"""Event, row and outcome types of the pipeline.

This is the leaf module: it imports nothing else from ``pipeline`` so every other
component (relay, processor, projector, tools) can share the vocabulary without cycles.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

COMMAND_SCHEMA = "propagation.command.v1"
OUTCOME_SCHEMA = "propagation.outcome.v1"

# Deterministic ids: a re-published command or a re-emitted outcome carries the same
# event_id, so every consumer can de-duplicate on it alone.
_EVENT_NS = uuid.UUID("6f1c2b0e-7d0a-4c1e-9a51-2f6d3f0c9b11")


class Outcome(StrEnum):
    APPLIED = "applied"
    RETRYING = "retrying"
    UNEXPECTED_SKIP = "unexpected_skip"
    DEAD_LETTERED = "dead_lettered"
    UNKNOWN_KIND_DEAD_LETTERED = "unknown_kind_dead_lettered"

    @property
    def audit_kind(self) -> str:
        return f"propagation.{self.value}"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_OUTCOMES


TERMINAL_OUTCOMES = frozenset(
    {Outcome.APPLIED, Outcome.DEAD_LETTERED, Outcome.UNKNOWN_KIND_DEAD_LETTERED}
)


class DeadLetterReason(StrEnum):
    MAX_ATTEMPTS = "max_attempts"
    UNKNOWN_KIND = "unknown_kind"
    INVALID_PAYLOAD = "invalid_payload"


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def command_event_id(propagation_id: int, attempt: int) -> str:
    return str(uuid.uuid5(_EVENT_NS, f"command:{propagation_id}:{attempt}"))


def outcome_event_id(propagation_id: int, attempt: int) -> str:
    return str(uuid.uuid5(_EVENT_NS, f"outcome:{propagation_id}:{attempt}"))


def resource_key(team_id: str, resource_type: str, resource_id: str) -> str:
    """Kafka message key: all commands for one resource share a partition, hence an order."""
    return f"{team_id}:{resource_type}:{resource_id}"


def idempotency_key(propagation_id: int) -> str:
    """One key per propagation (not per attempt): an effect lands at most once across retries."""
    return f"propagation-{propagation_id}"


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """A due row claimed by the relay; ``attempt`` is the attempt about to be published."""

    id: int
    kind: str
    team_id: str
    resource_type: str
    resource_id: str
    payload: Any
    attempt: int
    rescued: bool = False
    budget_base: int = 0


@dataclass(frozen=True, slots=True)
class Envelope:
    """What every event carries (SPEC section 3) besides its ``schema`` and ``timestamp``;
    on the wire these follow ``schema``, in this order, before the event's own fields."""

    event_id: str
    propagation_id: int
    kind: str
    attempt: int
    team_id: str
    resource_type: str
    resource_id: str

    @property
    def key(self) -> str:
        return resource_key(self.team_id, self.resource_type, self.resource_id)


ENVELOPE = tuple(f.name for f in fields(Envelope))


def _envelope(event: Command | OutcomeEvent) -> dict[str, Any]:
    return {"schema": event.schema, **{name: getattr(event, name) for name in ENVELOPE}}


@dataclass(frozen=True, slots=True)
class Command(Envelope):
    """``propagation.command.v1``: one attempt at one propagation, as put on the log."""

    payload: Any
    timestamp: str
    # Attempts before an operator's `pipeline retry`: the max-attempts budget and the backoff
    # count from here, while attempt numbers keep rising (they are de-duplication keys).
    attempt_budget_base: int = 0
    schema: str = COMMAND_SCHEMA

    @property
    def budget_attempt(self) -> int:
        """The attempt's position in its retry budget (1-based)."""
        return max(1, self.attempt - self.attempt_budget_base)

    @classmethod
    def from_row(cls, row: OutboxRow, now: datetime) -> Command:
        return cls(
            event_id=command_event_id(row.id, row.attempt),
            propagation_id=row.id,
            kind=row.kind,
            attempt=row.attempt,
            team_id=row.team_id,
            resource_type=row.resource_type,
            resource_id=row.resource_id,
            payload=row.payload,
            timestamp=iso(now),
            attempt_budget_base=row.budget_base,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            **_envelope(self),
            "payload": self.payload,
            "timestamp": self.timestamp,
            "attempt_budget_base": self.attempt_budget_base,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Command:
        """From a document valid against ``propagation.command.v1``."""
        return cls(
            **{name: d[name] for name in ENVELOPE},
            payload=d["payload"],
            timestamp=d["timestamp"],
            attempt_budget_base=d.get("attempt_budget_base", 0),
        )


@dataclass(frozen=True, slots=True)
class OutcomeEvent(Envelope):
    """``propagation.outcome.v1``: what one attempt came to."""

    timestamp: str
    outcome: Outcome
    occurred_at: str
    skip_reason: str | None = None
    skip_reason_bucket: str | None = None
    error: str | None = None
    next_attempt_at: str | None = None
    dead_letter_reason: DeadLetterReason | None = None
    command_event_id: str | None = None
    schema: str = OUTCOME_SCHEMA

    @property
    def audit_kind(self) -> str:
        return self.outcome.audit_kind

    def to_dict(self) -> dict[str, Any]:
        return {
            **_envelope(self),
            "timestamp": self.timestamp,
            "outcome": self.outcome.value,
            "audit_kind": self.audit_kind,
            "skip_reason": self.skip_reason,
            "skip_reason_bucket": self.skip_reason_bucket,
            "error": self.error,
            "next_attempt_at": self.next_attempt_at,
            "dead_letter_reason": (
                self.dead_letter_reason.value if self.dead_letter_reason else None
            ),
            "command_event_id": self.command_event_id,
            "occurred_at": self.occurred_at,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OutcomeEvent:
        """From a document valid against ``propagation.outcome.v1``."""
        dlr = d.get("dead_letter_reason")
        return cls(
            **{name: d[name] for name in ENVELOPE},
            timestamp=d["timestamp"],
            outcome=Outcome(d["outcome"]),
            occurred_at=d["occurred_at"],
            skip_reason=d.get("skip_reason"),
            skip_reason_bucket=d.get("skip_reason_bucket"),
            error=d.get("error"),
            next_attempt_at=d.get("next_attempt_at"),
            dead_letter_reason=DeadLetterReason(dlr) if dlr else None,
            command_event_id=d.get("command_event_id"),
        )


# What the provisioner said, as a value. A handler turns one of these into an outcome.
@dataclass(frozen=True, slots=True)
class Applied:
    pass


@dataclass(frozen=True, slots=True)
class Skipped:
    reason: str


@dataclass(frozen=True, slots=True)
class CallFailed:
    """The call did not give an answer: a gRPC error status, a deadline, a refused connection."""

    code: str
    message: str
    retryable: bool


ProvisionReply = Applied | Skipped | CallFailed


@dataclass(frozen=True, slots=True)
class Decision:
    """The processor's verdict for one attempt, before it is stamped into an event."""

    outcome: Outcome
    skip_reason: str | None = None
    skip_reason_bucket: str | None = None
    error: str | None = None
    next_attempt_at: datetime | None = None
    dead_letter_reason: DeadLetterReason | None = None
    extra: dict[str, str] = field(default_factory=dict)
