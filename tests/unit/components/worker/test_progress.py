import pytest

from pipeline.components.worker.progress import PartitionView, stalled_partitions


def view(
    end: int | None = 10, nxt: int | None = 5, unacked: int = 0, idle: float = 31.0
) -> PartitionView:
    return PartitionView(partition=3, end_offset=end, next_offset=nxt, unacked=unacked, idle_s=idle)


@pytest.mark.parametrize(
    ("v", "lanes_full", "in_recovery", "expected"),
    [
        (view(), False, False, [3]),  # lag, nothing in flight, idle past the bound
        (view(idle=29.0), False, False, []),  # not idle long enough
        (view(idle=30.0), False, False, []),  # the bound itself is not past it
        (view(end=5), False, False, []),  # caught up
        (view(end=4), False, False, []),  # end offset older than ours (stale read)
        (view(unacked=1), False, False, []),  # busy with this partition
        (view(), True, False, []),  # back-pressure from every lane
        (view(), False, True, []),  # tables still recovering
        (view(end=None), False, False, []),  # end offset unknown
        (view(nxt=None), False, False, []),  # position unknown
    ],
)
def test_stalled(
    v: PartitionView, lanes_full: bool, in_recovery: bool, expected: list[int]
) -> None:
    got = stalled_partitions([v], stall_after=30.0, lanes_full=lanes_full, in_recovery=in_recovery)
    assert got == expected


def test_only_the_stalled_partitions_are_named() -> None:
    views = [
        PartitionView(0, 100, 100, 0, 99.0),
        PartitionView(1, 100, 40, 0, 45.0),
        PartitionView(2, 100, 40, 2, 45.0),
        PartitionView(4, 7, 0, 0, 31.0),
    ]
    assert stalled_partitions(views, stall_after=30.0, lanes_full=False, in_recovery=False) == [
        1,
        4,
    ]
