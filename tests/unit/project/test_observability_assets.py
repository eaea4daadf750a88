"""The dashboard, the alert rules and the Prometheus config only name series the code exports.

A renamed metric would otherwise leave a dashboard panel empty and an alert silent, and
nobody notices a silent alert until the night it should have fired.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

import yaml
from prometheus_client.metrics_core import Metric

from pipeline.domain.registry import build_registry
from pipeline.runtime.metrics import Metrics

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = ROOT / "compose"
DASHBOARD = COMPOSE / "grafana" / "dashboards" / "pipeline.json"
ALERTS = COMPOSE / "prometheus" / "alerts.yml"
PROMETHEUS = COMPOSE / "prometheus" / "prometheus.yml"
DATASOURCES = COMPOSE / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = COMPOSE / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"
COMPOSE_FILE = COMPOSE / "docker-compose.yml"

METRIC_NAME = re.compile(r"instant_propagation_[a-z_]+")
# The series the alerts and the issue name explicitly; each must stay on the dashboard too.
DASHBOARD_MUST_SHOW = {
    "instant_propagation_outcomes_total",
    "instant_propagation_dead_lettered_total",
    "instant_propagation_unexpected_skip_total",
    "instant_propagation_handler_seconds_bucket",
    "instant_propagation_consumer_lag",
    "instant_propagation_consumer_lag_seconds",
    "instant_propagation_outbox_backlog",
    "instant_propagation_outbox_backlog_age_seconds",
    "instant_propagation_relay_published_total",
    "instant_propagation_relay_rescued_total",
}
ALERTS_MUST_WATCH = {
    "instant_propagation_dead_lettered_total",
    "instant_propagation_unexpected_skip_total",
    "instant_propagation_consumer_lag",
    "instant_propagation_consumer_lag_seconds",
    "instant_propagation_outbox_backlog_age_seconds",
    "instant_propagation_unknown_kind_total",
}


def _sample_names(family: Metric) -> set[str]:
    """The series names a family exposes, whether or not a sample exists yet."""
    if family.type == "counter":
        return {f"{family.name}_total"}
    if family.type == "histogram":
        return {f"{family.name}{s}" for s in ("_bucket", "_sum", "_count")}
    if family.type == "summary":
        return {family.name, f"{family.name}_sum", f"{family.name}_count"}
    return {family.name}


def exported_names() -> set[str]:
    metrics = Metrics(build_registry().kinds)
    return {n for family in metrics.registry.collect() for n in _sample_names(family)}


def _dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def _panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in doc.get("panels", []):
        out.append(panel)
        out.extend(panel.get("panels", []))  # panels folded inside a row
    return out


def _alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    assert doc["groups"], "alerts.yml has no rule groups"
    rules: list[dict[str, Any]] = []
    for group in doc["groups"]:
        assert group["name"] and group["rules"], group
        rules.extend(group["rules"])
    return rules


def _runbook_anchors() -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in RUNBOOK.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^a-z0-9 _-]", "", title).replace(" ", "-"))
    return anchors


def test_exported_names_cover_every_metric_kind() -> None:
    names = exported_names()
    assert "instant_propagation_dead_lettered_total" in names
    assert "instant_propagation_handler_seconds_bucket" in names
    assert "instant_propagation_outbox_backlog" in names


def test_dashboard_is_valid_and_names_only_exported_series() -> None:
    doc = _dashboard()
    assert doc["title"] and doc["uid"]
    panels = _panels(doc)
    assert panels, "the dashboard has no panels"
    exported = exported_names()
    used: set[str] = set()
    for panel in panels:
        if panel.get("type") == "row":
            continue
        assert panel.get("title"), panel
        targets = panel.get("targets") or []
        assert targets, f"panel {panel['title']!r} has no targets"
        for target in targets:
            assert target.get("expr"), f"panel {panel['title']!r} has a target without expr"
            found = set(METRIC_NAME.findall(target["expr"]))
            assert found, f"panel {panel['title']!r} queries no pipeline metric"
            unknown = found - exported
            assert not unknown, f"panel {panel['title']!r} names unexported {sorted(unknown)}"
            used |= found
    assert not DASHBOARD_MUST_SHOW - used, f"dashboard lacks {sorted(DASHBOARD_MUST_SHOW - used)}"


def test_alert_rules_are_complete_and_name_only_exported_series() -> None:
    exported = exported_names()
    anchors = _runbook_anchors()
    watched: set[str] = set()
    for rule in _alert_rules():
        name = rule.get("alert")
        assert name, rule
        assert rule.get("expr"), name
        assert "for" in rule, f"{name}: no 'for'"
        assert rule["labels"]["severity"] in {"page", "ticket"}, name
        url = rule["annotations"]["runbook_url"]
        page, _, anchor = url.partition("#")
        assert page.endswith("docs/runbook.md") and anchor, f"{name}: runbook_url {url!r}"
        assert anchor in anchors, f"{name}: docs/runbook.md has no section #{anchor}"
        found = set(METRIC_NAME.findall(rule["expr"]))
        assert not found - exported, f"{name} names unexported {sorted(found - exported)}"
        watched |= found
    assert not ALERTS_MUST_WATCH - watched, f"no alert on {sorted(ALERTS_MUST_WATCH - watched)}"


def test_prometheus_scrapes_every_component_and_loads_the_rules() -> None:
    doc = yaml.safe_load(PROMETHEUS.read_text())
    assert any(Path(f).name == ALERTS.name for f in doc["rule_files"])
    targets = {
        t for job in doc["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    }
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    for component in ("relay", "worker", "projector"):
        port = _environment(services[component])["PIPELINE_METRICS_PORT"]
        assert f"{component}:{port}" in targets, f"prometheus does not scrape {component}"
    assert set(METRIC_NAME.findall(PROMETHEUS.read_text())) <= exported_names()


def test_rule_paths_resolve_to_the_alerts_both_locally_and_in_the_container() -> None:
    # Prometheus resolves a relative rule path against the config file's folder: locally that
    # is compose/prometheus, in the container the folder compose mounts the config into.
    rule_files = yaml.safe_load(PROMETHEUS.read_text())["rule_files"]
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in services["prometheus"]["volumes"])
    config_dir = PurePosixPath(mounts["./prometheus/prometheus.yml"]).parent
    for rule_file in rule_files:
        assert not Path(rule_file).is_absolute(), f"{rule_file}: breaks promtool outside Docker"
        assert (PROMETHEUS.parent / rule_file).resolve() == ALERTS
        assert str(config_dir / rule_file) == mounts["./prometheus/alerts.yml"]


def test_grafana_provisioning_points_at_prometheus_and_the_dashboard() -> None:
    datasource = yaml.safe_load(DATASOURCES.read_text())["datasources"][0]
    assert datasource["type"] == "prometheus"
    assert datasource["url"].startswith("http://prometheus:")
    uids = {
        t["datasource"]["uid"]
        for p in _panels(_dashboard())
        for t in p.get("targets", [])
        if isinstance(t.get("datasource"), dict)
    }
    assert uids <= {datasource["uid"]}, uids
    provider = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"][0]
    grafana = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["grafana"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"])
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_compose_serves_metrics_to_prometheus_and_mounts_the_assets() -> None:
    # Which PIPELINE_* names compose may use is tests/unit/project/test_compose.py's job; this
    # checks what the monitoring services need from the rest of the file.
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    for component in ("relay", "worker", "projector"):
        env = _environment(services[component])
        # The default 127.0.0.1 would be unreachable from the prometheus container.
        assert env["PIPELINE_METRICS_HOST"] == "0.0.0.0", component
    mounted = {v.split(":")[0] for v in services["prometheus"]["volumes"]}
    assert {"./prometheus/prometheus.yml", "./prometheus/alerts.yml"} <= mounted
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    mounted = {v.split(":")[0] for v in services["grafana"]["volumes"]}
    assert {"./grafana/provisioning", "./grafana/dashboards"} <= mounted
