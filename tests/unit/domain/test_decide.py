from datetime import UTC, datetime, timedelta

import pytest

from pipeline.domain.decide import (
    RetryPolicy,
    decide_invalid,
    decide_reply,
    decide_unknown_kind,
    dedupe_action,
)
from pipeline.domain.events import Applied, CallFailed, DeadLetterReason, Outcome, Skipped

NOW = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = RetryPolicy(max_attempts=10, scale=1.0)


def test_applied() -> None:
    d = decide_reply(1, Applied(), NOW, POLICY)
    assert d.outcome is Outcome.APPLIED
    assert d.skip_reason is None and d.dead_letter_reason is None


def test_allowed_skip_is_applied_and_keeps_its_reason() -> None:
    d = decide_reply(3, Skipped("Already at target tier"), NOW, POLICY)
    assert d.outcome is Outcome.APPLIED
    assert d.skip_reason == "Already at target tier"


def test_unexpected_skip_is_never_applied() -> None:
    d = decide_reply(1, Skipped("postgres-admin secret missing"), NOW, POLICY)
    assert d.outcome is Outcome.UNEXPECTED_SKIP
    assert d.outcome is not Outcome.APPLIED
    assert d.skip_reason_bucket == "postgres_admin_secret_missing"
    assert d.next_attempt_at == NOW + timedelta(minutes=1)


def test_unexpected_skip_dead_letters_at_max_attempts() -> None:
    d = decide_reply(10, Skipped("pod db-0 not found"), NOW, POLICY)
    assert d.outcome is Outcome.DEAD_LETTERED
    assert d.dead_letter_reason is DeadLetterReason.MAX_ATTEMPTS
    assert d.skip_reason_bucket == "pod_not_found"
    assert d.next_attempt_at is None


@pytest.mark.parametrize(
    ("attempt", "outcome", "next_in"),
    [
        (1, Outcome.RETRYING, timedelta(minutes=1)),
        (2, Outcome.RETRYING, timedelta(minutes=5)),
        (9, Outcome.RETRYING, timedelta(hours=8)),
        (10, Outcome.DEAD_LETTERED, None),
        (11, Outcome.DEAD_LETTERED, None),
    ],
)
def test_retryable_call_failure(attempt: int, outcome: Outcome, next_in: timedelta | None) -> None:
    d = decide_reply(attempt, CallFailed("UNAVAILABLE", "down", True), NOW, POLICY)
    assert d.outcome is outcome
    assert d.error == "UNAVAILABLE: down"
    assert d.next_attempt_at == (NOW + next_in if next_in else None)
    if outcome is Outcome.DEAD_LETTERED:
        assert d.dead_letter_reason is DeadLetterReason.MAX_ATTEMPTS


def test_non_retryable_failure_dead_letters_at_once_as_invalid_payload() -> None:
    d = decide_reply(1, CallFailed("INVALID_ARGUMENT", "bad tier", False), NOW, POLICY)
    assert d.outcome is Outcome.DEAD_LETTERED
    assert d.dead_letter_reason is DeadLetterReason.INVALID_PAYLOAD


@pytest.mark.parametrize("attempt", [1, 2, 9])
def test_unknown_kind_retries_below_max_and_is_never_dead_lettered_at_attempt_1(
    attempt: int,
) -> None:
    d = decide_unknown_kind(attempt, "tier_teleport", NOW, POLICY)
    assert d.outcome is Outcome.RETRYING
    assert d.next_attempt_at is not None
    assert "tier_teleport" in (d.error or "")


def test_unknown_kind_dead_letters_with_its_own_outcome_at_max() -> None:
    d = decide_unknown_kind(10, "tier_teleport", NOW, POLICY)
    assert d.outcome is Outcome.UNKNOWN_KIND_DEAD_LETTERED
    assert d.dead_letter_reason is DeadLetterReason.UNKNOWN_KIND


def test_invalid_command() -> None:
    d = decide_invalid("target_tier must be a non-empty string")
    assert d.outcome is Outcome.DEAD_LETTERED
    assert d.dead_letter_reason is DeadLetterReason.INVALID_PAYLOAD
    assert d.error == "invalid_payload: target_tier must be a non-empty string"


@pytest.mark.parametrize(
    ("last", "attempt", "action"),
    [(None, 1, "process"), (1, 2, "process"), (2, 2, "reemit"), (3, 2, "drop"), (5, 1, "drop")],
)
def test_dedupe_action(last: int | None, attempt: int, action: str) -> None:
    assert dedupe_action(last, attempt) == action
