"""Coalescing of concurrent single calls into ``ApplyBatch`` round trips.

``GrpcProvisioner.regrade``/``suspend``/``resume`` make one call each; callers that make many
at once (the bench's peers) get them sent together by this. The worker does not need it: it
hands its batches to ``GrpcProvisioner.apply`` whole.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from pipeline.domain.events import ProvisionReply
from pipeline.domain.handlers import Answered

# One ApplyBatch: (items, deliver) -> what the undelivered items get, or None without ApplyBatch.
BatchRpc = Callable[[list[Any], Callable[[Answered], None]], Awaitable[ProvisionReply | None]]


class Coalescer:
    """Coalesces concurrent calls into ``ApplyBatch`` round trips.

    Nagle-style: while fewer than ``max_in_flight`` batches are on the wire, the calls made in
    one turn of the event loop leave together at its end (a lone command waits for no
    timer); otherwise they join the next batch, which leaves as soon as a slot frees up.
    Under load batches grow by themselves. A batch gives its slot back at its first answer
    (or after ``SLOT_HOLD_S``), not at its last: items the provisioner is slow on must not
    hold up the batching of everything else.
    """

    SLOT_HOLD_S = 0.02

    def __init__(
        self, rpc: BatchRpc, refused: Callable[[], bool], max_items: int, max_in_flight: int
    ) -> None:
        self._rpc = rpc
        self._refused = refused  # the owner's record that the provisioner has no ApplyBatch
        self._max_items = max_items
        self._max_in_flight = max_in_flight
        self._queue: list[tuple[Any, asyncio.Future[ProvisionReply | None]]] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Future[None]] = set()
        self._pump_due = False

    async def call(self, item: Any) -> ProvisionReply | None:
        """The item's reply; None when the provisioner has no ApplyBatch (use single calls)."""
        fut: asyncio.Future[ProvisionReply | None] = asyncio.get_running_loop().create_future()
        self._queue.append((item, fut))
        if not self._pump_due:
            # Callers start many calls in one turn: sending the first call at once would
            # make it a batch of one and hold the rest back until it is answered.
            self._pump_due = True
            asyncio.get_running_loop().call_soon(self._pump)
        return await fut

    def _pump(self) -> None:
        self._pump_due = False
        if self._refused():
            queued, self._queue = self._queue, []
            for _, fut in queued:
                if not fut.done():
                    fut.set_result(None)
            return
        while self._queue and self._in_flight < self._max_in_flight:
            batch = self._queue[: self._max_items]
            del self._queue[: self._max_items]
            self._in_flight += 1
            task = asyncio.ensure_future(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[Any, asyncio.Future[ProvisionReply | None]]]) -> None:
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                self._in_flight -= 1
                self._pump()

        timer = asyncio.get_running_loop().call_later(self.SLOT_HOLD_S, release)

        def deliver(results: Answered) -> None:
            for index, reply in results:
                fut = batch[index][1]
                if not fut.done():  # its caller may have been cancelled meanwhile
                    fut.set_result(reply)
            release()

        try:
            rest = await self._rpc([item for item, _ in batch], deliver)
        except BaseException:
            for _, fut in batch:
                fut.cancel()
            raise
        finally:
            timer.cancel()
        for _, fut in batch:
            if not fut.done():
                fut.set_result(rest)
        release()
