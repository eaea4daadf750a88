"""What a cluster fault is measured by: a steady load and ``pipeline lag`` asked throughout
(:class:`FaultWatch`), and the record and issue 12's bounds checked on it afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any

import psycopg
from chaos_record import count_self_restarts
from chaos_run import ChaosRun
from chaos_workload import PathSpec
from harness import cli
from psycopg.types.json import Jsonb

STALL_BOUND_S = 15.0  # issue 12: worst insert-to-applied during a broker's loss
LAG_ANSWER_BOUND_S = 5.0  # issue 12: `pipeline lag` answers within this with a broker down
LOAD_PATH = PathSpec("load", 0, "applied", True)


@dataclass
class LagAnswer:
    seconds: float
    rc: int
    partial: bool


class FaultWatch:
    """During a fault: a steady load of plain regrades, and ``pipeline lag`` asked repeatedly.

    Started before the fault, stopped after it healed; the stall is measured afterwards on the
    load rows inserted in between.
    """

    def __init__(self, run: ChaosRun, rate: int, lag_every_s: float = 5.0) -> None:
        self.run = run
        self.rate = rate
        self.lag_every_s = lag_every_s
        self.ids: list[int] = []
        self.lag_answers: list[LagAnswer] = []  # in process
        self.cli_answers: list[LagAnswer] = []  # the command, interpreter start included
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._load, daemon=True),
            threading.Thread(target=self._ask_lag, daemon=True),
        ]
        self.errors: list[str] = []
        self.lag_errors: list[str] = []
        self.seconds = 0.0

    def __enter__(self) -> FaultWatch:
        self._t0 = time.monotonic()
        self.pids = {n: p.pid for n, p in self.run.p.procs.items()}
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.seconds = time.monotonic() - self._t0
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def _load(self) -> None:
        tick = 0.2
        per_tick = max(1, round(self.rate * tick))
        n = 0
        try:
            with psycopg.connect(self.run.p.database_url) as conn:
                while not self._stop.is_set():
                    started = time.monotonic()
                    rids = [f"load-{n + i}" for i in range(per_tick)]
                    n += per_tick
                    rows = conn.execute(
                        "INSERT INTO pending_propagations"
                        " (kind, team_id, resource_type, resource_id, payload)"
                        " SELECT 'tier_elevation', 'team-load', 'postgres', rid, %s"
                        " FROM unnest(%s::text[]) AS rid RETURNING id, resource_id",
                        (Jsonb({"target_tier": "pro"}), rids),
                    ).fetchall()
                    conn.commit()
                    for pid, rid in rows:
                        self.ids.append(int(pid))
                        self.run.workload.add(int(pid), LOAD_PATH, ("team-load", "postgres", rid))
                    self._stop.wait(max(0.0, tick - (time.monotonic() - started)))
        except Exception as exc:  # recorded: the scenario fails on it
            self.errors.append(f"load: {exc!r}")

    def _ask_lag(self) -> None:
        """``pipeline lag --json`` as an operator runs it (wall time recorded, interpreter
        start included), and the same measurement in process (its answer time, asserted)."""
        env = self.run.p.env()
        while not self._stop.wait(self.lag_every_s):
            self.lag_answers.append(self._in_process())
            started = time.monotonic()
            try:
                res = cli("lag", "--json", env=env, timeout=120)
            except subprocess.TimeoutExpired:
                self.cli_answers.append(LagAnswer(120.0, -1, True))
                continue
            seconds = time.monotonic() - started
            partial = False
            with contextlib.suppress(ValueError):
                partial = bool(json.loads(res.stdout).get("partial"))
            self.cli_answers.append(LagAnswer(round(seconds, 2), res.returncode, partial))

    def _in_process(self) -> LagAnswer:
        from pipeline.components.lag import LagProbe, pipeline_sources
        from pipeline.ops.lag import LAG_WITHIN_S

        run = self.run
        sources = pipeline_sources(
            run.processor_group, run.commands_topic, run.projection, run.outcomes_topic
        )

        async def ask() -> bool:
            kw = {"bootstrap_servers": run.stack.kafka.bootstrap}
            async with LagProbe(kw, run.p.database_url) as probe:
                return (await probe.measure(sources, within_s=LAG_WITHIN_S)).partial

        started = time.monotonic()
        try:
            partial = asyncio.run(ask())
        except Exception as exc:
            self.lag_errors.append(f"{exc!r}"[:300])
            return LagAnswer(round(time.monotonic() - started, 2), 1, True)
        return LagAnswer(round(time.monotonic() - started, 2), 4 if partial else 0, partial)

    # -- after the run's checks ----------------------------------------------------------------

    def stall_s(self) -> float | None:
        """Worst insert-to-applied of the load rows (all terminal once I1 passed)."""
        if not self.ids:
            return None
        with psycopg.connect(self.run.p.database_url) as conn:
            row = conn.execute(
                "SELECT max(extract(epoch FROM applied_at - created_at)) FROM"
                " pending_propagations WHERE id = ANY(%s)",
                (self.ids,),
            ).fetchone()
        return None if row is None or row[0] is None else round(float(row[0]), 2)

    def restarts(self) -> dict[str, Any]:
        """Every process restart of this run so far, of any kind."""
        p = self.run.p
        now = {n: proc.pid for n, proc in p.procs.items()}
        replaced = sorted(n for n, pid in self.pids.items() if now.get(n) != pid)
        events = ("fatal", "stopped_without_draining", "producer_rebuilt")
        seen: dict[str, int] = {}
        for name in ("relay", "worker", "projector"):
            for e in self.run.log_events(name):
                if e.get("event") in events:
                    key = f"{name}:{e['event']}"
                    seen[key] = seen.get(key, 0) + 1
        return {
            "supervisor_restarts": list(p.restarts),
            "replaced_processes": replaced,
            "events": seen,
        }


def record(run: ChaosRun, watch: FaultWatch, *, strict: bool) -> None:
    """Record the stall, restarts and lag answers; ``strict`` asserts issue 12's bounds."""
    stall = watch.stall_s()
    restarts = watch.restarts()
    answers = watch.lag_answers
    worst_lag = max((a.seconds for a in answers), default=None)
    run.notes["stall_s"] = stall
    run.notes["restarts"] = restarts
    run.notes["lag_answers"] = [a.__dict__ for a in answers]
    cli_worst = max((a.seconds for a in watch.cli_answers), default=None)
    run.fault(
        "measured",
        stall_s=stall,
        load_rows=len(watch.ids),
        offered_per_s=round(len(watch.ids) / max(watch.seconds, 1e-9), 1),
        restarts=restarts,
        lag_worst_s=worst_lag,
        lag_partial=sum(a.partial for a in answers),
        lag_cli_worst_s=cli_worst,
        lag_cli_rcs=sorted({a.rc for a in watch.cli_answers}),
    )
    run.check(
        "load_ran", not watch.errors and bool(watch.ids), f"{len(watch.ids)} rows {watch.errors}"
    )
    if not strict:
        return
    run.check(
        "stall_under_15s",
        stall is not None and stall < STALL_BOUND_S,
        f"worst insert-to-applied {stall}s (bound {STALL_BOUND_S:.0f}s)",
    )
    restarted = (
        restarts["supervisor_restarts"]
        or restarts["replaced_processes"]
        or any(not k.endswith("producer_rebuilt") for k in restarts["events"])
    )
    self_restarts = _self_restarts(run)
    run.check(
        "no_component_restart",
        not restarted and not self_restarts,
        f"{restarts} self-restarts {self_restarts}",
    )
    slow = [a for a in answers if a.seconds >= LAG_ANSWER_BOUND_S or a.rc not in (0, 4)]
    run.check(
        "lag_answers_in_5s",
        bool(answers) and not slow,
        f"{len(answers)} answers, worst {worst_lag}s, failing {[a.__dict__ for a in slow]}"
        f" {watch.lag_errors}",
    )


def _self_restarts(run: ChaosRun) -> dict[str, int]:
    return count_self_restarts(run.logdir)
