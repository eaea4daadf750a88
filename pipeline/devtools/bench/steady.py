"""``--steady-minutes``: a constant offered rate for a while, with each component's RSS sampled.

The question it answers is the issue's "RSS flat over a 10-minute run": memory that grows
with the number of propagations processed (an unbounded cache, a table that never forgets)
shows up here long before it shows up in production.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import psutil
import psycopg

from pipeline.store import bench as store

SAMPLE_EVERY_S = 10.0


def flatness(series: list[float]) -> dict[str, float]:
    """Peak RSS of the first and the second half of a run, and how much the second grew."""
    if not series:
        return {"first_half_peak_mb": 0.0, "second_half_peak_mb": 0.0, "growth_pct": 0.0}
    half = max(1, len(series) // 2)
    first, second = max(series[:half]), max(series[half:] or series[:half])
    return {
        "first_half_peak_mb": first,
        "second_half_peak_mb": second,
        "growth_pct": (second - first) / first * 100 if first else 0.0,
    }


async def run(
    database_url: str,
    pids: Callable[[], dict[str, int]],
    rate: float,
    minutes: float,
    progress: Callable[[str], None],
    check: Callable[[], None],
) -> dict[str, Any]:
    # ``pids`` is asked at every sample: a component restarted by ``check`` has a new one.
    procs = {name: psutil.Process(pid) for name, pid in pids().items()}
    series: dict[str, list[float]] = {name: [] for name in procs}
    duration = minutes * 60
    sent = 0
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        t0 = time.perf_counter()
        next_sample = t0
        while (now := time.perf_counter()) - t0 < duration:
            due = int((now - t0) * rate) + 1
            if due > sent:
                await store.insert_batch_async(conn, f"steady-{sent}-", due - sent)
                sent = due
            if now >= next_sample:
                check()
                for name, pid in pids().items():
                    if procs[name].pid != pid:
                        procs[name] = psutil.Process(pid)
                for name, proc in procs.items():
                    series[name].append(proc.memory_info().rss / (1024 * 1024))
                elapsed = now - t0
                progress(
                    f"steady {elapsed / 60:.1f}/{minutes:g} min, {sent:,} rows: "
                    + ", ".join(f"{n} {s[-1]:.0f} MB" for n, s in series.items())
                )
                next_sample += SAMPLE_EVERY_S
            await asyncio.sleep(0.01)
        offered_for = time.perf_counter() - t0
    return {
        "offered_rate": rate,
        "rows": sent,
        "seconds": offered_for,
        "rss_mb": {name: {"samples": s, **flatness(s)} for name, s in series.items()},
    }
