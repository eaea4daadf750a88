"""An attacker-controlled kind or reason can never create series beyond a fixed budget."""

import random
import string
from dataclasses import replace

from factories import outcome_event

from pipeline.domain.events import DeadLetterReason, Outcome, OutcomeEvent
from pipeline.domain.registry import build_registry
from pipeline.runtime.metrics import Metrics


def _event(kind: str, reason: str, resource_type: str, i: int) -> OutcomeEvent:
    from pipeline.domain.classify import bucket

    return outcome_event(
        i,
        1,
        Outcome.UNEXPECTED_SKIP if i % 2 else Outcome.DEAD_LETTERED,
        event_id=str(i),
        kind=kind,
        resource_type=resource_type,
        skip_reason=reason,
        skip_reason_bucket=bucket(reason),
        dead_letter_reason=None if i % 2 else DeadLetterReason.UNKNOWN_KIND,
    )


def test_ten_thousand_distinct_kinds_and_reasons_stay_within_budget() -> None:
    metrics = Metrics(build_registry().kinds)
    rng = random.Random(7)
    for i in range(10_000):
        kind = "".join(rng.choices(string.ascii_lowercase + "_", k=12))
        reason = "".join(rng.choices(string.printable, k=40))
        rtype = "".join(rng.choices(string.ascii_lowercase, k=8))
        metrics.record_unknown_kind(kind)
        metrics.record_outcome(_event(kind, reason, rtype, i))
        metrics.record_invalid(reason, "propagations")

    # unknown kinds: the budget plus the overflow series
    assert metrics.series_count("instant_propagation_unknown_kind_total") == (
        Metrics.UNKNOWN_KIND_BUDGET + 1
    )
    # kind label is a known kind or "unknown_kind"; resource_type one of 8 or "other";
    # skip_reason one of the 7 buckets
    assert metrics.series_count("instant_propagation_unexpected_skip_total") <= 1 * 9 * 7
    assert metrics.series_count("instant_propagation_dead_lettered_total") <= 3 * 5
    assert metrics.series_count("instant_propagation_outcomes_total") <= 5 * 5
    assert metrics.series_count("instant_propagation_invalid_commands_total") == 1
    assert (
        metrics.sample("instant_propagation_unknown_kind_total", {"kind": "other"})
        == 10_000 - Metrics.UNKNOWN_KIND_BUDGET
    )


def test_unsafe_label_values_never_become_series() -> None:
    metrics = Metrics(build_registry().kinds)
    metrics.record_unknown_kind('evil"} 1\n# injected')
    metrics.record_unknown_kind("A" * 500)
    assert metrics.sample("instant_propagation_unknown_kind_total", {"kind": "other"}) == 2.0


def test_every_dead_letter_series_is_exported_at_zero_before_the_first_dead_letter() -> None:
    # increase() ignores a series' first sample: the alert on dead letters needs a scraped 0
    # of exactly the series a dead letter later increments.
    metrics = Metrics(build_registry().kinds)
    metrics.expose_dead_letter_series()
    name = "instant_propagation_dead_lettered_total"
    exposed = metrics.series_count(name)
    assert exposed == 2 * (len(metrics.known_kinds) + 1) + 1
    assert (
        metrics.registry.get_sample_value(
            name, {"reason": "max_attempts", "kind": "tier_elevation"}
        )
        == 0
    )
    kinds = [*metrics.known_kinds, "kind_from_a_newer_api"]
    for reason in DeadLetterReason:
        for kind in kinds:
            metrics.record_outcome(
                replace(_event(kind, "r", "postgres", 0), dead_letter_reason=reason)
            )
    assert metrics.series_count(name) == exposed  # each dead letter landed on a 0 series
    total = sum(s.value for f in metrics.registry.collect() for s in f.samples if s.name == name)
    assert total == len(DeadLetterReason) * len(kinds)
