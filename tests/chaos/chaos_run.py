"""One chaos run: its scenario, and what its fault functions work with (:class:`ChaosRun`)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import subprocess
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg
from chaos_record import Check, Fault, Result, ScenarioError
from chaos_services import Stack, _commit_zero, _delete_topics, _produce
from chaos_workload import MAX_ATTEMPTS, PATHS, RULES, PathSpec, Workload, seed_workload
from harness import RESTART_ME, Pipeline, RawMessage, read_raw
from invariants import Window
from psycopg.types.json import Jsonb

from pipeline.components.lag import LagReport, measure, pipeline_sources
from pipeline.devtools.fake_provisioner import FakeProvisioner
from pipeline.domain.errors import PipelineError
from pipeline.runtime.config import Config

BACKOFF_SCALE = 0.0001  # 1m -> 6 ms; the 5-attempt schedule takes about 0.3 s
PARTITIONS = 3


@dataclass(frozen=True)
class Scenario:
    name: str
    fault: Callable[[ChaosRun], None]
    seed: int
    inject_at: float = 0.3  # fraction of the workload's rows terminal before the fault
    extra_paths: tuple[PathSpec, ...] = ()
    # Runs on the quiet pipeline after I1 and I5 (redelivery): must change nothing.
    after: Callable[[ChaosRun], None] | None = None
    relay_batch_size: int = 500


class _Supervised(Pipeline):
    """The harness's pipeline, telling the run when a worker exits to be restarted (exit 3):
    its uncommitted commands come again, a crash window like a kill."""

    def __init__(self, on_worker_exit: Callable[[str], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._on_worker_exit = on_worker_exit

    def supervise(self) -> None:
        for name, proc in list(self.procs.items()):
            if name.startswith("worker") and proc.poll() == RESTART_ME:
                self._on_worker_exit(f"{name} restarted itself")
        super().supervise()


class ChaosRun:
    """What a fault function works with: the pipeline, the services, helpers, the record."""

    def __init__(self, stack: Stack, scenario: Scenario, seed: int, logdir: Path) -> None:
        self.stack = stack
        self.scenario = scenario
        self.seed = seed
        self.rng = random.Random(seed)
        self.logdir = logdir
        self.t0 = time.monotonic()
        self.result = Result(scenario.name, seed, logdir=str(logdir))
        self.dbname = f"chaos_{uuid.uuid4().hex[:10]}"
        self.prefix = f"c-{uuid.uuid4().hex[:8]}-"
        names = Config(topic_prefix=self.prefix)  # the names the components derive from it
        self.commands_topic = names.commands_topic
        self.outcomes_topic = names.outcomes_topic
        self.processor_group = names.processor_group
        self.projection = names.projection_name
        self.provisioner = FakeProvisioner(RULES, seed=seed)
        self.workload = Workload()
        self.pipeline: Pipeline | None = None
        self.rcs: dict[str, list[int]] = defaultdict(list)  # exit codes of stopped components
        self.windows: list[Window] = []  # crash windows: commands that may be handled twice
        self.notes: dict[str, Any] = {}  # what a fault left for its scenario's checks

    # -- names ---------------------------------------------------------------------------------

    @property
    def p(self) -> Pipeline:
        assert self.pipeline is not None
        return self.pipeline

    def elapsed(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    # -- recording -----------------------------------------------------------------------------

    def fault(
        self, what: str, *, landed: bool | None = None, proof: str = "", **detail: Any
    ) -> None:
        """Record a fault; ``landed``/``proof`` say whether and how it provably hit."""
        self.result.faults.append(Fault(what, self.elapsed(), detail, landed, proof))
        print(
            f"[chaos {self.scenario.name} seed={self.seed}] @{self.elapsed()}s {what}"
            f" landed={landed} ({proof}) {detail}"
        )

    def committed_offsets(self) -> tuple[dict[int, int], dict[int, int]]:
        """(committed, end) offsets of the processor group on each command partition."""
        deadline = time.monotonic() + 60
        while True:
            try:
                rep = self.lag()
                break
            except PipelineError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)
        mine = [pl for pl in rep.partitions if pl.group == self.processor_group]
        return (
            {pl.partition: pl.committed or 0 for pl in mine},
            {pl.partition: pl.end for pl in mine},
        )

    def declare_window(
        self, reason: str, start: dict[int, int], end: dict[int, int] | None = None
    ) -> None:
        """Commands at ``[start, end)`` may be handled twice (see :class:`Window`)."""
        self.windows.append(Window(reason, dict(start), dict(end or {})))

    def _worker_gone(self, name: str) -> None:
        # The worker's uncommitted commands (fetched, maybe handled, outcome maybe not
        # recorded) come again to whoever gets the partitions: a crash window, by offset.
        committed, end = self.committed_offsets()
        self.declare_window(f"{name} exited", committed, end)

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.result.checks[name] = Check(ok, detail)

    # -- pipeline control ----------------------------------------------------------------------

    def start(self) -> None:
        self.stack.ensure_running()
        self.stack.postgres.create_database(self.dbname)
        url = self._db_url()
        self.provisioner.start()
        self.pipeline = _Supervised(
            self._worker_gone,
            database_url=url,
            bootstrap=self.stack.kafka.bootstrap,
            provisioner_addr=str(self.provisioner.address),
            prefix=self.prefix,
            logdir=self.logdir,
            backoff_scale=BACKOFF_SCALE,
            max_attempts=MAX_ATTEMPTS,
            partitions=PARTITIONS,
            component_env={
                # command_received / command_seen lines: evidence if a command goes missing
                "worker": {"PIPELINE_LOG_LEVEL": "DEBUG"},
                "worker2": {
                    "PIPELINE_LOG_LEVEL": "DEBUG",
                    "PIPELINE_DATA_DIR": str(self.logdir / "data2"),
                },
                "relay": {"PIPELINE_RELAY_BATCH_SIZE": str(self.scenario.relay_batch_size)},
            },
        )
        self.p.migrate()
        self.workload = seed_workload(url, self.rng, PATHS + self.scenario.extra_paths)
        self.p.start()

    def _db_url(self) -> str:
        from pipeline.devtools.stack.postgres import database_url

        return database_url(self.stack.postgres.url, self.dbname)

    def cleanup(self) -> None:
        if self.pipeline is not None:
            self.pipeline.stop()
        with contextlib.suppress(Exception):
            self.provisioner.stop()
        with contextlib.suppress(Exception):
            self.stack.ensure_running()
            self.stack.postgres.drop_database(self.dbname)
        with contextlib.suppress(Exception):
            asyncio.run(_delete_topics(self.stack.kafka.bootstrap, self.prefix))

    def stop_component(
        self,
        name: str,
        sig: int = signal.SIGTERM,
        timeout: float = 60,
        *,
        expect_running: bool = True,
    ) -> int:
        """Signal one running component and wait for it; returns its exit code.

        A component that already exited is not signalled (ScenarioError): the fault would
        not land. ``expect_running=False``: the caller signalled it already (a kill timed
        from elsewhere); just reap it. A stopped worker declares a crash window over its
        uncommitted commands.
        """
        self.p.supervise()
        proc = self.p.procs.pop(name)
        if expect_running and proc.poll() is not None:
            raise ScenarioError(f"{name} had already exited (rc={proc.returncode}) before {sig!r}")
        proc.send_signal(sig)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            proc.wait()
            raise ScenarioError(f"{name} did not exit within {timeout}s of {sig!r}") from exc
        self.rcs[name].append(int(rc))
        if name.startswith("worker"):
            self._worker_gone(f"{name} stopped by {signal.Signals(sig).name}")
        return int(rc)

    def start_component(self, name: str) -> None:
        self.p.start(name)

    def assert_running(self) -> None:
        self.p.assert_running()

    # -- waiting -------------------------------------------------------------------------------

    def terminal_fraction(self) -> float:
        ids = list(self.workload.expected)
        ended = self.p.count(ids, "applied_at IS NOT NULL OR failed_at IS NOT NULL")
        return ended / max(1, len(ids))

    def wait_progress(self, fraction: float, timeout: float = 120) -> None:
        self.wait_for(
            f"{fraction:.0%} terminal", lambda: self.terminal_fraction() >= fraction, timeout
        )

    def wait_for(self, what: str, cond: Callable[[], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise ScenarioError(f"timed out after {timeout}s waiting for {what}")
            if self.pipeline is not None:
                self.p.assert_running()
            time.sleep(0.05)

    # -- workload additions --------------------------------------------------------------------

    def enqueue_burst(
        self, prefix: str, n: int, due_in_s: float = 0.0, spread_s: float = 0.0, pad: int = 0
    ) -> list[int]:
        """``n`` plain regrades in one transaction, due from ``due_in_s`` over ``spread_s``.

        ``pad`` adds that many bytes to each payload (a big command is slow to publish).
        """
        payload: dict[str, Any] = {"target_tier": "pro"}
        if pad:
            payload["note"] = "p" * pad
        path = PathSpec(prefix, n, "applied", True)
        ids = []
        with psycopg.connect(self.p.database_url) as conn:
            for i in range(n):
                rid = f"{prefix}-{i}"
                row = conn.execute(
                    "INSERT INTO pending_propagations"
                    " (kind, team_id, resource_type, resource_id, payload, next_attempt_at)"
                    " VALUES ('tier_elevation', 'team-burst', 'postgres', %s, %s,"
                    " now() + make_interval(secs => %s)) RETURNING id",
                    (rid, Jsonb(payload), due_in_s + spread_s * i / n),
                ).fetchone()
                assert row is not None
                ids.append(int(row[0]))
                self.workload.add(int(row[0]), path, ("team-burst", "postgres", rid))
            conn.commit()
        return ids

    def keep_busy(self, n: int = 150, spread_s: float = 6.0) -> list[int]:
        """Rows coming due throughout the fault, so it hits a pipeline at work."""
        return self.enqueue_burst(f"busy{len(self.result.faults)}", n, spread_s=spread_s)

    # -- Kafka and Postgres helpers ------------------------------------------------------------

    def produce(self, topic: str, messages: list[tuple[bytes | None, bytes]]) -> int:
        """Produce with acks=all; returns how many the broker acknowledged."""
        return asyncio.run(_produce(self.stack.kafka.bootstrap, topic, messages))

    def read_raw(self, topic: str) -> list[RawMessage]:
        return asyncio.run(read_raw(self.stack.kafka.bootstrap, topic))

    def lag(self) -> LagReport:
        return asyncio.run(
            measure(
                {"bootstrap_servers": self.stack.kafka.bootstrap},
                self.p.database_url,
                pipeline_sources(
                    self.processor_group, self.commands_topic, self.projection, self.outcomes_topic
                ),
                outbox=True,
            )
        )

    def uncommitted_commands(self) -> int:
        rep = self.lag()
        return sum(pl.lag for pl in rep.partitions if pl.group == self.processor_group)

    def reset_processor_offsets(self, timeout: float = 60) -> None:
        """Commit offset 0 on every command partition for the (stopped) processor group."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                asyncio.run(
                    _commit_zero(
                        self.stack.kafka.bootstrap, self.processor_group, self.commands_topic
                    )
                )
                return
            except Exception as exc:  # the group may still hold a dead member for a while
                if time.monotonic() > deadline:
                    raise ScenarioError(f"could not reset the group's offsets: {exc!r}") from exc
                time.sleep(1.0)

    @contextlib.contextmanager
    def blocked_at(
        self, table: str, statement: str, what: str
    ) -> Iterator[psycopg.Connection[Any]]:
        """Hold a SHARE lock on ``table`` until a session running ``statement`` waits on it.

        Yields the lock's connection (still inside its transaction); the lock is released on
        exit, so the blocked session goes on unless it was killed meanwhile.
        """
        with psycopg.connect(self.p.database_url) as lock:
            lock.execute(f"LOCK TABLE {table} IN SHARE MODE")
            try:
                self.wait_for(
                    what,
                    lambda: any(b[2] == "Lock" for b in self.backends(statement)),
                    timeout=30,
                )
                yield lock
            finally:
                lock.rollback()

    def backends(self, like: str) -> list[tuple[Any, ...]]:
        """(pid, state, wait_event_type, query) of other sessions whose query contains ``like``."""
        with psycopg.connect(self.p.database_url, autocommit=True) as conn:
            return conn.execute(
                "SELECT pid, state, wait_event_type, query FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND query LIKE %s",
                (f"%{like}%",),
            ).fetchall()

    def metrics_text(self, component: str) -> str:
        url = f"http://127.0.0.1:{self.p.ports[component]}/metrics"
        body: bytes = urllib.request.urlopen(url, timeout=5).read()
        return body.decode()

    def log_events(self, component: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        path = self.logdir / f"{component}.log"
        if not path.exists():
            return out
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(orjson.JSONDecodeError):
                    doc = orjson.loads(line)
                    if isinstance(doc, dict):
                        out.append(doc)
        return out

    # -- state snapshots -----------------------------------------------------------------------

    def projected_state(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Every projected column of every row, and the whole audit table, in a stable order."""
        with psycopg.connect(self.p.database_url) as conn:
            rows = conn.execute(
                "SELECT id, attempts, applied_at, failed_at, last_outcome, last_error,"
                " last_skip_reason,"
                " CASE WHEN applied_at IS NULL AND failed_at IS NULL THEN next_attempt_at END"
                " FROM pending_propagations ORDER BY id"
            ).fetchall()
            audit = conn.execute("SELECT * FROM propagation_audit ORDER BY event_id").fetchall()
        return rows, audit
