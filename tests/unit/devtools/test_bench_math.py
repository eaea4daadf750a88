import pytest

from pipeline.devtools.bench.pacing import poll_delay
from pipeline.devtools.bench.steady import flatness
from pipeline.store.bench import percentiles


@pytest.mark.parametrize(
    ("series", "expected"),
    [
        ([100.0, 110.0, 105.0, 108.0], (110.0, 108.0, -1.818)),  # flat: the peak came early
        ([100.0, 100.0, 150.0, 200.0], (100.0, 200.0, 100.0)),  # grows: a leak
        ([90.0], (90.0, 90.0, 0.0)),  # one sample
        ([], (0.0, 0.0, 0.0)),
    ],
)
def test_flatness(series: list[float], expected: tuple[float, float, float]) -> None:
    got = flatness(series)
    assert (got["first_half_peak_mb"], got["second_half_peak_mb"]) == expected[:2]
    assert got["growth_pct"] == pytest.approx(expected[2], abs=1e-3)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], (0.0, 0.0, 0.0, 0.0, 0)),
        ([0.3], (0.3, 0.3, 0.3, 0.3, 1)),
        ([float(i) for i in range(1, 101)], (50.0, 95.0, 99.0, 100.0, 100)),
        ([5.0, 1.0, 3.0, 2.0, 4.0], (3.0, 5.0, 5.0, 5.0, 5)),
    ],
)
def test_percentiles_nearest_rank(
    values: list[float], expected: tuple[float, float, float, float, int]
) -> None:
    p = percentiles(values)
    assert (p.p50, p.p95, p.p99, p.max, p.samples) == expected


@pytest.mark.parametrize(
    ("done", "total", "elapsed", "expected"),
    [
        (0, 20_000, 0.4, 0.05),  # nothing done yet: at the floor, to catch the start
        (2_000, 20_000, 0.5, 0.25),  # 4.5 s to go: at the ceiling
        (16_000, 20_000, 3.2, 0.25),  # 0.8 s to go: half of it, capped
        (19_000, 20_000, 3.8, 0.1),  # 0.2 s to go: half of it
        (19_900, 20_000, 3.98, 0.05),  # nearly done: at the floor, to catch the end
        (20_000, 20_000, 4.0, 0.05),
    ],
)
def test_poll_delay(done: int, total: int, elapsed: float, expected: float) -> None:
    assert poll_delay(done, total, elapsed) == pytest.approx(expected)
