"""The worker's bounded memory of the (propagation, attempt) pairs it has answered.

It keeps the most recently set ``max_entries`` keys, so memory and the read-back at each
assignment (components/worker/recall.py) stay bounded at any throughput.

What is forgotten is only an optimisation lost: a redelivered attempt that is no longer
remembered is executed again, and the provisioner's idempotency key keeps the effect single.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TypeVar

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
