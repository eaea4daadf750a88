"""compose/docker-compose.yml only names settings the pipeline knows, and wires start-up order.

Static checks of the parsed YAML: no `docker compose` CLI is needed (none is installable
here: Debian ships only the legacy 1.29 tool, which predates this file's format), so nothing
in this module depends on a tool that may be missing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from pipeline.runtime.config import Config

ROOT = Path(__file__).resolve().parents[3]
COMPOSE_FILE = ROOT / "compose" / "docker-compose.yml"
COMPONENTS = ("relay", "worker", "projector")
REQUIRED = (
    "PIPELINE_DATABASE_URL",
    "PIPELINE_KAFKA_BOOTSTRAP",
    "PIPELINE_PROVISIONER_ADDR",
    "PIPELINE_TOPIC_PREFIX",
)


def _services() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE_FILE.read_text())  # resolves the x-* anchors and << merges
    services: dict[str, Any] = doc["services"]
    return services


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the KEY=VALUE list form
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_every_pipeline_variable_is_a_config_field() -> None:
    known = {f"PIPELINE_{f.name.upper()}" for f in dataclasses.fields(Config)}
    seen = 0
    for name, service in _services().items():
        for var in _environment(service):
            if var.startswith("PIPELINE_"):
                seen += 1
                assert var in known, (
                    f"service {name}: {var} is not a pipeline.runtime.config setting"
                )
    assert seen, "no PIPELINE_ variables found at all"


def test_components_run_the_pipeline_image_with_full_settings() -> None:
    services = _services()
    for name in ("migrate", *COMPONENTS):
        env = _environment(services[name])
        missing = [var for var in REQUIRED if var not in env]
        assert not missing, f"service {name} lacks {missing}"
        assert services[name]["command"][0] == "pipeline"
    commands = {name: services[name]["command"][1] for name in COMPONENTS}
    assert commands == {"relay": "relay", "worker": "worker", "projector": "project"}
    assert services["provisioner"]["command"][:2] == ["pipeline", "fake-provisioner"]


def test_start_up_order() -> None:
    services = _services()
    for name in COMPONENTS:
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("kafka", "postgres"):
        assert "healthcheck" in services[name], name
    kafka_env = _environment(services["kafka"])
    assert kafka_env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert kafka_env["KAFKA_PROCESS_ROLES"] == "broker,controller"
