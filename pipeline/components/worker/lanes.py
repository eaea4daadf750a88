"""Many commands in flight, per-key order kept, acknowledgements in offset order.

The worker keeps up to ``limit`` commands in flight so a slow provisioner call does not
hold up every other resource. Two rules keep that safe:

* commands with the same key (one resource) run one after another, in offset order;
* a message is acknowledged only when it and every earlier message of its partition are
  done, so the committed offset never passes a command whose outcome is not yet produced.
  Acks are therefore always contiguous, which also keeps clear of faust-streaming's
  off-by-one when the acked offsets start with a gap (faust-streaming issue #606).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Any


class OrderedLanes:
    def __init__(self, limit: int, on_error: Callable[[BaseException], Awaitable[None]]) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._slots = asyncio.Semaphore(limit)
        self._tails: dict[Hashable, asyncio.Future[None]] = {}
        self._pending: dict[Hashable, deque[tuple[asyncio.Future[None], Callable[[], Any]]]] = {}
        self._in_flight: set[asyncio.Future[None]] = set()
        self._on_error = on_error
        self._reports: set[asyncio.Future[None]] = set()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def full(self) -> bool:
        return self._slots.locked()

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
        """Start ``work`` after the previous work of ``key``; ``ack`` runs in partition order.

        Waits for a free slot first: that is the worker's back-pressure.
        """
        await self._slots.acquire()
        previous = self._tails.get(key)
        task = asyncio.ensure_future(self._run(previous, work))
        self._tails[key] = task
        self._in_flight.add(task)
        queue = self._pending.setdefault(partition, deque())
        queue.append((task, ack))
        task.add_done_callback(lambda t: self._done(t, key, partition))

    async def _run(
        self, previous: asyncio.Future[None] | None, work: Callable[[], Awaitable[None]]
    ) -> None:
        if previous is not None and not previous.done():
            # The previous command of this key failing is the worker's crash, not ours.
            await asyncio.wait([previous])
        await work()

    def _done(self, task: asyncio.Future[None], key: Hashable, partition: Hashable) -> None:
        self._slots.release()
        self._in_flight.discard(task)
        if self._tails.get(key) is task:
            del self._tails[key]
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            # Not acknowledged: the message will be delivered again after the restart.
            report = asyncio.ensure_future(self._on_error(exc))
            self._reports.add(report)
            report.add_done_callback(self._reports.discard)
            return
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
