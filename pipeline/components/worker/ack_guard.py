"""Only the lanes acknowledge commands: faust's own acks of skipped messages are refused."""

from __future__ import annotations

from typing import Any

from pipeline.adapters.faust_compat import filter_acks


class AckGuard:
    """Lets faust record only the acknowledgements that come from the lanes.

    faust acknowledges messages it *skips* while flow is paused (shutdown, rebalance) even
    on a noack stream, and its commit logic lets a one-offset hole through; together they can
    commit past a command no worker ever saw. Commands of our topic are acknowledged only
    after their outcome was produced.
    """

    def __init__(self, topic: str) -> None:
        self._topic = topic
        self._approved: set[tuple[int, int]] = set()
        self._installed: Any = None

    def install(self, consumer: Any) -> None:
        if self._installed is consumer:
            return
        # A refused message will be delivered again; filter_acks also forgets it, so a
        # shutdown does not wait for an ack that will never come.
        filter_acks(consumer, self._allows)
        self._installed = consumer

    def _allows(self, message: Any) -> bool:
        if message.topic != self._topic:
            return True
        key = (message.partition, message.offset)
        if key not in self._approved:
            return False
        self._approved.discard(key)
        return True

    def ack(self, event: Any) -> None:
        self._approved.add((event.message.partition, event.message.offset))
        event.ack()
