"""Chaos, CI-sized: every scenario once with its fixed seed, invariants I1..I5 after each.

The scenarios run against a Kafka broker and a Postgres cluster of this module's own (they
get killed and restarted), never the session's shared services. ``make chaos`` runs the
same scenarios at random for a given time (``tests/chaos/soak.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from chaos_record import Result, count_self_restarts, print_table
from chaos_scenarios import BY_NAME, SCENARIOS
from chaos_services import Stack
from chaoslib import assert_kept, run_fixed
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
        print_table(_RESULTS, "chaos (fixed seeds)")


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
    result = run_fixed(chaos_stack, BY_NAME[name], tmp_path)
    _RESULTS.append(result)
    assert not unlanded(result.faults), f"faults did not land\n{result.report()}"
    assert_kept(result)
