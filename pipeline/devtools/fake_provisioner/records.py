"""What the fake provisioner records: every call it answered and every effect it made, so a
test can prove that no regrade was lost or applied twice."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Effect:
    """A change the provisioner made. Two for one key would be a double application."""

    idempotency_key: str
    method: str
    team_id: str
    resource_type: str
    resource_id: str
    target_tier: str
    at: float  # unix seconds
    # The applying call that made it: its place in the fake's call sequence and the fake's
    # own monotonic clock, so order checks need not trust the pipeline's record.
    seq: int = 0
    mono: float = 0.0


@dataclass(frozen=True, slots=True)
class Call:
    """One RPC as the provisioner saw it."""

    idempotency_key: str
    method: str
    resource_id: str
    outcome: str  # applied | replayed | skipped | error:CODE | cancelled
    at: float
    seq: int = 0  # 1, 2, ... in the order calls finished, over the fake's whole life
    mono: float = 0.0  # time.monotonic() when it finished
    # The call reached the point of applying: it applied, would have applied but the key
    # already had (replayed), or applied and then answered an error (apply_then_error).
    applying: bool = False
