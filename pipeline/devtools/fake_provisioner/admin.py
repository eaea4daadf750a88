"""HTTP admin endpoint, so a test can read and drive a fake provisioner in another process."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from pipeline.devtools.fake_provisioner.rules import Rule, rules_from_json


class Inspectable(Protocol):
    """What the admin endpoint reads and drives (the FakeProvisioner; a protocol, so the
    server can own its admin endpoint without an import cycle)."""

    def set_rules(self, rules: Iterable[Rule]) -> None: ...
    def rules(self) -> list[Rule]: ...
    def effects(self) -> Mapping[str, Sequence[Any]]: ...
    def calls(self) -> Sequence[Any]: ...
    def reset(self) -> None: ...


class AdminServer(ThreadingHTTPServer):
    """Serves :class:`AdminHandler` for one FakeProvisioner; call ``serve_forever`` in a thread."""

    daemon_threads = True

    def __init__(self, addr: tuple[str, int], owner: Inspectable) -> None:
        self.owner = owner
        super().__init__(addr, AdminHandler)


class AdminHandler(BaseHTTPRequestHandler):
    """GET /effects, GET /calls, GET /rules, PUT /rules, POST /reset."""

    server: AdminServer

    def do_GET(self) -> None:
        owner = self.server.owner
        if self.path == "/effects":
            body: Any = {k: [asdict(e) for e in v] for k, v in owner.effects().items()}
        elif self.path == "/calls":
            body = [asdict(c) for c in owner.calls()]
        elif self.path == "/rules":
            body = [r.to_dict() for r in owner.rules()]
        else:
            self._send(404, {"error": f"no such path {self.path}"})
            return
        self._send(200, body)

    def do_PUT(self) -> None:
        if self.path != "/rules":
            self._send(404, {"error": f"no such path {self.path}"})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            rules = rules_from_json(json.loads(self.rfile.read(length) or b"null"))
        except (ValueError, TypeError) as exc:
            self._send(400, {"error": str(exc)})
            return
        self.server.owner.set_rules(rules)
        self._send(200, {"rules": len(rules)})

    def do_POST(self) -> None:
        if self.path != "/reset":
            self._send(404, {"error": f"no such path {self.path}"})
            return
        self.server.owner.reset()
        self._send(200, {"reset": True})

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one stderr line per request would drown the structured log
