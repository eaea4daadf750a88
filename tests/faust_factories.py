"""faust objects for unit tests that need faust's real classes but no broker."""

from __future__ import annotations

from typing import Any

import faust
from faust.types.tuples import ConsumerMessage


def offline_app(name: str, datadir: Any) -> faust.App:
    """A faust app pointed at a closed port: its consumer and tables are real, nothing
    connects. Build it inside a running loop (faust takes that loop)."""
    return faust.App(
        name,
        broker="kafka://127.0.0.1:1",
        store="memory://",
        web_enabled=False,
        datadir=str(datadir),
    )


def consumer_message(offset: int, topic: str, partition: int = 0) -> ConsumerMessage:
    """A message as faust's consumer hands it to a stream."""
    return ConsumerMessage(
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp=0.0,
        timestamp_type=0,
        headers=[],
        key=b"k",
        value=b"v",
        checksum=None,
    )
