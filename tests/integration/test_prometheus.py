"""The dashboard and the alerts against a real Prometheus scraping a real pipeline run.

Prometheus loads the shipped config with its targets pointed at this run's components and the
shipped rule file unchanged; only the scrape and evaluation intervals are shortened to 1 s.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaProducer
from harness import Pipeline
from promserver import PrometheusServer
from test_end_to_end import RULES, Path_, seed_workload

from pipeline.devtools.fake_provisioner import FakeProvisioner

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "compose" / "prometheus" / "prometheus.yml"
ALERTS = ROOT / "compose" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "compose" / "grafana" / "dashboards" / "pipeline.json"
SCRAPE_S = 1
STEP_S = 1  # of the range queries: Grafana's $__interval
# Grafana's $__rate_interval: max($__interval + scrape interval, 4 x scrape interval).
RATE_INTERVAL_S = max(STEP_S + SCRAPE_S, 4 * SCRAPE_S)
TEMPLATE_VARS = {
    "$__rate_interval": f"{RATE_INTERVAL_S}s",
    "$__interval": f"{STEP_S}s",
    "$interval": f"{STEP_S}s",
}
# A few of each outcome path of the end-to-end run: every dead-letter reason, an unexpected
# skip, an unknown kind and applied work (handler latency).
WORKLOAD = (
    Path_("ok", 8, ("applied",), True),
    Path_("allowed", 2, ("applied",), False),
    Path_("flakyskip", 2, ("unexpected_skip",) * 2 + ("applied",), True),
    Path_("perm", 2, ("retrying",) * 9 + ("dead_lettered",), False),
    Path_("unknown", 2, ("retrying",) * 9 + ("unknown_kind_dead_lettered",), False, kind="UNKNOWN"),
    Path_("invalid", 2, ("dead_lettered",), False, payload={"target_tier": ""}),
)
EXPECTED_DEAD_LETTER_ALERTS = {
    ("max_attempts", "tier_elevation"),
    ("unknown_kind", "unknown_kind"),
    ("invalid_payload", "tier_elevation"),
}


def scrape_config(ports: dict[str, int]) -> dict[str, Any]:
    """The shipped config, each component's target replaced by this run's /metrics port."""
    config: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    config["global"].update(scrape_interval=f"{SCRAPE_S}s", evaluation_interval=f"{SCRAPE_S}s")
    config["rule_files"] = [str(ALERTS)]
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            static["targets"] = [f"127.0.0.1:{ports[static['labels']['component']]}"]
    return config


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, expr) of every target, Grafana's template variables substituted."""
    doc = json.loads(DASHBOARD.read_text())
    panels = [q for p in doc["panels"] for q in (p, *p.get("panels", []))]
    out = []
    for panel in panels:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in TEMPLATE_VARS.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, f"{panel['title']!r}: unknown template variable in {expr}"
            out.append((panel["title"], expr))
    return out


async def produce_undecodable(bootstrap: str, topic: str) -> None:
    """A message without a readable propagation id: counted as invalid and skipped."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"{not json", key=b"garbage")
    finally:
        await producer.stop()


@pytest.fixture
def pipeline_and_prometheus(
    make_pipeline: Callable[..., Pipeline], tmp_path: Path
) -> Iterator[tuple[Pipeline, PrometheusServer]]:
    p = make_pipeline()
    p.start()
    for name in ("relay", "worker", "projector"):
        p.wait_metrics_up(name)
    workdir = tmp_path / "prometheus"
    workdir.mkdir()
    prom = PrometheusServer(workdir, scrape_config(p.ports))
    prom.start()
    try:
        yield p, prom
    finally:
        prom.stop()


def wait_for(what: str, check: Callable[[], Any], prom: PrometheusServer, p: Pipeline) -> Any:
    deadline = time.monotonic() + 120
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{prom.log()}\n{p.logs()}")
        p.assert_running()
        time.sleep(0.5)


def dead_letter_alerts(prom: PrometheusServer) -> set[tuple[str, str]]:
    return {
        (a["labels"]["reason"], a["labels"]["kind"])
        for a in prom.alerts()
        if a["labels"]["alertname"] == "PropagationDeadLettered" and a["state"] == "firing"
    }


def test_panels_have_data_dead_letters_fire_and_a_stopped_component_shows(
    pipeline_and_prometheus: tuple[Pipeline, PrometheusServer], provisioner: FakeProvisioner
) -> None:
    p, prom = pipeline_and_prometheus
    provisioner.set_rules(RULES)
    start = time.time()

    def all_up() -> bool:
        up = prom.query('up{job="pipeline"} == 1')
        return {s["metric"]["component"] for s in up} == {"relay", "worker", "projector"}

    wait_for("a first scrape of each component", all_up, prom, p)
    # The worker's dead-letter series are scraped at 0 first, so the first one is an increase.
    zeros = prom.query('instant_propagation_dead_lettered_total{component="worker"} == 0')
    assert {(s["metric"]["reason"], s["metric"]["kind"]) for s in zeros} >= (
        EXPECTED_DEAD_LETTER_ALERTS
    )
    assert not dead_letter_alerts(prom)
    assert [r["name"] for g in prom.api("rules")["groups"] for r in g["rules"]] == [
        r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]
    ]

    by_id, _ordered = seed_workload(p.database_url, WORKLOAD)
    asyncio.run(produce_undecodable(p.bootstrap, f"{p.prefix}propagations"))
    p.wait_terminal(list(by_id))

    fired = wait_for(
        "the dead-letter alerts",
        lambda: (got := dead_letter_alerts(prom)) >= EXPECTED_DEAD_LETTER_ALERTS and got,
        prom,
        p,
    )
    assert fired == EXPECTED_DEAD_LETTER_ALERTS
    alerts = {a["labels"]["alertname"] for a in prom.alerts()}
    assert "PropagationPipelineDown" not in alerts

    # Every panel as Grafana draws it: a range query over the run.
    time.sleep(RATE_INTERVAL_S + SCRAPE_S)  # the last samples are scraped
    end = time.time()
    empty = [
        (title, expr)
        for title, expr in panel_queries()
        if not prom.query_range(expr, start, end, STEP_S)
    ]
    assert not empty, f"panels without data: {empty}"

    # The shipped scrape job is the one PropagationPipelineDown watches: a stopped projector
    # turns it pending at once (firing would take the rule's 2 minutes).
    p.signal("projector", signal.SIGTERM)

    def projector_down() -> list[dict[str, Any]]:
        return [
            a
            for a in prom.alerts()
            if a["labels"]["alertname"] == "PropagationPipelineDown" and a["state"] == "pending"
        ]

    (down,) = wait_for("PropagationPipelineDown pending", projector_down, prom, p)
    assert down["labels"]["component"] == "projector"
    assert down["labels"]["instance"] == f"127.0.0.1:{p.ports['projector']}"
