"""The worker's bounded memory of the (propagation, attempt) pairs it has answered.

faust's in-memory table keeps every key it ever saw, and recovers by reading the whole
changelog: memory and restart time grow with every propagation ever processed, until the
recovery watchdog's 60 s are no longer enough. Here the table keeps the most recently set
``max_entries`` keys (also while recovering) and its changelog topic deletes what is older
than the retention, so both stay bounded at any throughput.

What is forgotten is only an optimisation lost: a redelivered attempt that is no longer
remembered is executed again, and the provisioner's idempotency key keeps the effect single.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import timedelta
from typing import Any, TypeVar

import faust

from pipeline.adapters.faust_compat import StoreHookTable, replace_memory_store_dicts

K = TypeVar("K")
V = TypeVar("V")


class BoundedDict(OrderedDict[K, V]):
    """A dict that forgets its least recently *set* keys beyond ``max_entries``."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        super().__init__()
        self.max_entries = max_entries
        self.evicted = 0

    def __setitem__(self, key: K, value: V) -> None:
        if key in self:
            self.move_to_end(key)
            super().__setitem__(key, value)
            return
        super().__setitem__(key, value)
        if len(self) > self.max_entries:
            self.popitem(last=False)
            self.evicted += 1


class SeenTable(StoreHookTable):
    """A faust table on a memory store whose dicts are :class:`BoundedDict`."""

    max_entries = 50_000

    def adapt_store(self, store: Any) -> Any:
        replace_memory_store_dicts(store, lambda: BoundedDict(self.max_entries))
        return store


def changelog_configs(retention: timedelta) -> dict[str, str]:
    """Topic settings of the table's changelog: compacted, and deleted after ``retention``."""
    ms = int(retention.total_seconds() * 1000)
    return {
        "cleanup.policy": "compact,delete",
        "retention.ms": str(ms),
        # Retention deletes whole segments: roll them often enough that it can.
        "segment.ms": str(max(ms // 3, 60_000)),
    }


def seen_table(
    app: faust.App,
    name: str,
    *,
    partitions: int,
    max_entries: int,
    retention: timedelta,
    extra_configs: dict[str, str] | None = None,
) -> SeenTable:
    table = SeenTable(
        app,
        name=name,
        default=None,
        beacon=app.tables.beacon,
        partitions=partitions,
        key_type=bytes,
        value_type=bytes,
        extra_topic_configs=changelog_configs(retention) | (extra_configs or {}),
    )
    table.max_entries = max_entries
    app.tables.add(table)
    return table
