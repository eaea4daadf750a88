"""The relay never sleeps through a NOTIFY that arrived while it was claiming."""

from __future__ import annotations

import asyncio
from typing import Any

from pipeline.components.relay import Relay
from pipeline.domain.registry import build_registry
from pipeline.runtime.metrics import Metrics


async def test_a_notify_during_a_claim_wakes_the_next_round() -> None:
    relay = Relay(
        database_url="postgresql://127.0.0.1:1/none",
        producer=Any,  # type: ignore[arg-type]  # never used: relay_once is replaced
        topic="t",
        metrics=Metrics(build_registry().kinds),
        poll_interval=30.0,  # a lost wake-up would wait this long
    )
    stop = asyncio.Event()
    rounds = 0

    async def claim_once() -> int:
        nonlocal rounds
        rounds += 1
        if rounds == 1:
            relay._wake.set()  # an insert's NOTIFY lands while this batch is claimed
        else:
            stop.set()
        return 0  # nothing claimed this round: the relay would nap

    async def nothing(*_args: object) -> None:
        return None

    relay.relay_once = claim_once  # type: ignore[method-assign]
    relay._listen = nothing  # type: ignore[method-assign]
    relay._maybe_sample_backlog = nothing  # type: ignore[method-assign]
    await asyncio.wait_for(relay.run(stop), timeout=5.0)
    assert rounds == 2
