"""The health server: /metrics from the given registry, /healthz heartbeat, /readyz checks."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, Counter

from pipeline.domain.errors import PipelineError
from pipeline.runtime import httpd


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def registry() -> CollectorRegistry:
    r = CollectorRegistry()
    Counter("demo_things_total", "things", registry=r).inc(3)
    return r


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def checks() -> dict[str, bool]:
    return {"postgres": True, "kafka": True}


@pytest.fixture
def server(
    registry: CollectorRegistry, clock: FakeClock, checks: dict[str, bool]
) -> Iterator[httpd.HealthServer]:
    health = httpd.Health(stale_after=10.0, ready=lambda: dict(checks), clock=clock)
    srv = httpd.start(registry, 0, "127.0.0.1", health)
    try:
        yield srv
    finally:
        srv.close()


def get(port: int, path: str) -> tuple[int, str, bytes]:
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.headers["Content-Type"], err.read()


def get_json(port: int, path: str) -> tuple[int, dict[str, Any]]:
    code, ctype, body = get(port, path)
    assert ctype == "application/json"
    return code, orjson.loads(body)


def test_metrics_come_from_the_given_registry(server: httpd.HealthServer) -> None:
    code, ctype, body = get(server.port, "/metrics")
    assert code == 200
    assert ctype.startswith("text/plain")
    assert "demo_things_total 3.0" in body.decode()


def test_healthz_follows_the_heartbeat(server: httpd.HealthServer, clock: FakeClock) -> None:
    assert get_json(server.port, "/healthz") == (
        200,
        {"status": "alive", "heartbeat_age_seconds": 0.0, "stale_after_seconds": 10.0},
    )
    clock.now += 10.0
    assert get_json(server.port, "/healthz")[0] == 200  # exactly at the threshold: alive
    clock.now += 0.5
    assert get_json(server.port, "/healthz") == (
        503,
        {"status": "stale", "heartbeat_age_seconds": 10.5, "stale_after_seconds": 10.0},
    )


def test_beat_revives(registry: CollectorRegistry, clock: FakeClock) -> None:
    health = httpd.Health(stale_after=5.0, ready=dict, clock=clock)
    srv = httpd.start(registry, 0, "127.0.0.1", health)
    try:
        clock.now += 6
        assert get_json(srv.port, "/healthz")[0] == 503
        health.beat()
        assert get_json(srv.port, "/healthz")[0] == 200
    finally:
        srv.close()


def test_readyz_needs_every_check(server: httpd.HealthServer, checks: dict[str, bool]) -> None:
    assert get_json(server.port, "/readyz") == (
        200,
        {"status": "ready", "checks": {"postgres": True, "kafka": True}},
    )
    checks["kafka"] = False
    assert get_json(server.port, "/readyz") == (
        503,
        {"status": "not_ready", "checks": {"postgres": True, "kafka": False}},
    )


def test_readyz_failing_check_is_503_not_500(registry: CollectorRegistry) -> None:
    def broken() -> dict[str, bool]:
        raise RuntimeError("pool closed")

    srv = httpd.start(registry, 0, "127.0.0.1", httpd.Health(ready=broken))
    try:
        assert get_json(srv.port, "/readyz") == (
            503,
            {"status": "not_ready", "checks": {}, "error": "pool closed"},
        )
    finally:
        srv.close()


def test_no_checks_is_not_ready(registry: CollectorRegistry) -> None:
    srv = httpd.start(registry, 0, "127.0.0.1", httpd.Health())
    try:
        code, doc = get_json(srv.port, "/readyz")
        assert (code, doc["status"]) == (503, "not_ready")
        code, doc = get_json(srv.port, "/nope")
        assert code == 404
    finally:
        srv.close()


def test_serve_returns_the_bound_port_and_a_taken_port_is_a_pipeline_error(
    registry: CollectorRegistry,
) -> None:
    port = httpd.serve(registry, 0, "127.0.0.1", httpd.Health())
    assert port > 0
    assert get(port, "/metrics")[0] == 200
    with pytest.raises(PipelineError, match="cannot serve HTTP"):
        httpd.serve(registry, port, "127.0.0.1", httpd.Health())
