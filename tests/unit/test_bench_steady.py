import pytest

from pipeline.bench.steady import flatness


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
