"""Which delivered commands the worker may hand to its lanes, so no offset is ever skipped.

faust can drop a message between fetch and stream while flow is paused (start-up, shutdown,
rebalance) and still advance its read position; its commit then lets a one-offset hole
through (faust-streaming #606). The relay writes each partition without gaps, so the worker
checks continuity itself: a command is processed only if it is the next offset of its
partition. On a jump the worker refuses to go on (it restarts from the committed offset,
which is the hole; a seek back proved unreliable inside faust). The decision is a pure
function of what was seen.

Each partition's starting point (its baseline) is the group's committed offset as the broker
tells it at assignment, or the partition's log start when nothing is committed. It is never
faust's cache nor the first delivered message: faust stores a committed offset 0 as "none"
and aiokafka does not seek to offset 0, so after an offset reset the first delivered message
can lie far past the committed 0; and while faust is still seeking after a rebalance, a
message past the committed offset can arrive first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Admit(Enum):
    PROCESS = "process"
    STALE = "stale"  # already handed to the lanes in this assignment: ignore
    SEEK = "seek"  # a gap: seek back to ``Sequencer.seek_to`` and ignore this one
    WAIT = "wait"  # a seek is pending: ignore until the missing offset arrives


@dataclass
class Sequencer:
    next_offset: dict[int, int] = field(default_factory=dict)
    seeking: dict[int, int] = field(default_factory=dict)
    seek_to: int | None = None

    def reset(self, baselines: dict[int, int] | None = None) -> None:
        """A new assignment: each assigned partition must resume at its ``baselines`` offset."""
        self.next_offset.clear()
        self.next_offset.update(baselines or {})
        self.seeking.clear()

    def admit(self, partition: int, offset: int) -> Admit:
        expected = self.next_offset.get(partition)
        if expected is None:
            # No baseline: not (or not yet) assigned here. Ignoring it is safe, since nothing
            # past it is processed until an offset matches the partition's baseline.
            return Admit.WAIT
        if offset < expected:
            return Admit.STALE
        if offset > expected:
            if self.seeking.get(partition) == expected:
                return Admit.WAIT
            self.seeking[partition] = expected
            self.seek_to = expected
            return Admit.SEEK
        self.seeking.pop(partition, None)
        self.next_offset[partition] = offset + 1
        return Admit.PROCESS
