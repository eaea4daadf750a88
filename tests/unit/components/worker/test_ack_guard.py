"""The AckGuard, on faust's real consumer: only the lanes' acks reach faust's commit offsets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from faust.types import TP
from faust.types.tuples import ConsumerMessage
from faust_factories import consumer_message, offline_app

from pipeline.components.worker.ack_guard import AckGuard

TOPIC = "cmds"
TP0 = TP(TOPIC, 0)


@pytest.fixture
async def consumer(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    app = offline_app("ack-guard-test", tmp_path)
    consumer = app.consumer
    # As for a topic an agent subscribed to (subscribing needs a running conductor).
    monkeypatch.setattr(app.topics, "acks_enabled_for", lambda topic: True)
    yield consumer
    consumer._thread.thread_loop.close()  # made by the consumer thread, which never started


class Event:
    """What the lanes hold: faust's Event.ack is ``self.message.ack(self.app.consumer)``."""

    def __init__(self, consumer: Any, message: ConsumerMessage) -> None:
        self.consumer = consumer
        self.message = message

    def ack(self) -> bool:
        return bool(self.message.ack(self.consumer))


def delivered(consumer: Any, offset: int, topic: str = TOPIC) -> ConsumerMessage:
    m = consumer_message(offset, topic)
    consumer.track_message(m)  # what faust's conductor does before a stream sees it
    return m


def commit_offset(consumer: Any) -> int | None:
    """The offset faust would commit for partition 0 now (its own computation)."""
    offset: int | None = consumer._new_offset(TP0)
    return offset


async def test_faust_commits_only_through_the_lanes_acks_in_offset_order(consumer: Any) -> None:
    guard = AckGuard(TOPIC)
    guard.install(consumer)
    msgs = [delivered(consumer, o) for o in range(5)]
    # faust acks offset 2 itself (skipped while flow was paused): refused, so the commit
    # stops below it however many later offsets the lanes finish.
    assert msgs[2].ack(consumer) is False
    for o in (0, 1, 3, 4):
        guard.ack(Event(consumer, msgs[o]))
    assert consumer._acked[TP0] == [0, 1, 3, 4]
    assert commit_offset(consumer) == 2
    # Offset 2 delivered again (a restart) and finished by a lane: the commit moves past all.
    again = delivered(consumer, 2)
    guard.ack(Event(consumer, again))
    assert commit_offset(consumer) == 5


async def test_a_refused_ack_is_forgotten_so_shutdown_does_not_wait_for_it(
    consumer: Any,
) -> None:
    guard = AckGuard(TOPIC)
    guard.install(consumer)
    skipped, processed = delivered(consumer, 0), delivered(consumer, 1)
    assert set(consumer._unacked_messages) == {skipped, processed}
    skipped.ack(consumer)
    # faust's wait_empty waits while this set is non-empty.
    assert set(consumer._unacked_messages) == {processed}
    guard.ack(Event(consumer, processed))
    assert set(consumer._unacked_messages) == set()
    assert consumer._acked[TP0] == [1]


async def test_an_approval_is_spent_by_its_ack(consumer: Any) -> None:
    guard = AckGuard(TOPIC)
    guard.install(consumer)
    first = delivered(consumer, 0)
    guard.ack(Event(consumer, first))
    # The same offset delivered again after a rebalance is not acked by the old approval.
    again = delivered(consumer, 0)
    assert again.ack(consumer) is False
    assert set(consumer._unacked_messages) == set()


async def test_other_topics_are_not_guarded(consumer: Any) -> None:
    guard = AckGuard(TOPIC)
    guard.install(consumer)
    changelog = delivered(consumer, 0, topic="other-changelog")
    assert changelog.ack(consumer) is True
    assert consumer._acked[TP("other-changelog", 0)] == [0]


async def test_installing_twice_on_one_consumer_wraps_once(consumer: Any) -> None:
    guard = AckGuard(TOPIC)
    guard.install(consumer)
    wrapped = consumer.ack
    guard.install(consumer)
    assert consumer.ack is wrapped
