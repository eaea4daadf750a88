"""GrpcProvisioner against a real grpc.aio FakeProvisioner: replies, retries, idempotency."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator, Iterator
from itertools import count
from pathlib import Path
from typing import Unpack

import pytest

from pipeline.adapters.provisioner import GrpcProvisioner
from pipeline.devtools.fake_provisioner import FakeProvisioner, Rule
from pipeline.domain.events import Applied, CallFailed, ProvisionReply, Skipped
from pipeline.domain.handlers import ProvisionCall, Resource

pytestmark = pytest.mark.integration

_ids = count()


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeProvisioner]:
    fp = FakeProvisioner()
    fp.start(admin_port=0)
    yield fp
    fp.stop()


@pytest.fixture(autouse=True)
def clean(fake: FakeProvisioner) -> None:
    fake.set_rules(())
    fake.reset()


async def _apply(client: GrpcProvisioner, calls: list[ProvisionCall]) -> list[ProvisionReply]:
    """Every reply of ``client.apply``, in call order; each call answered exactly once."""
    got = [pair async for answered in client.apply(calls) for pair in answered]
    assert sorted(i for i, _ in got) == list(range(len(calls)))
    return [reply for _, reply in sorted(got, key=lambda pair: pair[0])]


class ViaApply(GrpcProvisioner):
    """The worker's path: each call goes through ``apply``, as a batch of one."""

    async def regrade(self, *, target_tier: str, **resource: Unpack[Resource]) -> ProvisionReply:
        [reply] = await _apply(self, [ProvisionCall("regrade", resource, target_tier)])
        return reply

    async def suspend(self, **resource: Unpack[Resource]) -> ProvisionReply:
        [reply] = await _apply(self, [ProvisionCall("suspend", resource)])
        return reply

    async def resume(self, **resource: Unpack[Resource]) -> ProvisionReply:
        [reply] = await _apply(self, [ProvisionCall("resume", resource)])
        return reply


@pytest.fixture(
    params=[(GrpcProvisioner, 0), (GrpcProvisioner, 64), (ViaApply, 0), (ViaApply, 64)],
    ids=["single", "batched", "apply-single", "apply-batched"],
)
async def client(
    fake: FakeProvisioner, request: pytest.FixtureRequest
) -> AsyncIterator[GrpcProvisioner]:
    # Every test below runs against both paths (one call at a time, and apply) and both
    # wires (one RPC per call, and ApplyBatch).
    assert fake.address is not None
    cls, batch = request.param
    c = cls(fake.address, deadline=2.0, tries=3, pause=0.01, batch=batch)
    yield c
    await c.close()


def _rid() -> str:
    return f"db-{next(_ids)}"


async def _regrade(client: GrpcProvisioner, key: str, resource_id: str) -> object:
    return await client.regrade(
        idempotency_key=key,
        team_id="team-1",
        resource_type="postgres",
        resource_id=resource_id,
        target_tier="pro",
    )


async def test_applied(client: GrpcProvisioner, fake: FakeProvisioner) -> None:
    rid = _rid()
    assert await _regrade(client, "k-applied", rid) == Applied()
    [effect] = fake.effects()["k-applied"]
    assert (effect.method, effect.team_id, effect.resource_id, effect.target_tier) == (
        "RegradeResource",
        "team-1",
        rid,
        "pro",
    )


async def test_suspend_and_resume(client: GrpcProvisioner, fake: FakeProvisioner) -> None:
    rid = _rid()
    args = {"team_id": "t", "resource_type": "redis", "resource_id": rid}
    assert await client.suspend(idempotency_key="k-s", **args) == Applied()
    assert await client.resume(idempotency_key="k-r", **args) == Applied()
    assert [e.method for k in ("k-s", "k-r") for e in fake.effects()[k]] == [
        "SuspendResource",
        "ResumeResource",
    ]


async def test_skip_with_reason(client: GrpcProvisioner, fake: FakeProvisioner) -> None:
    fake.set_rules([Rule(match="db-legacy-*", action="skip", reason="legacy resource")])
    assert await _regrade(client, "k-skip", "db-legacy-1") == Skipped("legacy resource")
    assert "k-skip" not in fake.applied_keys()
    assert [c.outcome for c in fake.calls()] == ["skipped"]


async def test_skip_without_reason_gets_a_placeholder(
    client: GrpcProvisioner, fake: FakeProvisioner
) -> None:
    fake.set_rules([Rule(action="skip")])
    assert await _regrade(client, "k-skip2", _rid()) == Skipped("no reason given")


async def test_transient_errors_are_retried_within_the_call(
    client: GrpcProvisioner, fake: FakeProvisioner
) -> None:
    fake.set_rules([Rule(action="error", code="UNAVAILABLE", times=2)])
    assert await _regrade(client, "k-flaky", _rid()) == Applied()
    assert [c.outcome for c in fake.calls()] == [
        "error:UNAVAILABLE",
        "error:UNAVAILABLE",
        "applied",
    ]
    assert len(fake.effects()["k-flaky"]) == 1


# A persistent UNAVAILABLE is a retryable failure after every try; INVALID_ARGUMENT is not retried.
@pytest.mark.parametrize(
    ("code", "retryable", "tries"), [("UNAVAILABLE", True, 3), ("INVALID_ARGUMENT", False, 1)]
)
async def test_a_persistent_error_fails_the_call_retryable_by_its_code(
    client: GrpcProvisioner, fake: FakeProvisioner, code: str, retryable: bool, tries: int
) -> None:
    key = f"k-{code.lower()}"
    fake.set_rules([Rule(action="error", code=code)])
    result = await _regrade(client, key, _rid())
    assert isinstance(result, CallFailed)
    assert (result.code, result.retryable) == (code, retryable)
    assert key in result.message
    assert len(fake.calls()) == tries
    assert fake.applied_keys() == set()


async def test_deadline_exceeded(fake: FakeProvisioner) -> None:
    assert fake.address is not None
    fake.set_rules([Rule(action="ok", latency_ms=1000)])
    client = GrpcProvisioner(fake.address, deadline=0.1, tries=1)
    try:
        result = await _regrade(client, "k-slow", _rid())
    finally:
        await client.close()
    assert isinstance(result, CallFailed)
    assert (result.code, result.retryable) == ("DEADLINE_EXCEEDED", True)
    # The server sees the cancellation and applies nothing.
    for _ in range(100):
        if fake.calls():
            break
        await asyncio.sleep(0.02)
    assert [c.outcome for c in fake.calls()] == ["cancelled"]
    assert fake.applied_keys() == set()


async def test_same_key_twice_is_one_effect(client: GrpcProvisioner, fake: FakeProvisioner) -> None:
    rid = _rid()
    assert await _regrade(client, "k-twice", rid) == Applied()
    assert await _regrade(client, "k-twice", rid) == Applied()
    assert len(fake.effects()["k-twice"]) == 1
    assert [c.outcome for c in fake.calls()] == ["applied", "replayed"]


async def test_lost_reply_then_retry_is_one_effect(
    fake: FakeProvisioner,
) -> None:
    assert fake.address is not None
    fake.set_rules([Rule(action="apply_then_error", code="UNAVAILABLE", times=1)])
    # tries=1: the lost reply surfaces as a failed attempt, as it would at the pipeline level.
    client = GrpcProvisioner(fake.address, deadline=2.0, tries=1)
    try:
        rid = _rid()
        first = await _regrade(client, "k-lost", rid)
        assert isinstance(first, CallFailed) and first.retryable
        assert len(fake.effects()["k-lost"]) == 1  # the effect landed although the call failed
        assert await _regrade(client, "k-lost", rid) == Applied()
    finally:
        await client.close()
    assert len(fake.effects()["k-lost"]) == 1
    assert [c.outcome for c in fake.calls()] == ["error:UNAVAILABLE", "replayed"]


async def test_unreachable_provisioner_is_a_retryable_failure() -> None:
    probe = FakeProvisioner()
    addr = probe.start()
    probe.stop()  # the port is now (almost certainly) closed
    client = GrpcProvisioner(addr, deadline=1.0, tries=2, pause=0.01)
    try:
        result = await _regrade(client, "k-nowhere", _rid())
    finally:
        await client.close()
    assert isinstance(result, CallFailed)
    assert result.retryable


async def test_closed_client_fails_without_raising(fake: FakeProvisioner) -> None:
    assert fake.address is not None
    client = GrpcProvisioner(fake.address, deadline=1.0, tries=1)
    await client.close()
    result = await _regrade(client, "k-closed", _rid())
    assert isinstance(result, CallFailed) and result.retryable


async def test_concurrent_calls_share_round_trips(fake: FakeProvisioner) -> None:
    assert fake.address is not None
    fake.set_rules(
        [
            Rule(match="skip-*", action="skip", reason="legacy resource"),
            Rule(match="bad-*", action="error", code="INVALID_ARGUMENT"),
        ]
    )
    client = GrpcProvisioner(fake.address, deadline=2.0, tries=1, batch=8, batches_in_flight=1)
    rids = [f"{('ok', 'skip', 'bad')[i % 3]}-{i}" for i in range(30)]
    try:
        results = await asyncio.gather(*(_regrade(client, f"k-{rid}", rid) for rid in rids))
    finally:
        await client.close()
    # Each call got its own answer, in its own position.
    for rid, result in zip(rids, results, strict=True):
        if rid.startswith("ok"):
            assert result == Applied()
        elif rid.startswith("skip"):
            assert result == Skipped("legacy resource")
        else:
            assert isinstance(result, CallFailed)
            assert (result.code, result.retryable) == ("INVALID_ARGUMENT", False)
    assert set(fake.effects()) == {f"k-{rid}" for rid in rids if rid.startswith("ok")}
    # The calls of one turn of the loop leave together, 8 at a time (one batch on the wire).
    assert fake.batch_sizes() == [8, 8, 8, 6]


async def test_transient_failure_of_one_item_retries_only_that_item(
    fake: FakeProvisioner,
) -> None:
    assert fake.address is not None
    fake.set_rules([Rule(match="flaky-*", action="error", code="UNAVAILABLE", times=1)])
    client = GrpcProvisioner(fake.address, deadline=2.0, tries=3, pause=0.01, batch=64)
    try:
        results = await asyncio.gather(
            _regrade(client, "k-flaky", "flaky-1"), _regrade(client, "k-steady", "steady-1")
        )
    finally:
        await client.close()
    assert results == [Applied(), Applied()]
    assert sorted((c.idempotency_key, c.outcome) for c in fake.calls()) == [
        ("k-flaky", "applied"),
        ("k-flaky", "error:UNAVAILABLE"),
        ("k-steady", "applied"),
    ]


async def test_a_slow_item_does_not_fail_its_batch_mates(fake: FakeProvisioner) -> None:
    # Results stream back per item: the fast ones are answered although the slow one runs
    # past the deadline (then only it fails, as its single call would).
    assert fake.address is not None
    fake.set_rules([Rule(match="slow-*", latency_ms=3000)])
    client = GrpcProvisioner(fake.address, deadline=0.5, tries=1, batch=64, batches_in_flight=1)
    rids = ["slow-1", "fast-1", "fast-2", "fast-3"]
    try:
        results = await asyncio.gather(*(_regrade(client, f"k-{rid}", rid) for rid in rids))
    finally:
        await client.close()
    assert isinstance(results[0], CallFailed) and results[0].code == "DEADLINE_EXCEEDED"
    assert results[1:] == [Applied()] * 3
    assert fake.batch_sizes() == [4]  # one turn's calls leave together
    assert set(fake.effects()) == {"k-fast-1", "k-fast-2", "k-fast-3"}


async def test_provisioner_without_apply_batch_gets_single_calls() -> None:
    # SPEC 6: any implementation of the three single RPCs must work unchanged.
    plain = FakeProvisioner(batch_enabled=False)
    addr = plain.start()
    client = GrpcProvisioner(addr, deadline=2.0, tries=1, batch=64, batches_in_flight=2)
    try:
        first = await asyncio.gather(*(_regrade(client, f"k-p{i}", f"p-{i}") for i in range(5)))
        refused = plain.batch_refusals
        later = await _regrade(client, "k-later", "p-later")
    finally:
        await client.close()
        effects = plain.effects()
        plain.stop()
    assert first == [Applied()] * 5 and later == Applied()
    assert set(effects) == {f"k-p{i}" for i in range(5)} | {"k-later"}
    # The one batch (the five calls of one turn) was refused; its calls and every later one
    # went to single calls.
    assert (refused, plain.batch_refusals) == (1, 1)


def _call(rid: str) -> ProvisionCall:
    resource = Resource(
        idempotency_key=f"k-{rid}", team_id="team-1", resource_type="postgres", resource_id=rid
    )
    return ProvisionCall("regrade", resource, "pro")


async def test_apply_sends_a_batch_in_chunks_and_answers_each_call_in_order(
    fake: FakeProvisioner,
) -> None:
    assert fake.address is not None
    fake.set_rules(
        [
            Rule(match="skip-*", action="skip", reason="legacy resource"),
            Rule(match="bad-*", action="error", code="INVALID_ARGUMENT"),
        ]
    )
    client = GrpcProvisioner(fake.address, deadline=2.0, tries=1, batch=8)
    rids = [f"{('ok', 'skip', 'bad')[i % 3]}-{i}" for i in range(30)]
    try:
        results = await _apply(client, [_call(rid) for rid in rids])
    finally:
        await client.close()
    bad = CallFailed("INVALID_ARGUMENT", "injected error for k-{}", False)
    expected = {"ok": Applied(), "skip": Skipped("legacy resource"), "bad": bad}
    assert results == [
        CallFailed(bad.code, bad.message.format(rid), False)
        if rid.startswith("bad")
        else expected[rid.split("-")[0]]
        for rid in rids
    ]
    assert set(fake.effects()) == {f"k-{rid}" for rid in rids if rid.startswith("ok")}
    assert sorted(fake.batch_sizes()) == [6, 8, 8, 8]  # chunks of 8, all on the wire at once


async def test_apply_retries_only_the_transient_item(fake: FakeProvisioner) -> None:
    assert fake.address is not None
    fake.set_rules([Rule(match="flaky-*", action="error", code="UNAVAILABLE", times=1)])
    client = GrpcProvisioner(fake.address, deadline=2.0, tries=3, pause=0.01, batch=64)
    try:
        results = await _apply(client, [_call("flaky-1"), _call("steady-1")])
    finally:
        await client.close()
    assert results == [Applied(), Applied()]
    assert [(c.idempotency_key, c.outcome) for c in fake.calls()] == [
        ("k-flaky-1", "error:UNAVAILABLE"),
        ("k-steady-1", "applied"),
        ("k-flaky-1", "applied"),
    ]
    assert fake.batch_sizes() == [2, 1]


async def test_apply_without_apply_batch_falls_back_to_single_calls() -> None:
    plain = FakeProvisioner(batch_enabled=False)
    addr = plain.start()
    client = GrpcProvisioner(addr, deadline=2.0, tries=1, batch=64)
    try:
        first = await _apply(client, [_call(f"p-{i}") for i in range(5)])
        later = await _apply(client, [_call("p-later")])
    finally:
        await client.close()
        effects = plain.effects()
        plain.stop()
    assert first == [Applied()] * 5 and later == [Applied()]
    assert set(effects) == {f"k-p-{i}" for i in range(5)} | {"k-p-later"}
    assert plain.batch_refusals == 1  # refused once; every later call went single


async def test_apply_yields_fast_replies_before_a_slow_one(fake: FakeProvisioner) -> None:
    assert fake.address is not None
    fake.set_rules([Rule(match="slow-*", latency_ms=300)])
    client = GrpcProvisioner(fake.address, deadline=2.0, tries=1, batch=64)
    try:
        yields = [
            sorted(i for i, _ in answered)
            async for answered in client.apply([_call("slow-1"), _call("fast-1"), _call("fast-2")])
        ]
    finally:
        await client.close()
    assert yields == [[1, 2], [0]]  # one round trip, answered in two messages
    assert fake.batch_sizes() == [3]


def _http(method: str, url: str, body: object = None) -> object:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.load(resp)


async def test_admin_endpoint(client: GrpcProvisioner, fake: FakeProvisioner) -> None:
    # The admin endpoint is how tests drive a fake running as a separate process.
    url = fake.admin_url
    assert url is not None
    rid = _rid()
    assert await _regrade(client, "k-admin", rid) == Applied()
    effects = await asyncio.to_thread(_http, "GET", f"{url}/effects")
    assert isinstance(effects, dict)
    assert list(effects) == ["k-admin"]
    assert effects["k-admin"][0]["resource_id"] == rid

    rules = [{"match": "db-*", "action": "skip", "reason": "team deprovisioned"}]
    assert await asyncio.to_thread(_http, "PUT", f"{url}/rules", rules) == {"rules": 1}
    assert await _regrade(client, "k-admin-2", _rid()) == Skipped("team deprovisioned")

    calls = await asyncio.to_thread(_http, "GET", f"{url}/calls")
    assert isinstance(calls, list)
    assert [c["outcome"] for c in calls] == ["applied", "skipped"]
    assert await asyncio.to_thread(_http, "POST", f"{url}/reset", {}) == {"reset": True}
    assert fake.effects() == {}


async def test_mutual_tls(certs: Path) -> None:
    fp = FakeProvisioner()
    addr = fp.start(
        tls_cert=str(certs / "server.pem"),
        tls_key=str(certs / "server.key"),
        client_ca=str(certs / "ca.pem"),
    )
    try:
        good = GrpcProvisioner(
            addr,
            deadline=5.0,
            tries=1,
            tls_ca=str(certs / "ca.pem"),
            tls_cert=str(certs / "client.pem"),
            tls_key=str(certs / "client.key"),
        )
        # Without a client certificate the server refuses the handshake: a failed call.
        anonymous = GrpcProvisioner(addr, deadline=5.0, tries=1, tls_ca=str(certs / "ca.pem"))
        try:
            assert await _regrade(good, "k-tls", _rid()) == Applied()
            refused = await _regrade(anonymous, "k-tls-anon", _rid())
            assert isinstance(refused, CallFailed) and refused.retryable
        finally:
            await good.close()
            await anonymous.close()
        assert fp.applied_keys() == {"k-tls"}
    finally:
        fp.stop()
