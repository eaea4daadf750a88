"""Drives the real pipeline components as subprocesses for integration tests."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.adapters.topics import partitions_for
from pipeline.components.supervisor import COMPONENTS
from pipeline.devtools.stack.procs import free_port
from pipeline.domain.errors import BrokerError
from pipeline.runtime.exit_codes import ExitCode
from pipeline.store.migrate import migrate

# The exit code of a component that asks its supervisor for a restart (a stalled recovery,
# an offset gap): the harness restarts it, as `pipeline run` would.
RESTART_ME = ExitCode.RESTART
# Extra processes of a component (a second worker joining the group, say).
EXTRA = {"worker2": "worker"}


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if it is still there after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_http(
    url: str, proc: subprocess.Popen[bytes], what: str, log: Callable[[], str], timeout: float = 60
) -> None:
    """Until ``url`` answers with success; fails at once when ``proc`` (the server) exits."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"{what} exited {proc.returncode}\n{log()}"
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:  # refused, or an HTTP error status (not ready yet)
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{what} did not answer {url} in {timeout}s\n{log()}"
                ) from None
            time.sleep(0.2)


def clean_env() -> dict[str, str]:
    """This process's environment without any PIPELINE_ setting: a test sets its own."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}


def cli(
    *args: str, env: dict[str, str], timeout: float = 60, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """``pipeline <args>`` as an operator runs it: its own interpreter, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.ops.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


@dataclass
class Pipeline:
    database_url: str
    bootstrap: str
    provisioner_addr: str
    prefix: str
    logdir: Path
    backoff_scale: float = 0.0001
    max_attempts: int = 10
    partitions: int = 3
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    restarts: list[str] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    # More PIPELINE_ settings for every component (Kafka security, provisioner TLS), and
    # per-component ones on top (each component under its own database role).
    extra_env: dict[str, str] = field(default_factory=dict)
    component_env: dict[str, dict[str, str]] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = clean_env()
        env.update(
            PIPELINE_DATABASE_URL=self.database_url,
            PIPELINE_KAFKA_BOOTSTRAP=self.bootstrap,
            PIPELINE_PROVISIONER_ADDR=self.provisioner_addr,
            PIPELINE_TOPIC_PREFIX=self.prefix,
            PIPELINE_BACKOFF_SCALE=str(self.backoff_scale),
            PIPELINE_MAX_ATTEMPTS=str(self.max_attempts),
            PIPELINE_PARTITIONS=str(self.partitions),
            PIPELINE_RELAY_POLL_INTERVAL="0.05",
            PIPELINE_DATA_DIR=str(self.logdir / "data"),
        )
        env.update(self.extra_env)
        return env

    def migrate(self) -> None:
        migrate(self.database_url)

    def start(self, *names: str) -> None:
        for name in names or tuple(COMPONENTS):
            port = free_port()
            self.ports[name] = port
            env = self.env()
            env.update(self.component_env.get(name, {}))
            env["PIPELINE_METRICS_PORT"] = str(port)
            log = open(self.logdir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "pipeline.ops.cli", COMPONENTS.get(name) or EXTRA[name]],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            log.close()

    def signal(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        proc.wait(timeout=60)

    def stop(self) -> None:
        for name in list(self.procs):
            stop_process(self.procs.pop(name))

    def supervise(self) -> None:
        """Restart a component that exited asking for it, as a process supervisor would."""
        for name, proc in list(self.procs.items()):
            if proc.poll() == RESTART_ME:
                self.restarts.append(name)
                del self.procs[name]
                self.start(name)

    def assert_running(self) -> None:
        self.supervise()
        dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
        assert not dead, f"components exited: {dead}\n{self.logs()}"

    def logs(self, tail: int = 40) -> str:
        out = []
        for f in sorted(self.logdir.glob("*.log")):
            lines = f.read_text(errors="replace").splitlines()[-tail:]
            out.append(f"--- {f.name}\n" + "\n".join(lines))
        return "\n".join(out)

    def metric(self, component: str, name: str, labels: dict[str, str] | None = None) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        url = f"http://127.0.0.1:{self.ports[component]}/metrics"
        body = urllib.request.urlopen(url, timeout=5).read().decode()
        for family in text_string_to_metric_families(body):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
                    return float(s.value)
        return 0.0

    def wait_metrics_up(self, component: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.assert_running()
            try:
                self.metric(component, "instant_propagation_relay_published_total")
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"{component} /metrics never came up\n{self.logs()}")

    def wait_terminal(self, ids: list[int], timeout: float = 180) -> dict[int, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            rows = self.rows()
            open_ids = [
                i for i in ids if rows[i]["applied_at"] is None and rows[i]["failed_at"] is None
            ]
            if not open_ids:
                return rows
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(open_ids)} propagations never ended, e.g. "
                    f"{[rows[i] for i in open_ids[:3]]}\n{self.logs()}"
                )
            self.assert_running()
            time.sleep(0.2)

    def count_terminal(self) -> int:
        with psycopg.connect(self.database_url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pending_propagations "
                "WHERE applied_at IS NOT NULL OR failed_at IS NOT NULL"
            ).fetchone()
        assert row is not None
        return int(row[0])

    def count(self, ids: list[int], condition: str) -> int:
        """How many of the propagations ``ids`` meet the SQL ``condition``."""
        with psycopg.connect(self.database_url) as conn:
            row = conn.execute(
                f"SELECT count(*) FROM pending_propagations WHERE id = ANY(%s) AND ({condition})",
                (ids,),
            ).fetchone()
        assert row is not None
        return int(row[0])

    def wait_count_terminal(self, at_least: int, timeout: float = 180) -> None:
        """Until ``at_least`` rows are terminal: a fault timed to land midway."""
        deadline = time.monotonic() + timeout
        while self.count_terminal() < at_least:
            assert time.monotonic() < deadline, self.logs()
            self.assert_running()
            time.sleep(0.05)

    def rows(self) -> dict[int, dict[str, Any]]:
        with psycopg.connect(self.database_url) as conn:
            cur = conn.execute("SELECT * FROM pending_propagations ORDER BY id")
            cols = [d.name for d in cur.description or []]
            return {r[0]: dict(zip(cols, r, strict=True)) for r in cur.fetchall()}

    def outcomes(self) -> dict[int, list[dict[str, Any]]]:
        """Every outcome event on the topic, per propagation, in log order."""
        return asyncio.run(read_topic(self.bootstrap, f"{self.prefix}propagation-outcomes"))

    def commands(self) -> dict[int, list[dict[str, Any]]]:
        return asyncio.run(read_topic(self.bootstrap, f"{self.prefix}propagations"))


@dataclass(frozen=True)
class RawMessage:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


async def _partitions(bootstrap: str, topic: str) -> list[int]:
    try:
        return await partitions_for({"bootstrap_servers": bootstrap}, topic)
    except BrokerError:  # not created yet: nothing to read
        return []


async def read_raw(bootstrap: str, topic: str) -> list[RawMessage]:
    """Every record of ``topic`` up to its end offsets when the read starts, in log order."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=4 << 20
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in await _partitions(bootstrap, topic)]
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


async def read_topic(bootstrap: str, topic: str) -> dict[int, list[dict[str, Any]]]:
    """The JSON events of ``topic`` that name a propagation, per propagation, in log order."""
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for m in await read_raw(bootstrap, topic):
        try:
            doc = orjson.loads(m.value or b"")
        except orjson.JSONDecodeError:
            continue
        if isinstance(doc, dict) and isinstance(doc.get("propagation_id"), int):
            doc["_partition"], doc["_offset"] = m.partition, m.offset
            out[doc["propagation_id"]].append(doc)
    return dict(out)


def dedupe(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    out = []
    for e in events:
        if e["event_id"] not in seen:
            seen.add(e["event_id"])
            out.append(e)
    return out
