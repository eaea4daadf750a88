"""Chaos on a three-node KRaft cluster: each scenario once, with its fixed seed, on a freshly
formatted cluster; invariants I1..I5 plus the stall and restart record of each run.

``cluster_broker_down_60s`` is issue 12's broker-loss drill and also asserts its bounds: the
worst insert-to-applied under 15 s, no component restart, `pipeline lag` within 5 s.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from chaos_record import Result, print_table
from chaoslib import assert_kept, run_fixed
from cluster_scenarios import BY_NAME, CLUSTER_SCENARIOS, ClusterStack
from cluster_watch import LagAnswer, record

pytestmark = pytest.mark.integration

_RESULTS: list[Result] = []


@pytest.fixture(scope="module")
def cluster_stack(
    tmp_path_factory: pytest.TempPathFactory, stack_cache_dir: Path
) -> Iterator[ClusterStack]:
    stack = ClusterStack(tmp_path_factory.mktemp("cluster-chaos"), stack_cache_dir)
    stack.postgres.start()
    try:
        yield stack
    finally:
        stack.stop()
        print_table(_RESULTS, "cluster chaos (fixed seeds)", width=160)
        for r in _RESULTS:
            print(r.scenario, {k: v.detail for k, v in r.checks.items()})


@pytest.mark.parametrize("name", [s.name for s in CLUSTER_SCENARIOS])
def test_cluster_scenario_keeps_the_invariants(
    cluster_stack: ClusterStack, tmp_path: Path, name: str
) -> None:
    cluster_stack.reformat()  # every scenario on a freshly formatted cluster
    result = run_fixed(cluster_stack, BY_NAME[name], tmp_path)
    _RESULTS.append(result)
    assert result.faults, f"no fault was injected\n{result.report()}"
    assert "load_ran" in result.checks, f"the fault's record is missing\n{result.report()}"
    assert_kept(result)


class _FakeRun:
    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.notes: dict[str, object] = {}
        self.faults: list[str] = []
        self.checks: dict[str, tuple[bool, str]] = {}

    def fault(self, what: str, **_detail: object) -> None:
        self.faults.append(what)

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks[name] = (ok, detail)


class _FakeWatch:
    def __init__(self, stall: float, restarts: list[str], answer_s: float) -> None:
        self.ids = [1, 2, 3]
        self.errors: list[str] = []
        self.lag_errors: list[str] = []
        self.seconds = 1.0
        self._stall = stall
        self._restarts = restarts
        self.lag_answers = [LagAnswer(1.0, 0, False), LagAnswer(answer_s, 4, True)]
        self.cli_answers = [LagAnswer(2.0, 0, False)]

    def stall_s(self) -> float:
        return self._stall

    def restarts(self) -> dict[str, object]:
        return {"supervisor_restarts": self._restarts, "replaced_processes": [], "events": {}}


def _checks(tmp_path: Path, **kw: object) -> dict[str, bool]:
    run = _FakeRun(tmp_path)
    record(run, _FakeWatch(**kw), strict=True)  # type: ignore[arg-type]
    return {n: ok for n, (ok, _d) in run.checks.items()}


def test_the_broker_loss_bounds_pass_when_met(tmp_path: Path) -> None:
    got = _checks(tmp_path, stall=3.0, restarts=[], answer_s=2.0)
    assert got == {
        "load_ran": True,
        "stall_under_15s": True,
        "no_component_restart": True,
        "lag_answers_in_5s": True,
    }


def test_planted_stall_restart_and_slow_lag_each_fail(tmp_path: Path) -> None:
    assert not _checks(tmp_path, stall=15.5, restarts=[], answer_s=2.0)["stall_under_15s"]
    assert not _checks(tmp_path, stall=3.0, restarts=["worker"], answer_s=2.0)[
        "no_component_restart"
    ]
    assert not _checks(tmp_path, stall=3.0, restarts=[], answer_s=5.2)["lag_answers_in_5s"]
    (tmp_path / "worker.log").write_text('{"event":"progress_stalled"}\n')  # a self-restart
    assert not _checks(tmp_path, stall=3.0, restarts=[], answer_s=2.0)["no_component_restart"]
