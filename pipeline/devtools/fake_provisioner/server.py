"""The fake provisioner's gRPC server: idempotent effects, scripted failures, a full record."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from pipeline.adapters.proto import provisioner_pb2 as pb
from pipeline.adapters.proto import provisioner_pb2_grpc as pb_grpc
from pipeline.devtools.fake_provisioner.admin import AdminServer
from pipeline.devtools.fake_provisioner.records import Call, Effect
from pipeline.devtools.fake_provisioner.rules import STATUS_CODES, Rule, choose_rule
from pipeline.domain.errors import ConfigError

_SERVER_OPTIONS = [
    # A second fake on a busy port must fail to start, not silently share the port.
    ("grpc.so_reuseport", 0),
    # grpc core sheds load past 1000 calls not yet picked up by the Python side (randomly
    # answering CANCELLED up to a hard limit of 3000). As the benchmark's peer this server must
    # take every call the pipeline can throw at it, so both limits are raised far out of reach.
    ("grpc.server.max_pending_requests", 1_000_000),
    ("grpc.server.max_pending_requests_hard_limit", 1_000_000),
]


class _Servicer(pb_grpc.ProvisionerServicer):
    def __init__(self, owner: FakeProvisioner) -> None:
        self._owner = owner

    async def RegradeResource(self, request: Any, context: Any) -> Any:
        return await self._owner._handle("RegradeResource", request, request.target_tier, context)

    async def SuspendResource(self, request: Any, context: Any) -> Any:
        return await self._owner._handle("SuspendResource", request, "", context)

    async def ResumeResource(self, request: Any, context: Any) -> Any:
        return await self._owner._handle("ResumeResource", request, "", context)

    async def ApplyBatch(self, request: Any, context: Any) -> AsyncIterator[Any]:
        if not self._owner.batch_enabled:
            self._owner.batch_refusals += 1
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "ApplyBatch is switched off")
        async for reply in self._owner._batch(request, context):
            yield reply


_BATCH_METHODS = {
    "regrade": "RegradeResource",
    "suspend": "SuspendResource",
    "resume": "ResumeResource",
}


def _unpack(item: Any) -> tuple[str, Any, str]:
    """(single RPC name, its request, target tier) of one ApplyBatch item."""
    which = item.WhichOneof("call")
    if which is None:
        raise ValueError("an ApplyBatch item names no call")
    req = getattr(item, which)
    return _BATCH_METHODS[which], req, req.target_tier if which == "regrade" else ""


class FakeProvisioner:
    """The fake provisioner: ``start()`` serves it in a background thread, state is readable
    from any thread (``effects()``, ``calls()``, ``applied_keys()``), ``stop()`` ends it."""

    def __init__(
        self, rules: Sequence[Rule] = (), seed: int = 0, *, batch_enabled: bool = True
    ) -> None:
        # batch_enabled=False answers ApplyBatch with UNIMPLEMENTED, like a provisioner that
        # implements only the single-call RPCs.
        self.batch_enabled = batch_enabled
        self.batch_refusals = 0
        # One short lock guards all state; it is never held across an await, so latency rules
        # on some calls never slow the others down.
        self._lock = threading.Lock()
        self._rules: tuple[Rule, ...] = tuple(rules)
        self._seed = seed
        self._rng = random.Random(seed)
        self._calls: list[Call] = []
        self._calls_per_key: dict[str, int] = {}
        self._batch_sizes: list[int] = []
        self._effects: dict[str, list[Effect]] = {}
        # Every applying call, per key, in order: a second one is a second application
        # attempt even though the idempotent answer adds no Effect. Only reset() clears it.
        self._applications: dict[str, list[Call]] = {}
        self._seq = 0
        # Bumped by reset(): a call that began before a reset records nothing, so a slow call
        # of one test cannot leak into the next test's record.
        self._generation = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Any = None
        self._admin: AdminServer | None = None
        self._admin_thread: threading.Thread | None = None
        self.address: str | None = None
        self.admin_url: str | None = None

    # -- state, readable from any thread ------------------------------------------------------

    def set_rules(self, rules: Iterable[Rule]) -> None:
        with self._lock:
            self._rules = tuple(rules)

    def rules(self) -> list[Rule]:
        with self._lock:
            return list(self._rules)

    def effects(self) -> dict[str, list[Effect]]:
        with self._lock:
            return {key: list(effects) for key, effects in self._effects.items()}

    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def applications(self) -> dict[str, list[Call]]:
        """Every applying call per idempotency key, in call order (see ``Call.applying``)."""
        with self._lock:
            return {key: list(calls) for key, calls in self._applications.items()}

    def batch_sizes(self) -> list[int]:
        """Items per ApplyBatch round trip, in arrival order."""
        with self._lock:
            return list(self._batch_sizes)

    def applied_keys(self) -> set[str]:
        with self._lock:
            return set(self._effects)

    def reset(self) -> None:
        """Forget calls and effects (and reseed), as if freshly started; rules stay."""
        with self._lock:
            self._calls.clear()
            self._calls_per_key.clear()
            self._batch_sizes.clear()
            self._effects.clear()
            self._applications.clear()
            self._rng = random.Random(self._seed)
            self._generation += 1

    # -- the RPC path -------------------------------------------------------------------------

    async def _handle(self, method: str, req: Any, target_tier: str, context: Any) -> Any:
        outcome, code, detail = await self._one(method, req, target_tier)
        if outcome == "skipped":
            return pb.ProvisionReply(applied=False, skip_reason=detail)
        if outcome.startswith("error:"):
            await context.abort(STATUS_CODES[code], detail)
        return pb.ProvisionReply(applied=True)

    async def _batch(self, request: Any, context: Any) -> AsyncIterator[Any]:
        # Every item goes through exactly the single call's path (same rules, same record).
        # Items without latency are answered together at once; slow ones as each finishes.
        try:
            items = [_unpack(item) for item in request.items]
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        with self._lock:
            self._batch_sizes.append(len(items))
        started = [self._begin(method, req) for method, req, _tier in items]
        slow = [i for i, (_g, rule) in enumerate(started) if rule and rule.latency_ms > 0]
        waiting = set(slow)
        ready = [
            self._result(i, *items[i], *started[i]) for i in range(len(items)) if i not in waiting
        ]
        if ready:
            yield pb.BatchReply(results=ready)

        async def late(i: int) -> Any:
            method, req, _tier = items[i]
            await self._delay(started[i][0], method, req, started[i][1])
            return self._result(i, *items[i], *started[i])

        for next_done in asyncio.as_completed([late(i) for i in slow]):
            yield pb.BatchReply(results=[await next_done])

    def _result(
        self, index: int, method: str, req: Any, tier: str, generation: int, rule: Rule | None
    ) -> Any:
        outcome, code, detail = self._finish(generation, method, req, tier, rule)
        if outcome == "skipped":
            reply = pb.ProvisionReply(applied=False, skip_reason=detail)
            return pb.BatchResult(index=index, code=0, reply=reply)
        if outcome.startswith("error:"):
            status = STATUS_CODES[code].value[0]
            return pb.BatchResult(index=index, code=status, details=detail)
        return pb.BatchResult(index=index, code=0, reply=pb.ProvisionReply(applied=True))

    async def _one(self, method: str, req: Any, target_tier: str) -> tuple[str, str, str]:
        generation, rule = self._begin(method, req)
        if rule is not None and rule.latency_ms > 0:
            await self._delay(generation, method, req, rule)
        return self._finish(generation, method, req, target_tier, rule)

    def _begin(self, method: str, req: Any) -> tuple[int, Rule | None]:
        key: str = req.idempotency_key
        with self._lock:
            seen = self._calls_per_key.get(key, 0)
            self._calls_per_key[key] = seen + 1
            rule = choose_rule(self._rules, method, req.resource_id, seen, self._rng)
            return self._generation, rule

    async def _delay(self, generation: int, method: str, req: Any, rule: Rule | None) -> None:
        assert rule is not None
        try:
            await asyncio.sleep(rule.latency_ms / 1000)
        except asyncio.CancelledError:
            # The client gave up (deadline): nothing was applied; say so in the record.
            self._record(generation, req.idempotency_key, method, req.resource_id)
            raise

    def _finish(
        self, generation: int, method: str, req: Any, target_tier: str, rule: Rule | None
    ) -> tuple[str, str, str]:
        """(outcome, status code name, skip reason or error details) of one call."""
        key: str = req.idempotency_key
        action, code, reason = (rule.action, rule.code, rule.reason) if rule else ("ok", "", "")
        now = time.time()
        with self._lock:
            # A call that began before a reset() answers as usual but records nothing.
            live = generation == self._generation
            already = key in self._effects
            self._seq += 1
            mono = time.monotonic()
            applying = action in ("ok", "apply_then_error") or (action == "skip" and already)
            if action in ("error", "apply_then_error"):
                if action == "apply_then_error" and not already and live:
                    # The ambiguous case: the effect lands, then the reply is lost.
                    self._apply(key, method, req, target_tier, now, self._seq, mono)
                outcome = f"error:{code}"
            elif already:
                outcome = "replayed"  # the idempotent answer: applied, no second effect
            elif action == "skip":
                outcome = "skipped"
            else:
                if live:
                    self._apply(key, method, req, target_tier, now, self._seq, mono)
                outcome = "applied"
            if live:
                call = Call(key, method, req.resource_id, outcome, now, self._seq, mono, applying)
                self._calls.append(call)
                if applying:
                    self._applications.setdefault(key, []).append(call)
        if outcome.startswith("error:"):
            return outcome, code, f"injected {action} for {key}"
        return outcome, "", reason

    def _record(self, generation: int, key: str, method: str, resource_id: str) -> None:
        """Record a cancelled call (nothing applied)."""
        with self._lock:
            if generation == self._generation:
                self._seq += 1
                call = Call(
                    key, method, resource_id, "cancelled", time.time(), self._seq, time.monotonic()
                )
                self._calls.append(call)

    def _apply(
        self, key: str, method: str, req: Any, target_tier: str, now: float, seq: int, mono: float
    ) -> None:
        # Caller holds the lock. A list per key, so a double application would show as two.
        effect = Effect(
            key,
            method,
            req.team_id,
            req.resource_type,
            req.resource_id,
            target_tier,
            now,
            seq,
            mono,
        )
        self._effects.setdefault(key, []).append(effect)

    # -- lifecycle ----------------------------------------------------------------------------

    def start(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        client_ca: str | None = None,
        admin_port: int | None = None,
    ) -> str:
        """Serve in a background thread with its own event loop; returns "host:port".

        ``port=0`` picks a free port. ``admin_port`` None = no admin endpoint, 0 = a free port
        (see ``admin_url``). ``client_ca`` makes the server require client certificates.
        """
        if self._thread is not None:
            raise RuntimeError("FakeProvisioner already started")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="fake-provisioner", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        creds = _server_credentials(tls_cert, tls_key, client_ca)
        fut = asyncio.run_coroutine_threadsafe(self._start_server(host, port, creds), loop)
        try:
            bound = fut.result(timeout=30)
        except BaseException:
            self.stop()
            raise
        self.address = f"{host}:{bound}"
        if admin_port is not None:
            self._admin = AdminServer((host, admin_port), self)
            self._admin_thread = threading.Thread(
                target=self._admin.serve_forever, name="fake-provisioner-admin", daemon=True
            )
            self._admin_thread.start()
            self.admin_url = f"http://{host}:{self._admin.server_address[1]}"
        return self.address

    async def _start_server(self, host: str, port: int, creds: Any) -> int:
        server = grpc.aio.server(options=_SERVER_OPTIONS)
        pb_grpc.add_ProvisionerServicer_to_server(_Servicer(self), server)  # type: ignore[no-untyped-call]
        target = f"{host}:{port}"
        bound = server.add_secure_port(target, creds) if creds else server.add_insecure_port(target)
        await server.start()
        self._server = server
        return int(bound)

    def stop(self, grace: float = 0.5) -> None:
        if self._admin is not None:
            self._admin.shutdown()
            self._admin.server_close()
            if self._admin_thread is not None:
                self._admin_thread.join()
            self._admin = self._admin_thread = None
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(grace), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
        self._loop = self._thread = None
        self.address = self.admin_url = None

    async def _shutdown(self, grace: float) -> None:
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
        current = asyncio.current_task()
        pending = [t for t in asyncio.all_tasks() if t is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.get_running_loop().shutdown_asyncgens()


def _server_credentials(cert: str | None, key: str | None, client_ca: str | None) -> Any:
    if cert is None and key is None:
        if client_ca is not None:
            raise ConfigError("--client-ca needs --tls-cert and --tls-key")
        return None
    if cert is None or key is None:
        raise ConfigError("TLS needs both --tls-cert and --tls-key")
    try:
        pair = (Path(key).read_bytes(), Path(cert).read_bytes())
        ca = Path(client_ca).read_bytes() if client_ca else None
    except OSError as exc:
        raise ConfigError(f"cannot read TLS files: {exc}") from exc
    return grpc.ssl_server_credentials([pair], root_certificates=ca, require_client_auth=bool(ca))
