"""Both events keep their wire layout now that the envelope is written once, and decode back."""

from __future__ import annotations

from pipeline.domain import codec
from pipeline.domain.events import Command, DeadLetterReason, Outcome, OutcomeEvent

WHO = {
    "propagation_id": 7,
    "kind": "tier_elevation",
    "attempt": 2,
    "team_id": "acme",
    "resource_type": "postgres",
    "resource_id": "db-1",
}
AT = "2026-01-01T00:00:01.000000Z"
COMMAND = Command(
    event_id="e1", **WHO, payload={"target_tier": "pro"}, timestamp=AT, attempt_budget_base=1
)
OUTCOME = OutcomeEvent(
    event_id="e2",
    **WHO,
    timestamp=AT,
    outcome=Outcome.DEAD_LETTERED,
    occurred_at=AT,
    error="boom",
    command_event_id="e1",
    dead_letter_reason=DeadLetterReason.MAX_ATTEMPTS,
)
ENVELOPE = [
    "schema",
    "event_id",
    "propagation_id",
    "kind",
    "attempt",
    "team_id",
    "resource_type",
    "resource_id",
]


def test_command_wire_order_and_round_trip() -> None:
    doc = COMMAND.to_dict()
    assert list(doc) == [*ENVELOPE, "payload", "timestamp", "attempt_budget_base"]
    assert doc["schema"] == "propagation.command.v1" and doc["propagation_id"] == 7
    assert codec.decode_command(codec.encode(COMMAND)) == COMMAND


def test_outcome_wire_order_and_round_trip() -> None:
    doc = OUTCOME.to_dict()
    assert list(doc) == [
        *ENVELOPE,
        "timestamp",
        "outcome",
        "audit_kind",
        "skip_reason",
        "skip_reason_bucket",
        "error",
        "next_attempt_at",
        "dead_letter_reason",
        "command_event_id",
        "occurred_at",
    ]
    assert (doc["outcome"], doc["dead_letter_reason"]) == ("dead_lettered", "max_attempts")
    assert codec.decode_outcome(codec.encode(OUTCOME)) == OUTCOME
