"""The one row-state rule, pinned state by state (issue 14: status and demo disagreed)."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.domain.rowstate import STATES, row_state

OPEN = {"applied": False, "failed": False}

CASES = [
    # (what, columns, state)
    ("never published", {**OPEN, "published_attempt": 0, "attempts": 0, "last_outcome": None},
     "pending"),
    ("attempt 1 published, no outcome yet",
     {**OPEN, "published_attempt": 1, "attempts": 0, "last_outcome": None}, "in_flight"),
    ("attempt 1 failed, waiting for its backoff",
     {**OPEN, "published_attempt": 1, "attempts": 1, "last_outcome": "retrying"}, "retrying"),
    ("attempt 2 skipped unexpectedly, waiting",
     {**OPEN, "published_attempt": 2, "attempts": 2, "last_outcome": "unexpected_skip"},
     "retrying"),
    ("attempt 3 of a retrying row published: in flight wins",
     {**OPEN, "published_attempt": 3, "attempts": 2, "last_outcome": "retrying"}, "in_flight"),
    # `pipeline retry` of a dead letter clears last_outcome and restarts the budget: it is
    # pending again, not retrying (the demo's old query called it retrying).
    ("dead letter re-opened by an operator",
     {**OPEN, "published_attempt": 10, "attempts": 10, "last_outcome": None}, "pending"),
    ("applied",
     {"applied": True, "failed": False, "published_attempt": 1, "attempts": 1,
      "last_outcome": "applied"}, "applied"),
    ("applied, even with a rescue re-publish on the wire",
     {"applied": True, "failed": False, "published_attempt": 2, "attempts": 1,
      "last_outcome": "applied"}, "applied"),
    ("dead-lettered",
     {"applied": False, "failed": True, "published_attempt": 10, "attempts": 10,
      "last_outcome": "dead_lettered"}, "dead_lettered"),
    ("unknown kind dead-lettered",
     {"applied": False, "failed": True, "published_attempt": 10, "attempts": 10,
      "last_outcome": "unknown_kind_dead_lettered"}, "dead_lettered"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "columns", "state"), CASES, ids=[c[0] for c in CASES])
def test_each_state(what: str, columns: dict[str, Any], state: str) -> None:
    assert row_state(**columns) == state


def test_every_state_is_pinned() -> None:
    assert sorted({c[2] for c in CASES}) == sorted(STATES)
