from datetime import UTC, datetime, timedelta

import pytest

from pipeline.domain.backoff import delay_after, next_attempt_at

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [
        (1, timedelta(minutes=1)),
        (2, timedelta(minutes=5)),
        (3, timedelta(minutes=15)),
        (4, timedelta(minutes=30)),
        (5, timedelta(hours=1)),
        (6, timedelta(hours=2)),
        (7, timedelta(hours=4)),
        (8, timedelta(hours=8)),
        (9, timedelta(hours=8)),  # clamped
        (10, timedelta(hours=8)),
        (1000, timedelta(hours=8)),
    ],
)
def test_schedule_is_exact_at_every_position_and_the_clamp(
    attempt: int, expected: timedelta
) -> None:
    assert delay_after(attempt) == expected
    assert next_attempt_at(attempt, NOW) == NOW + expected


@pytest.mark.parametrize(
    ("attempt", "scale", "expected"),
    [
        (1, 0.001, timedelta(milliseconds=60)),
        (2, 0.001, timedelta(milliseconds=300)),
        (8, 0.001, timedelta(seconds=28.8)),
        (1, 2.0, timedelta(minutes=2)),
    ],
)
def test_scale_shrinks_the_schedule(attempt: int, scale: float, expected: timedelta) -> None:
    assert next_attempt_at(attempt, NOW, scale) == NOW + expected


@pytest.mark.parametrize(("attempt", "scale"), [(0, 1.0), (-1, 1.0), (1, 0.0), (1, -1.0)])
def test_rejects_nonsense(attempt: int, scale: float) -> None:
    with pytest.raises(ValueError):
        delay_after(attempt, scale)
