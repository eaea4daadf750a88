import pytest

from pipeline.streams.sequencer import Admit, Sequencer


@pytest.mark.parametrize(
    ("deliveries", "committed", "expected"),
    [
        # contiguous
        ([0, 1, 2], None, [Admit.PROCESS] * 3),
        # starts at the committed offset
        ([5, 6], 5, [Admit.PROCESS, Admit.PROCESS]),
        # faust dropped offset 5 at start-up: seek back, wait, then process in order
        (
            [6, 7, 5, 6, 7],
            5,
            [Admit.SEEK, Admit.WAIT, Admit.PROCESS, Admit.PROCESS, Admit.PROCESS],
        ),
        # a hole in the middle
        (
            [3, 4, 6, 7, 5, 6],
            3,
            [Admit.PROCESS] * 2 + [Admit.SEEK, Admit.WAIT] + [Admit.PROCESS] * 2,
        ),
        # redelivery of offsets already handed over
        ([3, 4, 3, 5], 3, [Admit.PROCESS, Admit.PROCESS, Admit.STALE, Admit.PROCESS]),
    ],
)
def test_admit(deliveries: list[int], committed: int | None, expected: list[Admit]) -> None:
    seq = Sequencer()
    got = [seq.admit(0, o, committed) for o in deliveries]
    assert got == expected


def test_seek_target_and_reset() -> None:
    seq = Sequencer()
    assert seq.admit(1, 10, 8) is Admit.SEEK
    assert seq.seek_to == 8
    seq.reset()
    assert seq.admit(1, 10, 10) is Admit.PROCESS


def test_partitions_are_independent() -> None:
    seq = Sequencer()
    assert seq.admit(0, 0, None) is Admit.PROCESS
    assert seq.admit(1, 7, 7) is Admit.PROCESS
    assert seq.admit(0, 1, None) is Admit.PROCESS
    assert seq.admit(1, 9, 7) is Admit.SEEK
