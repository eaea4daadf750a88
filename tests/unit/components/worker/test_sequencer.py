import pytest

from pipeline.components.worker.sequencer import Admit, Sequencer


@pytest.mark.parametrize(
    ("deliveries", "baseline", "expected"),
    [
        # contiguous from the log start
        ([0, 1, 2], 0, [Admit.PROCESS] * 3),
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
        # below the committed offset: already done by an earlier worker
        ([2, 3], 3, [Admit.STALE, Admit.PROCESS]),
        # A (offset_reset, seed 109): the group was reset to 0, faust kept the committed 0 as
        # "none" and aiokafka did not seek, so delivery began at 131; 0..130 must not be lost
        ([131, 132, 133], 0, [Admit.SEEK, Admit.WAIT, Admit.WAIT]),
        # B (worker_rebalance, seed 62807063): 179 arrived before faust's seek to the committed
        # 178 took effect; 178 is the next command to process, not a stale one
        ([179, 178, 179], 178, [Admit.SEEK, Admit.PROCESS, Admit.PROCESS]),
    ],
)
def test_admit(deliveries: list[int], baseline: int, expected: list[Admit]) -> None:
    seq = Sequencer()
    seq.reset({0: baseline})
    got = [seq.admit(0, o) for o in deliveries]
    assert got == expected


def test_first_delivery_is_never_the_baseline() -> None:
    # The defect behind A and B: a baseline taken from the first delivered message.
    for baseline, first in ((0, 131), (178, 179)):
        seq = Sequencer()
        seq.reset({0: baseline})
        assert seq.admit(0, first) is Admit.SEEK
        assert seq.seek_to == baseline
        assert seq.next_offset[0] == baseline


def test_partition_without_baseline_is_never_processed() -> None:
    seq = Sequencer()
    seq.reset({1: 4})
    assert [seq.admit(0, o) for o in (0, 1)] == [Admit.WAIT, Admit.WAIT]
    assert 0 not in seq.next_offset


def test_seek_target_and_reset() -> None:
    seq = Sequencer()
    seq.reset({1: 8})
    assert seq.admit(1, 10) is Admit.SEEK
    assert seq.seek_to == 8
    seq.reset({1: 10})
    assert seq.admit(1, 10) is Admit.PROCESS
    assert seq.seeking == {}


def test_partitions_are_independent() -> None:
    seq = Sequencer()
    seq.reset({0: 0, 1: 7})
    assert seq.admit(0, 0) is Admit.PROCESS
    assert seq.admit(1, 7) is Admit.PROCESS
    assert seq.admit(0, 1) is Admit.PROCESS
    assert seq.admit(1, 9) is Admit.SEEK
