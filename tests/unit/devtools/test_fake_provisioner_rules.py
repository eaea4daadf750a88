"""Rule selection of the fake provisioner: a pure function, pinned table by table."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from pipeline.devtools.fake_provisioner import Rule, choose_rule, load_rules, rules_from_json
from pipeline.domain.errors import ConfigError

FLAKY = Rule(match="db-flaky-*", action="error", code="UNAVAILABLE")
SKIP = Rule(match="db-legacy-*", action="skip", reason="legacy resource")
SUSPEND_ONLY = Rule(method="SuspendResource", action="error", code="INVALID_ARGUMENT")
TWICE = Rule(match="db-twice", action="error", times=2)
CATCH_ALL = Rule(action="ok", latency_ms=5)

TABLE = [
    # (rules, method, resource_id, calls_for_key, expected)
    ((), "RegradeResource", "db-1", 0, None),
    ((FLAKY,), "RegradeResource", "db-flaky-1", 0, FLAKY),
    ((FLAKY,), "RegradeResource", "db-1", 0, None),
    ((FLAKY, SKIP), "RegradeResource", "db-legacy-7", 0, SKIP),
    # first match wins, even when a later rule matches too
    ((FLAKY, CATCH_ALL), "RegradeResource", "db-flaky-1", 0, FLAKY),
    ((CATCH_ALL, FLAKY), "RegradeResource", "db-flaky-1", 0, CATCH_ALL),
    # method filter
    ((SUSPEND_ONLY,), "SuspendResource", "db-1", 0, SUSPEND_ONLY),
    ((SUSPEND_ONLY,), "RegradeResource", "db-1", 0, None),
    ((SUSPEND_ONLY, CATCH_ALL), "ResumeResource", "db-1", 0, CATCH_ALL),
    # times: the first N calls per key, then the rule no longer fires and the next one decides
    ((TWICE,), "RegradeResource", "db-twice", 0, TWICE),
    ((TWICE,), "RegradeResource", "db-twice", 1, TWICE),
    ((TWICE,), "RegradeResource", "db-twice", 2, None),
    ((TWICE, SKIP, CATCH_ALL), "RegradeResource", "db-twice", 5, CATCH_ALL),
    # glob is case-sensitive and anchored
    ((FLAKY,), "RegradeResource", "DB-FLAKY-1", 0, None),
    ((FLAKY,), "RegradeResource", "x-db-flaky-1", 0, None),
    ((Rule(match="db-?"),), "RegradeResource", "db-7", 0, Rule(match="db-?")),
]


@pytest.mark.parametrize(("rules", "method", "resource_id", "calls_for_key", "expected"), TABLE)
def test_choose_rule(
    rules: tuple[Rule, ...],
    method: str,
    resource_id: str,
    calls_for_key: int,
    expected: Rule | None,
) -> None:
    assert choose_rule(rules, method, resource_id, calls_for_key, random.Random(0)) == expected


def _fired(seed: int, rate: float, n: int = 1000) -> list[bool]:
    rng = random.Random(seed)
    rule = Rule(action="error", rate=rate)
    return [choose_rule((rule,), "RegradeResource", f"db-{i}", 0, rng) is rule for i in range(n)]


def test_rate_is_deterministic_for_a_seed() -> None:
    assert _fired(42, 0.3) == _fired(42, 0.3)
    assert _fired(42, 0.3) != _fired(43, 0.3)


def test_rate_fires_about_that_often() -> None:
    assert 250 <= sum(_fired(7, 0.3)) <= 350
    assert all(_fired(7, 1.0))
    assert not any(_fired(7, 0.0))


def test_rate_miss_falls_through_to_next_rule() -> None:
    never = Rule(match="db-*", action="error", rate=0.0)
    assert choose_rule((never, SKIP), "RegradeResource", "db-legacy-1", 0, random.Random(0)) == SKIP


def test_rng_only_drawn_for_matching_rules() -> None:
    # A non-matching rule with a rate must not consume randomness, or adding an unrelated rule
    # would change which calls fail in a seeded run.
    rated = Rule(match="db-other", action="error", rate=0.5)
    rng = random.Random(3)
    choose_rule((rated,), "RegradeResource", "db-1", 0, rng)
    assert rng.random() == random.Random(3).random()


@pytest.mark.parametrize(
    "bad",
    [
        {"action": "explode"},
        {"code": "OK"},
        {"code": "NOPE"},
        {"method": "Regrade"},
        {"rate": 1.5},
        {"times": -1},
        {"latency_ms": -1},
        {"latency": 5},  # typo of latency_ms: rejected, not ignored
    ],
)
def test_invalid_rules_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises((ValueError, TypeError)):
        Rule.from_dict(bad)


def test_rules_round_trip_through_json(tmp_path: Path) -> None:
    rules = [FLAKY, SKIP, SUSPEND_ONLY, TWICE, CATCH_ALL, Rule(rate=0.25)]
    path = tmp_path / "rules.json"
    path.write_text(json.dumps([r.to_dict() for r in rules]))
    assert load_rules(path) == rules
    assert rules_from_json([]) == []


def test_broken_rules_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text('{"action": "error"}')  # an object, not a list
    with pytest.raises(ConfigError, match=r"rules\.json"):
        load_rules(path)
    with pytest.raises(ConfigError):
        load_rules(tmp_path / "missing.json")
