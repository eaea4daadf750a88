"""Shared plumbing for local services: free ports, detached spawning, and a stale-process registry.

Services are spawned detached (their own session, reparented away from us) so that `dev up`
can exit while they keep running. The price is that nobody waits on them when a test run is
killed, so every start records the service in a registry and reaps services whose owner died.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.domain.errors import StackError
from pipeline.runtime.config import stack_cache

LOCALHOST = "127.0.0.1"
# SIGTERM is a "smart" shutdown for Postgres that waits for clients to leave; SIGINT is "fast".
_STOP_SIGNALS = {"postgres": signal.SIGINT}


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "pipeline-stack"


def cache_dir() -> Path:
    """PIPELINE_STACK_CACHE if set, else the default: where `dev`, `demo` and `bench` cache
    Kafka's jars and keep their runs."""
    return stack_cache() or default_cache_dir()


def default_run_dir() -> Path:
    return default_cache_dir() / "run"


# --- ports ------------------------------------------------------------------------------


def free_port(host: str = LOCALHOST) -> int:
    """A port the kernel considers free right now (it may be taken again before we bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def port_is_free(port: int, host: str = LOCALHOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR mirrors what servers do, so a port in TIME_WAIT from our own previous
        # run counts as free, while a port someone is listening on does not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def pick_port(preferred: int | None, *, required: bool, taken: Sequence[int] = ()) -> int:
    """``preferred`` if still free (stable addresses across restarts), else a fresh one.

    ``required`` means the caller asked for that exact port, so moving it would surprise them.
    """
    if preferred is not None and preferred not in taken and port_is_free(preferred):
        return preferred
    if required and preferred is not None:
        raise StackError(f"port {preferred} on {LOCALHOST} is already in use")
    for _ in range(50):
        port = free_port()
        if port not in taken:
            return port
    raise StackError("could not find a free port")


def port_accepts(port: int, host: str = LOCALHOST, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --- processes --------------------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    """True if ``pid`` runs; a zombie counts as dead since our spawned services are not
    our children and may never be reaped when PID 1 does not reap."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    # The state letter follows the parenthesised command name, which may itself contain ')'.
    return stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] != "Z"


def cmdline_of(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def terminate(pid: int, timeout: float = 30.0, sig: int = signal.SIGTERM) -> None:
    """Send ``sig``, wait up to ``timeout`` for the process to go, then SIGKILL it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    if wait_dead(pid, timeout):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    wait_dead(pid, 10.0)


def wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def spawn_detached(
    cmd: Sequence[str], log_path: Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> int:
    """Start ``cmd`` in a new session with output appended to ``log_path``; return its pid.

    A throwaway ``sh`` starts the service in the background and exits, so the service is not
    our child: no Popen object outlives this call (no ResourceWarning) and the service
    survives the CLI process that started it.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    script = 'log="$1"; shift; "$@" </dev/null >>"$log" 2>&1 & echo $!'
    try:
        out = subprocess.run(
            ["/bin/sh", "-c", script, "sh", str(log_path), *cmd],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise StackError(f"could not start {cmd[0]}: {exc}") from exc
    return int(out.stdout.strip())


def tail(path: Path, lines: int = 40) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            data = f.read().decode(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(data.splitlines()[-lines:])


# --- registry ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    pid: int
    kind: str
    port: int
    # None: owned by the `dev` state, only `dev down` stops it.
    owner_pid: int | None
    started_at: float
    # A substring of the service's command line (its unique data dir), so a reused pid that
    # now belongs to an unrelated process is never killed.
    signature: str

    def matches_process(self) -> bool:
        return pid_alive(self.pid) and self.signature in cmdline_of(self.pid)


def _record_path(run_dir: Path, kind: str, pid: int) -> Path:
    return run_dir / f"{kind}-{pid}.json"


def register(run_dir: Path, record: ServiceRecord) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    path = _record_path(run_dir, record.kind, record.pid)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record)))
    tmp.replace(path)
    return path


def unregister(run_dir: Path, kind: str, pid: int) -> None:
    _record_path(run_dir, kind, pid).unlink(missing_ok=True)


def read_records(run_dir: Path) -> list[ServiceRecord]:
    records: list[ServiceRecord] = []
    if not run_dir.is_dir():
        return records
    for path in sorted(run_dir.glob("*.json")):
        try:
            records.append(ServiceRecord(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            # A half-written or foreign file must not block every future start.
            path.unlink(missing_ok=True)
    return records


def reap_stale(run_dir: Path, timeout: float = 15.0) -> list[ServiceRecord]:
    """Stop recorded services whose owner process died; return the records removed."""
    removed: list[ServiceRecord] = []
    for rec in read_records(run_dir):
        if rec.owner_pid is not None and pid_alive(rec.owner_pid):
            continue
        if rec.matches_process():
            if rec.owner_pid is None:
                continue
            terminate(rec.pid, timeout, _STOP_SIGNALS.get(rec.kind, signal.SIGTERM))
        unregister(run_dir, rec.kind, rec.pid)
        removed.append(rec)
    return removed
