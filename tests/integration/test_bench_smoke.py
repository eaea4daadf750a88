"""`pipeline bench` end to end at a tiny size: every field present, every count exact.

No timing is asserted (the machine may be busy); the full-size run is `make bench`.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from pipeline.devtools.bench import report as report_mod
from pipeline.devtools.bench.components import Stack
from pipeline.devtools.bench.run import Settings, run_bench
from pipeline.devtools.stack.kafka import KafkaBroker

pytestmark = pytest.mark.integration

COUNT = 200
RATE = 100.0
SECONDS = 2.0
TRIALS = {
    "pgqueuer": [
        {"batch_size": 50, "concurrency": 0, "grpc_batch": 16},
        {"batch_size": 50, "concurrency": 0, "grpc_batch": 16, "processes": 2},
        # More processes than the pipeline's two workers: never tried.
        {"batch_size": 50, "concurrency": 0, "grpc_batch": 16, "processes": 3},
    ],
    "procrastinate": [{"batch_size": 1, "concurrency": 16, "grpc_batch": 0}],
}
RAN = {"pgqueuer": TRIALS["pgqueuer"][:2], "procrastinate": TRIALS["procrastinate"]}


def _rate_ok(d: dict[str, float], count: int) -> None:
    assert d["count"] == count
    assert d["seconds"] >= 0
    assert d["per_second"] >= 0


@pytest.mark.timeout(180)
async def test_bench_small_run_reports_every_field(
    kafka_broker: KafkaBroker, database_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    stack = Stack(database_url, kafka_broker.bootstrap, topic_prefix, tmp_path)
    settings = Settings(
        count=COUNT,
        rate=RATE,
        latency_seconds=SECONDS,
        partitions=3,
        trials=TRIALS,
        steady_minutes=0.1,
        workers=2,  # the group settling, and the peers' process budget
    )
    report = report_mod.add_targets(await run_bench(stack, settings))

    for key in ("end_to_end", "end_to_end_single_calls"):
        e2e = report[key]
        assert (e2e["count"], e2e["applied"], e2e["failed"]) == (COUNT, COUNT, 0)
        assert e2e["seconds"] > 0 and e2e["per_second"] > 0

    steady = report["steady"]
    assert report["meta"]["workers"] == 2
    assert steady["rows"] >= RATE * 6 * 0.9 and set(steady["rss_mb"]) == {
        "relay",
        "worker",
        "worker2",
        "projector",
    }
    for d in steady["rss_mb"].values():
        assert len(d["samples"]) >= 1 and d["first_half_peak_mb"] > 0

    latency = report["latency"]
    rows = int(RATE * SECONDS)
    assert latency["rows"] == rows
    for key in ("insert_to_projected", "insert_to_outcome"):
        p = latency[key]
        assert p["samples"] == rows
        assert 0 <= p["p50_ms"] <= p["p95_ms"] <= p["p99_ms"] <= p["max_ms"]

    stages = report["stages"]
    for name in ("relay_publish", "relay_kafka_records", "processor", "projector"):
        _rate_ok(stages[name], COUNT)
    assert set(stages["first_seen_after_insert_s"]) == {
        "relay_publish",
        "command_record",
        "outcome_record",
        "projected",
    }

    raw = report["raw"]
    for name in (
        "kafka_produce",
        "kafka_consume",
        "grpc_64_in_flight",
        "grpc_64_in_flight_apply_batch",
        "update_batched_500",
        "update_row_by_row_500_per_tx",
    ):
        _rate_ok(raw[name], COUNT)
    assert raw["grpc_64_in_flight"]["not_applied"] == 0
    assert raw["grpc_64_in_flight_apply_batch"]["not_applied"] == 0

    for name in ("relay", "worker", "worker2", "projector", "provisioner"):
        comp = report["components"][name]
        assert comp["cpu_seconds"] >= 0
        assert comp["peak_rss_mb"] > 0

    for peer, tried in RAN.items():
        result = report["peers"][peer]
        assert [t["settings"] for t in result["trials"]] == tried
        assert all(t["applied"] == COUNT for t in result["trials"])
        best = result["best"]
        assert (best["count"], best["applied"]) == (COUNT, COUNT)
        assert best["settings"] in tried
        assert best["peak_rss_mb"] > 0
        assert result["ratio_pipeline_over_peer"] > 0

    plain_ref = report["peers"]["plain"]
    assert plain_ref["failed_trials"] == []
    assert (plain_ref["best"]["count"], plain_ref["best"]["applied"]) == (COUNT, COUNT)
    assert plain_ref["ratio_pipeline_over_peer"] > 0

    assert set(report["targets"]) == {
        "ratio_to_plain_reference",
        "end_to_end_throughput",
        "ratio_over_pgqueuer",
        "ratio_over_procrastinate",
        "p99_insert_to_applied",
        "rss_per_component",
        "rss_flat_over_10_minutes",
    }
    assert report["targets"]["ratio_to_plain_reference"]["met"] is None
    assert all(t["measured"] is not None for t in report["targets"].values())
    assert report["targets"]["rss_flat_over_10_minutes"]["met"] is False  # 6 s is not 10 min
    meta = report["meta"]
    assert meta["count"] == COUNT and len(meta["loadavg_start"]) == 3
    # Restarts the components asked for (a worker's offset gap under load): named, never hidden.
    assert set(meta["component_restarts"]) <= {"relay", "worker", "worker2", "projector"}

    out = io.StringIO()
    report_mod.render(report, Console(file=out, width=200))
    assert "end-to-end throughput" in out.getvalue()
    assert "peer procrastinate" in out.getvalue()
    path = tmp_path / "report.json"
    report_mod.write_json(report, path)
    assert json.loads(path.read_text())["end_to_end"]["applied"] == COUNT
