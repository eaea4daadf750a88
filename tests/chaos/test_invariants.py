"""Each strengthened chaos invariant fails on a planted defect (no services needed).

The verdicts of ``invariants.py`` are fed recorded runs built by hand: a clean one passes,
and the same run with one defect planted (a doubled effect, effects out of order, a wrong
fold, a fault that did not land, attempts over the budget, a command never processed) fails.
The fake provisioner's record of applying calls is checked against the real fake.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from typing import Any

import grpc
import pytest
from chaos_record import INVARIANTS, Check, Fault, Result
from chaos_workload import MAX_ATTEMPTS, PATHS, PathSpec
from invariants import (
    CommandAt,
    ExpectedRow,
    Window,
    budget_problems,
    doubled_effects,
    oracle_differences,
    oracle_fold,
    provisioner_order,
    unlanded,
    unprocessed,
    window_allowances,
)

from pipeline.adapters.proto import provisioner_pb2 as pb
from pipeline.adapters.proto import provisioner_pb2_grpc as pb_grpc
from pipeline.devtools.fake_provisioner import Call, Effect, FakeProvisioner, Rule
from pipeline.domain.events import idempotency_key

K1, K2 = idempotency_key(1), idempotency_key(2)


def _call(key: str, seq: int, outcome: str = "applied") -> Call:
    return Call(key, "RegradeResource", "r-1", outcome, 0.0, seq, float(seq), True)


def _effect(key: str, seq: int, rid: str = "r-1", tier: str = "pro") -> Effect:
    return Effect(key, "RegradeResource", "t", "postgres", rid, tier, 0.0, seq, float(seq))


# -- I2 ----------------------------------------------------------------------------------------


def test_i2_passes_one_applying_call_per_key() -> None:
    apps = {K1: [_call(K1, 1)]}
    assert doubled_effects(apps, {K1: [_effect(K1, 1)]}, {K1: True, K2: False}, {}) == []


def test_i2_fails_on_a_second_applying_call_the_fake_answered_replayed() -> None:
    # The defect the old check could not see: a worker calling again on redelivery gets the
    # idempotent "replayed" answer and no second Effect.
    apps = {K1: [_call(K1, 1), _call(K1, 7, "replayed")]}
    problems = doubled_effects(apps, {K1: [_effect(K1, 1)]}, {K1: True}, {})
    assert len(problems) == 1 and "2 applying calls" in problems[0]


def test_i2_allows_one_more_call_after_a_lost_reply_only() -> None:
    lost = [_call(K1, 1, "error:UNAVAILABLE"), _call(K1, 2, "replayed")]
    assert doubled_effects({K1: lost}, {K1: [_effect(K1, 1)]}, {K1: True}, {}) == []
    third = [*lost, _call(K1, 3, "replayed")]
    assert doubled_effects({K1: third}, {K1: [_effect(K1, 1)]}, {K1: True}, {})


def test_i2_allows_one_more_call_per_command_in_a_crash_window() -> None:
    commands = [CommandAt(0, 4, 1, 1), CommandAt(0, 9, 2, 1), CommandAt(1, 3, None, None)]
    window = Window("worker killed", start={0: 5}, end={0: 10})
    allowed = window_allowances([window], commands)
    assert allowed == {K2: 1}  # offset 4 was committed before the kill
    apps = {k: [_call(k, 1), _call(k, 2, "replayed")] for k in (K1, K2)}
    effects = {k: [_effect(k, 1)] for k in (K1, K2)}
    problems = doubled_effects(apps, effects, {K1: True, K2: True}, allowed)
    assert len(problems) == 1 and problems[0].startswith(K1)


def test_i2_fails_on_an_effect_under_an_unknown_key_and_on_a_missing_effect() -> None:
    stray = idempotency_key(999)
    apps = {stray: [_call(stray, 1)]}
    problems = doubled_effects(apps, {stray: [_effect(stray, 1)]}, {K1: True}, {})
    assert any("outside the workload" in p for p in problems)
    assert any(p.startswith(f"{K1}: 0 effects") for p in problems)


def test_window_without_an_end_covers_everything_from_its_start() -> None:
    w = Window("x", start={0: 3})
    assert [w.covers(0, o) for o in (2, 3, 10_000)] == [False, True, True]
    assert not w.covers(1, 5)


@pytest.fixture
def fake() -> Iterator[tuple[FakeProvisioner, Any]]:
    fake = FakeProvisioner([Rule(match="amb-*", action="apply_then_error", times=1)])
    address = fake.start()
    channel = grpc.insecure_channel(address)
    try:
        yield fake, pb_grpc.ProvisionerStub(channel)  # type: ignore[no-untyped-call]
    finally:
        channel.close()
        fake.stop()


def _regrade(stub: Any, key: str, rid: str) -> str:
    req = pb.RegradeRequest(
        idempotency_key=key, team_id="t", resource_type="postgres", resource_id=rid
    )
    req.target_tier = "pro"
    try:
        stub.RegradeResource(req, timeout=10)
    except grpc.RpcError as exc:
        return str(exc.code().name)
    return "OK"


def test_the_fake_records_every_applying_call_and_i2_sees_the_replay(
    fake: tuple[FakeProvisioner, Any],
) -> None:
    provisioner, stub = fake
    assert [_regrade(stub, "k-plain", "plain-1") for _ in range(2)] == ["OK", "OK"]
    assert [_regrade(stub, "k-amb", "amb-1") for _ in range(2)] == ["UNAVAILABLE", "OK"]
    apps = provisioner.applications()
    assert [(c.outcome, c.applying) for c in apps["k-plain"]] == [
        ("applied", True),
        ("replayed", True),
    ]
    assert [c.outcome for c in apps["k-amb"]] == ["error:UNAVAILABLE", "replayed"]
    seqs = [c.seq for c in provisioner.calls()]
    assert seqs == [1, 2, 3, 4]
    effects = provisioner.effects()
    assert [(e.seq, len(effects[k])) for k in ("k-plain", "k-amb") for e in effects[k]] == [
        (1, 1),
        (3, 1),
    ]
    problems = doubled_effects(apps, effects, {"k-plain": True, "k-amb": True}, {})
    assert len(problems) == 1 and problems[0].startswith("k-plain: 2 applying calls")


# -- I3 ----------------------------------------------------------------------------------------


def _row(kind: str = "tier_elevation", rid: str = "r-1", tier: str = "pro") -> dict[str, Any]:
    return {
        "kind": kind,
        "team_id": "t",
        "resource_type": "postgres",
        "resource_id": rid,
        "payload": {"target_tier": tier},
    }


def test_i3_passes_effects_in_enqueue_order() -> None:
    effects = {K1: [_effect(K1, 3)], K2: [_effect(K2, 8, tier="free")]}
    rows = {1: _row(), 2: _row("tier_demotion", tier="free")}
    res = {("t", "postgres", "r-1"): [1, 2]}
    assert provisioner_order(res, {1: True, 2: True}, effects, rows) == []


def test_i3_fails_on_effects_applied_out_of_order() -> None:
    # Reported in order by the pipeline, applied in the wrong order by the provisioner.
    effects = {K1: [_effect(K1, 9)], K2: [_effect(K2, 4, tier="free")]}
    rows = {1: _row(), 2: _row("tier_demotion", tier="free")}
    res = {("t", "postgres", "r-1"): [1, 2]}
    problems = provisioner_order(res, {1: True, 2: True}, effects, rows)
    assert len(problems) == 1 and "not in enqueue order" in problems[0]


def test_i3_fails_on_an_effect_that_is_not_its_rows_change() -> None:
    effects = {K1: [_effect(K1, 1, tier="free")]}
    problems = provisioner_order({}, {1: True}, effects, {1: _row()})
    assert len(problems) == 1 and "the row asks for" in problems[0]


# -- I4 ----------------------------------------------------------------------------------------

T1, T2, T3 = "2026-01-01T00:00:01Z", "2026-01-01T00:00:02Z", "2026-01-01T00:00:03Z"
_IDS = itertools.count(1)


def _event(attempt: int, outcome: str, at: str, offset: int, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": str(uuid.UUID(int=next(_IDS))),
        "propagation_id": 1,
        "attempt": attempt,
        "outcome": outcome,
        "audit_kind": f"propagation.{outcome}",
        "occurred_at": at,
        "_topic": "o",
        "_partition": 0,
        "_offset": offset,
        **extra,
    }


def _history() -> list[dict[str, Any]]:
    skip = {"skip_reason": "namespace team-x not found", "skip_reason_bucket": "x"}
    first = _event(1, "retrying", T1, 0, error="UNAVAILABLE")
    return [
        first,
        {**first, "_offset": 1},  # a re-emitted duplicate: same event, later offset
        _event(2, "unexpected_skip", T2, 2, **skip),
        _event(3, "applied", T3, 3),
        _event(4, "retrying", T3, 4, error="late"),  # after terminal: ignored by the fold
    ]


def _projected(events: list[dict[str, Any]]) -> tuple[dict[int, Any], dict[str, Any]]:
    """What a correct projection of ``events`` holds, built by hand (not by the oracle)."""
    at3 = datetime.fromisoformat("2026-01-01T00:00:03+00:00")
    rows = {1: (3, at3, None, "applied", None, None)}
    audit = {}
    for e in events:
        audit.setdefault(
            e["event_id"],
            (
                1,
                e["audit_kind"],
                e["outcome"],
                e["attempt"],
                e.get("skip_reason"),
                e.get("skip_reason_bucket"),
                e.get("error"),
                None,
                datetime.fromisoformat(e["occurred_at"].replace("Z", "+00:00")),
                "o",
                0,
                e["_offset"],
            ),
        )
    return rows, audit


def test_i4_oracle_equals_a_correct_projection() -> None:
    events = _history()
    oracle = oracle_fold(events, [1])
    assert oracle[0][1].last_outcome == "applied" and len(oracle[1]) == 4
    assert oracle_differences(oracle, *_projected(events)) == []


def test_i4_fails_on_a_wrong_fold() -> None:
    events = _history()
    rows, audit = _projected(events)
    # A fold that let the late event through after the terminal one
    at3 = rows[1][1]
    wrong = {1: (4, at3, None, "retrying", "late", None)}
    assert oracle_differences(oracle_fold(events, [1]), wrong, audit)
    # A fold that kept last_error from an earlier attempt
    stale = {1: (3, at3, None, "applied", "UNAVAILABLE", None)}
    assert oracle_differences(oracle_fold(events, [1]), stale, audit)


def test_i4_fails_on_audit_rows_missing_doubled_or_altered() -> None:
    events = _history()
    rows, audit = _projected(events)
    oracle = oracle_fold(events, [1])
    first = events[0]["event_id"]
    assert oracle_differences(oracle, rows, {k: v for k, v in audit.items() if k != first})
    moved = {**audit, first: (*audit[first][:-1], 1)}  # the duplicate's offset, not the first
    assert oracle_differences(oracle, rows, moved)
    extra = {**audit, "00000000-0000-0000-0000-0000000000ff": audit[first]}
    assert oracle_differences(oracle, rows, extra)


def test_oracle_row_for_a_propagation_without_events_is_untouched() -> None:
    assert oracle_fold([], [5]) == ({5: ExpectedRow()}, {})


# -- I1: retry budget --------------------------------------------------------------------------


def test_paths_know_their_exact_attempts() -> None:
    by = {p.prefix: p.attempts() for p in PATHS}
    assert by["perm"] == by["deadskip"] == by["unknown"] == MAX_ATTEMPTS
    assert by["invalid"] == 1 and by["ok"] is None
    assert PathSpec("x", 1, "dead_lettered", False, dead_at=3).attempts() == 3


def _attempts(n: int) -> list[dict[str, Any]]:
    return [{"attempt": a} for a in range(1, n + 1)]


def test_i1_budget_passes_and_fails() -> None:
    want = {1: ("perm", MAX_ATTEMPTS), 2: ("ok", None)}
    good = {1: _attempts(MAX_ATTEMPTS), 2: _attempts(2)}
    assert budget_problems(want, good, MAX_ATTEMPTS) == []
    # dead-lettered early, and an applied path over the budget
    bad = {1: _attempts(MAX_ATTEMPTS - 1), 2: _attempts(MAX_ATTEMPTS + 1)}
    problems = budget_problems(want, bad, MAX_ATTEMPTS)
    assert [p.split(":")[0] for p in problems] == ["1 perm", "2 ok"]


# -- faults --------------------------------------------------------------------------------------


def test_faults_must_prove_they_landed() -> None:
    landed = Fault("SIGKILL worker", 1.0, landed=True, proof="exit -9")
    missed = Fault("SIGKILL worker", 1.0, landed=False, proof="exit 3")
    heal = Fault("broker restarted", 2.0)
    assert unlanded([landed, heal]) == []
    assert unlanded([landed, missed]) == ["fault did not land: SIGKILL worker (exit 3)"]
    assert unlanded([heal]) == ["no fault proved it landed (1 recorded)"]
    assert unlanded([]) == ["no fault proved it landed (0 recorded)"]


def test_a_result_with_an_unlanded_fault_is_not_ok() -> None:
    res = Result("s", 1, invariants={i: Check(True, "") for i in INVARIANTS})
    res.faults = [Fault("f", 0.0, landed=True, proof="p")]
    assert res.ok
    res.faults = [replace(res.faults[0], landed=False)]
    assert not res.ok and "DID NOT LAND" in res.report()


# -- processing ----------------------------------------------------------------------------------


def test_a_command_received_but_never_answered_is_unprocessed() -> None:
    cmds = [CommandAt(0, 0, 1, 1), CommandAt(0, 1, 1, 2), CommandAt(0, 2, None, None)]
    assert unprocessed(cmds, {(1, 1), (1, 2)}) == []
    assert unprocessed(cmds, {(1, 1)}) == [CommandAt(0, 1, 1, 2)]
