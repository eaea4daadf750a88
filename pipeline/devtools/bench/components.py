"""The bench's pipeline and fake provisioner, each a child process with its own log."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.adapters.topics import group_assignment
from pipeline.components.supervisor import COMPONENTS
from pipeline.devtools.stack import procs
from pipeline.domain.errors import BrokerError, PipelineError
from pipeline.runtime.config import child_env
from pipeline.runtime.exit_codes import ExitCode


@dataclass
class Stack:
    """Where the bench's services are: the database, the broker, the topic prefix, the logs."""

    database_url: str
    bootstrap: str
    prefix: str
    workdir: Path
    extra_pids: dict[str, int] = field(default_factory=dict)  # e.g. the broker, if ours
    # Servers whose CPU is spread over child processes (Postgres: a backend per connection).
    extra_trees: dict[str, int] = field(default_factory=dict)


class Components:
    """The fake provisioner, relay, worker and projector as child processes."""

    def __init__(self, stack: Stack, partitions: int, workers: int = 1) -> None:
        self.stack = stack
        self.partitions = partitions
        # worker, worker2, ...: processes of one consumer group
        self.workers = ["worker"] + [f"worker{i}" for i in range(2, workers + 1)]
        self.names = ["relay", *self.workers, "projector"]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.provisioner_addr = ""
        # A component that exits asking for a restart (a worker's offset gap after a
        # rebalance, say) is restarted, as `pipeline run` would; the report counts them.
        self.restarts: dict[str, int] = {}
        self.on_restart: list[Callable[[str, int], None]] = []
        self._spawned: dict[str, tuple[list[str], dict[str, str]]] = {}

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self._spawned[name] = (args, env)
        log = (self.stack.workdir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "pipeline.ops.cli", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.stack.workdir,
        )
        log.close()

    def start_provisioner(self) -> None:
        port = procs.free_port()
        self._spawn("provisioner", ["fake-provisioner", "--port", str(port)], child_env())
        deadline = time.monotonic() + 30
        while not procs.port_accepts(port):
            self.check()
            if time.monotonic() > deadline:
                raise PipelineError("the fake provisioner did not start\n" + self.logs())
            time.sleep(0.1)
        self.provisioner_addr = f"{procs.LOCALHOST}:{port}"

    def start_pipeline(self) -> None:
        for name in self.names:
            self.start_component(name)

    def start_component(self, name: str, **extra_env: str) -> None:
        env = child_env(with_settings=False)
        env.update(
            PIPELINE_DATABASE_URL=self.stack.database_url,
            PIPELINE_KAFKA_BOOTSTRAP=self.stack.bootstrap,
            PIPELINE_PROVISIONER_ADDR=self.provisioner_addr,
            PIPELINE_TOPIC_PREFIX=self.stack.prefix,
            PIPELINE_PARTITIONS=str(self.partitions),
            PIPELINE_DATA_DIR=str(self.stack.workdir / "data"),
            PIPELINE_LOG_LEVEL="WARNING",
            PIPELINE_METRICS_PORT=str(procs.free_port()),
        )
        env.update(extra_env)
        self._spawn(name, [COMPONENTS[name.rstrip("0123456789")]], env)

    async def group_settled(self, within: float = 120.0) -> None:
        """Wait until every worker process holds command partitions in a stable group.

        A worker that joins while a phase is measured takes partitions away from the others:
        the bench saw a 1.2-2 s stall (the latency phase's p99) when the second of two
        workers joined after a short warm-up, or came back after the single-calls phase.
        """
        kw = {"bootstrap_servers": self.stack.bootstrap}
        group = f"{self.stack.prefix}propagation-processor"
        topic = f"{self.stack.prefix}propagations"
        deadline = time.monotonic() + within
        state, held = "", list[set[str]]()
        while time.monotonic() < deadline:
            self.check()
            try:
                state, held = await group_assignment(kw, group)
            except BrokerError as exc:  # no coordinator until the first worker joins
                state, held = f"not described ({exc})", []
            settled = state == "Stable" and len(held) == len(self.workers)
            if settled and all(topic in topics for topics in held):
                return
            await asyncio.sleep(0.2)
        raise PipelineError(
            f"the workers did not settle in group {group} within {within:.0f}s "
            f"(state {state}, members holding {held})\n{self.logs()}"
        )

    def check(self) -> None:
        dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
        for name, rc in list(dead.items()):
            if rc == ExitCode.RESTART and name in self.names:
                self.restarts[name] = self.restarts.get(name, 0) + 1
                self._spawn(name, *self._spawned[name])
                for hook in self.on_restart:
                    hook(name, self.procs[name].pid)
                del dead[name]
        if dead:
            raise PipelineError(f"bench components exited: {dead}\n{self.logs()}")

    def logs(self, tail: int = 30) -> str:
        return "\n".join(
            f"--- {n}.log\n{procs.tail(self.stack.workdir / f'{n}.log', tail)}" for n in self.procs
        )

    def stop(self, *names: str) -> None:
        chosen = [n for n in (names or tuple(self.procs)) if n in self.procs]
        for n in chosen:
            if self.procs[n].poll() is None:
                self.procs[n].send_signal(signal.SIGTERM)
        for n in chosen:
            p = self.procs.pop(n)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
