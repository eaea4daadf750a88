"""How long the bench waits before it counts the finished rows again.

Every count reads the whole range of rows from Postgres, on the machine the system under
test runs on: polled every 50 ms, the pipeline's count cost Postgres 5-8 ms a time, about
two fifths of Postgres's CPU in the saturation phase (pg_stat_statements, issue 16). So
the bench polls at the floor until the first row is done (when the stage starts) and as
the end nears (when it stops, within the floor), and in between about twice per
estimated remaining time, never more than the ceiling apart. Every system is timed this way.
"""

from __future__ import annotations

FLOOR_S = 0.05
CEILING_S = 0.25


def poll_delay(
    done: int, total: int, elapsed_s: float, floor_s: float = FLOOR_S, ceiling_s: float = CEILING_S
) -> float:
    """Seconds until the next count, after ``done`` of ``total`` in ``elapsed_s``."""
    if done <= 0 or elapsed_s <= 0:
        return floor_s
    remaining_s = (total - done) * elapsed_s / done
    return min(ceiling_s, max(floor_s, remaining_s / 2))
