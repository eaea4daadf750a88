"""The retry schedule: a pure function of (attempt, now), the clock injected by the caller."""

from __future__ import annotations

from datetime import datetime, timedelta

# Delay after attempt n (1-based): 1m, 5m, 15m, 30m, 1h, 2h, 4h, 8h, then clamped at 8h.
SCHEDULE: tuple[timedelta, ...] = (
    timedelta(minutes=1),
    timedelta(minutes=5),
    timedelta(minutes=15),
    timedelta(minutes=30),
    timedelta(hours=1),
    timedelta(hours=2),
    timedelta(hours=4),
    timedelta(hours=8),
)
DEFAULT_MAX_ATTEMPTS = 10


def delay_after(attempt: int, scale: float = 1.0) -> timedelta:
    """How long to wait after ``attempt`` failed; ``scale`` shrinks it for demos and tests."""
    if attempt < 1:
        raise ValueError(f"attempt is 1-based, got {attempt}")
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    step = SCHEDULE[min(attempt, len(SCHEDULE)) - 1]
    return step * scale


def next_attempt_at(attempt: int, now: datetime, scale: float = 1.0) -> datetime:
    return now + delay_after(attempt, scale)
