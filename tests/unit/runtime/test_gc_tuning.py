"""freeze_after_startup: start-up objects leave the collector's scans, later cycles do not."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from pipeline.runtime.gc_tuning import freeze_after_startup


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # this test process keeps collecting as before


def test_freezes_what_exists_and_still_collects_cycles_made_later(unfrozen: None) -> None:
    kept = [_Node() for _ in range(1000)]
    before = gc.get_freeze_count()
    freeze_after_startup()
    assert gc.get_freeze_count() >= before + len(kept)

    a, b = _Node(), _Node()
    a.other, b.other = b, a  # a cycle made after the freeze: only the collector frees it
    gone = weakref.ref(a)
    del a, b
    assert gone() is not None
    gc.collect()
    assert gone() is None


def test_collects_startup_garbage_before_freezing(unfrozen: None) -> None:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    freeze_after_startup()
    assert gone() is None  # freed, not frozen forever
