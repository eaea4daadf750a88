"""Chaos on a three-node KRaft cluster: each scenario once, with its fixed seed, on a freshly
formatted cluster; invariants I1..I5 plus the stall and restart record of each run.

``cluster_broker_down_60s`` is issue 12's broker-loss drill and also asserts its bounds: the
worst insert-to-applied under 15 s, no component restart, `pipeline lag` within 5 s.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from chaoslib import INVARIANTS, Result, render_table, run_scenario
from cluster_scenarios import BY_NAME, CLUSTER_SCENARIOS, ClusterStack

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
        if _RESULTS:
            from rich.console import Console

            Console(width=160).print(render_table(_RESULTS, "cluster chaos (fixed seeds)"))
            for r in _RESULTS:
                print(r.scenario, {k: v.detail for k, v in r.checks.items()})


@pytest.mark.parametrize("name", [s.name for s in CLUSTER_SCENARIOS])
def test_cluster_scenario_keeps_the_invariants(
    cluster_stack: ClusterStack, tmp_path: Path, name: str
) -> None:
    cluster_stack.reformat()  # every scenario on a freshly formatted cluster
    seed = int(os.environ.get("CHAOS_SEED", BY_NAME[name].seed))
    keep = Path(os.environ.get("CHAOS_KEEP_FAILED", "/tmp/pipeline-chaos-failures"))
    result = run_scenario(cluster_stack, BY_NAME[name], tmp_path, seed=seed, keep_failed=keep)
    _RESULTS.append(result)
    print(result.report())
    assert result.error is None, result.report()
    assert result.faults, f"no fault was injected\n{result.report()}"
    failed = [i for i in INVARIANTS if not result.invariants[i].ok]
    assert not failed, f"invariants {failed} failed\n{result.report()}"
    assert "load_ran" in result.checks, f"the fault's record is missing\n{result.report()}"
    failed = [n for n, c in result.checks.items() if not c.ok]
    assert not failed, f"scenario checks {failed} failed\n{result.report()}"
