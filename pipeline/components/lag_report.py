"""What a lag measurement reports: the consumers measured, and per partition their lag.

Plain values (no Kafka or Postgres client), so the CLI, the console and the chaos checks can
read a report without the probe that made it (:mod:`pipeline.components.lag`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

from pipeline.domain.events import iso
from pipeline.store.outbox import Backlog


@dataclass(frozen=True, slots=True)
class Source:
    """One consumer to measure: a Kafka consumer group, or a projection's checkpoints."""

    group: str
    topic: str
    offsets: Literal["kafka", "postgres"]


def pipeline_sources(
    processor_group: str, commands_topic: str, projection_name: str, outcomes_topic: str
) -> list[Source]:
    """The pipeline's consumers: the processor's group and the projector's checkpoints."""
    return [
        Source(processor_group, commands_topic, "kafka"),
        Source(projection_name, outcomes_topic, "postgres"),
    ]


@dataclass(frozen=True, slots=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    committed: int | None  # None: nothing committed (the consumer starts at the log start)
    end: int
    lag: int
    lag_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "lag_seconds": round(self.lag_seconds, 3)}


@dataclass(frozen=True, slots=True)
class LagReport:
    measured_at: datetime
    partitions: list[PartitionLag]
    outbox: Backlog | None = None
    topics_missing: list[str] = field(default_factory=list)
    # Per topic, the timestamp of its oldest retained record (None: empty): how far back a
    # replay of that topic can reach.
    earliest_retained: dict[str, datetime | None] = field(default_factory=dict)
    # (group, topic, partition) that could not be measured in time (a broker down).
    unavailable: list[tuple[str, str, int]] = field(default_factory=list)

    @property
    def partial(self) -> bool:
        return bool(self.unavailable)

    def total(self, group: str) -> int:
        return sum(p.lag for p in self.partitions if p.group == group)

    def max_seconds(self, group: str) -> float:
        return max((p.lag_seconds for p in self.partitions if p.group == group), default=0.0)

    def to_dict(self) -> dict[str, Any]:
        groups: dict[str, dict[str, Any]] = {}
        for p in self.partitions:
            g = groups.setdefault(p.group, {"topic": p.topic, "lag": 0, "lag_seconds": 0.0})
            g["lag"] += p.lag
            g["lag_seconds"] = round(max(g["lag_seconds"], p.lag_seconds), 3)
        return {
            "measured_at": iso(self.measured_at),
            "groups": groups,
            "partitions": [p.to_dict() for p in self.partitions],
            "outbox": (
                None
                if self.outbox is None
                else {
                    "due_unpublished": self.outbox.due_unpublished,
                    "oldest_age_seconds": round(self.outbox.oldest_age_seconds, 3),
                }
            ),
            "topics_missing": self.topics_missing,
            "earliest_retained": {
                t: iso(at) if at else None for t, at in sorted(self.earliest_retained.items())
            },
            "unavailable": [
                {"group": g, "topic": t, "partition": p} for g, t, p in self.unavailable
            ],
            "partial": self.partial,
        }
