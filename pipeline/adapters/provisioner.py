"""The provisioner adapter: the pipeline's only door to ``schemas/provisioner.proto``.

The processor depends on :class:`ProvisionerPort`: it hands over the calls its handlers chose
(``ProvisionCall`` values) and gets back plain values from :mod:`pipeline.domain.events`
(``Applied``, ``Skipped``, ``CallFailed``); no grpc type or exception crosses this module's
boundary, so the processor can be tested with a ten-line fake.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, Unpack

import grpc
import grpc.aio

from pipeline.adapters.proto import provisioner_pb2 as pb
from pipeline.adapters.proto import provisioner_pb2_grpc as pb_grpc
from pipeline.adapters.provisioner_coalescer import Coalescer
from pipeline.domain.errors import ProvisionerError
from pipeline.domain.events import Applied, CallFailed, ProvisionReply, Skipped
from pipeline.domain.handlers import Answered, ProvisionCall, Resource

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
_CODES_BY_NUMBER: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}
_BATCH_FIELDS = {
    "RegradeResource": "regrade",
    "SuspendResource": "suspend",
    "ResumeResource": "resume",
}
_RPC_OF = {field: rpc for rpc, field in _BATCH_FIELDS.items()}
_NO_CALL = CallFailed("UNAVAILABLE", "no call made", True)
_CLOSED = CallFailed("UNAVAILABLE", "provisioner client is closed", True)

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
    """:class:`pipeline.domain.handlers.ProvisionerPort` over grpc.aio (plus ``close``).

    One call to a method is one *attempt* of the pipeline: it makes up to ``tries`` gRPC calls,
    each with its own ``deadline`` (seconds), pausing ``pause`` seconds between calls that
    failed with a retryable status. The idempotency key makes those repeats safe.

    ``apply`` takes a batch of calls at once (the worker's path); ``regrade``, ``suspend``
    and ``resume`` make one call each, and concurrent ones are coalesced (the bench's peers).
    ``batch`` > 0 sends calls together through ``ApplyBatch`` (up to ``batch`` per round trip);
    each item keeps its own reply, status and retries. A provisioner without ``ApplyBatch``
    answers UNIMPLEMENTED once and gets single calls from then on.
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
        batch: int = 0,
        batches_in_flight: int = 1,
    ) -> None:
        if deadline <= 0:
            raise ProvisionerError("provisioner deadline must be positive")
        if tries < 1:
            raise ProvisionerError("provisioner tries must be at least 1")
        if batch < 0 or batches_in_flight < 1:
            raise ProvisionerError("provisioner batch must be >= 0, batches in flight >= 1")
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
        self._batch = batch
        # Set once, by _batch_rpc, when the provisioner answers ApplyBatch with UNIMPLEMENTED;
        # apply and the coalescer both read it.
        self._apply_batch_refused = False
        self._batcher = (
            Coalescer(self._batch_rpc, self._refused, batch, batches_in_flight)
            if batch > 0
            else None
        )

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

    async def regrade(self, *, target_tier: str, **resource: Unpack[Resource]) -> ProvisionReply:
        request = pb.RegradeRequest(target_tier=target_tier, **resource)
        return await self._call("RegradeResource", request)

    async def suspend(self, **resource: Unpack[Resource]) -> ProvisionReply:
        return await self._call("SuspendResource", pb.ResourceRequest(**resource))

    async def resume(self, **resource: Unpack[Resource]) -> ProvisionReply:
        return await self._call("ResumeResource", pb.ResourceRequest(**resource))

    async def apply(self, calls: Sequence[ProvisionCall]) -> AsyncIterator[Answered]:
        """Every call's reply, yielded as replies arrive: a batch in as few round trips as
        ``batch`` allows, each call with its own retries. Each index is answered once."""
        requests = [(_RPC_OF[c.method], _request(c)) for c in calls]
        todo = list(range(len(requests)))
        for attempt in range(self._tries):
            if attempt:
                await asyncio.sleep(self._pause)
            last = attempt + 1 == self._tries
            again: list[int] = []
            async for answered in self._apply_once([requests[i] for i in todo]):
                final: Answered = []
                for j, reply in answered:
                    if not last and _transient(reply):
                        again.append(todo[j])
                    else:
                        final.append((todo[j], reply))
                if final:
                    yield final
            todo = sorted(again)
            if not todo:
                return

    async def _apply_once(self, requests: list[tuple[str, Any]]) -> AsyncIterator[Answered]:
        if self._closed:
            yield [(j, _CLOSED) for j in range(len(requests))]
            return
        queue: asyncio.Queue[Answered] = asyncio.Queue()
        if self._batch > 0 and not self._refused():
            size = self._batch
            parts = [range(i, min(i + size, len(requests))) for i in range(0, len(requests), size)]
            jobs = [self._apply_chunk(requests, part, queue.put_nowait) for part in parts]
        else:
            jobs = [self._apply_singles(requests, range(len(requests)), queue.put_nowait)]
        # A task per round trip (not per call); every reply comes back through the queue.
        tasks = [asyncio.ensure_future(job) for job in jobs]
        try:
            left = len(requests)
            while left:
                answered = await queue.get()
                left -= len(answered)
                yield answered
        finally:
            for task in tasks:
                task.cancel()  # only when the caller stopped early: the rest are done

    async def _apply_chunk(
        self, requests: list[tuple[str, Any]], part: range, put: Callable[[Answered], None]
    ) -> None:
        answered = [False] * len(part)

        def deliver(results: Answered) -> None:
            fresh = [(part[k], reply) for k, reply in results if not answered[k]]
            for k, _ in results:
                answered[k] = True
            if fresh:
                put(fresh)

        items = [pb.BatchItem(**{_BATCH_FIELDS[m]: r}) for m, r in (requests[j] for j in part)]
        try:
            rest = await self._batch_rpc(items, deliver)
        except Exception as exc:  # never leave the caller waiting for a reply
            rest = CallFailed("INTERNAL", f"{type(exc).__name__}: {exc}"[:500], True)
        left = [part[k] for k, done in enumerate(answered) if not done]
        if not left:
            return
        if rest is None:  # no ApplyBatch here: one RPC per call, now and from now on
            await self._apply_singles(requests, left, put)
        else:
            put([(j, rest) for j in left])

    async def _apply_singles(
        self, requests: list[tuple[str, Any]], which: Sequence[int], put: Callable[[Answered], None]
    ) -> None:
        async def one(j: int) -> None:
            put([(j, await self._single(*requests[j]))])

        await asyncio.gather(*(one(j) for j in which))

    async def _call(self, method: str, request: Any) -> ProvisionReply:
        result: ProvisionReply = _NO_CALL
        for attempt in range(self._tries):
            if attempt:
                await asyncio.sleep(self._pause)
            result = await self._once(method, request)
            if not _transient(result):
                return result
        return result

    async def _once(self, method: str, request: Any) -> ProvisionReply:
        if self._closed:
            return _CLOSED
        if self._batcher is not None and not self._refused():
            item = pb.BatchItem(**{_BATCH_FIELDS[method]: request})
            batched = await self._batcher.call(item)
            if batched is not None:
                return batched
        return await self._single(method, request)

    async def _single(self, method: str, request: Any) -> ProvisionReply:
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

    def _refused(self) -> bool:
        return self._apply_batch_refused

    async def _batch_rpc(
        self, items: list[Any], deliver: Callable[[Answered], None]
    ) -> ProvisionReply | None:
        """One ApplyBatch call: each message's results go to ``deliver([(index, reply)])``
        as they stream in.

        Returns what every item not delivered gets: the call's failure, or None when the
        provisioner does not implement ApplyBatch.
        """
        if self._closed:
            return _CLOSED
        answered = False
        try:
            call = self._get_stub().ApplyBatch(pb.BatchRequest(items=items), timeout=self._deadline)
            async for chunk in call:
                answered = True
                deliver([(r.index, _result(r)) for r in chunk.results if 0 <= r.index < len(items)])
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code is grpc.StatusCode.UNIMPLEMENTED and not answered:
                self._apply_batch_refused = True
                return None
            return CallFailed(code.name, exc.details() or "", code in RETRYABLE_CODES)
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            return CallFailed("UNAVAILABLE", f"{type(exc).__name__}: {exc}", True)
        # A provisioner that ends the stream early: nothing is known about the rest.
        return CallFailed("INTERNAL", "ApplyBatch ended without answering this item", True)

    async def close(self) -> None:
        self._closed = True
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()


def _transient(reply: ProvisionReply) -> bool:
    return isinstance(reply, CallFailed) and reply.code in _TRANSIENT_NAMES


def _request(call: ProvisionCall) -> Any:
    if call.method == "regrade":
        return pb.RegradeRequest(target_tier=call.target_tier or "", **call.resource)
    return pb.ResourceRequest(**call.resource)


def _result(result: Any) -> ProvisionReply:
    if result.code == 0:
        if result.reply.applied:
            return Applied()
        return Skipped(result.reply.skip_reason or "no reason given")
    code = _CODES_BY_NUMBER.get(result.code, grpc.StatusCode.UNKNOWN)
    return CallFailed(code.name, result.details, code in RETRYABLE_CODES)
