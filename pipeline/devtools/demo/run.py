"""The demo's run: its own stack and processes, the workload driven through them, and the
checked summary; torn down at the end unless ``--keep``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import time
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.components.supervisor import COMPONENTS
from pipeline.devtools.demo.display import Display, summary_table
from pipeline.devtools.demo.observe import Lag, terminal_events
from pipeline.devtools.stack import procs
from pipeline.devtools.stack.kafka import KafkaBroker
from pipeline.devtools.stack.postgres import PostgresCluster
from pipeline.domain.errors import PipelineError, StackError
from pipeline.runtime.config import Config

if TYPE_CHECKING:
    from pipeline.devtools.workload import PathResult

ENQUEUE_BATCH = 250
KEEP_RUNS = 5  # finished runs whose logs are kept; older ones are pruned
UI_PORT = 9480  # the console's preferred port (the next free one if taken)


class Demo:
    MAX_ATTEMPTS = 10  # the production value: the dead-letter paths show the real schedule

    def __init__(
        self, args: argparse.Namespace, cache_dir: Path, base_env: dict[str, str], live: bool
    ) -> None:
        self.args, self.cache_dir, self.base_env, self.live = args, cache_dir, base_env, live
        self.keep: bool = args.keep
        self.root: Path = (args.state_dir or cache_dir / "demo").expanduser().resolve()
        run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:4]
        self.dir = self.root / run_id
        self.logs = self.dir / "logs"
        self.registry = cache_dir / "run"
        self.cfg = Config(topic_prefix=f"demo-{run_id}-", max_attempts=self.MAX_ATTEMPTS)
        self.kafka = KafkaBroker(
            self.dir / "kafka", cache_dir, detached=self.keep, run_dir=self.registry
        )
        self.pg = PostgresCluster(self.dir / "postgres", detached=self.keep, run_dir=self.registry)
        self.pids: dict[str, int] = {}
        self.ports: dict[str, int] = {}
        self.ui_token = ""  # the console's token for this run (set when it starts)
        self.signatures: dict[str, str] = {}
        self.provisioner_admin = ""

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> int:
        from rich.console import Console

        self.console = Console(highlight=False, soft_wrap=not self.live)
        self.logs.mkdir(parents=True, exist_ok=True)
        self._prune_old_runs()
        # A SIGTERM (a CI timeout, `kill`) tears down like Ctrl-C instead of orphaning the stack.
        signal.signal(signal.SIGTERM, _interrupt)
        t0 = time.monotonic()
        ok = False
        try:
            self._say(f"run folder {self.dir}")
            self._say("starting Kafka (first run fetches the jars with Maven) ...")
            self.kafka.start(timeout=180)
            self._say(f"Kafka at {self.kafka.bootstrap}; starting Postgres ...")
            self.pg.start(timeout=120)
            from pipeline.store.migrate import migrate

            migrate(self.pg.url)
            self._start_provisioner()
            self.cfg = self.cfg.replace(
                database_url=self.pg.url,
                kafka_bootstrap=self.kafka.bootstrap,
                provisioner_addr=f"{procs.LOCALHOST}:{self.ports['provisioner']}",
            )
            for name in COMPONENTS:
                self._start_component(name)
            self._start_console()
            self._say(f"stack up in {time.monotonic() - t0:.1f}s; enqueueing {self.args.count} ...")
            ok = asyncio.run(self._drive(time.monotonic() - t0))
        except KeyboardInterrupt:
            self._say("interrupted")
        except PipelineError as exc:
            self._say(f"failed: {exc}", "red")
        finally:
            self._where()
            self._teardown()
        self._say(f"demo {'OK' if ok else 'FAILED'} in {time.monotonic() - t0:.1f}s wall time")
        return 0 if ok else 1

    async def _drive(self, startup_s: float) -> bool:
        from pipeline.devtools import workload as wl
        from pipeline.store.demo import open_store

        rows = wl.plan(self.args.count)
        ids_by_path: dict[str, list[int]] = defaultdict(list)
        async with open_store(self.cfg.database_url) as store:
            # A value this worker image has no handler for, as a newer API release would add.
            unknown_kind = f"demo_kind_{uuid.uuid4().hex[:6]}"
            await store.add_kind(unknown_kind)
            display = Display(self.console, self._say, self.live, len(rows))
            async with Lag(self.cfg) as lag, display:
                for start in range(0, len(rows), ENQUEUE_BATCH):
                    async with store.batch():
                        for r in rows[start : start + ENQUEUE_BATCH]:
                            kind = unknown_kind if r.kind == wl.UNKNOWN else r.kind
                            args = (kind, r.team_id, r.resource_type, r.resource_id, r.payload)
                            invalid = wl.PATHS_BY_NAME[r.path].invalid
                            insert = store.insert_raw if invalid else store.enqueue
                            ids_by_path[r.path].append(await insert(*args))
                    display.update(await store.progress(), await lag.measure())
                deadline = time.monotonic() + self.args.timeout
                while True:
                    self._check_components()
                    progress = await store.progress()
                    display.update(progress, await lag.measure())
                    if progress.terminal >= len(rows):
                        break
                    if time.monotonic() > deadline:
                        break  # the summary still shows which paths did not finish
                    await asyncio.sleep(0.5)
            timed_out = progress.terminal < len(rows)
            events = await terminal_events(self.cfg)
            effects = await asyncio.to_thread(self._effects)
            states = await store.path_states()
        results = wl.compare(ids_by_path, states, events, effects, self.MAX_ATTEMPTS)
        self._summary(results, startup_s, display.elapsed)
        if timed_out:
            done = f"{progress.terminal}/{len(rows)} terminal"
            self._say(f"timeout: {done} after --timeout {self.args.timeout:.0f}s", "red")
        return not timed_out and all(r.ok for r in results)

    # -- processes ---------------------------------------------------------------------------

    def _spawn(
        self,
        name: str,
        cmd: list[str],
        port: int,
        signature: str,
        extra_env: dict[str, str] | None = None,
    ) -> int:
        env = {**self._env(), **(extra_env or {})}
        pid = procs.spawn_detached(cmd, self.logs / f"{name}.log", cwd=self.dir, env=env)
        owner = None if self.keep else os.getpid()
        record = procs.ServiceRecord(pid, name, port, owner, time.time(), signature)
        procs.register(self.registry, record)
        self.pids[name] = pid
        self.signatures[name] = signature
        return pid

    def _env(self) -> dict[str, str]:
        env = dict(self.base_env)
        env.update(
            PIPELINE_DATABASE_URL=self.cfg.database_url,
            PIPELINE_KAFKA_BOOTSTRAP=self.cfg.kafka_bootstrap,
            PIPELINE_PROVISIONER_ADDR=self.cfg.provisioner_addr,
            PIPELINE_TOPIC_PREFIX=self.cfg.topic_prefix,
            PIPELINE_BACKOFF_SCALE=str(self.args.backoff_scale),
            PIPELINE_MAX_ATTEMPTS=str(self.MAX_ATTEMPTS),
            PIPELINE_PARTITIONS=str(self.args.partitions),
            PIPELINE_RELAY_POLL_INTERVAL="0.1",
            PIPELINE_DATA_DIR=str(self.dir / "data"),
            PIPELINE_LOG_LEVEL="INFO",
        )
        return env

    def _start_provisioner(self) -> None:
        from pipeline.devtools import workload as wl

        rules = self.dir / "provisioner-rules.json"
        rules.write_text(json.dumps([r.to_dict() for r in wl.provisioner_rules()], indent=2))
        port = procs.free_port()
        admin = procs.pick_port(None, required=False, taken=[port])
        cmd = [sys.executable, "-m", "pipeline.ops.cli", "fake-provisioner", "--port", str(port)]
        cmd += ["--admin-port", str(admin), "--rules", str(rules), "--seed", "1"]
        pid = self._spawn("provisioner", cmd, port, f"fake-provisioner --port {port} ")
        self.ports["provisioner"] = port
        self.provisioner_admin = f"http://{procs.LOCALHOST}:{admin}"
        deadline = time.monotonic() + 60
        while not (procs.port_accepts(port) and procs.port_accepts(admin)):
            if not procs.pid_alive(pid) or time.monotonic() > deadline:
                raise StackError(
                    "the fake provisioner did not start:\n" + self._tail("provisioner")
                )
            time.sleep(0.1)

    def _start_component(self, name: str) -> None:
        preferred = self.args.metrics_port + list(COMPONENTS).index(name)
        port = procs.pick_port(preferred, required=False, taken=list(self.ports.values()))
        self.ports[name] = port
        prefix = self.cfg.topic_prefix
        # The prefix flag makes the command line unique: the registry's signature for it.
        cmd = [sys.executable, "-m", "pipeline.ops.cli", COMPONENTS[name], "--topic-prefix", prefix]
        cmd += ["--metrics-port", str(port)]
        self._spawn(name, cmd, port, f"{COMPONENTS[name]} --topic-prefix {prefix}")

    def _start_console(self) -> None:
        """``pipeline ui`` beside the components, with a fresh token for this run's actions."""
        import secrets

        port = procs.pick_port(UI_PORT, required=False, taken=list(self.ports.values()))
        self.ports["console"] = port
        self.ui_token = secrets.token_urlsafe(18)
        prefix = self.cfg.topic_prefix
        cmd = [sys.executable, "-m", "pipeline.ops.cli", "ui", "--topic-prefix", prefix]
        cmd += ["--ui-port", str(port)]
        # The token travels in the environment: a flag would show in `ps`.
        pid = self._spawn(
            "console",
            cmd,
            port,
            f"ui --topic-prefix {prefix}",
            {"PIPELINE_UI_TOKEN": self.ui_token},
        )
        deadline = time.monotonic() + 60
        while not procs.port_accepts(port):
            if not procs.pid_alive(pid) or time.monotonic() > deadline:
                raise StackError("the console did not start:\n" + self._tail("console"))
            time.sleep(0.1)
        self._say(f"console at http://{procs.LOCALHOST}:{port}/")

    def _check_components(self) -> None:
        dead = [n for n in COMPONENTS if not procs.pid_alive(self.pids[n])]
        if dead:
            raise PipelineError(f"{', '.join(dead)} exited:\n" + self._tail(dead[0]))

    def _effects(self) -> dict[int, int]:
        """Effects per propagation id, from the fake provisioner's admin endpoint."""
        url = self.provisioner_admin + "/effects"
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                body: dict[str, list[Any]] = json.loads(resp.read())
        except (OSError, ValueError) as exc:
            raise StackError(f"cannot read {url}: {exc}") from exc
        from pipeline.domain.events import idempotency_key

        prefix = idempotency_key(0).removesuffix("0")
        return {
            int(k.removeprefix(prefix)): len(v) for k, v in body.items() if k.startswith(prefix)
        }

    def _tail(self, name: str) -> str:
        return procs.tail(self.logs / f"{name}.log", 30)

    def _teardown(self) -> None:
        if self.keep:
            self._save_dev_state()
            self._say(f"kept running; stop with: pipeline dev down --state-dir {self.dir}")
            return
        # Components first (they flush to Kafka and Postgres), then what they talk to.
        started_last_first = list(reversed(self.pids.items()))
        for _name, pid in started_last_first:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for name, pid in started_last_first:
            procs.terminate(pid, 30)
            procs.unregister(self.registry, name, pid)
        try:
            if self.pg.running:
                self.pg.stop()
                shutil.copy(self.pg.log_path, self.logs / "postgres.log")
            self.pg.remove_files()
            self.kafka.stop()
        except (StackError, OSError) as exc:
            self._say(f"teardown: {exc}")
        shutil.rmtree(self.dir / "kafka" / "data", ignore_errors=True)
        shutil.rmtree(self.dir / "data", ignore_errors=True)

    def _save_dev_state(self) -> None:
        """A state file in `pipeline dev`'s format, so `dev status`/`dev down` manage the run."""
        services: dict[str, dict[str, Any]] = {}
        if self.kafka.pid is not None:
            sig = str(self.kafka.properties_path)
            services["kafka"] = _entry("kafka", self.kafka.pid, self.kafka.bootstrap, sig)
            services["kafka"]["log"] = str(self.kafka.log_path)
        if self.pg.pid is not None:
            services["postgres"] = _entry(
                "postgres", self.pg.pid, self.pg.url, str(self.pg.data_dir)
            )
            services["postgres"].update(log=str(self.pg.log_path), workdir=str(self.pg.workdir))
        for name, pid in self.pids.items():  # started last, so `dev down` stops them first
            address = f"{procs.LOCALHOST}:{self.ports[name]}"
            services[name] = _entry(name, pid, address, self.signatures[name])
            services[name]["log"] = str(self.logs / f"{name}.log")
        state = {
            "created_at": time.time(),
            "services": services,
            "database_url": self.cfg.database_url,
        }
        (self.dir / "state.json").write_text(json.dumps(state, indent=2))
        for var, value in (
            ("DATABASE_URL", self.cfg.database_url),
            ("KAFKA_BOOTSTRAP", self.cfg.kafka_bootstrap),
            ("PROVISIONER_ADDR", self.cfg.provisioner_addr),
            ("TOPIC_PREFIX", self.cfg.topic_prefix),
        ):
            self.console.print(f"export PIPELINE_{var}={value}", markup=False, soft_wrap=True)

    def _prune_old_runs(self) -> None:
        finished = [d for d in sorted(self.root.glob("*-*")) if d.is_dir() and d != self.dir]
        finished = [d for d in finished if not (d / "state.json").exists()]
        for d in finished[: max(0, len(finished) - KEEP_RUNS)]:
            with contextlib.suppress(StackError, OSError):
                # Under root the cluster's files live outside the run folder.
                PostgresCluster(d / "postgres", run_dir=self.registry).remove_files()
            shutil.rmtree(d, ignore_errors=True)

    # -- output ------------------------------------------------------------------------------

    def _say(self, msg: str, style: str | None = None) -> None:
        # No markup: messages carry log tails and SQL, whose brackets are not rich tags.
        # soft_wrap: a path or URL broken over two lines could not be copied.
        self.console.print(f"demo: {msg}", style=style, markup=False, soft_wrap=True)

    def _where(self) -> None:
        for name in COMPONENTS:
            if name in self.ports:
                self._say(f"{name:9} /metrics http://{procs.LOCALHOST}:{self.ports[name]}/metrics")
        if "console" in self.ports:
            url = f"http://{procs.LOCALHOST}:{self.ports['console']}/"
            # The token is this run's own, printed so the operator at this terminal can sign in.
            self._say(f"console   {url} (sign in with token {self.ui_token} to retry)")
        self._say(f"logs: {self.logs} (kafka: {self.kafka.log_path})")

    def _summary(self, results: list[PathResult], startup_s: float, run_s: float) -> None:
        from pipeline.devtools.workload import CHECK_SQL, SUMMARY_HEADERS, SUMMARY_LEGEND

        self.console.print(summary_table(SUMMARY_HEADERS, [r.row() for r in results], self.live))
        total = sum(r.enqueued for r in results)
        self._say(
            f"{total} propagations, {run_s:.1f}s from the first enqueue to the end of the wait "
            f"({startup_s:.1f}s start-up); outcome topic {self.cfg.outcomes_topic}"
        )
        self._say(SUMMARY_LEGEND)
        kept = "" if self.keep else " (run with --keep to keep the database)"
        self._say(f'check by hand{kept}: psql {self.cfg.database_url} -c "{CHECK_SQL}"')
        bad = [r.path.name for r in results if not r.ok]
        if bad:
            self._say(f"summary: MISMATCH in {', '.join(bad)}", "bold red")
        else:
            self._say("summary: OK, every path as expected", "green")


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _entry(kind: str, pid: int, address: str, signature: str) -> dict[str, Any]:
    return {"pid": pid, "address": address, "kind": kind, "signature": signature, "log": None}
