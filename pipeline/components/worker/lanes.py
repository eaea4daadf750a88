"""Many commands in flight, per-key order kept, acknowledgements in offset order.

The worker keeps up to ``limit`` commands in flight so a slow provisioner call does not
hold up every other resource. A unit of work is a batch of commands (one task, one
provisioner round trip: a task and futures per command were a tenth of the worker's CPU,
issue 16). Two rules keep that safe:

* commands with the same key (one resource) run one after another, in offset order;
* a message is acknowledged only when it and every earlier message of its partition are
  done, so the committed offset never passes a command whose outcome is not yet produced.
  Acks are therefore always contiguous, which also keeps clear of faust-streaming's
  off-by-one when the acked offsets start with a gap (faust-streaming issue #606).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any

# One command of a unit: its key (one resource), its partition, and its acknowledgement.
Entry = tuple[Hashable, Hashable, Callable[[], Any]]
# Gives back slots of a unit that is still running: ``release(k)`` as k of its commands end.
Release = Callable[[int], None]


class OrderedLanes:
    def __init__(self, limit: int, on_error: Callable[[BaseException], Awaitable[None]]) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._limit = limit
        self._free = limit
        self._wake: asyncio.Future[None] | None = None
        self._tails: dict[Hashable, asyncio.Future[None]] = {}
        self._pending: dict[Hashable, deque[tuple[asyncio.Future[None], Callable[[], Any]]]] = {}
        self._in_flight: set[asyncio.Future[None]] = set()
        self._on_error = on_error
        self._reports: set[asyncio.Future[None]] = set()

    @property
    def in_flight(self) -> int:
        """Units (tasks) running or waiting for an earlier unit of one of their keys."""
        return len(self._in_flight)

    @property
    def full(self) -> bool:
        return self._free <= 0

    def unacked(self, partition: Hashable) -> int:
        """Submitted commands of ``partition`` not yet acknowledged."""
        queue = self._pending.get(partition)
        return len(queue) if queue else 0

    async def submit(
        self,
        key: Hashable,
        partition: Hashable,
        work: Callable[[], Awaitable[None]],
        ack: Callable[[], Any],
    ) -> None:
        """One command: ``submit_batch`` of one."""
        await self.submit_batch([(key, partition, ack)], lambda release: work())

    async def submit_batch(
        self, entries: Sequence[Entry], work: Callable[[Release], Awaitable[None]]
    ) -> None:
        """Start ``work(release)`` for ``entries`` after the earlier units of each of their
        keys; each entry's ack runs in its partition's order once ``work`` is done. Order
        within the unit is ``work``'s to keep.

        Waits for free slots first (a unit larger than ``limit`` waits until nothing else
        runs): that is the worker's back-pressure. A unit's slots come back when it ends, or
        earlier through ``release(k)`` as its commands finish: a unit with one hung
        provisioner call then holds one slot, not one per command (acks still wait for it).
        """
        n = len(entries)
        while self._free < n and self._free < self._limit:
            if self._wake is None or self._wake.done():  # one future wakes every waiter
                self._wake = asyncio.get_running_loop().create_future()
            await asyncio.wait([self._wake])  # a cancelled waiter leaves the future alone
        self._free -= n
        held = [n]

        def release(k: int) -> None:
            k = min(k, held[0])  # never more than the unit took
            if k > 0:
                held[0] -= k
                self._free += k
                if self._wake is not None and not self._wake.done():
                    self._wake.set_result(None)

        previous = {t for t in (self._tails.get(key) for key, _, _ in entries) if t is not None}
        task = asyncio.ensure_future(self._run(previous, work, release))
        self._in_flight.add(task)
        for key, partition, ack in entries:
            self._tails[key] = task
            queue = self._pending.get(partition)
            if queue is None:
                queue = self._pending[partition] = deque()
            queue.append((task, ack))
        task.add_done_callback(lambda t: self._done(t, entries, release))

    async def _run(
        self,
        previous: set[asyncio.Future[None]],
        work: Callable[[Release], Awaitable[None]],
        release: Release,
    ) -> None:
        waiting = [p for p in previous if not p.done()]
        if waiting:
            # The earlier work of a key failing is the worker's crash, not ours.
            await asyncio.wait(waiting)
        await work(release)

    def _done(self, task: asyncio.Future[None], entries: Sequence[Entry], release: Release) -> None:
        release(len(entries))  # what the unit did not give back itself
        self._in_flight.discard(task)
        for key, _, _ in entries:
            if self._tails.get(key) is task:
                del self._tails[key]
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            # Not acknowledged: the messages will be delivered again after the restart.
            report = asyncio.ensure_future(self._on_error(exc))
            self._reports.add(report)
            report.add_done_callback(self._reports.discard)
            return
        for partition in {partition for _, partition, _ in entries}:
            queue = self._pending.get(partition)
            while queue and queue[0][0].done() and not queue[0][0].cancelled():
                head, ack = queue[0]
                if head.exception() is not None:
                    break  # never acknowledge past a failed command
                queue.popleft()
                ack()

    async def drain(self) -> None:
        """Wait for everything in flight (before a rebalance takes partitions away)."""
        while self._in_flight:
            await asyncio.wait(list(self._in_flight))
