"""A propagation row's state, as operators name it: the one definition.

``pipeline status``, ``pipeline retry``, the demo's progress line and the console all count
or show rows by this rule; the store renders the same rule as SQL (``pipeline.store.rowstate``)
and an integration test holds the two equal on every combination of the columns.
"""

from __future__ import annotations

from typing import Literal

from pipeline.domain.events import Outcome

State = Literal["pending", "in_flight", "retrying", "applied", "dead_lettered"]
STATES: tuple[State, ...] = ("pending", "in_flight", "retrying", "applied", "dead_lettered")

# The projected outcomes that leave a row open for a later attempt.
RETRY_OUTCOMES: tuple[Outcome, ...] = (Outcome.RETRYING, Outcome.UNEXPECTED_SKIP)


def row_state(
    *, applied: bool, failed: bool, published_attempt: int, attempts: int, last_outcome: str | None
) -> State:
    """First rule that holds, in this order:

    * ``applied``: ``applied_at`` is set (terminal);
    * ``dead_lettered``: ``failed_at`` is set (terminal, until ``pipeline retry``);
    * ``in_flight``: an attempt is published and its outcome not projected yet
      (``published_attempt > attempts``);
    * ``retrying``: the last projected outcome was a failed attempt (``retrying`` or
      ``unexpected_skip``), and the next one waits for ``next_attempt_at``;
    * ``pending``: no attempt yet, or re-opened by ``pipeline retry`` (which clears the last
      outcome and gives a fresh budget), waiting to be published.
    """
    if applied:
        return "applied"
    if failed:
        return "dead_lettered"
    if published_attempt > attempts:
        return "in_flight"
    if last_outcome in RETRY_OUTCOMES:
        return "retrying"
    return "pending"
