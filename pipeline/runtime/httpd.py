"""A component's HTTP face: ``/metrics``, ``/healthz`` (liveness) and ``/readyz`` (readiness).

A small threaded stdlib server on a daemon thread. Liveness is a heartbeat the component
updates from its main loop (``Health.beat`` or ``heartbeat``): a loop that is blocked or dead
stops beating and ``/healthz`` turns 503 once the beat is older than ``stale_after``.
Readiness is a callable the component provides, returning named checks (e.g. ``postgres``,
``kafka``); ``/readyz`` is 200 only when every check is true.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from pipeline.domain.errors import PipelineError

ReadyCheck = Callable[[], dict[str, bool]]


class Health:
    """Liveness heartbeat and readiness checks of one component; thread-safe."""

    def __init__(
        self,
        *,
        stale_after: float = 30.0,
        ready: ReadyCheck | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stale_after = stale_after
        self._ready = ready
        self._clock = clock
        self._last_beat = clock()
        self._lock = threading.Lock()

    def beat(self) -> None:
        with self._lock:
            self._last_beat = self._clock()

    def set_ready_check(self, ready: ReadyCheck) -> None:
        self._ready = ready

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        with self._lock:
            age = self._clock() - self._last_beat
        alive = age <= self.stale_after
        return alive, {
            "status": "alive" if alive else "stale",
            "heartbeat_age_seconds": round(age, 3),
            "stale_after_seconds": self.stale_after,
        }

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        if self._ready is None:
            return False, {"status": "not_ready", "checks": {}, "error": "no readiness check"}
        try:
            checks = {str(k): bool(v) for k, v in self._ready().items()}
        except Exception as exc:  # a failing check means "not ready", never a 500
            return False, {"status": "not_ready", "checks": {}, "error": str(exc)[:300]}
        ok = bool(checks) and all(checks.values())
        return ok, {"status": "ready" if ok else "not_ready", "checks": checks}


async def heartbeat(health: Health, stop: asyncio.Event, interval: float = 1.0) -> None:
    """Beat from the event loop until ``stop``: a blocked loop stops beating."""
    while not stop.is_set():
        health.beat()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)


@dataclass
class HealthServer:
    server: ThreadingHTTPServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def _handler(registry: CollectorRegistry, health: Health) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "pipeline"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
                self._send(200, encoder(registry), content_type)
            elif path == "/healthz":
                self._json(*health.liveness())
            elif path == "/readyz":
                self._json(*health.readiness())
            else:
                self._send(
                    404,
                    orjson.dumps(
                        {"error": "not found", "paths": ["/metrics", "/healthz", "/readyz"]}
                    ),
                    "application/json",
                )

        def _json(self, ok: bool, body: dict[str, Any]) -> None:
            self._send(200 if ok else 503, orjson.dumps(body), "application/json")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # scrapes every few seconds would drown the component's own log lines

    return Handler


def start(registry: CollectorRegistry, port: int, host: str, health: Health) -> HealthServer:
    """Serve on a daemon thread; ``port`` 0 picks a free one (see ``HealthServer.port``)."""
    try:
        server = ThreadingHTTPServer((host, port), _handler(registry, health))
    except OSError as exc:
        raise PipelineError(f"cannot serve HTTP on {host}:{port}: {exc}") from exc
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="httpd", daemon=True)
    thread.start()
    return HealthServer(server, thread)


def serve(registry: CollectorRegistry, port: int, host: str, health: Health) -> int:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz``; returns the bound port."""
    return start(registry, port, host, health).port
