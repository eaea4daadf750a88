"""OrderedLanes: per-key order, bounded concurrency, acks only in partition offset order."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest

from pipeline.components.worker.lanes import OrderedLanes


async def _noop_error(exc: BaseException) -> None:
    raise AssertionError(f"unexpected error {exc!r}")


async def test_same_key_runs_in_order_and_acks_follow_offsets() -> None:
    lanes = OrderedLanes(limit=8, on_error=_noop_error)
    started: list[int] = []
    acked: list[int] = []
    rng = random.Random(3)

    def work(i: int) -> object:
        async def run() -> None:
            started.append(i)
            await asyncio.sleep(rng.random() * 0.01)

        return run

    # offsets 0..39 on one partition; keys interleave
    for offset in range(40):
        await lanes.submit(
            key=offset % 5, partition=0, work=work(offset), ack=lambda o=offset: acked.append(o)
        )
    await lanes.drain()
    for key in range(5):
        mine = [o for o in started if o % 5 == key]
        assert mine == sorted(mine)
    assert acked == list(range(40))


async def test_a_slow_head_holds_back_acks_of_later_fast_messages() -> None:
    lanes = OrderedLanes(limit=8, on_error=_noop_error)
    acked: list[int] = []
    gate = asyncio.Event()

    async def slow() -> None:
        await gate.wait()

    async def fast() -> None:
        return None

    await lanes.submit("a", 0, slow, lambda: acked.append(0))
    for o in (1, 2, 3):
        await lanes.submit(f"k{o}", 0, fast, lambda o=o: acked.append(o))
    await asyncio.sleep(0.01)
    assert acked == []  # 1..3 are done, but 0 is not: nothing may be acknowledged
    assert (lanes.unacked(0), lanes.unacked(1), lanes.in_flight, lanes.full) == (4, 0, 1, False)
    gate.set()
    await lanes.drain()
    assert acked == [0, 1, 2, 3]
    assert lanes.unacked(0) == 0


async def test_full_when_every_slot_is_taken() -> None:
    lanes = OrderedLanes(limit=2, on_error=_noop_error)
    gate = asyncio.Event()

    async def slow() -> None:
        await gate.wait()

    await lanes.submit("a", 0, slow, lambda: None)
    assert not lanes.full
    await lanes.submit("b", 1, slow, lambda: None)
    assert lanes.full
    gate.set()
    await lanes.drain()
    assert not lanes.full


async def test_partitions_ack_independently() -> None:
    lanes = OrderedLanes(limit=8, on_error=_noop_error)
    acked: list[tuple[int, int]] = []
    gate = asyncio.Event()

    async def slow() -> None:
        await gate.wait()

    async def fast() -> None:
        return None

    await lanes.submit("a", 0, slow, lambda: acked.append((0, 0)))
    await lanes.submit("b", 1, fast, lambda: acked.append((1, 0)))
    await asyncio.sleep(0.01)
    assert acked == [(1, 0)]
    gate.set()
    await lanes.drain()
    assert acked == [(1, 0), (0, 0)]


async def test_concurrency_is_bounded() -> None:
    lanes = OrderedLanes(limit=3, on_error=_noop_error)
    running = 0
    peak = 0

    async def work() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.005)
        running -= 1

    for i in range(20):
        await lanes.submit(i, 0, work, lambda: None)
    await lanes.drain()
    assert peak == 3


async def test_a_failed_command_is_never_acknowledged_nor_anything_after_it() -> None:
    errors: list[BaseException] = []

    async def on_error(exc: BaseException) -> None:
        errors.append(exc)

    lanes = OrderedLanes(limit=4, on_error=on_error)
    acked: list[int] = []

    async def boom() -> None:
        raise RuntimeError("producer gone")

    async def fine() -> None:
        return None

    await lanes.submit("a", 0, fine, lambda: acked.append(0))
    await lanes.submit("b", 0, boom, lambda: acked.append(1))
    await lanes.submit("c", 0, fine, lambda: acked.append(2))
    await lanes.drain()
    await asyncio.sleep(0)
    assert acked == [0]
    assert [str(e) for e in errors] == ["producer gone"]


def test_limit_must_be_positive() -> None:
    with pytest.raises(ValueError):
        OrderedLanes(0, _noop_error)


async def test_a_unit_gives_back_the_slots_of_its_finished_commands() -> None:
    lanes = OrderedLanes(limit=4, on_error=_noop_error)
    hung: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    acked: list[str] = []

    async def three_answered_one_hung(release: Callable[[int], None]) -> None:
        release(3)
        await hung

    unit = [(k, 0, lambda k=k: acked.append(k)) for k in "abcd"]
    await lanes.submit_batch(unit, three_answered_one_hung)
    await asyncio.sleep(0)
    assert not lanes.full  # the hung call holds one slot, not four
    gate = asyncio.Event()
    later = [(k, 0, lambda k=k: acked.append(k)) for k in "efg"]
    await asyncio.wait_for(lanes.submit_batch(later, lambda release: gate.wait()), 1)
    assert lanes.full  # 1 hung + 3 running: no wait for the hung call to take them
    gate.set()
    await asyncio.sleep(0.01)
    assert acked == []  # acks still wait for the hung call, in offset order
    assert not lanes.full
    hung.set_result(None)
    await lanes.drain()
    assert acked == list("abcdefg")


async def test_a_unit_cannot_give_back_more_than_it_took() -> None:
    lanes = OrderedLanes(limit=4, on_error=_noop_error)

    async def greedy(release: Callable[[int], None]) -> None:
        release(3)
        release(3)  # one more than it still held
        release(100)

    await lanes.submit_batch([(k, 0, lambda: None) for k in "abcd"], greedy)
    await lanes.drain()  # and its end gives back nothing more
    gate = asyncio.Event()
    for k in "wxyz":
        assert not lanes.full
        await lanes.submit(k, 0, gate.wait, lambda: None)
    assert lanes.full  # exactly four slots, not eight or more
    gate.set()
    await lanes.drain()
