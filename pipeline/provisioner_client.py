"""The provisioner adapter: the pipeline's only door to ``schemas/provisioner.proto``.

Handlers depend on :class:`ProvisionerPort` and get back plain values from
:mod:`pipeline.events` (``Applied``, ``Skipped``, ``CallFailed``); no grpc type or exception
crosses this module's boundary, so a handler can be tested with a ten-line fake.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from pipeline.errors import ProvisionerError
from pipeline.events import Applied, CallFailed, ProvisionReply, Skipped
from pipeline.proto import provisioner_pb2 as pb
from pipeline.proto import provisioner_pb2_grpc as pb_grpc

# The provisioner says the command itself is invalid: retrying cannot help, and the pipeline
# dead-letters it at once as ``invalid_payload``.
NON_RETRYABLE_CODES: frozenset[grpc.StatusCode] = frozenset(
    {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE}
)

# Every other non-OK code is retryable, including the "configuration" ones (PERMISSION_DENIED,
# UNAUTHENTICATED, NOT_FOUND, FAILED_PRECONDITION, UNIMPLEMENTED). They describe the deployment,
# not the command: an operator fixes the credentials or rolls out the provisioner, and the next
# scheduled attempt lands by itself. Dead-lettering them would turn a short outage into a pile of
# manual retries, and the backoff schedule plus max attempts still bound the retrying.
RETRYABLE_CODES: frozenset[grpc.StatusCode] = frozenset(
    code
    for code in grpc.StatusCode
    if code is not grpc.StatusCode.OK and code not in NON_RETRYABLE_CODES
)

# Only these are worth another call within the same attempt: the provisioner or the network
# was momentarily busy. The rest wait for the next attempt on the backoff schedule, where an
# operator's fix has time to land (retrying them 200 ms later only holds up the partition).
TRANSIENT_CODES: frozenset[grpc.StatusCode] = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
    }
)
_TRANSIENT_NAMES = frozenset(code.name for code in TRANSIENT_CODES)

# Tuned for one long-lived channel carrying many concurrent calls (the worker multiplexes every
# in-flight attempt over it).
_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    # We retry ourselves, with our own accounting; grpc's built-in retry policy would hide
    # attempts from the tries budget (transparent retries of never-sent calls remain, and are safe).
    ("grpc.enable_retries", 0),
    # Reconnect quickly after a provisioner restart instead of backing off for up to 2 minutes.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 5_000),
    # Detect a silently dead connection (peer gone without RST) while calls are in flight. The
    # 5 minutes match grpc servers' default minimum ping interval, so no server sends GOAWAY
    # for "too many pings".
    ("grpc.keepalive_time_ms", 300_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    # Replies are two fields; anything large is a bug or an attack.
    ("grpc.max_receive_message_length", 1 << 20),
]


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ProvisionerError(f"cannot read provisioner TLS {what} {path!r}: {exc}") from exc


class GrpcProvisioner:
    """:class:`pipeline.handlers.ProvisionerPort` over grpc.aio (plus ``close``).

    One call to a method is one *attempt* of the pipeline: it makes up to ``tries`` gRPC calls,
    each with its own ``deadline`` (seconds), pausing ``pause`` seconds between calls that
    failed with a retryable status. The idempotency key makes those repeats safe.
    """

    def __init__(
        self,
        addr: str,
        *,
        deadline: float,
        tries: int,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        pause: float = 0.2,
    ) -> None:
        if deadline <= 0:
            raise ProvisionerError("provisioner deadline must be positive")
        if tries < 1:
            raise ProvisionerError("provisioner tries must be at least 1")
        if (tls_cert is None) != (tls_key is None):
            raise ProvisionerError("provisioner client TLS needs both a certificate and a key")
        self.addr = addr
        self._deadline = deadline
        self._tries = tries
        self._pause = pause
        # Files are read now so a wrong path fails at start-up, not at the first regrade.
        self._credentials: Any = None
        if tls_ca is not None or tls_cert is not None:
            self._credentials = grpc.ssl_channel_credentials(
                root_certificates=_read(tls_ca, "CA") if tls_ca else None,
                private_key=_read(tls_key, "key") if tls_key else None,
                certificate_chain=_read(tls_cert, "certificate") if tls_cert else None,
            )
        self._channel: Any = None
        self._stub: Any = None
        self._closed = False

    def _get_stub(self) -> Any:
        # Created lazily, inside the running loop: a grpc.aio channel is bound to the event
        # loop that creates it, and the constructor may run before any loop exists.
        if self._stub is None:
            if self._credentials is not None:
                self._channel = grpc.aio.secure_channel(
                    self.addr, self._credentials, options=_CHANNEL_OPTIONS
                )
            else:
                self._channel = grpc.aio.insecure_channel(self.addr, options=_CHANNEL_OPTIONS)
            self._stub = pb_grpc.ProvisionerStub(self._channel)  # type: ignore[no-untyped-call]
        return self._stub

    async def regrade(
        self,
        *,
        idempotency_key: str,
        team_id: str,
        resource_type: str,
        resource_id: str,
        target_tier: str,
    ) -> ProvisionReply:
        request = pb.RegradeRequest(
            idempotency_key=idempotency_key,
            team_id=team_id,
            resource_type=resource_type,
            resource_id=resource_id,
            target_tier=target_tier,
        )
        return await self._call("RegradeResource", request)

    async def suspend(
        self, *, idempotency_key: str, team_id: str, resource_type: str, resource_id: str
    ) -> ProvisionReply:
        request = pb.ResourceRequest(
            idempotency_key=idempotency_key,
            team_id=team_id,
            resource_type=resource_type,
            resource_id=resource_id,
        )
        return await self._call("SuspendResource", request)

    async def resume(
        self, *, idempotency_key: str, team_id: str, resource_type: str, resource_id: str
    ) -> ProvisionReply:
        request = pb.ResourceRequest(
            idempotency_key=idempotency_key,
            team_id=team_id,
            resource_type=resource_type,
            resource_id=resource_id,
        )
        return await self._call("ResumeResource", request)

    async def _call(self, method: str, request: Any) -> ProvisionReply:
        result: ProvisionReply = CallFailed("UNAVAILABLE", "no call made", True)
        for attempt in range(self._tries):
            if attempt:
                await asyncio.sleep(self._pause)
            result = await self._once(method, request)
            if not isinstance(result, CallFailed) or result.code not in _TRANSIENT_NAMES:
                return result
        return result

    async def _once(self, method: str, request: Any) -> ProvisionReply:
        if self._closed:
            return CallFailed("UNAVAILABLE", "provisioner client is closed", True)
        try:
            reply = await getattr(self._get_stub(), method)(request, timeout=self._deadline)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            return CallFailed(code.name, exc.details() or "", code in RETRYABLE_CODES)
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            # Anything else from the driver (a closed channel, a bad address, an internal
            # error) is an unanswered call: retryable, and never a grpc type for the caller.
            return CallFailed("UNAVAILABLE", f"{type(exc).__name__}: {exc}", True)
        if reply.applied:
            return Applied()
        return Skipped(reply.skip_reason or "no reason given")

    async def close(self) -> None:
        self._closed = True
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()
