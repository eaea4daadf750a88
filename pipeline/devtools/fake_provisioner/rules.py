"""Failure-injection rules of the fake provisioner, and the pure function that applies them."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import grpc

from pipeline.domain.errors import ConfigError

ACTIONS = ("ok", "skip", "error", "apply_then_error")
METHODS = ("RegradeResource", "SuspendResource", "ResumeResource")
# Status names an error rule may use, mapped to the grpc code.
STATUS_CODES = {c.name: c for c in grpc.StatusCode if c is not grpc.StatusCode.OK}


@dataclass(frozen=True)
class Rule:
    """One failure-injection rule; the first rule that matches and fires decides a call."""

    match: str = "*"  # fnmatch glob over resource_id
    method: str | None = None  # e.g. "RegradeResource"; None = every method
    action: str = "ok"  # ok | skip | error | apply_then_error
    code: str = "UNAVAILABLE"  # status name for error actions
    reason: str = ""  # skip reason
    latency_ms: float = 0  # sleep before answering, whatever the action
    rate: float = 1.0  # probability that the rule fires (seeded, so deterministic)
    times: int | None = None  # fire only for the first N calls per idempotency key

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, not {self.action!r}")
        if self.method is not None and self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS} or null, not {self.method!r}")
        if self.code not in STATUS_CODES:
            raise ValueError(f"code must be a non-OK gRPC status name, not {self.code!r}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        if self.times is not None and self.times < 0:
            raise ValueError("times must be >= 0 or null")
        if self.latency_ms < 0:
            raise ValueError("latency_ms must be >= 0")

    @classmethod
    def from_dict(cls, data: Any) -> Rule:
        if not isinstance(data, dict):
            raise ValueError(f"a rule must be a JSON object, not {data!r}")
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            # A typo ("latency") must not silently turn into a rule that does nothing.
            raise ValueError(f"unknown rule fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rules_from_json(data: Any) -> list[Rule]:
    if not isinstance(data, list):
        raise ValueError("rules must be a JSON list of rule objects")
    return [Rule.from_dict(item) for item in data]


def load_rules(path: str | Path) -> list[Rule]:
    """Rules from a JSON file; a broken file is a configuration error with a clear message."""
    try:
        return rules_from_json(json.loads(Path(path).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot load provisioner rules from {str(path)!r}: {exc}") from exc


def choose_rule(
    rules: Sequence[Rule],
    method: str,
    resource_id: str,
    calls_for_key: int,
    rng: random.Random,
) -> Rule | None:
    """The rule that decides a call, or None (= plain ok).

    ``calls_for_key`` counts the earlier calls with the same idempotency key. ``rng`` is drawn
    only for a rule that otherwise matches, so a seeded run is reproducible.
    """
    for rule in rules:
        if rule.method is not None and rule.method != method:
            continue
        if rule.match != "*" and not fnmatchcase(resource_id, rule.match):
            continue
        if rule.times is not None and calls_for_key >= rule.times:
            continue
        if rule.rate < 1.0 and rng.random() >= rule.rate:
            continue
        return rule
    return None
