"""``pipeline dev up|down|status``: the local stack as long-lived background services.

``up`` prints ``export PIPELINE_...`` lines on stdout (everything else goes to stderr), so
``eval "$(pipeline dev up)"`` points the other commands at the stack. The command line is
``stack.cli``, which imports this module only when a command runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.devtools.stack import procs
from pipeline.devtools.stack.kafka import KafkaBroker
from pipeline.devtools.stack.kafka_cluster import KafkaCluster, quorum_leader
from pipeline.devtools.stack.postgres import ExternalPostgres, PostgresCluster, mask_url
from pipeline.domain.errors import StackError
from pipeline.runtime.config import setting_variable

STATE_FILE = "state.json"
PROVISIONER = "provisioner"


# --- commands ---------------------------------------------------------------------------


def _state_dir(args: argparse.Namespace) -> Path:
    given: Path | None = args.state_dir
    return (given or procs.cache_dir() / "dev").expanduser().resolve()


def cmd_up(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args)
    state = _load_state(state_dir)
    if state is not None:
        running = state.get("brokers", 1)
        if running != args.brokers and any(_service_alive(s) for s in state["services"].values()):
            raise StackError(
                f"the dev stack runs with {running} broker(s), not {args.brokers}; "
                "run `pipeline dev down` first"
            )
        if all(_service_alive(s) for s in state["services"].values()):
            _info(f"dev stack already running (state in {state_dir})")
            _print_exports(state)
            return 0
        _info("dev stack is partly down; restarting it")
        _stop_all(state, state_dir)

    cache_dir = procs.cache_dir()
    run_dir = cache_dir / "run"
    started: list[Callable[[], None]] = []
    services: dict[str, dict[str, Any]] = {}
    db: ExternalPostgres | PostgresCluster
    t0 = time.monotonic()
    try:
        if args.brokers == 1:
            broker = KafkaBroker(state_dir / "kafka", cache_dir, detached=True, run_dir=run_dir)
            _info(f"starting Kafka (jars cached in {cache_dir}) ...")
            broker.start(timeout=args.timeout)
            started.append(broker.stop)
            services["kafka"] = _entry(broker.pid, broker.bootstrap, broker.log_path, "kafka")
            services["kafka"]["signature"] = str(broker.properties_path)
        else:
            services.update(_start_cluster(state_dir, cache_dir, run_dir, args, started))

        external = setting_variable("database_url")
        if external:
            db = ExternalPostgres(external)
            _info(f"using external Postgres {mask_url(external)}")
            services["postgres"] = _entry(None, external, None, "postgres")
        else:
            pg = PostgresCluster(state_dir / "postgres", detached=True, run_dir=run_dir)
            _info("starting Postgres ...")
            pg.start(timeout=args.timeout)
            started.append(pg.stop)
            services["postgres"] = _entry(pg.pid, pg.url, pg.log_path, "postgres")
            services["postgres"]["workdir"] = str(pg.workdir)
            services["postgres"]["signature"] = str(pg.data_dir)
            db = pg

        _info("starting the fake provisioner ...")
        services[PROVISIONER] = _start_provisioner(state_dir, run_dir, args.timeout)
    except BaseException:
        for stop in reversed(started):
            try:
                stop()
            except StackError as exc:
                _info(f"cleanup: {exc}")
        raise

    state = {
        "created_at": time.time(),
        "services": services,
        "database_url": db.url,
        "brokers": args.brokers,
    }
    _save_state(state_dir, state)
    _info(f"dev stack up in {time.monotonic() - t0:.1f}s (state in {state_dir})")
    _print_exports(state)
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args)
    state = _load_state(state_dir)
    if state is None:
        _info("dev stack is not running")
        return 0
    _stop_all(state, state_dir)
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    _info("dev stack stopped (data kept in " + str(state_dir) + ")")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state_dir = _state_dir(args)
    state = _load_state(state_dir)
    if state is None:
        _info(f"dev stack is not running (no state in {state_dir})")
        return 1
    rows = []
    for name, svc in state["services"].items():
        alive = _service_alive(svc)
        pid = "-" if svc["pid"] is None else str(svc["pid"])
        address = mask_url(svc["address"])
        running = "yes" if alive else "no"
        if svc["pid"] is None:
            running = "external"
        rows.append((name, pid, address, running, svc["log"] or "-"))
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table()
        for column in ("service", "pid", "address", "running", "log"):
            # Fold rather than truncate: the paths are what an operator copies from here.
            table.add_column(column, overflow="fold")
        for row in rows:
            table.add_row(*row)
        Console().print(table)
    else:
        for row in rows:
            print("\t".join(row))
    if state.get("brokers", 1) > 1:
        print(f"quorum leader: {_quorum_leader(state)}")
    return 0 if all(_service_alive(s) for s in state["services"].values()) else 1


# --- services ---------------------------------------------------------------------------


def _start_cluster(
    state_dir: Path,
    cache_dir: Path,
    run_dir: Path,
    args: argparse.Namespace,
    started: list[Callable[[], None]],
) -> dict[str, dict[str, Any]]:
    cluster = KafkaCluster(
        state_dir / "kafka-cluster", cache_dir, args.brokers, detached=True, run_dir=run_dir
    )
    _info(f"starting a {args.brokers}-node Kafka KRaft quorum (jars cached in {cache_dir}) ...")
    cluster.start(timeout=args.timeout)
    started.append(cluster.stop)
    out = {}
    for node in cluster.nodes:
        entry = _entry(node.pid, node.bootstrap, node.log_path, "kafka")
        entry["signature"] = str(node.properties_path)
        entry["workdir"] = str(node.workdir)
        out[f"kafka-{node.node_id}"] = entry
    return out


def _quorum_leader(state: dict[str, Any]) -> str:
    nodes = {
        name: svc
        for name, svc in state["services"].items()
        if svc["kind"] == "kafka" and _service_alive(svc)
    }
    leader = quorum_leader([Path(svc["workdir"]) for svc in nodes.values()])
    return "unknown (no live node has recorded one)" if leader is None else f"kafka-{leader}"


def _entry(pid: int | None, address: str, log: Path | None, kind: str) -> dict[str, Any]:
    return {"pid": pid, "address": address, "log": str(log) if log else None, "kind": kind}


def _service_alive(svc: dict[str, Any]) -> bool:
    pid = svc.get("pid")
    if pid is None:
        return True  # external: not ours to watch
    signature = svc.get("signature")
    if signature and signature not in procs.cmdline_of(pid):
        return False
    return procs.pid_alive(pid)


def _start_provisioner(state_dir: Path, run_dir: Path, timeout: float) -> dict[str, Any]:
    ports_file = state_dir / "provisioner-port.json"
    try:
        saved: int | None = int(json.loads(ports_file.read_text())["port"])
    except (OSError, ValueError, KeyError, TypeError):
        saved = None
    port = procs.pick_port(saved, required=False)
    ports_file.write_text(json.dumps({"port": port}))
    log = state_dir / "provisioner.log"
    cmd = [sys.executable, "-m", "pipeline.ops.cli", "fake-provisioner", "--port", str(port)]
    pid = procs.spawn_detached(cmd, log, cwd=state_dir)
    signature = f"fake-provisioner --port {port}"
    procs.register(
        run_dir,
        procs.ServiceRecord(pid, PROVISIONER, port, None, time.time(), signature),
    )
    deadline = time.monotonic() + timeout
    while not procs.port_accepts(port):
        if not procs.pid_alive(pid) or time.monotonic() >= deadline:
            procs.terminate(pid, 5)
            procs.unregister(run_dir, PROVISIONER, pid)
            raise StackError(
                f"the fake provisioner did not start listening on port {port}; "
                f"last 40 lines of {log}:\n{procs.tail(log, 40)}"
            )
        time.sleep(0.1)
    entry = _entry(pid, f"{procs.LOCALHOST}:{port}", log, PROVISIONER)
    entry["signature"] = signature
    return entry


def _stop_all(state: dict[str, Any], state_dir: Path) -> None:
    run_dir = procs.cache_dir() / "run"
    services: dict[str, dict[str, Any]] = state["services"]
    # Reverse start order: the provisioner and Postgres go before the broker.
    for name, svc in reversed(list(services.items())):
        pid = svc.get("pid")
        if pid is None:
            continue
        if not _service_alive(svc):
            procs.unregister(run_dir, svc["kind"], pid)
            continue
        _info(f"stopping {name} (pid {pid}) ...")
        if svc["kind"] == "postgres":
            PostgresCluster(Path(svc["workdir"]), detached=True, run_dir=run_dir).stop()
        else:
            procs.terminate(pid, 30)
        procs.unregister(run_dir, svc["kind"], pid)


# --- state and output -------------------------------------------------------------------


def _load_state(state_dir: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads((state_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return state


def _save_state(state_dir: Path, state: dict[str, Any]) -> None:
    path = state_dir / STATE_FILE
    tmp = path.with_suffix(".tmp")
    # 0600: an external database URL given by the user may carry a password.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f, indent=2)
    tmp.replace(path)


def _print_exports(state: dict[str, Any]) -> None:
    services = state["services"]
    db_url: str = state["database_url"]
    if mask_url(db_url) != db_url:
        print("# PIPELINE_DATABASE_URL: kept from your environment (it holds a password)")
    else:
        print(f"export PIPELINE_DATABASE_URL={shlex.quote(db_url)}")
    bootstrap = ",".join(s["address"] for s in services.values() if s["kind"] == "kafka")
    print(f"export PIPELINE_KAFKA_BOOTSTRAP={shlex.quote(bootstrap)}")
    print(f"export PIPELINE_PROVISIONER_ADDR={shlex.quote(services[PROVISIONER]['address'])}")
    sys.stdout.flush()


def _info(msg: str) -> None:
    print(f"pipeline dev: {msg}", file=sys.stderr, flush=True)
