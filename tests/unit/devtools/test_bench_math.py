import pytest

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
