"""Each alert fires when it should, with the right labels, and stays silent otherwise.

The cases are `promtool test rules` files in tests/alerts, one per alert; this runs them (one
pytest test each) and checks the shipped Prometheus config with `promtool check config`.
promtool comes with the Debian package `prometheus` (.ci/run installs it); without it these
tests fail rather than skip, so CI cannot pass by checking nothing.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
PROMETHEUS_DIR = ROOT / "compose" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
CASES = ROOT / "tests" / "alerts"


def _alert_names() -> list[str]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule["alert"] for group in doc["groups"] for rule in group["rules"]]


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool not found: install the Debian package `prometheus` (.ci/run does)"
    return subprocess.run(
        [exe, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def test_every_alert_has_a_case_file_and_every_case_file_an_alert() -> None:
    assert sorted(_alert_names()) == sorted(p.stem for p in CASES.glob("*.yml"))


@pytest.mark.parametrize("alert", _alert_names())
def test_alert_fires_and_stays_silent_as_its_cases_say(alert: str) -> None:
    case = CASES / f"{alert}.yml"
    doc = yaml.safe_load(case.read_text())
    evals = [e for t in doc["tests"] for e in t["alert_rule_test"]]
    assert {e["alertname"] for e in evals} == {alert}, f"{case.name} tests other alerts"
    assert any(e["exp_alerts"] for e in evals), f"{case.name} never expects {alert} to fire"
    assert any(not e["exp_alerts"] for e in evals), f"{case.name} never expects silence"
    result = promtool("test", "rules", case)
    assert result.returncode == 0, result.stdout + result.stderr


def _with_expr(alert: str, expr: str, tmp_path: Path) -> Path:
    """A copy of the rules with one alert's expression replaced, and its case file aimed at it."""
    rules: dict[str, Any] = yaml.safe_load(ALERTS.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule["alert"] == alert:
                rule["expr"] = expr
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    case: dict[str, Any] = yaml.safe_load((CASES / f"{alert}.yml").read_text())
    case["rule_files"] = [str(tmp_path / "alerts.yml")]
    out = tmp_path / f"{alert}.yml"
    out.write_text(yaml.safe_dump(case))
    return out


@pytest.mark.parametrize("alert", _alert_names())
@pytest.mark.parametrize("planted", ["vector(1) > 2", "vector(1) > 0"], ids=["never", "always"])
def test_a_planted_broken_rule_fails_its_cases(alert: str, planted: str, tmp_path: Path) -> None:
    # An alert that never fires, or always fires without its labels, must fail its own cases:
    # each file holds a firing case and a silent case that matter.
    result = promtool("test", "rules", _with_expr(alert, planted, tmp_path))
    assert result.returncode != 0, result.stdout


def test_shipped_prometheus_config_passes_promtool_check_config() -> None:
    result = promtool("check", "config", CONFIG)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout, result.stdout


def test_check_config_fails_when_the_rule_file_is_not_beside_the_config(tmp_path: Path) -> None:
    # The witness for the test above: the rule path is really resolved, not just parsed.
    lone = tmp_path / "prometheus.yml"
    shutil.copy(CONFIG, lone)
    result = promtool("check", "config", lone)
    assert result.returncode != 0, result.stdout
