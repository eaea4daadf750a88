"""The bench report: targets checked, a rich table, and the JSON file.

Report shape (all rates per second, times in seconds unless the key says ``_ms``)::

    meta        count, rate, latency_seconds, partitions, cpus, loadavg_start/end, ...
    end_to_end  count, applied, failed, seconds, per_second       (saturation phase)
    end_to_end_single_calls   the same, worker with PIPELINE_PROVISIONER_BATCH=0
    steady      offered_rate, rows, seconds, rss_mb {component: {samples, first_half_peak_mb,
                second_half_peak_mb, growth_pct}}                 (with --steady-minutes)
    latency     offered_rate, rows, achieved_rate,
                insert_to_projected {p50_ms, p95_ms, p99_ms, max_ms, samples},
                insert_to_outcome   {...}                         (applied_at - created_at)
                insert_to_relay_claim {...}                       (published_at - created_at)
                insert_to_command_record, insert_to_outcome_record {...}  (record timestamps)
    stages      relay_publish, relay_kafka_records, processor, projector {count, seconds,
                per_second}, first_seen_after_insert_s {...}
    raw         kafka_produce, kafka_consume, grpc_64_in_flight, update_batched_500,
                update_row_by_row_500_per_tx
    components  {relay, worker, projector, provisioner, ...: {cpu_seconds, peak_rss_mb}}
    peers       {pgqueuer, procrastinate, plain: {best, trials, ratio_pipeline_over_peer}}
                (plain: the same architecture without faust, pipeline.devtools.bench.plain)
    targets     {name: {target, measured, met}}
    profile     {component: {file, samples, top_self, top_total}}   (with --profile)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

PIPELINE_PARTS = ("relay", "worker", "projector")


def add_targets(report: dict[str, Any]) -> dict[str, Any]:
    """The issue's targets, measured against this run."""
    targets: dict[str, Any] = {}

    def put(name: str, target: str, measured: float | None, met: bool | None) -> None:
        targets[name] = {"target": target, "measured": measured, "met": met}

    e2e = report.get("end_to_end", {}).get("per_second")
    put("end_to_end_throughput", ">= 3300/s", e2e, None if e2e is None else e2e >= 3300)
    for peer, need in (("pgqueuer", 1.5), ("procrastinate", 10.0)):
        ratio = report.get("peers", {}).get(peer, {}).get("ratio_pipeline_over_peer")
        put(f"ratio_over_{peer}", f">= {need}x", ratio, None if ratio is None else ratio >= need)
    # Not a pass/fail target: how close the pipeline runs to its own architecture's ceiling.
    plain_ratio = report.get("peers", {}).get("plain", {}).get("ratio_pipeline_over_peer")
    put("ratio_to_plain_reference", "report only", plain_ratio, None)
    p99 = report.get("latency", {}).get("insert_to_projected", {}).get("p99_ms")
    put("p99_insert_to_applied", "< 100 ms", p99, None if p99 is None else p99 < 100)
    comps = report.get("components", {})
    rss = [d["peak_rss_mb"] for n, d in comps.items() if n.rstrip("0123456789") in PIPELINE_PARTS]
    steady = report.get("steady", {}).get("rss_mb", {})
    rss += [
        d["second_half_peak_mb"]
        for n, d in steady.items()
        if n.rstrip("0123456789") in PIPELINE_PARTS
    ]
    worst = max(rss) if rss else None
    put("rss_per_component", "< 200 MB", worst, None if worst is None else worst < 200)
    growth = [
        d["growth_pct"] for n, d in steady.items() if n.rstrip("0123456789") in PIPELINE_PARTS
    ]
    minutes = report.get("steady", {}).get("seconds", 0.0) / 60
    most = max(growth) if growth else None
    put(
        "rss_flat_over_10_minutes",
        "second half peak <= first half peak + 10%, over >= 10 min",
        most,
        None if most is None else (most <= 10.0 and minutes >= 9.9),
    )
    report["targets"] = targets
    return report


def write_json(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=False, default=str) + "\n")


def _rate(d: dict[str, Any] | None) -> str:
    if not d:
        return "-"
    return f"{d['per_second']:,.0f}/s  ({d['count']:,} in {d['seconds']:.2f}s)"


def render(report: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    meta = report["meta"]
    brokers = meta.get("brokers", 1)
    on = f", {brokers} brokers (factor {min(3, brokers)})" if brokers > 1 else ""
    t = Table(title=f"pipeline bench: {meta['count']:,} propagations{on}", show_lines=False)
    t.add_column("measure")
    t.add_column("value", justify="right")
    e2e = report.get("end_to_end")
    if e2e:
        t.add_row("end-to-end throughput (insert -> applied)", _rate(e2e))
    single = report.get("end_to_end_single_calls")
    if single:
        t.add_row("  the same, one RPC per call (PROVISIONER_BATCH=0)", _rate(single))
    lat = report.get("latency")
    if lat:
        for key, label in (
            ("insert_to_projected", "projected"),
            ("insert_to_outcome", "outcome"),
            ("insert_to_relay_claim", "relay claim"),
            ("insert_to_command_record", "command on Kafka"),
            ("insert_to_outcome_record", "outcome on Kafka"),
        ):
            p = lat[key]
            t.add_row(
                f"latency insert -> {label} at {lat['offered_rate']:g}/s",
                f"p50 {p['p50_ms']:.1f}  p95 {p['p95_ms']:.1f}  p99 {p['p99_ms']:.1f}  "
                f"max {p['max_ms']:.1f} ms",
            )
    for name, d in report.get("stages", {}).items():
        if name != "first_seen_after_insert_s":
            t.add_row(f"stage {name}", _rate(d))
    for name, d in report.get("raw", {}).items():
        t.add_row(f"raw {name}", _rate(d))
    for name, d in report.get("components", {}).items():
        t.add_row(
            f"{name} (saturation phase)",
            f"cpu {d['cpu_seconds']:.1f}s  peak rss {d['peak_rss_mb']:.0f} MB",
        )
    st = report.get("steady")
    if st:
        for name, d in st["rss_mb"].items():
            t.add_row(
                f"{name} RSS over {st['seconds'] / 60:.1f} min at {st['offered_rate']:g}/s",
                f"1st half peak {d['first_half_peak_mb']:.0f} MB, 2nd half peak "
                f"{d['second_half_peak_mb']:.0f} MB ({d['growth_pct']:+.1f}%)",
            )
    for peer, d in report.get("peers", {}).items():
        b = d["best"]
        if b is None:
            t.add_row(f"peer {peer}", f"every trial failed: {d['failed_trials']}")
            continue
        t.add_row(
            f"peer {peer} (best of {len(d['trials'])}: {b['settings']})",
            f"{b['per_second']:,.0f}/s  cpu {b['cpu_seconds']:.1f}s  "
            f"rss {b['peak_rss_mb']:.0f} MB  pipeline/peer {d['ratio_pipeline_over_peer']:.2f}x",
        )
    for name, d in report.get("targets", {}).items():
        measured = "-" if d["measured"] is None else f"{d['measured']:,.2f}"
        verdict = {True: "met", False: "MISSED", None: "not measured"}[d["met"]]
        if d["target"] == "report only":
            verdict = ""
        t.add_row(f"target {name} {d['target']}", f"{measured}  {verdict}")
    load = meta.get("loadavg_start", [])
    t.caption = (
        f"{meta.get('cpus')} cpus; load average at start {', '.join(f'{x:.2f}' for x in load)}"
        + (
            f", at end {', '.join(f'{x:.2f}' for x in meta['loadavg_end'])}"
            if meta.get("loadavg_end")
            else ""
        )
        + (
            f"; components restarted on request: {meta['component_restarts']}"
            if meta.get("component_restarts")
            else ""
        )
    )
    console.print(t)
    for comp, prof in report.get("profile", {}).items():
        pt = Table(title=f"profile {comp}: {prof['samples']} samples ({prof['file']})")
        pt.add_column("top own time")
        pt.add_column("share", justify="right")
        for row in prof["top_self"][:8]:
            pt.add_row(row["function"], f"{row['share']:.1%}")
        console.print(pt)
