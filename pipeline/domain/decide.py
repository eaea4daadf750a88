"""Decisions: what one attempt comes to. Pure functions; no I/O, the clock is an argument."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pipeline.domain import backoff
from pipeline.domain.classify import bucket, is_allowed_skip
from pipeline.domain.events import (
    Applied,
    CallFailed,
    DeadLetterReason,
    Decision,
    Outcome,
    ProvisionReply,
    Skipped,
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = backoff.DEFAULT_MAX_ATTEMPTS
    scale: float = 1.0

    def next_attempt_at(self, attempt: int, now: datetime) -> datetime:
        return backoff.next_attempt_at(attempt, now, self.scale)

    def exhausted(self, attempt: int) -> bool:
        return attempt >= self.max_attempts


def decide_reply(
    attempt: int, reply: ProvisionReply, now: datetime, policy: RetryPolicy
) -> Decision:
    """Turn the provisioner's answer to attempt ``attempt`` into an outcome."""
    match reply:
        case Applied():
            return Decision(Outcome.APPLIED)
        case Skipped(reason=reason) if is_allowed_skip(reason):
            return Decision(Outcome.APPLIED, skip_reason=reason)
        case Skipped(reason=reason):
            # Never `applied`: a skip for a reason we do not recognise is a regrade that did
            # not land, and it must retry and finally dead-letter where an operator sees it.
            b = bucket(reason)
            if policy.exhausted(attempt):
                return Decision(
                    Outcome.DEAD_LETTERED,
                    skip_reason=reason,
                    skip_reason_bucket=b,
                    dead_letter_reason=DeadLetterReason.MAX_ATTEMPTS,
                )
            return Decision(
                Outcome.UNEXPECTED_SKIP,
                skip_reason=reason,
                skip_reason_bucket=b,
                next_attempt_at=policy.next_attempt_at(attempt, now),
            )
        case CallFailed(code=code, message=message, retryable=False):
            return Decision(
                Outcome.DEAD_LETTERED,
                error=f"{code}: {message}",
                dead_letter_reason=DeadLetterReason.INVALID_PAYLOAD,
            )
        case CallFailed(code=code, message=message):
            error = f"{code}: {message}"
            dead = (Outcome.DEAD_LETTERED, DeadLetterReason.MAX_ATTEMPTS)
            return _failed_attempt(attempt, error, now, policy, *dead)
    raise TypeError(f"not a provisioner reply: {reply!r}")  # pragma: no cover


def decide_unknown_kind(attempt: int, kind: str, now: datetime, policy: RetryPolicy) -> Decision:
    """A kind this worker lacks: a newer image may know it, so retry on the schedule first."""
    error = f"unknown kind {kind[:64]!r}: no handler in this worker"
    dead = (Outcome.UNKNOWN_KIND_DEAD_LETTERED, DeadLetterReason.UNKNOWN_KIND)
    return _failed_attempt(attempt, error, now, policy, *dead)


def _failed_attempt(
    attempt: int,
    error: str,
    now: datetime,
    policy: RetryPolicy,
    dead: Outcome,
    reason: DeadLetterReason,
) -> Decision:
    """A failed attempt retries on the schedule until the budget is spent, then dead-letters."""
    if policy.exhausted(attempt):
        return Decision(dead, error=error, dead_letter_reason=reason)
    return Decision(
        Outcome.RETRYING, error=error, next_attempt_at=policy.next_attempt_at(attempt, now)
    )


def decide_invalid(problem: str) -> Decision:
    """An invalid command will never succeed: dead-letter it at once."""
    return Decision(
        Outcome.DEAD_LETTERED,
        error=f"invalid_payload: {problem}",
        dead_letter_reason=DeadLetterReason.INVALID_PAYLOAD,
    )


def dedupe_action(last_attempt: int | None, attempt: int) -> str:
    """What to do with a delivered (propagation, attempt) given the last one processed.

    ``process`` a new attempt; ``reemit`` the recorded outcome of the same attempt (its first
    emission may not have reached the broker); ``drop`` an attempt older than one processed.
    """
    if last_attempt is None or attempt > last_attempt:
        return "process"
    if attempt == last_attempt:
        return "reemit"
    return "drop"
