"""Chaos, CI-sized: every scenario once with its fixed seed, invariants I1..I5 after each.

The scenarios run against a Kafka broker and a Postgres cluster of this module's own (they
get killed and restarted), never the session's shared services. ``make chaos`` runs the
same scenarios at random for a given time (``tests/chaos/soak.py``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from chaos_record import INVARIANTS, Result, count_self_restarts, render_table
from chaos_scenarios import BY_NAME, SCENARIOS
from chaos_services import Stack
from chaoslib import run_scenario
from invariants import unlanded

pytestmark = pytest.mark.integration

_RESULTS: list[Result] = []


@pytest.fixture(scope="module")
def chaos_stack(tmp_path_factory: pytest.TempPathFactory, stack_cache_dir: Path) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("chaos-stack"), stack_cache_dir)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()
        if _RESULTS:
            from rich.console import Console

            Console(width=140).print(render_table(_RESULTS, "chaos (fixed seeds)"))


def test_self_restarts_are_counted_from_worker_logs(tmp_path: Path) -> None:
    (tmp_path / "worker.log").write_text(
        '{"event":"started"}\n'
        '{"event":"progress_stalled","partitions":[1]}\n'
        "[faust] plain text line\n"
        '{"event":"offset_gap","partition":2}\n'
    )
    (tmp_path / "worker2.log").write_text('{"event":"progress_stalled"}\n{broken json\n')
    (tmp_path / "relay.log").write_text('{"event":"offset_gap"}\n')  # not a worker
    assert count_self_restarts(tmp_path) == {"progress_stalled": 2, "offset_gap": 1}


def test_catalogue_covers_the_faults() -> None:
    assert len({s.seed for s in SCENARIOS}) == len(SCENARIOS)
    assert set(BY_NAME) >= {
        "sigkill_worker",
        "sigkill_relay",
        "sigkill_projector",
        "sigterm_each",
        "kafka_restart",
        "postgres_restart",
        "worker_rebalance",
        "duplicate_delivery",
        "offset_reset",
        "provisioner_faults",
        "bad_input",
        "cardinality",
    }


@pytest.mark.parametrize("name", [s.name for s in SCENARIOS])
def test_scenario_keeps_the_invariants(chaos_stack: Stack, tmp_path: Path, name: str) -> None:
    seed = int(os.environ.get("CHAOS_SEED", BY_NAME[name].seed))
    keep = Path(os.environ.get("CHAOS_KEEP_FAILED", "/tmp/pipeline-chaos-failures"))
    result = run_scenario(chaos_stack, BY_NAME[name], tmp_path, seed=seed, keep_failed=keep)
    _RESULTS.append(result)
    print(result.report())
    assert result.error is None, result.report()
    assert not unlanded(result.faults), f"faults did not land\n{result.report()}"
    failed = [i for i in INVARIANTS if not result.invariants[i].ok]
    assert not failed, f"invariants {failed} failed\n{result.report()}"
    failed = [n for n, c in result.checks.items() if not c.ok]
    assert not failed, f"scenario checks {failed} failed\n{result.report()}"
