"""The provisioner adapter: the pipeline's only door to ``schemas/provisioner.proto``.

The processor depends on :class:`ProvisionerPort`: it hands over the calls its handlers chose
(``ProvisionCall`` values) and gets back plain values from :mod:`pipeline.domain.events`
(``Applied``, ``Skipped``, ``CallFailed``); no grpc type or exception crosses this module's
boundary, so the processor can be tested with a ten-line fake.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Unpack

import grpc
import grpc.aio

from pipeline.adapters.proto import provisioner_pb2 as pb
from pipeline.adapters.proto import provisioner_pb2_grpc as pb_grpc
from pipeline.domain.errors import ProvisionerError
from pipeline.domain.events import Applied, CallFailed, ProvisionReply, Skipped
from pipeline.domain.handlers import ProvisionCall, Resource

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
        self._batcher = _Batcher(self, batch, batches_in_flight) if batch > 0 else None

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

    async def apply(self, calls: Sequence[ProvisionCall]) -> list[ProvisionReply]:
        """Every call's reply, in order: a batch in as few round trips as ``batch`` allows."""
        requests = [(_RPC_OF[c.method], _request(c)) for c in calls]
        return await self._retrying(requests, self._apply_once)

    async def _call(self, method: str, request: Any) -> ProvisionReply:
        [reply] = await self._retrying([(method, request)], self._call_once)
        return reply

    async def _call_once(self, requests: list[tuple[str, Any]]) -> list[ProvisionReply]:
        return [await self._once(*requests[0])]

    async def _retrying(
        self,
        requests: list[tuple[str, Any]],
        once: Callable[[list[tuple[str, Any]]], Awaitable[list[ProvisionReply]]],
    ) -> list[ProvisionReply]:
        # Up to ``tries`` rounds; a round repeats only the calls that failed transiently.
        replies: list[ProvisionReply] = [_NO_CALL] * len(requests)
        todo = list(range(len(requests)))
        for attempt in range(self._tries):
            if not todo:
                break
            if attempt:
                await asyncio.sleep(self._pause)
            for i, reply in zip(todo, await once([requests[i] for i in todo]), strict=True):
                replies[i] = reply
            todo = [i for i in todo if _transient(replies[i])]
        return replies

    async def _apply_once(self, requests: list[tuple[str, Any]]) -> list[ProvisionReply]:
        if self._closed:
            return [CallFailed("UNAVAILABLE", "provisioner client is closed", True)] * len(requests)
        out: list[ProvisionReply | None] = [None] * len(requests)
        batcher = self._batcher
        if batcher is not None and not batcher.unsupported:
            chunks = [
                range(i, min(i + self._batch, len(requests)))
                for i in range(0, len(out), self._batch)
            ]

            async def send(chunk: range) -> None:
                items = [
                    pb.BatchItem(**{_BATCH_FIELDS[m]: r}) for m, r in (requests[j] for j in chunk)
                ]

                def deliver(index: int, reply: ProvisionReply) -> None:
                    out[chunk[index]] = reply

                rest = await self._batch_rpc(items, deliver)
                if rest is None:
                    batcher.unsupported = True
                    return
                for j in chunk:
                    if out[j] is None:
                        out[j] = rest

            # One coroutine for the usual one chunk; a task each only when there are more.
            await (send(chunks[0]) if len(chunks) == 1 else asyncio.gather(*map(send, chunks)))
        left = [j for j, reply in enumerate(out) if reply is None]
        if left:  # no ApplyBatch: one RPC per call
            singles = await asyncio.gather(*(self._single(*requests[j]) for j in left))
            for j, reply in zip(left, singles, strict=True):
                out[j] = reply
        return [reply if reply is not None else _NO_CALL for reply in out]

    async def _once(self, method: str, request: Any) -> ProvisionReply:
        if self._closed:
            return CallFailed("UNAVAILABLE", "provisioner client is closed", True)
        if self._batcher is not None and not self._batcher.unsupported:
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

    async def _batch_rpc(
        self, items: list[Any], deliver: Callable[[int, ProvisionReply], None]
    ) -> ProvisionReply | None:
        """One ApplyBatch call: results go to ``deliver(index, reply)`` as they stream in.

        Returns what every item not delivered gets: the call's failure, or None when the
        provisioner does not implement ApplyBatch.
        """
        if self._closed:
            return CallFailed("UNAVAILABLE", "provisioner client is closed", True)
        answered = False
        try:
            call = self._get_stub().ApplyBatch(pb.BatchRequest(items=items), timeout=self._deadline)
            async for chunk in call:
                answered = True
                for result in chunk.results:
                    if 0 <= result.index < len(items):
                        deliver(result.index, _result(result))
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code is grpc.StatusCode.UNIMPLEMENTED and not answered:
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


class _Batcher:
    """Coalesces concurrent calls into ``ApplyBatch`` round trips.

    Nagle-style: while fewer than ``max_in_flight`` batches are on the wire, the calls made in
    one turn of the event loop leave together at its end (a lone command waits for no
    timer); otherwise they join the next batch, which leaves as soon as a slot frees up.
    Under load batches grow by themselves. A batch gives its slot back at its first answer
    (or after ``SLOT_HOLD_S``), not at its last: items the provisioner is slow on must not
    hold up the batching of everything else.
    """

    SLOT_HOLD_S = 0.02

    def __init__(self, owner: GrpcProvisioner, max_items: int, max_in_flight: int) -> None:
        self._owner = owner
        self._max_items = max_items
        self._max_in_flight = max_in_flight
        self._queue: list[tuple[Any, asyncio.Future[ProvisionReply | None]]] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Future[None]] = set()
        self._pump_due = False
        self.unsupported = False

    async def call(self, item: Any) -> ProvisionReply | None:
        """The item's reply; None when the provisioner has no ApplyBatch (use single calls)."""
        fut: asyncio.Future[ProvisionReply | None] = asyncio.get_running_loop().create_future()
        self._queue.append((item, fut))
        if not self._pump_due:
            # The worker starts a batch of commands in one turn: sending the first call at
            # once would make it a batch of one and hold the rest back until it is answered.
            self._pump_due = True
            asyncio.get_running_loop().call_soon(self._pump)
        return await fut

    def _pump(self) -> None:
        self._pump_due = False
        if self.unsupported:
            queued, self._queue = self._queue, []
            for _, fut in queued:
                if not fut.done():
                    fut.set_result(None)
            return
        while self._queue and self._in_flight < self._max_in_flight:
            batch = self._queue[: self._max_items]
            del self._queue[: self._max_items]
            self._in_flight += 1
            task = asyncio.ensure_future(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[Any, asyncio.Future[ProvisionReply | None]]]) -> None:
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                self._in_flight -= 1
                self._pump()

        timer = asyncio.get_running_loop().call_later(self.SLOT_HOLD_S, release)

        def deliver(index: int, reply: ProvisionReply) -> None:
            fut = batch[index][1]
            if not fut.done():  # its caller may have been cancelled meanwhile
                fut.set_result(reply)
            release()

        try:
            rest = await self._owner._batch_rpc([item for item, _ in batch], deliver)
        except BaseException:
            for _, fut in batch:
                fut.cancel()
            raise
        finally:
            timer.cancel()
        if rest is None:
            self.unsupported = True
        for _, fut in batch:
            if not fut.done():
                fut.set_result(rest)
        release()
