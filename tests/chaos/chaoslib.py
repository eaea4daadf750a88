"""A small chaos framework over the real pipeline: workload, fault, heal, invariants.

``run_scenario(stack, scenario, workdir)`` runs one :class:`Scenario` against a dedicated
:class:`Stack` (its own Kafka broker and Postgres cluster, so faults never touch the test
session's shared services):

1. a fresh database, topic prefix and seeded fake provisioner; a few hundred propagations
   mixing every outcome path, with several rows per resource (for ordering);
2. relay, worker and projector started as processes (``tests/integration/harness.py``);
3. once ``inject_at`` of the rows are terminal, ``scenario.fault(run)`` injects its fault and
   heals it (each fault is recorded with what it hit);
4. the invariants are checked and returned as a :class:`Result`, never raised, so a soak can
   count them:

   * I1 no lost propagation: every row ends with exactly one of applied_at / failed_at, the
     terminal outcome its path expects, within ``TERMINAL_BOUND_S`` after the heal, after no
     more attempts than the retry budget (a dead-letter path: exactly the budget, or 1 for an
     invalid command);
   * I2 no duplicated effect, from the fake provisioner's own record of every applying call
     per key: one per key, plus one after each lost reply (the ambiguous case) and one per
     command in a declared crash window (:class:`Window`: a worker died or lost partitions
     with those commands uncommitted); exactly one effect for paths that apply, none for the
     others, none under a key outside the workload; redelivery after quiescence calls nothing;
   * I3 per-resource order: a resource's outcomes follow enqueue order in its partition and
     its terminal times are non-decreasing; each propagation's attempts run 1..n; and on the
     provisioner's side each effect is its row's change, applied in enqueue order by the
     fake's own call sequence and clock;
   * I4 projection equals an independent oracle and the replay: :func:`oracle_fold` computes
     every row (attempts, terminal column and time, last_outcome/error/skip_reason) and audit
     row from the outcome log; the projection must equal it, and ``pipeline replay
     --rebuild`` (projector stopped) must leave every projected column and the audit as they
     were (and equal to the oracle);
   * I5 liveness: processor lag 0 with a commit on every partition, projector checkpoints at
     the end offsets and no due unpublished outbox row, within ``LIVENESS_BOUND_S``; and every
     command on the log that names a propagation attempt has an outcome for it (processed,
     not only received).

Every fault proves it landed (``run.fault(..., landed=..., proof=...)``): a run with a fault
that did not land, or with no fault proven to have landed, fails.

A row stuck "published but no outcome" after the heal is reported with the worker's log
lines around its command (the worker runs with ``PIPELINE_LOG_LEVEL=DEBUG``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from harness import RESTART_ME, Pipeline, dedupe
from invariants import (
    CommandAt,
    Window,
    budget_problems,
    doubled_effects,
    oracle_differences,
    oracle_fold,
    provisioner_order,
    unlanded,
    unprocessed,
    window_allowances,
)
from psycopg.types.json import Jsonb

from pipeline.components.lag import LagReport, measure, pipeline_sources
from pipeline.devtools.fake_provisioner import FakeProvisioner, Rule
from pipeline.devtools.stack import procs
from pipeline.devtools.stack.kafka import KafkaBroker
from pipeline.devtools.stack.postgres import PostgresCluster
from pipeline.domain.errors import PipelineError
from pipeline.domain.events import COMMAND_SCHEMA, idempotency_key
from pipeline.store.outbox import enqueue

MAX_ATTEMPTS = 5
BACKOFF_SCALE = 0.0001  # 1m -> 6 ms; the 5-attempt schedule takes about 0.3 s
PARTITIONS = 3
TERMINAL_BOUND_S = 150.0  # every row terminal within this long after the fault healed
LIVENESS_BOUND_S = 60.0  # lag back to 0 on every partition within this long after that
STALL_S = 20.0  # no progress this long, nothing in flight: a lost command, fail at once
INVARIANTS = ("I1", "I2", "I3", "I4", "I5")
TERMINAL = ("applied", "dead_lettered", "unknown_kind_dead_lettered")

# -- workload ----------------------------------------------------------------------------------

RULES = (
    Rule(match="slow-*", action="ok", latency_ms=150),
    Rule(match="allowed-*", action="skip", reason="Already at target tier"),
    Rule(match="flakyskip-*", action="skip", reason="postgres-admin secret missing", times=2),
    Rule(match="deadskip-*", action="skip", reason="namespace team-x not found"),
    # 4 failing calls: the 3 tries of attempt 1, then the first of attempt 2
    Rule(match="transient-*", action="error", code="UNAVAILABLE", times=4),
    Rule(match="ordflaky-*", action="error", code="UNAVAILABLE", times=4),
    Rule(match="perm-*", action="error", code="FAILED_PRECONDITION"),
    # the effect lands, the reply is lost; the next call is answered "applied" (replayed)
    Rule(match="ambiguous-*", action="apply_then_error", code="UNAVAILABLE", times=1),
)


@dataclass(frozen=True)
class PathSpec:
    """One outcome path of the workload: ``count`` resources, each with one or more rows."""

    prefix: str
    count: int
    terminal: str  # the row's expected last_outcome
    effect: bool  # the provisioner applies it (exactly once)
    kind: str = "tier_elevation"  # or "rotate" (every known kind) or "unknown"
    payload: Any = None  # written raw, bypassing enqueue()'s validation (a bad outbox row)
    rows_per_resource: int = 1
    # The attempt a dead-letter path ends at; None: the budget (MAX_ATTEMPTS), or 1 for a raw
    # payload (an invalid command is dead-lettered at once). Unused for applied paths.
    dead_at: int | None = None

    def attempts(self) -> int | None:
        """The exact number of attempts this path takes, where the retry budget fixes it."""
        if self.terminal == "applied":
            return None
        if self.dead_at is not None:
            return self.dead_at
        return 1 if self.payload is not None else MAX_ATTEMPTS


ORDERED_STEPS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("tier_elevation", {"target_tier": "pro"}),
    ("tier_demotion", {"target_tier": "free"}),
    ("resource_suspend", {}),
    ("resource_resume", {}),
)
KNOWN_KINDS = ("tier_elevation", "tier_demotion", "resource_suspend", "resource_resume")
UNKNOWN_KIND = "kind_from_the_future"

PATHS = (
    PathSpec("ok", 50, "applied", True, kind="rotate"),
    PathSpec("slow", 16, "applied", True),
    PathSpec("allowed", 12, "applied", False),
    PathSpec("flakyskip", 12, "applied", True),
    PathSpec("deadskip", 6, "dead_lettered", False),
    PathSpec("transient", 12, "applied", True),
    PathSpec("perm", 6, "dead_lettered", False),
    PathSpec("ambiguous", 12, "applied", True),
    PathSpec("unknown", 6, "unknown_kind_dead_lettered", False, kind="unknown"),
    PathSpec("invalid", 6, "dead_lettered", False, payload={"target_tier": ""}),
    # several rows per resource, in enqueue order; some fail once on every row
    PathSpec("ordered", 16, "applied", True, rows_per_resource=len(ORDERED_STEPS)),
    PathSpec("ordflaky", 6, "applied", True, rows_per_resource=len(ORDERED_STEPS)),
)

Resource = tuple[str, str, str]


@dataclass
class Workload:
    expected: dict[int, PathSpec] = field(default_factory=dict)
    resources: dict[Resource, list[int]] = field(default_factory=lambda: defaultdict(list))

    def add(self, pid: int, path: PathSpec, resource: Resource) -> None:
        self.expected[pid] = path
        self.resources[resource].append(pid)


def seed_workload(database_url: str, rng: random.Random, paths: Iterable[PathSpec]) -> Workload:
    """Enqueue every path, interleaved at random; rows of one resource keep their order."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        # A value the running worker lacks: a newer API enqueued it.
        conn.execute(f"ALTER TYPE propagation_kind ADD VALUE IF NOT EXISTS '{UNKNOWN_KIND}'")
    tokens: list[tuple[PathSpec, int]] = []
    for path in paths:
        for i in range(path.count):
            tokens += [(path, i)] * path.rows_per_resource
    rng.shuffle(tokens)
    step: Counter[tuple[str, int]] = Counter()
    work = Workload()
    with psycopg.connect(database_url) as conn:
        for path, i in tokens:
            n = step[(path.prefix, i)]
            step[(path.prefix, i)] += 1
            rid = f"{path.prefix}-{i}"
            team = "team-ord" if path.rows_per_resource > 1 else f"team-{rng.randrange(12)}"
            rtype = "redis" if path.rows_per_resource > 1 else "postgres"
            if path.rows_per_resource > 1:
                kind, payload = ORDERED_STEPS[n % len(ORDERED_STEPS)]
            elif path.kind == "rotate":
                kind = KNOWN_KINDS[i % len(KNOWN_KINDS)]
                payload = {"target_tier": "pro"} if "tier" in kind else {}
            elif path.kind == "unknown":
                kind, payload = UNKNOWN_KIND, {"target_tier": "pro"}
            else:
                kind, payload = path.kind, {"target_tier": "pro"}
            if path.payload is not None:
                row = conn.execute(
                    "INSERT INTO pending_propagations"
                    " (kind, team_id, resource_type, resource_id, payload)"
                    " VALUES (%s, %s, %s, %s, %s) RETURNING id",
                    (kind, team, rtype, rid, Jsonb(path.payload)),
                ).fetchone()
                assert row is not None
                pid = int(row[0])
            else:
                pid = enqueue(conn, kind, team, rtype, rid, payload)
            work.add(pid, path, (team, rtype, rid))
        conn.commit()
    return work


# -- services ----------------------------------------------------------------------------------


class Stack:
    """A Kafka broker and a Postgres cluster of the chaos suite's own, free to kill."""

    def __init__(self, workdir: Path, cache_dir: Path) -> None:
        self.workdir = workdir
        self.kafka = KafkaBroker(workdir / "kafka", cache_dir)
        self.postgres = PostgresCluster(workdir / "postgres")

    def start(self) -> None:
        self.kafka.start()
        self.postgres.start()

    def ensure_running(self) -> None:
        """A scenario that failed halfway may leave a service down; bring it back."""
        if not self.kafka.running:
            self.kafka.start()
        if not self.postgres.running:
            self.postgres.start()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.kafka.stop()
        with contextlib.suppress(Exception):
            self.postgres.stop()
        with contextlib.suppress(Exception):
            self.postgres.remove_files()

    def logs(self, tail: int = 40) -> str:
        return (
            f"--- kafka broker ({self.kafka.log_path})\n{procs.tail(self.kafka.log_path, tail)}\n"
            f"--- postgres ({self.postgres.log_path})\n{procs.tail(self.postgres.log_path, tail)}"
        )


# -- results -----------------------------------------------------------------------------------


@dataclass
class Check:
    ok: bool
    detail: str


@dataclass
class Fault:
    what: str
    at_s: float
    detail: dict[str, Any] = field(default_factory=dict)
    # True: the fault proved it hit (``proof`` says how); False: it provably did not (the run
    # fails); None: a record that needs no proof (a heal, a note).
    landed: bool | None = None
    proof: str = ""


@dataclass
class Result:
    scenario: str
    seed: int
    iterations: int = 1
    faults: list[Fault] = field(default_factory=list)
    invariants: dict[str, Check] = field(default_factory=dict)
    checks: dict[str, Check] = field(default_factory=dict)  # the scenario's own assertions
    durations: dict[str, float] = field(default_factory=dict)
    error: str | None = None  # the run itself broke (a fault could not be injected...)
    # The worker restarting itself (exit 3): offset_gap, progress_stalled, recovery_stalled.
    self_restarts: dict[str, int] = field(default_factory=dict)
    logdir: str = ""
    log_tail: str = ""  # component and service logs of a failed run

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and not unlanded(self.faults)
            and all(self.invariants.get(i, Check(False, "not checked")).ok for i in INVARIANTS)
            and all(c.ok for c in self.checks.values())
        )

    def report(self) -> str:
        lines = [f"scenario {self.scenario} seed {self.seed}: {'ok' if self.ok else 'FAILED'}"]
        for f in self.faults:
            landed = {True: "landed", False: "DID NOT LAND", None: "record"}[f.landed]
            lines.append(
                f"  fault @{f.at_s:.1f}s {f.what} [{landed}: {f.proof}]"
                f" {orjson.dumps(f.detail).decode()}"
            )
        for problem in unlanded(self.faults):
            lines.append(f"  FAULTS: {problem}")
        for name in INVARIANTS:
            c = self.invariants.get(name, Check(False, "not checked"))
            lines.append(f"  {name} {'pass' if c.ok else 'FAIL'}: {c.detail}")
        for name, c in self.checks.items():
            lines.append(f"  check {name} {'pass' if c.ok else 'FAIL'}: {c.detail}")
        if self.error:
            lines.append(f"  error: {self.error}")
        lines.append(f"  durations: {self.durations}")
        lines.append(f"  worker self-restarts: {self.self_restarts}")
        lines.append(f"  logs: {self.logdir}")
        if self.log_tail:
            lines.append(self.log_tail)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "seed": self.seed,
            "ok": self.ok,
            "faults": [f.__dict__ for f in self.faults],
            "invariants": {k: v.__dict__ for k, v in self.invariants.items()},
            "checks": {k: v.__dict__ for k, v in self.checks.items()},
            "durations": self.durations,
            "self_restarts": self.self_restarts,
            "error": self.error,
            "logdir": self.logdir,
        }


class ScenarioError(Exception):
    """A fault could not be injected as the scenario intends (not an invariant failure)."""


# -- the run -----------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class RawMessage:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


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

    @property
    def commands_topic(self) -> str:
        return f"{self.prefix}propagations"

    @property
    def outcomes_topic(self) -> str:
        return f"{self.prefix}propagation-outcomes"

    @property
    def processor_group(self) -> str:
        return f"{self.prefix}propagation-processor"

    @property
    def projection(self) -> str:
        return f"{self.prefix}propagation-projection"

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
        with psycopg.connect(self.p.database_url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pending_propagations WHERE id = ANY(%s)"
                " AND (applied_at IS NOT NULL OR failed_at IS NOT NULL)",
                (ids,),
            ).fetchone()
        assert row is not None
        return int(row[0]) / max(1, len(ids))

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

    # -- Kafka and Postgres helpers ------------------------------------------------------------

    def produce(self, topic: str, messages: list[tuple[bytes | None, bytes]]) -> int:
        """Produce with acks=all; returns how many the broker acknowledged."""
        return asyncio.run(_produce(self.stack.kafka.bootstrap, topic, messages))

    def read_raw(self, topic: str) -> list[RawMessage]:
        return asyncio.run(_read_raw(self.stack.kafka.bootstrap, topic))

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


async def _produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes]]) -> int:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_request_size=2 * 1024 * 1024
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in messages]
        acked = await asyncio.gather(*futures)
        return sum(1 for md in acked if md.offset >= 0)
    finally:
        await producer.stop()


async def _read_raw(bootstrap: str, topic: str) -> list[RawMessage]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=4 << 20
    )
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: list[RawMessage] = []
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            for tp, msgs in (await consumer.getmany(timeout_ms=500)).items():
                out += [
                    RawMessage(tp.partition, m.offset, m.key, m.value)
                    for m in msgs
                    if m.offset < ends[tp]
                ]
        return out
    finally:
        await consumer.stop()


async def _commit_zero(bootstrap: str, group: str, topic: str) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        assert tps, f"topic {topic} has no partitions"
        consumer.assign(tps)
        await consumer.commit({tp: 0 for tp in tps})
    finally:
        await consumer.stop()


async def _delete_topics(bootstrap: str, prefix: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        mine = [t for t in await admin.list_topics() if t.startswith(prefix)]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()


# -- invariants --------------------------------------------------------------------------------


def _outcomes(run: ChaosRun) -> dict[int, list[dict[str, Any]]]:
    events: dict[int, list[dict[str, Any]]] = run.p.outcomes()
    # A scenario that trimmed the log's head (retention) kept a copy of what it deleted.
    for pid, gone in run.notes.get("trimmed_outcomes", {}).items():
        events[pid] = gone + events.get(pid, [])
    return events


def check_i1(run: ChaosRun) -> Check:
    """Every row terminal within the bound, exactly one terminal column, the expected one."""
    ids = list(run.workload.expected)
    deadline = time.monotonic() + TERMINAL_BOUND_S
    started = last_change = time.monotonic()
    last_open = -1
    while True:
        rows = run.p.rows()
        open_ids = [
            i for i in ids if rows[i]["applied_at"] is None and rows[i]["failed_at"] is None
        ]
        if not open_ids:
            break
        if len(open_ids) != last_open:
            last_open, last_change = len(open_ids), time.monotonic()
        run.p.supervise()
        dead = {n: p.returncode for n, p in run.p.procs.items() if p.poll() is not None}
        why = ""
        if dead:
            why = f"components exited {dead}"
        elif time.monotonic() > deadline:
            why = f"bound {TERMINAL_BOUND_S:.0f}s passed"
        elif time.monotonic() - last_change > STALL_S and _stalled(run, open_ids, rows):
            why = (
                f"stalled: no progress for {STALL_S:.0f}s, every open row is published without"
                " an outcome while the processor and projector have no lag (only the relay's"
                " 25-minute rescue could move them)"
            )
        if why:
            return Check(
                False,
                f"{len(open_ids)} rows never terminal ({why})\n"
                + command_holes(run)
                + "\n"
                + diagnose_stuck(run, open_ids, rows),
            )
        time.sleep(0.2)
    waited = time.monotonic() - started
    problems = []
    outcomes = _outcomes(run)
    for pid, path in run.workload.expected.items():
        row = rows[pid]
        both = row["applied_at"] is not None and row["failed_at"] is not None
        if both or row["last_outcome"] != path.terminal:
            problems.append(
                f"{pid} {path.prefix}: last_outcome={row['last_outcome']} "
                f"expected {path.terminal} applied_at={row['applied_at']} "
                f"failed_at={row['failed_at']}"
            )
            continue
        want_applied = path.terminal == "applied"
        if (row["applied_at"] is not None) != want_applied:
            problems.append(f"{pid} {path.prefix}: wrong terminal column {row}")
        events = dedupe(outcomes.get(pid, []))
        terminal_events = [e for e in events if e["outcome"] in TERMINAL]
        if len(terminal_events) != 1 or events[-1]["outcome"] != path.terminal:
            problems.append(
                f"{pid} {path.prefix}: log outcomes "
                f"{[(e['attempt'], e['outcome']) for e in events]}"
            )
        if row["attempts"] != len(events):
            problems.append(
                f"{pid} {path.prefix}: attempts={row['attempts']} but "
                f"{len(events)} distinct outcome events"
            )
    budget = {pid: (path.prefix, path.attempts()) for pid, path in run.workload.expected.items()}
    problems += budget_problems(
        budget, {pid: dedupe(evs) for pid, evs in outcomes.items()}, MAX_ATTEMPTS
    )
    holes = command_holes(run)
    if holes:
        problems.insert(0, holes)
    if problems:
        return Check(False, f"{len(problems)} problems: " + "; ".join(problems[:8]))
    return Check(
        True,
        f"{len(ids)} rows terminal as expected ({waited:.1f}s after the heal), attempts within"
        f" the budget of {MAX_ATTEMPTS} (dead-letter paths exactly at it); every command"
        " offset reached a worker",
    )


def command_holes(run: ChaosRun) -> str:
    """Command offsets no worker ever received: commands committed past without being seen.

    The relay's idempotent producer leaves no gaps in offsets, so every offset below the end
    must appear in some worker's ``command_received`` lines (DEBUG) at least once.
    """
    received: dict[int, set[int]] = defaultdict(set)
    timeline: list[dict[str, Any]] = []
    for comp in ("worker", "worker2"):
        for e in run.log_events(comp):
            e["_component"] = comp
            if e.get("event") == "command_received":
                received[int(e["partition"])].add(int(e["offset"]))
            timeline.append(e)
    raw = run.read_raw(run.commands_topic)
    ends: dict[int, int] = defaultdict(int)
    by_offset: dict[tuple[int, int], RawMessage] = {}
    for m in raw:
        ends[m.partition] = max(ends[m.partition], m.offset + 1)
        by_offset[(m.partition, m.offset)] = m
    holes = sorted((p, o) for p, end in ends.items() for o in range(end) if o not in received[p])
    if not holes:
        return ""
    out = [f"LOST COMMANDS: {len(holes)} command offsets never reached a worker: {holes[:20]}"]
    timeline.sort(key=lambda e: str(e.get("ts")))
    for p, o in holes[:5]:
        hole = by_offset.get((p, o))
        doc = orjson.loads(hole.value) if hole is not None and hole.value else {}
        what = {k: doc.get(k) for k in ("propagation_id", "attempt", "kind", "resource_id")}
        before = max((x for x in received[p] if x < o), default=None)
        after = min((x for x in received[p] if x > o), default=None)
        ctx = [
            {
                k: e.get(k)
                for k in (
                    "ts",
                    "_component",
                    "event",
                    "partition",
                    "offset",
                    "partitions",
                    "expected",
                    "got",
                )
            }
            for e in timeline
            if (e.get("partition") == p and e.get("offset") in (before, after))
            or e.get("event")
            in (
                "started",
                "stopping",
                "partitions_assigned",
                "partitions_revoked",
                "offset_gap",
                "progress_stalled",
                "recovery_stalled",
                "fatal",
            )
        ]
        out.append(
            f"partition {p} offset {o} {what}: last received before it {before},"
            f" next received {after}; worker timeline: {ctx[-16:]}"
        )
    return " | ".join(out)


def _stalled(run: ChaosRun, open_ids: list[int], rows: dict[int, dict[str, Any]]) -> bool:
    """Nothing in flight can move these rows: each waits for an outcome nobody will produce."""
    try:
        rep = run.lag()
    except PipelineError:
        return False
    if any(pl.lag for pl in rep.partitions):
        return False
    # An open row that is not published-without-outcome is either due (relay) or held back
    # behind an earlier row of its resource; it is stuck if that earlier row is.
    stuck = {i for i in open_ids if rows[i]["published_attempt"] > rows[i]["attempts"]}
    if not stuck:
        return False
    for i in open_ids:
        if i in stuck:
            continue
        r = rows[i]
        earlier = [
            j
            for j in run.workload.resources.get(
                (r["team_id"], r["resource_type"], r["resource_id"]), []
            )
            if j < i and j in stuck
        ]
        if not earlier:
            return False
    return True


def diagnose_stuck(run: ChaosRun, open_ids: list[int], rows: dict[int, dict[str, Any]]) -> str:
    """Evidence for rows that never ended: published but no outcome is a lost command."""
    out: list[str] = []
    commands: dict[int, list[dict[str, Any]]] = {}
    outcomes: dict[int, list[dict[str, Any]]] = {}
    with contextlib.suppress(Exception):
        commands = run.p.commands()
        outcomes = run.p.outcomes()
    worker_events = {c: run.log_events(c) for c in ("worker", "worker2")}
    gaps = [e for evs in worker_events.values() for e in evs if e.get("event") == "offset_gap"]
    out.append(f"worker offset_gap warnings: {gaps[:20]}")
    for pid in open_ids[:10]:
        row = rows[pid]
        lost = row["published_attempt"] > row["attempts"]
        out.append(
            f"row {pid} ({run.workload.expected[pid].prefix}): attempts={row['attempts']} "
            f"published_attempt={row['published_attempt']} published_at={row['published_at']} "
            f"next_attempt_at={row['next_attempt_at']} last_outcome={row['last_outcome']}"
            + (" -- PUBLISHED BUT NO OUTCOME" if lost else "")
        )
        cmds = [(c["_partition"], c["_offset"], c["attempt"]) for c in commands.get(pid, [])]
        outs = [
            (o["_partition"], o["_offset"], o["attempt"], o["outcome"])
            for o in outcomes.get(pid, [])
        ]
        out.append(f"  commands on the log (partition, offset, attempt): {cmds}")
        out.append(f"  outcomes on the log: {outs}")
        where = {(p_, o_) for p_, o_, _a in cmds}
        for comp, evs in worker_events.items():
            hits = [
                e
                for e in evs
                if e.get("propagation_id") == pid
                or (e.get("partition"), e.get("offset")) in where
                or (
                    e.get("event") == "offset_gap"
                    and any(e.get("partition") == p_ for p_, _o in where)
                )
            ]
            out.append(f"  {comp} log lines for it: {hits[:12]}")
            for p_, o_ in sorted(where):
                near = [
                    e
                    for e in evs
                    if e.get("partition") == p_
                    and isinstance(e.get("offset"), int)
                    and abs(int(e["offset"]) - o_) <= 3
                ]
                out.append(f"  {comp} around partition {p_} offset {o_}: {near[:8]}")
            lifecycle = [
                {k: e.get(k) for k in ("ts", "event", "partitions", "error")}
                for e in evs
                if e.get("event")
                in ("started", "partitions_assigned", "partitions_revoked", "stopping", "fatal")
            ]
            out.append(f"  {comp} lifecycle: {lifecycle[-12:]}")
    return "\n".join(out)


def commands_at(run: ChaosRun) -> list[CommandAt]:
    """Every command on the log with the propagation attempt it names, if it names one."""
    out = []
    for m in run.read_raw(run.commands_topic):
        doc: Any = None
        with contextlib.suppress(orjson.JSONDecodeError):
            doc = orjson.loads(m.value or b"")
        named = isinstance(doc, dict) and doc.get("schema") == COMMAND_SCHEMA
        pid = doc.get("propagation_id") if named else None
        attempt = doc.get("attempt") if named else None
        ok = type(pid) is int and type(attempt) is int
        out.append(CommandAt(m.partition, m.offset, pid if ok else None, attempt if ok else None))
    return out


def check_i2(run: ChaosRun) -> Check:
    applications = run.provisioner.applications()
    effects = run.provisioner.effects()
    allowed = window_allowances(run.windows, commands_at(run))
    expected = {idempotency_key(pid): p.effect for pid, p in run.workload.expected.items()}
    problems = doubled_effects(applications, effects, expected, allowed)
    if problems:
        return Check(False, f"{len(problems)} problems: " + "; ".join(problems[:10]))
    calls = sum(len(v) for v in applications.values())
    return Check(
        True,
        f"{len(effects)} keys applied, each exactly once; {calls} applying calls, none outside"
        f" lost replies and {len(run.windows)} crash windows ({sum(allowed.values())} commands)",
    )


def check_i3(run: ChaosRun) -> Check:
    outcomes = _outcomes(run)
    rows = run.p.rows()
    problems = []
    for pid in run.workload.expected:
        attempts = [e["attempt"] for e in dedupe(outcomes.get(pid, []))]
        if attempts != list(range(1, len(attempts) + 1)):
            problems.append(f"{pid}: attempts on the log in order {attempts}")
    groups = 0
    for resource, ids in run.workload.resources.items():
        if len(ids) < 2:
            continue
        groups += 1
        firsts = [dedupe(outcomes.get(pid, [])) for pid in ids]
        parts = {e["_partition"] for evs in firsts for e in evs}
        if len(parts) != 1:
            problems.append(f"{resource}: outcomes on partitions {sorted(parts)}")
            continue
        spans = [
            (min(e["_offset"] for e in evs), max(e["_offset"] for e in evs))
            for evs in firsts
            if evs
        ]
        if len(spans) != len(ids) or any(a[1] >= b[0] for a, b in itertools.pairwise(spans)):
            problems.append(
                f"{resource}: outcome offsets per row {spans} not in enqueue order {ids}"
            )
        terminal_offsets = [
            next(e["_offset"] for e in evs if e["outcome"] in TERMINAL) for evs in firsts if evs
        ]
        if terminal_offsets != sorted(terminal_offsets):
            problems.append(f"{resource}: terminal outcomes at {terminal_offsets}")
        times = [rows[pid]["applied_at"] or rows[pid]["failed_at"] for pid in ids]
        if None in times or times != sorted(times):
            problems.append(f"{resource}: terminal times {times} not non-decreasing")
    applies = {pid: path.effect for pid, path in run.workload.expected.items()}
    problems += provisioner_order(run.workload.resources, applies, run.provisioner.effects(), rows)
    if problems:
        return Check(False, f"{len(problems)} ordering problems: " + "; ".join(problems[:8]))
    return Check(
        True,
        f"{groups} multi-row resources in enqueue order, on the log and by the provisioner's"
        " own call sequence; every effect is its row's; attempts in order",
    )


def oracle_state(run: ChaosRun) -> tuple[dict[int, tuple[Any, ...]], dict[str, tuple[Any, ...]]]:
    """The workload's projected rows and audit rows, shaped as :func:`oracle_fold`'s."""
    ids = list(run.workload.expected)
    with psycopg.connect(run.p.database_url) as conn:
        rows = conn.execute(
            "SELECT id, attempts, applied_at, failed_at, last_outcome, last_error,"
            " last_skip_reason FROM pending_propagations WHERE id = ANY(%s)",
            (ids,),
        ).fetchall()
        audit = conn.execute(
            "SELECT event_id::text, propagation_id, audit_kind, outcome, attempt, skip_reason,"
            " skip_reason_bucket, error, dead_letter_reason, occurred_at, source_topic,"
            " source_partition, source_offset FROM propagation_audit"
            " WHERE propagation_id = ANY(%s)",
            (ids,),
        ).fetchall()
    return {r[0]: tuple(r[1:]) for r in rows}, {a[0]: tuple(a[1:]) for a in audit}


def check_i4(run: ChaosRun) -> Check:
    """Compare the projection with the oracle; stop the projector, rebuild from the outcome
    log, compare every projected column with before and with the oracle."""
    rc = run.stop_component("projector", signal.SIGTERM)
    events = [{**e, "_topic": run.outcomes_topic} for evs in _outcomes(run).values() for e in evs]
    oracle = oracle_fold(events, run.workload.expected)
    problems = [f"projection: {p}" for p in oracle_differences(oracle, *oracle_state(run))]
    before = run.projected_state()
    # On a trimmed log (a retention scenario), I4 holds for the range the log still covers.
    covered = ["--covered-only"] if run.notes.get("log_trimmed") else []
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.ops.cli",
            "replay",
            "--from-beginning",
            "--rebuild",
            *covered,
        ],
        env=run.p.env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        return Check(False, f"replay --rebuild rc={done.returncode}: {done.stderr[-2000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    after = run.projected_state()
    problems += [f"rebuild: {p}" for p in oracle_differences(oracle, *oracle_state(run))]
    if report.get("rows_differing") != 0 or not report.get("committed"):
        problems.append(f"replay report: {report}")
    b_rows = {r[0]: r for r in before[0]}
    a_rows = {r[0]: r for r in after[0]}
    differ = [
        (b_rows.get(i), a_rows.get(i))
        for i in sorted(set(b_rows) | set(a_rows))
        if b_rows.get(i) != a_rows.get(i)
    ]
    if differ:
        problems.append(f"{len(differ)} rows differ (before, after): {differ[:4]}")
    if before[1] != after[1]:
        only_b = set(before[1]) - set(after[1])
        only_a = set(after[1]) - set(before[1])
        problems.append(
            f"audit differs: {len(only_b)} only before {list(only_b)[:3]}, "
            f"{len(only_a)} only after {list(only_a)[:3]}"
        )
    if problems:
        return Check(False, "; ".join(problems))
    return Check(
        True,
        f"projection and rebuild of {report['events_read']} events both equal the oracle's"
        f" {len(oracle[0])} rows and {len(oracle[1])} audit rows and each other"
        f" ({len(before[0])} rows, {len(before[1])} audit rows; projector rc={rc})",
    )


def check_processed(run: ChaosRun) -> Check:
    """Every command on the log naming a propagation attempt has an outcome for that attempt:
    it was processed, not only received (``command_received`` is logged before deciding)."""
    # .get: hand-made outcome events on the topic may lack fields (bad_input)
    answered = {(pid, e.get("attempt")) for pid, evs in _outcomes(run).items() for e in evs}
    commands = commands_at(run)
    missing = unprocessed(commands, answered)
    if missing:
        return Check(False, f"{len(missing)} commands without an outcome: {missing[:8]}")
    named = sum(1 for c in commands if c.propagation_id is not None)
    return Check(True, f"all {named} commands naming an attempt have its outcome")


def check_i5(run: ChaosRun, bound: float = LIVENESS_BOUND_S) -> Check:
    started = time.monotonic()
    deadline = started + bound
    problems: list[str] = []
    while True:
        run.p.supervise()  # a worker that asked for a restart gets one, as in production
        try:
            rep = run.lag()
        except PipelineError as exc:
            problems = [f"lag measurement failed: {exc}"]
        else:
            problems = []
            for pl in rep.partitions:
                if pl.lag != 0 or (pl.end > 0 and pl.committed != pl.end):
                    problems.append(
                        f"{pl.group} {pl.topic}[{pl.partition}] committed="
                        f"{pl.committed} end={pl.end} lag={pl.lag}"
                    )
            if rep.topics_missing:
                problems.append(f"topics missing: {rep.topics_missing}")
            if rep.outbox is not None and rep.outbox.due_unpublished:
                problems.append(f"outbox: {rep.outbox.due_unpublished} due rows unpublished")
            if not problems:
                n = len(rep.partitions)
                return Check(
                    True,
                    f"lag 0 and committed on all {n} partitions after "
                    f"{time.monotonic() - started:.1f}s (bound {bound:.0f}s)",
                )
        run.p.supervise()
        dead = {n: p.returncode for n, p in run.p.procs.items() if p.poll() is not None}
        if dead or time.monotonic() > deadline:
            return Check(
                False,
                f"after {time.monotonic() - started:.0f}s (bound {bound:.0f}s)"
                f"{' components exited ' + str(dead) if dead else ''}: " + "; ".join(problems),
            )
        time.sleep(0.5)


def quiet_redelivery(run: ChaosRun, action: Callable[[], str]) -> Check:
    """Run ``action`` on the quiet pipeline; effects and projected state must not change."""
    before_state = run.projected_state()
    before_effects = run.provisioner.effects()
    before_calls = len(run.provisioner.calls())
    what = action()
    live = check_i5(run)
    if not live.ok:
        return Check(False, f"{what}; never caught up: {live.detail}")
    after_state = run.projected_state()
    after_effects = run.provisioner.effects()
    calls = len(run.provisioner.calls()) - before_calls
    problems = []
    if after_effects != before_effects:
        problems.append("provisioner effects changed")
    if calls:
        problems.append(f"{calls} provisioner calls for redelivered commands")
    if after_state != before_state:
        b = {r[0]: r for r in before_state[0]}
        changed = [r for r in after_state[0] if b.get(r[0]) != r]
        problems.append(
            f"projected state changed: {changed[:4]}, audit "
            f"{len(before_state[1])} -> {len(after_state[1])}"
        )
    if problems:
        return Check(False, f"{what}: " + "; ".join(problems))
    return Check(True, f"{what}: no call, no effect, no projected change")


# -- running -----------------------------------------------------------------------------------


def run_scenario(
    stack: Stack,
    scenario: Scenario,
    workdir: Path,
    seed: int | None = None,
    keep_failed: Path | None = None,
) -> Result:
    """Run one scenario; a failed run's logs are copied under ``keep_failed``."""
    seed = scenario.seed if seed is None else seed
    logdir = workdir / f"{scenario.name}-{seed}"
    logdir.mkdir(parents=True, exist_ok=True)
    run = ChaosRun(stack, scenario, seed, logdir)
    res = run.result
    d = res.durations
    try:
        run.start()
        t = time.monotonic()
        run.wait_progress(scenario.inject_at)
        d["before_fault_s"] = round(time.monotonic() - run.t0, 2)
        t = time.monotonic()
        scenario.fault(run)
        d["fault_s"] = round(time.monotonic() - t, 2)
        t = time.monotonic()
        res.invariants["I1"] = check_i1(run)
        d["recovery_s"] = round(time.monotonic() - t, 2)
        t = time.monotonic()
        res.invariants["I5"] = check_i5(run)
        if res.invariants["I5"].ok:
            processed = check_processed(run)
            if not processed.ok:
                res.invariants["I5"] = processed
        if scenario.after is not None and res.invariants["I1"].ok and res.invariants["I5"].ok:
            scenario.after(run)
        res.invariants["I2"] = check_i2(run)
        res.invariants["I3"] = check_i3(run)
        res.invariants["I4"] = check_i4(run)
        d["checks_s"] = round(time.monotonic() - t, 2)
    except Exception as exc:
        res.error = f"{exc!r}\n{traceback.format_exc()[-3000:]}"
    finally:
        res.self_restarts = count_self_restarts(logdir)
        if not res.ok and run.pipeline is not None:
            res.log_tail = run.p.logs(tail=30) + "\n" + stack.logs(20)
            if keep_failed is not None:
                kept = keep_failed / f"{scenario.name}-{seed}-{int(time.time())}"
                shutil.copytree(
                    logdir, kept, dirs_exist_ok=True, ignore=shutil.ignore_patterns("data", "data2")
                )
                (kept / "result.txt").write_text(res.report())
                res.logdir = str(kept)
        run.cleanup()
        d["total_s"] = run.elapsed()
    return res


SELF_RESTART_EVENTS = ("offset_gap", "progress_stalled", "recovery_stalled")


def count_self_restarts(logdir: Path) -> dict[str, int]:
    """How often a worker of this run exited 3 to be restarted, by reason (from its logs)."""
    counts: dict[str, int] = {}
    for path in sorted(logdir.glob("worker*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                event = orjson.loads(line).get("event")
            except orjson.JSONDecodeError:
                continue
            if event in SELF_RESTART_EVENTS:
                counts[event] = counts.get(event, 0) + 1
    return counts


def merge(results: Iterable[Result]) -> dict[str, dict[str, Any]]:
    """Per scenario: iterations, faults injected, pass/fail counts per invariant and check."""
    table: dict[str, dict[str, Any]] = {}
    for r in results:
        row = table.setdefault(
            r.scenario,
            {
                "iterations": 0,
                "faults": 0,
                "landed": 0,
                "errors": 0,
                "restarts": 0,
                "seconds": 0.0,
                **{i: [0, 0] for i in (*INVARIANTS, "checks")},
            },
        )
        row["iterations"] += 1
        row["faults"] += len(r.faults)
        row["landed"] += sum(1 for f in r.faults if f.landed)
        row["errors"] += r.error is not None
        row["restarts"] += sum(r.self_restarts.values())
        row["seconds"] += r.durations.get("total_s", 0.0)
        for i in INVARIANTS:
            c = r.invariants.get(i)
            if c is not None:
                row[i][0 if c.ok else 1] += 1
        if r.checks:
            row["checks"][0 if all(c.ok for c in r.checks.values()) else 1] += 1
    return table


def render_table(results: list[Result], title: str = "chaos") -> Any:
    from rich.table import Table

    table = Table(title=title)
    columns = ("scenario", "iterations", "faults landed/recorded", *INVARIANTS, "checks")
    columns += ("self-restarts",)
    for col in (*columns, "errors", "mean s"):
        table.add_column(col, justify="left" if col == "scenario" else "right")
    for name, row in sorted(merge(results).items()):
        cells = [
            f"{row[i][0]}/{row[i][0] + row[i][1]}" + (" FAIL" if row[i][1] else "")
            for i in (*INVARIANTS, "checks")
        ]
        table.add_row(
            name,
            str(row["iterations"]),
            f"{row['landed']}/{row['faults']}",
            *cells,
            str(row["restarts"]),
            str(row["errors"]),
            f"{row['seconds'] / row['iterations']:.0f}",
        )
    return table


def port_refused(port: int, within: float = 15) -> bool:
    """A client's view: a TCP connection to the port is refused (nothing listens) within
    ``within`` seconds. A killed JVM's threads take a moment to go and hold the socket
    until the last one has, even when its main thread already shows as dead."""
    deadline = time.monotonic() + within
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                pass
        except OSError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
