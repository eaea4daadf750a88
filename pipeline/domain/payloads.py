"""Per-kind payload rules, shared by the outbox (refuse early) and the processor (dead-letter)."""

from __future__ import annotations

from typing import Any

REGRADE_KINDS = frozenset({"tier_elevation", "tier_demotion"})
PLAIN_KINDS = frozenset({"resource_suspend", "resource_resume"})
MAX_TIER_LENGTH = 64


def payload_problem(kind: str, payload: Any) -> str | None:
    """Why ``payload`` is not valid for ``kind``, or None when it is.

    Unknown kinds are not judged here: that is the registry's call (retry, then dead-letter).
    """
    if not isinstance(payload, dict):
        return f"payload must be a JSON object, got {type(payload).__name__}"
    if kind in REGRADE_KINDS:
        tier = payload.get("target_tier")
        if not isinstance(tier, str) or not tier.strip():
            return "target_tier must be a non-empty string"
        if len(tier) > MAX_TIER_LENGTH:
            return f"target_tier longer than {MAX_TIER_LENGTH} characters"
    return None
