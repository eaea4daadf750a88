"""A unit's rounds of commands: decode, de-duplicate, call the provisioner, produce outcomes.

A unit (one lanes task) holds one ``take_events`` batch; round k holds the k-th command of each
resource in it, so the commands of one round are of distinct resources and share one batch of
provisioner calls. Rounds run one after another, which keeps one resource's commands in order.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, MutableMapping
from typing import Any

from pipeline.components.worker.lanes import Release
from pipeline.components.worker.outcome_sender import OutcomeSender
from pipeline.components.worker.processor import CommandProcessor
from pipeline.components.worker.recall import recorded, remember
from pipeline.domain import codec
from pipeline.domain.decide import dedupe_action
from pipeline.domain.events import Command
from pipeline.runtime import logs
from pipeline.runtime.metrics import Metrics

_log = logs.get("worker")


class Rounds:
    def __init__(
        self,
        processor: Callable[[], CommandProcessor],
        seen: MutableMapping[bytes, bytes],
        metrics: Metrics,
        sender: OutcomeSender,
    ) -> None:
        self._processor = processor  # built at the first command (it makes the gRPC client)
        self._seen = seen
        self._metrics = metrics
        self._sender = sender
        self._debug = _log.isEnabledFor(logging.DEBUG)

    async def run(self, rounds: list[list[bytes | None]], release: Release) -> None:
        for commands in rounds:
            await self.one(commands, release)

    @staticmethod
    def _trace(event: str, **fields: Any) -> None:
        logs.event(_log, event, logging.DEBUG, **fields)

    async def one(self, raws: list[bytes | None], release: Release) -> None:
        """Outcomes for commands of distinct resources: one batch of provisioner calls, and
        the outcomes produced (and acknowledged by the broker) as the replies arrive. Each
        command's slot goes back to the lanes (``release``) once its outcome is acknowledged,
        so a hung call holds its own slot only."""
        proc = self._processor()
        records: list[tuple[bytes, bytes]] = []
        todo: list[Command] = []
        settled = 0  # commands that end here with no outcome to produce
        for raw in raws:
            decoded = proc.decode(raw)
            if isinstance(decoded, codec.Undecodable):
                bad = proc.handle_undecodable(decoded)
                if bad is not None:
                    records.append((bad.key.encode(), codec.encode(bad)))
                else:
                    settled += 1
                continue
            prior = recorded(self._seen, decoded.propagation_id)
            action = dedupe_action(prior[0] if prior else None, decoded.attempt)
            if self._debug:
                self._trace(
                    "command_seen",
                    propagation_id=decoded.propagation_id,
                    attempt=decoded.attempt,
                    action=action,
                )
            if action == "drop":
                self._metrics.duplicates.labels("processor").inc()
                settled += 1
            elif action == "reemit" and prior is not None:
                # Same attempt again (redelivery or rescue): emit the recorded outcome with its
                # event_id instead of calling the provisioner a second time.
                self._metrics.duplicates.labels("processor").inc()
                records.append((decoded.key.encode(), prior[1]))
            else:
                todo.append(decoded)
        release(settled)
        # Outcomes go out as their replies arrive: one slow provisioner call does not hold
        # back the others' (their acks wait for it, as offset order requires). A lot does not
        # wait for the broker's ack of the one before: with single calls, replies come one
        # by one, and waiting made each outcome pay a produce round trip in turn.
        sending: list[asyncio.Future[None]] = []

        def send(lot: list[tuple[bytes, bytes]]) -> None:
            sent = asyncio.ensure_future(self._sender.send_many(lot))
            sent.add_done_callback(functools.partial(_release_if_sent, release, len(lot)))
            sending.append(sent)

        if todo:
            async for outcomes in proc.handle_many(todo):
                for i, event in outcomes:
                    body = codec.encode_validated(event)
                    remember(self._seen, todo[i].propagation_id, todo[i].attempt, body)
                    records.append((event.key.encode(), body))
                send(records)
                records = []
        if records:
            send(records)
        await asyncio.gather(*sending)


def _release_if_sent(release: Release, n: int, sent: asyncio.Future[None]) -> None:
    # A lot the broker refused keeps its slots: the worker stops, and the lanes take them back.
    if not sent.cancelled() and sent.exception() is None:
        release(n)
