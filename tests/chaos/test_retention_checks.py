"""The retention scenarios' own checks, each fed the defect it exists to catch."""

from __future__ import annotations

from retention_scenarios import changed, dropped, unapplied


def test_unapplied_catches_a_reset_row() -> None:
    before = {1: (1, "t1", None), 2: (2, None, "t2"), 3: (3, None, None)}
    assert unapplied(before, dict(before)) == []
    assert unapplied(before, {**before, 3: (3, "t3", None)}) == []  # open -> applied is fine
    assert unapplied(before, {**before, 1: (1, None, None)}) == [1]  # the defect
    assert unapplied(before, {**before, 2: (2, "t2", None)}) == [2]  # failed flipped away


def test_dropped_catches_a_deleted_audit_row() -> None:
    assert dropped([60, 60, 63, 63]) == []
    assert dropped([60, 60, 30, 63]) == [(60, 30)]


def test_changed_catches_a_touched_row_or_audit() -> None:
    rows, audit = [(1, 1, "t"), (2, 1, "t")], [("e1", 1), ("e2", 2)]
    assert changed((rows, audit), (list(rows), list(audit))) == ""
    assert changed((rows, audit), ([(1, 0, None), rows[1]], audit)) == "1 rows changed (of 2 -> 2)"
    assert "audit rows 2 -> 1" in changed((rows, audit), (rows, audit[:1]))
