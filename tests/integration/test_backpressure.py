"""A burst larger than the worker's stream buffer: the fetch loop holds, nothing is lost.

faust's own answer to a full buffer left the worker idle for up to a second per fill (issue 16,
``faust_compat.hold_delivery_under_pressure``). The counter is the witness that the hold ran in
the real worker, on the buffer its agent reads: without the wiring it stays at zero.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest
from harness import Pipeline, dedupe

from pipeline.devtools.fake_provisioner import FakeProvisioner, Rule
from pipeline.domain.events import idempotency_key
from pipeline.store.bench import insert_batch

pytestmark = pytest.mark.integration

# faust's stream buffer holds 4,096 and is under pressure from 3,276; the worker has 512
# commands in flight and 128 more taken. 6,000 at once overfill it.
BURST = 6_000


def test_a_burst_past_the_stream_buffer_holds_the_fetch_and_loses_nothing(
    make_pipeline: Callable[..., Pipeline], provisioner: FakeProvisioner
) -> None:
    # Every call takes 0.2 s: 512 in flight finish 2,560 a second, while the relay publishes
    # the burst several times faster, so the buffer fills long before the worker catches up.
    provisioner.set_rules([Rule(match="burst-*", latency_ms=200)])
    p = make_pipeline()
    with psycopg.connect(p.database_url, autocommit=True) as conn:
        first, last = insert_batch(conn, "burst-", BURST)
    ids = list(range(first, last + 1))
    assert len(ids) == BURST
    p.start()
    rows = p.wait_terminal(ids, timeout=180)
    assert [pid for pid in ids if rows[pid]["applied_at"] is None] == []
    assert {rows[pid]["last_outcome"] for pid in ids} == {"applied"}
    outcomes = p.outcomes()
    assert [
        pid for pid in ids if [e["outcome"] for e in dedupe(outcomes[pid])] != ["applied"]
    ] == []
    effects = provisioner.effects()
    assert [pid for pid in ids if len(effects.get(idempotency_key(pid), [])) != 1] == []
    assert p.metric("worker", "instant_propagation_worker_buffer_holds_total") >= 1
