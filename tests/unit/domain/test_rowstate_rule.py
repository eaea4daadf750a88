"""The one row-state rule, pinned state by state (issue 14: status and demo disagreed)."""

from __future__ import annotations

import pytest

from pipeline.domain.rowstate import STATES, row_state

# state -> rows that must be in it: (applied, failed, published_attempt, attempts, last_outcome).
# Precedence: terminal beats in flight (an applied row with a rescue re-publish on the wire),
# in flight beats retrying (the next attempt is published). A dead letter re-opened by
# `pipeline retry` has its last outcome cleared: pending, not retrying (the demo's old query
# called it retrying).
PINNED = {
    "pending": [(False, False, 0, 0, None), (False, False, 10, 10, None)],
    "in_flight": [(False, False, 1, 0, None), (False, False, 3, 2, "retrying")],
    "retrying": [(False, False, 1, 1, "retrying"), (False, False, 2, 2, "unexpected_skip")],
    "applied": [(True, False, 1, 1, "applied"), (True, False, 2, 1, "applied")],
    "dead_lettered": [
        (False, True, 9, 9, "dead_lettered"),
        (False, True, 9, 9, "unknown_kind_dead_lettered"),
    ],
}
CASES = [(state, row) for state, rows in PINNED.items() for row in rows]


@pytest.mark.parametrize(("state", "row"), CASES, ids=[f"{s}-{r}" for s, r in CASES])
def test_each_state(state: str, row: tuple[bool, bool, int, int, str | None]) -> None:
    applied, failed, published_attempt, attempts, last_outcome = row
    assert (
        row_state(
            applied=applied,
            failed=failed,
            published_attempt=published_attempt,
            attempts=attempts,
            last_outcome=last_outcome,
        )
        == state
    )


def test_every_state_is_pinned() -> None:
    assert list(PINNED) == list(STATES)
