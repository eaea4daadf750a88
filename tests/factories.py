"""Hand-made events for tests that feed the fold, the replay or the metrics directly.

Each test keeps the values it relies on as explicit overrides; the rest is a plausible
first-attempt regrade of one resource.
"""

from __future__ import annotations

from typing import Any

from pipeline.domain.events import Outcome, OutcomeEvent

WHEN = "2026-01-01T00:00:00Z"


def outcome_event(
    pid: int, attempt: int = 1, outcome: Outcome = Outcome.RETRYING, **over: Any
) -> OutcomeEvent:
    fields: dict[str, Any] = {
        "event_id": f"{pid}-{attempt}",
        "propagation_id": pid,
        "kind": "tier_elevation",
        "attempt": attempt,
        "team_id": "t",
        "resource_type": "postgres",
        "resource_id": "r",
        "timestamp": WHEN,
        "outcome": outcome,
        "occurred_at": WHEN,
    }
    return OutcomeEvent(**{**fields, **over})
