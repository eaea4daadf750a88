"""Orchestration of one bench run on a stack (Kafka, Postgres) it is given.

Phases, in order, in one run: warm-up; saturation (``count`` rows inserted at once, the
pipeline already running); latency (rows paced at ``rate``/s); the raw limits; the peers.
The fake provisioner runs in its own process (``pipeline fake-provisioner``) for everyone.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from pipeline.devtools.bench import peers as peers_mod
from pipeline.devtools.bench import plain, profile, raw, steady
from pipeline.devtools.bench.components import Components, Stack
from pipeline.devtools.bench.pacing import poll_delay
from pipeline.devtools.bench.procstats import ProcSampler
from pipeline.domain.errors import PipelineError
from pipeline.store import bench as store
from pipeline.store.migrate import migrate

# The bench starts a new broker. With 50 warm-up rows, Kafka's JIT compiler threads were half
# of the broker's CPU in the first seconds of the saturation phase (per-thread CPU from
# /proc): the bench measured a cold JVM that no production broker is. 10,000 rows warm it.
WARM_COUNT = 10_000


@dataclass
class Settings:
    count: int = 20_000
    rate: float = 500.0
    latency_seconds: float = 10.0
    partitions: int = 6
    peers: bool = True
    trials: dict[str, list[dict[str, int]]] | None = None  # None = peers.TRIALS
    profile_dir: Path | None = None
    workers: int = 1  # worker processes (one consumer group); peers get as many
    steady_minutes: float = 0.0  # > 0: offer ``rate`` this long and sample RSS (flat or not)
    single_calls: bool = True  # also measure saturation with PIPELINE_PROVISIONER_BATCH=0
    brokers: int = 1  # Kafka nodes of the stack (3: replicated, factor 3, min ISR 2)
    progress: Callable[[str], None] = lambda _msg: None


async def _wait_done(
    comps: Components, first: int, last: int, limit_s: float, series: list[tuple[float, int]]
) -> tuple[int, int, float]:
    """Poll until every row of the range is terminal; returns (applied, failed, when)."""
    n = last - first + 1
    t0 = time.perf_counter()
    async with await psycopg.AsyncConnection.connect(
        comps.stack.database_url, autocommit=True
    ) as conn:
        while True:
            applied, failed = await store.progress(conn, first, last)
            now = time.perf_counter()
            series.append((now, applied))
            if applied + failed >= n:
                return applied, failed, now
            if now - t0 > limit_s:
                raise PipelineError(
                    f"only {applied + failed} of {n} propagations ended within {limit_s:.0f}s\n"
                    + comps.logs()
                )
            comps.check()
            await asyncio.sleep(poll_delay(applied + failed, n, now - t0))


def _span(a: datetime | None, b: datetime | None) -> float:
    return (b - a).total_seconds() if a is not None and b is not None else 0.0


async def _saturation(
    comps: Components, s: Settings, sampler: ProcSampler, report: dict[str, Any]
) -> None:
    url = comps.stack.database_url
    recordings = []
    if s.profile_dir is not None:
        for name in comps.names:
            recordings.append(profile.start(name, comps.procs[name].pid, s.profile_dir))
        await asyncio.sleep(1.0)  # py-spy attaches
    series: list[tuple[float, int]] = []
    sampler.mark()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        t0 = time.perf_counter()
        first, last = await store.insert_batch_async(conn, "sat-", s.count)
    timeout = max(120.0, s.count / 50)
    applied, failed, t_end = await _wait_done(comps, first, last, timeout, series)
    sampler.end_phase()
    for rec in recordings:
        profile.stop(rec)
    report["end_to_end"] = _throughput(s.count, applied, failed, t_end - t0)
    report["components"] = {
        n: {"cpu_seconds": sampler.cpu_seconds(n), "peak_rss_mb": 0.0} for n in sampler.names()
    }
    with psycopg.connect(url, autocommit=True) as conn:
        st = store.stage(conn, first, last)
    kw = {"bootstrap_servers": comps.stack.bootstrap}
    cmd_ts = await raw.topic_timestamps(kw, f"{comps.stack.prefix}propagations", first, last)
    out_ts = await raw.topic_timestamps(
        kw, f"{comps.stack.prefix}propagation-outcomes", first, last
    )
    seen = [(t, a) for t, a in series if a > 0]
    proj_span = (seen[-1][0] - seen[0][0]) if len(seen) > 1 else 0.0
    created = st.created_min.timestamp() if st.created_min else 0.0
    report["stages"] = {
        "relay_publish": raw.Rate(st.rows, _span(st.published_min, st.published_max)).to_dict(),
        "relay_kafka_records": raw.rate_of_timestamps(cmd_ts).to_dict(),
        "processor": raw.rate_of_timestamps(out_ts).to_dict(),
        "projector": raw.Rate(applied, proj_span).to_dict(),
        "first_seen_after_insert_s": {
            "relay_publish": _span(st.created_min, st.published_min),
            "command_record": (min(cmd_ts) / 1000 - created) if cmd_ts else 0.0,
            "outcome_record": (min(out_ts) / 1000 - created) if out_ts else 0.0,
            "projected": (seen[0][0] - t0) if seen else 0.0,
        },
    }
    if recordings:
        report["profile"] = {r.name: profile.summarize(r.path) for r in recordings}


async def _latency(comps: Components, s: Settings, report: dict[str, Any]) -> None:
    url = comps.stack.database_url
    with psycopg.connect(url, autocommit=True) as conn:
        store.install_projected_trigger(conn)
    total = max(1, int(s.rate * s.latency_seconds))
    tick = 0.01
    ranges: list[tuple[int, int]] = []
    gc.disable()  # no collector pause in the load generator while it paces the inserts
    try:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as aconn:
            t0 = time.perf_counter()
            sent = 0
            while sent < total:
                due = min(total, int((time.perf_counter() - t0) * s.rate) + 1)
                if due > sent:
                    # A fresh resource per row: rows of one resource are held in order.
                    ranges.append(await store.insert_batch_async(aconn, f"lat-{sent}-", due - sent))
                    sent = due
                next_at = t0 + sent / s.rate
                await asyncio.sleep(max(0.0, min(tick, next_at - time.perf_counter())))
            offered_for = time.perf_counter() - t0
    finally:
        gc.enable()
    first, last = ranges[0][0], ranges[-1][1]
    await _wait_done(comps, first, last, 120.0, [])
    with psycopg.connect(url, autocommit=True) as conn:
        store.drop_projected_trigger(conn)
        projected = store.projected_latency(conn, first, last)
        outcome = store.outcome_latency(conn, first, last)
        claimed = store.claimed_latency(conn, first, last)
        created = store.created_epochs(conn, first, last)
    kw = {"bootstrap_servers": comps.stack.bootstrap}
    on_topic = {}
    for name, topic in (("command", "propagations"), ("outcome", "propagation-outcomes")):
        stamps = await raw.first_record_ms(kw, f"{comps.stack.prefix}{topic}", first, last)
        on_topic[name] = store.percentiles(
            [ms / 1000 - created[pid] for pid, ms in stamps.items() if pid in created]
        )

    def ms(p: store.Percentiles) -> dict[str, float]:
        return {
            "p50_ms": p.p50 * 1000,
            "p95_ms": p.p95 * 1000,
            "p99_ms": p.p99 * 1000,
            "max_ms": p.max * 1000,
            "samples": p.samples,
        }

    report["latency"] = {
        "offered_rate": s.rate,
        "rows": total,
        "achieved_rate": total / offered_for if offered_for > 0 else 0.0,
        "insert_to_projected": ms(projected),
        "insert_to_outcome": ms(outcome),
        "insert_to_relay_claim": ms(claimed),
        "insert_to_command_record": ms(on_topic["command"]),
        "insert_to_outcome_record": ms(on_topic["outcome"]),
    }


async def _raw_limits(comps: Components, s: Settings, report: dict[str, Any]) -> None:
    kw = {"bootstrap_servers": comps.stack.bootstrap}
    produced, consumed = await raw.kafka_produce_consume(
        kw, f"{comps.stack.prefix}bench-raw", s.count, s.partitions
    )
    grpc_rate, grpc_failed = await raw.grpc_alone(comps.provisioner_addr, s.count, "raw-grpc-")
    batched_rate, batched_failed = await raw.grpc_alone(
        comps.provisioner_addr, s.count, "raw-grpc-batched-", batch=64
    )
    batched, row_by_row = await asyncio.to_thread(
        raw.update_alone, comps.stack.database_url, s.count
    )
    report["raw"] = {
        "kafka_produce": produced.to_dict(),
        "kafka_consume": consumed.to_dict(),
        "grpc_64_in_flight": {**grpc_rate.to_dict(), "not_applied": grpc_failed},
        "grpc_64_in_flight_apply_batch": {**batched_rate.to_dict(), "not_applied": batched_failed},
        "update_batched_500": batched.to_dict(),
        "update_row_by_row_500_per_tx": row_by_row.to_dict(),
    }


async def _peers(comps: Components, s: Settings, report: dict[str, Any]) -> None:
    trials = s.trials if s.trials is not None else peers_mod.TRIALS
    out: dict[str, Any] = {}
    pipeline_rate = float(report["end_to_end"]["per_second"])
    for peer in peers_mod.PEERS:
        results = []
        errors = []
        # The same process budget for every system: a peer may use as many worker
        # processes as the pipeline ran (--workers), no more.
        tried = [t for t in trials.get(peer, []) if t.get("processes", 1) <= s.workers]
        for i, settings in enumerate(tried):
            s.progress(f"peer {peer} trial {i + 1}/{len(tried)}: {settings}")
            try:
                trial = await peers_mod.run_trial(
                    peer,
                    settings,
                    database_url=comps.stack.database_url,
                    provisioner_addr=comps.provisioner_addr,
                    count=s.count,
                    key_prefix=f"{peer}-{i}-",
                    logdir=comps.stack.workdir,
                    limit_s=max(120.0, s.count / 20),
                )
            except Exception as exc:  # one failed trial must not lose the whole run
                s.progress(f"peer {peer} trial {settings} failed: {exc!r}")
                errors.append({"settings": settings, "error": repr(exc)[:500]})
                continue
            results.append(trial)
        if not results:
            out[peer] = {
                "best": None,
                "trials": [],
                "failed_trials": errors,
                "ratio_pipeline_over_peer": None,
            }
            continue
        best = max(results, key=lambda t: t.per_second)
        out[peer] = {
            "best": best.to_dict(),
            "trials": [t.to_dict() for t in results],
            "failed_trials": errors,
            "ratio_pipeline_over_peer": pipeline_rate / best.per_second if best.per_second else 0.0,
        }
    s.progress("plain reference peer: the same architecture without faust")
    out["plain"] = await _plain(comps, s, pipeline_rate)
    report["peers"] = out


async def _plain(comps: Components, s: Settings, pipeline_rate: float) -> dict[str, Any]:
    """The pipeline's ratio to its own architecture's ceiling (``devtools.bench.plain``)."""
    try:
        trial = await plain.run_trial(
            database_url=comps.stack.database_url,
            bootstrap=comps.stack.bootstrap,
            provisioner_addr=comps.provisioner_addr,
            prefix=comps.stack.prefix,
            partitions=s.partitions,
            count=s.count,
            logdir=comps.stack.workdir,
            limit_s=max(120.0, s.count / 20),
        )
    except Exception as exc:  # a failed reference must not lose the whole run
        s.progress(f"plain reference peer failed: {exc!r}")
        error = {"settings": {}, "error": repr(exc)[:500]}
        return {
            "best": None,
            "trials": [],
            "failed_trials": [error],
            "ratio_pipeline_over_peer": None,
        }
    ratio = pipeline_rate / trial.per_second if trial.per_second else 0.0
    return {
        "best": trial.to_dict(),
        "trials": [trial.to_dict()],
        "failed_trials": [],
        "ratio_pipeline_over_peer": ratio,
    }


async def _single_calls(comps: Components, s: Settings, report: dict[str, Any]) -> None:
    """The saturation phase again, the worker making one RPC per call (no ApplyBatch)."""
    comps.stop(*comps.workers)
    for name in comps.workers:
        comps.start_component(name, PIPELINE_PROVISIONER_BATCH="0")
    await comps.group_settled()
    await _warm(comps, "single-warm-")
    async with await psycopg.AsyncConnection.connect(
        comps.stack.database_url, autocommit=True
    ) as conn:
        t0 = time.perf_counter()
        first, last = await store.insert_batch_async(conn, "single-", s.count)
    applied, failed, t_end = await _wait_done(comps, first, last, max(120.0, s.count / 50), [])
    report["end_to_end_single_calls"] = _throughput(s.count, applied, failed, t_end - t0)
    comps.stop(*comps.workers)  # back to the default (batched) workers for what follows
    for name in comps.workers:
        comps.start_component(name)
    # Joined and recovered before going on: the latency phase must not measure a start-up.
    await comps.group_settled()
    await _warm(comps, "batched-warm-")


async def _warm(comps: Components, prefix: str, count: int = 50) -> None:
    """``count`` propagations through the whole pipeline, not measured: every component is up
    and assigned (50), or also warm (the first warm-up, WARM_COUNT)."""
    async with await psycopg.AsyncConnection.connect(
        comps.stack.database_url, autocommit=True
    ) as conn:
        first, last = await store.insert_batch_async(conn, prefix, count)
    await _wait_done(comps, first, last, max(180.0, count / 50), [])


def _throughput(count: int, applied: int, failed: int, seconds: float) -> dict[str, Any]:
    return {
        "count": count,
        "applied": applied,
        "failed": failed,
        "seconds": seconds,
        "per_second": count / seconds if seconds > 0 else 0.0,
    }


async def run_bench(stack: Stack, s: Settings) -> dict[str, Any]:
    """One full run; returns the report (see ``report.py`` for its shape)."""
    report: dict[str, Any] = {
        "meta": {
            "started_at": datetime.now(UTC).isoformat(),
            "count": s.count,
            "rate": s.rate,
            "latency_seconds": s.latency_seconds,
            "partitions": s.partitions,
            "workers": s.workers,
            "brokers": s.brokers,
            "cpus": os.cpu_count(),
            "loadavg_start": list(os.getloadavg()),
            "topic_prefix": stack.prefix,
        }
    }
    await asyncio.to_thread(migrate, stack.database_url)
    comps = Components(stack, s.partitions, s.workers)
    sampler = ProcSampler()
    try:
        s.progress("starting the fake provisioner, relay, worker and projector")
        comps.start_provisioner()
        comps.start_pipeline()
        for name, p in comps.procs.items():
            sampler.track(name, p.pid)
        for name, pid in stack.extra_pids.items():
            sampler.track(name, pid)
        for name, pid in stack.extra_trees.items():
            sampler.track(name, pid, tree=True)
        comps.on_restart.append(sampler.track)
        await comps.group_settled()
        sampler.start()
        warm = min(WARM_COUNT, s.count)
        report["meta"]["warm_count"] = warm
        s.progress(f"warm-up: {warm} propagations, not measured")
        await _warm(comps, "warm-", warm)
        s.progress(f"saturation: {s.count} rows at once")
        await _saturation(comps, s, sampler, report)
        # Before the latency and steady phases, so it meets the same outbox size as the
        # batched run, not the hundreds of thousands of rows a steady phase leaves.
        if s.single_calls:
            s.progress("saturation again with single calls (PIPELINE_PROVISIONER_BATCH=0)")
            await _single_calls(comps, s, report)
        s.progress(f"latency: {s.rate:g}/s for {s.latency_seconds:g}s")
        await _latency(comps, s, report)
        for name in report["components"]:
            report["components"][name]["peak_rss_mb"] = sampler.peak_rss_mb(name)
        if s.steady_minutes > 0:
            s.progress(f"steady: {s.rate:g}/s for {s.steady_minutes:g} min, RSS sampled")
            report["steady"] = await steady.run(
                comps.stack.database_url,
                lambda: {n: comps.procs[n].pid for n in comps.names},
                s.rate,
                s.steady_minutes,
                s.progress,
                comps.check,
            )
        comps.stop(*comps.names)
        await sampler.stop()
        s.progress("raw limits: aiokafka, gRPC, batched UPDATE")
        await _raw_limits(comps, s, report)
        if s.peers:
            await _peers(comps, s, report)
    finally:
        await sampler.stop()
        comps.stop()
    report["meta"]["loadavg_end"] = list(os.getloadavg())
    # Restarts a component asked for (ExitCode.RESTART), by name: each one costs the phase
    # it fell in some throughput, so a reader of the numbers must see them.
    report["meta"]["component_restarts"] = dict(comps.restarts)
    return report
