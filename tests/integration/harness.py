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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.components.supervisor import COMPONENTS
from pipeline.devtools.stack.procs import free_port
from pipeline.store.migrate import migrate

# The worker's exit code when it gives up a stalled faust recovery and asks for a restart.
RESTART_ME = 3
# Extra processes of a component (a second worker joining the group, say).
EXTRA = {"worker2": "worker"}


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
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
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
            proc = self.procs.pop(name)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

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


async def read_topic(bootstrap: str, topic: str) -> dict[int, list[dict[str, Any]]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic)
        if parts is None:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        out: dict[int, list[dict[str, Any]]] = defaultdict(list)
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(timeout_ms=500)
            for _tp, msgs in batch.items():
                for m in msgs:
                    try:
                        doc = orjson.loads(m.value)
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(doc, dict) and isinstance(doc.get("propagation_id"), int):
                        doc["_partition"], doc["_offset"] = m.partition, m.offset
                        out[doc["propagation_id"]].append(doc)
        return dict(out)
    finally:
        await consumer.stop()


def dedupe(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    out = []
    for e in events:
        if e["event_id"] not in seen:
            seen.add(e["event_id"])
            out.append(e)
    return out
