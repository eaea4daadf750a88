"""``pipeline.domain.rowstate.row_state`` as a SQL expression over ``pending_propagations``.

The one place the rule is written as SQL; every query that counts or shows states embeds
``STATE_SQL``. Built from the domain's ``RETRY_OUTCOMES``, so the two cannot name different
outcomes; ``tests/integration/test_rowstate.py`` holds them equal row by row.
"""

from __future__ import annotations

from pipeline.domain.rowstate import RETRY_OUTCOMES

_RETRY_OUTCOMES_SQL = ", ".join(f"'{o.value}'" for o in RETRY_OUTCOMES)

STATE_SQL = f"""
CASE
    WHEN applied_at IS NOT NULL THEN 'applied'
    WHEN failed_at IS NOT NULL THEN 'dead_lettered'
    WHEN published_attempt > attempts THEN 'in_flight'
    WHEN last_outcome IN ({_RETRY_OUTCOMES_SQL}) THEN 'retrying'
    ELSE 'pending'
END
"""
