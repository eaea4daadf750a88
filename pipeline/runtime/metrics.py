"""Prometheus metrics with bounded label values.

Every label value comes from a fixed set or from a ``LabelBudget`` that admits at most a
fixed number of distinct values and folds the rest into ``other``: an attacker-controlled
kind or reason string can never create series beyond the budget.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)

from pipeline.domain.classify import BUCKETS, OTHER_BUCKET
from pipeline.domain.events import DeadLetterReason, Outcome, OutcomeEvent

UNKNOWN_KIND_LABEL = "unknown_kind"
OTHER = "other"
KNOWN_RESOURCE_TYPES = frozenset(
    {"postgres", "redis", "mysql", "mongodb", "kafka", "elasticsearch", "opensearch", "clickhouse"}
)
UNDECODABLE_REASONS = frozenset({"bad_json", "schema_violation", "oversized", "empty"})
_LABEL_SAFE = re.compile(r"^[a-z0-9_]{1,64}$")
# *_created series double every counter for no operator benefit.
disable_created_metrics()  # type: ignore[no-untyped-call]


class LabelBudget:
    """Admits the first ``budget`` distinct, well-formed values; everything else is ``other``."""

    def __init__(self, budget: int) -> None:
        self._budget = budget
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if not _LABEL_SAFE.match(value):
            return OTHER
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) >= self._budget:
                return OTHER
            self._seen.add(value)
            return value


def bounded(value: str, allowed: Iterable[str], fallback: str = OTHER) -> str:
    return value if value in allowed else fallback


class Metrics:
    """All series of one process, on its own registry (tests build a fresh one each)."""

    UNKNOWN_KIND_BUDGET = 20

    def __init__(
        self, known_kinds: Iterable[str], registry: CollectorRegistry | None = None
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.known_kinds = frozenset(known_kinds)
        self._unknown_kinds = LabelBudget(self.UNKNOWN_KIND_BUDGET)
        r = self.registry
        # SPEC section 5: names are operators' existing alert names.
        self.unexpected_skip = Counter(
            "instant_propagation_unexpected_skip_total",
            "Skips for a reason not on the allowed list (skip_reason is the bucket).",
            ["kind", "resource_type", "skip_reason"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "instant_propagation_dead_lettered_total",
            "Propagations dead-lettered, by reason (max_attempts, unknown_kind, invalid_payload).",
            ["reason", "kind"],
            registry=r,
        )
        self.unknown_kind = Counter(
            "instant_propagation_unknown_kind_total",
            "Commands whose kind has no handler in this worker.",
            ["kind"],
            registry=r,
        )
        self.outcomes = Counter(
            "instant_propagation_outcomes_total",
            "Outcome events emitted by the processor.",
            ["outcome", "kind"],
            registry=r,
        )
        self._outcome_children: dict[tuple[Outcome, str], Counter] = {}
        self.handler_seconds = Histogram(
            "instant_propagation_handler_seconds",
            "Provisioner call latency per attempt, retries within the attempt included.",
            ["kind"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.invalid_commands = Counter(
            "instant_propagation_invalid_commands_total",
            "Messages that were not valid commands (dead-lettered or, without an id, skipped).",
            ["reason", "topic"],
            registry=r,
        )
        self.duplicates = Counter(
            "instant_propagation_duplicates_total",
            "Redelivered work recognised and not applied again.",
            ["stage"],
            registry=r,
        )
        self.relay_published = Counter(
            "instant_propagation_relay_published_total",
            "Command events the relay published and stamped.",
            registry=r,
        )
        self.relay_rescued = Counter(
            "instant_propagation_relay_rescued_total",
            "Attempts re-published because no outcome was projected within rescue_stuck_after.",
            registry=r,
        )
        self.outbox_backlog = Gauge(
            "instant_propagation_outbox_backlog",
            "Non-terminal outbox rows that are due and not yet published.",
            registry=r,
        )
        self.outbox_backlog_age = Gauge(
            "instant_propagation_outbox_backlog_age_seconds",
            "Age of the oldest due, unpublished outbox row.",
            registry=r,
        )
        self.projected = Counter(
            "instant_propagation_projected_total",
            "Outcome events folded into Postgres by the projector (changed=false: no-op).",
            ["outcome", "changed"],
            registry=r,
        )
        self.offset_gaps = Counter(
            "instant_propagation_offset_gaps_total",
            "Jumps in the command offsets the worker received (messages it never saw).",
            ["partition"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "instant_propagation_consumer_lag",
            "Messages between the committed offset and the end of the partition.",
            ["group", "topic", "partition"],
            registry=r,
        )
        self.consumer_lag_seconds = Gauge(
            "instant_propagation_consumer_lag_seconds",
            "Age of the oldest unconsumed record of the partition (0 when caught up).",
            ["group", "topic", "partition"],
            registry=r,
        )
        self.buffer_holds = Counter(
            "instant_propagation_worker_buffer_holds_total",
            "Times the worker stopped fetching until its stream buffer drained: commands"
            " arrive faster than it finishes them.",
            registry=r,
        )
        # Production Kafka (issue 12). Topic labels are the pipeline's own topic names.
        self.topic_under_replicated = Gauge(
            "instant_propagation_topic_under_replicated",
            "1 when a topic's replication factor or min.insync.replicas is below the configured.",
            ["topic"],
            registry=r,
        )
        self.producer_rebuilds = Counter(
            "instant_propagation_producer_rebuilds_total",
            "Kafka producers built anew after a fatal idempotence error (no process restart).",
            ["component", "error"],
            registry=r,
        )

    # Label mapping: every value below is from a fixed set or a budget.
    def kind_label(self, kind: str) -> str:
        return kind if kind in self.known_kinds else UNKNOWN_KIND_LABEL

    def record_outcome(self, event: OutcomeEvent) -> None:
        kind = self.kind_label(event.kind)
        # One child per (outcome, kind), bounded by the enum and the known kinds: labels()
        # per event was 2% of the worker's CPU at saturation (issue 16).
        child = self._outcome_children.get((event.outcome, kind))
        if child is None:
            child = self._outcome_children[(event.outcome, kind)] = self.outcomes.labels(
                event.outcome.value, kind
            )
        child.inc()
        if event.outcome is Outcome.UNEXPECTED_SKIP or (
            event.outcome is Outcome.DEAD_LETTERED and event.skip_reason_bucket
        ):
            self.unexpected_skip.labels(
                kind,
                bounded(event.resource_type, KNOWN_RESOURCE_TYPES),
                bounded(event.skip_reason_bucket or OTHER_BUCKET, BUCKETS, OTHER_BUCKET),
            ).inc()
        if event.dead_letter_reason is not None:
            self.dead_lettered.labels(
                *self._dead_letter_labels(event.dead_letter_reason, kind)
            ).inc()

    def _dead_letter_labels(self, reason: DeadLetterReason, kind_label: str) -> tuple[str, str]:
        return reason.value, (
            UNKNOWN_KIND_LABEL if reason is DeadLetterReason.UNKNOWN_KIND else kind_label
        )

    def expose_dead_letter_series(self) -> None:
        """Export every dead-letter series at 0 before the first dead letter.

        ``increase()`` cannot see the first value of a new series: without a scraped 0, a
        process's first dead letter of a reason and kind would never fire the alert.
        """
        for reason in DeadLetterReason:
            for kind in (*sorted(self.known_kinds), UNKNOWN_KIND_LABEL):
                self.dead_lettered.labels(*self._dead_letter_labels(reason, kind))

    def record_unknown_kind(self, kind: str) -> None:
        self.unknown_kind.labels(self._unknown_kinds(kind)).inc()

    def record_invalid(self, reason: str, topic: str) -> None:
        self.invalid_commands.labels(bounded(reason, UNDECODABLE_REASONS), topic).inc()

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        """Current value of one series (0 when absent): what tests assert deltas on."""
        value = self.registry.get_sample_value(name, labels or {})
        return 0.0 if value is None else value

    def series_count(self, metric_prefix: str) -> int:
        return sum(
            1
            for family in self.registry.collect()
            for s in family.samples
            if s.name.startswith(metric_prefix)
        )


def serve(metrics: Metrics, port: int, host: str = "127.0.0.1") -> int:
    """Serve /metrics in a background thread; returns the bound port (0 picks a free one)."""
    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    return int(server.server_port)
