"""A single-node KRaft Kafka broker run from Maven-resolved jars: Java and Maven, no Docker.

``kafka_jars`` fetches and caches the jars; this module configures, formats, starts, watches
and stops the broker.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

from pipeline.devtools.stack import procs
from pipeline.devtools.stack.kafka_jars import KAFKA_VERSION, ensure_jars, pom_path
from pipeline.devtools.stack.kafka_security import (
    BrokerSecurity,
    scram_format_args,
    secure_listener_properties,
)
from pipeline.devtools.stack.procs import default_cache_dir
from pipeline.domain.errors import StackError

__all__ = [
    "KAFKA_VERSION",
    "BrokerSecurity",
    "KafkaBroker",
    "default_cache_dir",
    "ensure_jars",
    "pom_path",
]

KIND = "kafka"

_LOG4J2 = """\
status = warn
# Kafka logs during its own shutdown hook; log4j's hook would cut those lines off.
shutdownHook = disable
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
# The request and state-change loggers are chatty at INFO and bury the useful lines.
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
"""


def _random_cluster_id() -> str:
    # Kafka's Uuid.randomUuid in Python, which saves a JVM start: url-safe base64 of 16 random
    # bytes, never starting with '-' (the storage tool would read it as an option).
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


class KafkaBroker:
    """A combined broker+controller KRaft node on 127.0.0.1 with its data in ``workdir``.

    Ports are remembered in ``workdir`` so a restart (even by a new instance, as in
    ``dev down`` then ``dev up``) serves the same address whenever the port is still free.
    """

    def __init__(
        self,
        workdir: Path,
        cache_dir: Path,
        port: int | None = None,
        controller_port: int | None = None,
        extra_properties: dict[str, str] | None = None,
        *,
        detached: bool = False,
        run_dir: Path | None = None,
        security: BrokerSecurity | None = None,
        node_id: int = 1,
        voters: str | None = None,
        cluster_id: str | None = None,
    ) -> None:
        self.workdir = workdir.resolve()
        # A member of a multi-node quorum (stack/kafka_cluster.py) is told its id, the
        # voters and the shared cluster id; a lone broker is node 1 voting for itself.
        self.node_id = node_id
        self.voters = voters
        self.cluster_id = cluster_id
        self.cache_dir = cache_dir
        self._requested = (port, controller_port)
        saved = self._saved_ports()
        self.port: int | None = port or saved.get("port")
        self.controller_port: int | None = controller_port or saved.get("controller_port")
        self.security = security
        self.secure_port: int | None = saved.get("secure_port") if security else None
        self.extra_properties = dict(extra_properties or {})
        # Detached brokers belong to the `dev` state; others to this process, so a crashed
        # test run's broker is reaped by the next start.
        self.owner_pid: int | None = None if detached else os.getpid()
        self.run_dir = run_dir or cache_dir / "run"
        self.pid: int | None = None

    # -- public --------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise StackError("the broker has no port until it is started")
        return f"{procs.LOCALHOST}:{self.port}"

    @property
    def secure_bootstrap(self) -> str:
        """The SASL_SSL listener's address (brokers started with ``security`` only)."""
        if self.security is None:
            raise StackError("the broker has no SASL_SSL listener (started without security)")
        if self.secure_port is None:
            raise StackError("the broker has no port until it is started")
        return f"{procs.LOCALHOST}:{self.secure_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "broker.log"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def properties_path(self) -> Path:
        return self.workdir / "server.properties"

    @property
    def running(self) -> bool:
        return self.pid is not None and procs.pid_alive(self.pid)

    def start(self, timeout: float = 90) -> None:
        if self.running:
            return
        self.launch()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.kill()
            raise

    def launch(self) -> None:
        """Start the process without waiting: a quorum member answers only once a majority
        of the voters runs, so a cluster launches every node before it waits for any."""
        if self.running:
            return
        procs.reap_stale(self.run_dir)
        java = shutil.which("java")
        if java is None:
            raise StackError("java is not on PATH; the local Kafka broker needs Java 17+")
        libs = ensure_jars(self.cache_dir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = procs.pick_port(self.port, required=self._requested[0] is not None)
        self.controller_port = procs.pick_port(
            self.controller_port, required=self._requested[1] is not None, taken=[self.port]
        )
        if self.security is not None:
            self.secure_port = procs.pick_port(
                self.secure_port,
                required=False,
                taken=[p for p in (self.port, self.controller_port) if p is not None],
            )
        self._write_config()
        classpath = f"{libs}/*"
        if not (self.data_dir / "meta.properties").is_file():
            self._format(java, classpath)
        cmd = [
            java,
            "-Xmx512m",
            "-Xms128m",
            # C1 only. This broker shares two cores with the whole pipeline, and C2 never
            # settles here: after 30,000 messages its compiler threads still took a quarter
            # of a core at 500/s, and the broker's CPU per message at saturation halved
            # without it (bench, issue 16). A broker on its own machine wants C2.
            "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}",
            "-cp",
            classpath,
            "kafka.Kafka",
            str(self.properties_path),
        ]
        with self.log_path.open("a") as log:
            log.write(f"\n===== pipeline-stack: starting broker at {time.ctime()} =====\n")
        self.pid = procs.spawn_detached(cmd, self.log_path, cwd=self.workdir)
        procs.register(
            self.run_dir,
            procs.ServiceRecord(
                pid=self.pid,
                kind=KIND,
                port=self.port,
                owner_pid=self.owner_pid,
                started_at=time.time(),
                signature=str(self.properties_path),
            ),
        )

    def wait_ready(self, timeout: float = 90) -> None:
        self._wait_ready(timeout)

    def stop(self, timeout: float = 30) -> None:
        if self.pid is None:
            return
        procs.terminate(self.pid, timeout)
        self._forget()

    def kill(self, sig: int = signal.SIGTERM) -> None:
        """End the process now (``sig``, then SIGKILL if it lingers); SIGKILL is a crash."""
        if self.pid is None:
            return
        procs.terminate(self.pid, timeout=0, sig=sig)
        self._forget()

    def adopt(self, pid: int) -> None:
        """Take over a broker started by an earlier process (``dev down`` uses this)."""
        self.pid = pid

    # -- internals -----------------------------------------------------------------------

    def _forget(self) -> None:
        if self.pid is not None:
            procs.unregister(self.run_dir, KIND, self.pid)
        self.pid = None

    def _saved_ports(self) -> dict[str, int]:
        try:
            data = json.loads((self.workdir / "ports.json").read_text())
        except (OSError, ValueError):
            return {}
        keys = ("port", "controller_port", "secure_port")
        return {k: int(v) for k, v in data.items() if k in keys and v is not None}

    def _write_config(self) -> None:
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.voters
            or f"{self.node_id}@{procs.LOCALHOST}:{self.controller_port}",
            "listeners": (
                f"PLAINTEXT://{procs.LOCALHOST}:{self.port},"
                f"CONTROLLER://{procs.LOCALHOST}:{self.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://{procs.LOCALHOST}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "offsets.topic.replication.factor": "1",
            # One offsets partition: the group coordinator loads in a blink on a cold broker.
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # The pipeline creates its topics with explicit partition counts; an auto-created
            # one-partition topic would silently break faust's co-partitioned tables.
            "auto.create.topics.enable": "false",
            "num.partitions": "1",
        }
        if self.security is not None:
            props.update(
                secure_listener_properties(
                    self.security, self.workdir, self.port, self.secure_port, self.controller_port
                )
            )
        props.update(self.extra_properties)
        text = "".join(f"{k}={v}\n" for k, v in props.items())
        self.properties_path.write_text(text)
        (self.workdir / "log4j2.properties").write_text(_LOG4J2)
        ports = {"port": self.port, "controller_port": self.controller_port}
        if self.secure_port is not None:
            ports["secure_port"] = self.secure_port
        (self.workdir / "ports.json").write_text(json.dumps(ports))

    def _format(self, java: str, classpath: str) -> None:
        cmd = [
            java,
            f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.properties'}",
            "-cp",
            classpath,
            "kafka.tools.StorageTool",
            "format",
            "-t",
            self.cluster_id or _random_cluster_id(),
            "-c",
            str(self.properties_path),
        ]
        if self.security is not None:
            cmd += scram_format_args(self.security)
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.SubprocessError) as exc:
            raise StackError(f"kafka storage format failed to run: {exc}") from exc
        if res.returncode != 0:
            # The output may echo the --add-scram arguments; never print their passwords.
            out = f"{res.stdout}{res.stderr}"
            if self.security is not None:
                out = self.security.redact(out)
            raise StackError(f"kafka storage format failed:\n{out}")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        # A worker thread gets its own event loop, so this also works when called from a
        # thread that already has one (pytest-asyncio's session loop, for instance).
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            while True:
                if not self.running:
                    raise StackError(self._failure("the broker process exited"))
                if time.monotonic() >= deadline:
                    raise StackError(
                        self._failure(f"the broker did not answer within {timeout:.0f}s")
                        + f"\nlast probe error: {last_error}"
                    )
                if procs.port_accepts(self.port or 0):
                    err = pool.submit(asyncio.run, self._probe()).result()
                    if err is None:
                        return
                    last_error = err
                time.sleep(0.2)

    async def _probe(self) -> str | None:
        """None once the broker serves metadata listing itself, else why not."""
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            info = await admin.describe_cluster()
        except Exception as exc:  # any failure just means "not ready yet"
            return f"{type(exc).__name__}: {exc}"
        finally:
            await admin.close()
        if not info.get("brokers") or info.get("controller_id", -1) < 0:
            return f"metadata without brokers or controller: {info}"
        return None

    def _failure(self, what: str) -> str:
        return f"{what}; last 40 lines of {self.log_path}:\n{procs.tail(self.log_path, 40)}"
