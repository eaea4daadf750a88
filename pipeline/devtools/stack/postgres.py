"""A throwaway Postgres cluster run from the distribution's binaries, tuned for speed not safety."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pipeline.devtools.stack import procs
from pipeline.domain.errors import StackError

KIND = "postgres"
_SERVICE_USER = "postgres"


def find_pg_bin() -> Path:
    """The ``bin`` directory of the newest installed Postgres (Debian layout)."""

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.name)) or (0,)

    candidates = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()]
    if not candidates:
        on_path = shutil.which("initdb")
        if on_path:
            return Path(on_path).parent
        raise StackError(
            "no Postgres binaries found (looked in /usr/lib/postgresql/*/bin and PATH)"
        )
    return max(candidates, key=version)


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, safe to print or log."""
    if "://" in url:
        try:
            parts = urlsplit(url)
            password = parts.password
        except ValueError:
            # Unparseable (e.g. an unclosed IPv6 bracket): show nothing that might be secret.
            scheme = url.split("://", 1)[0]
            return f"{scheme}://*** (unparseable URL, not shown)"
        if password is not None:
            netloc = parts.netloc.replace(f":{password}@", ":***@", 1)
            return urlunsplit(parts._replace(netloc=netloc))
        return url
    return re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", url)


def database_url(url: str, name: str) -> str:
    """``url`` pointed at database ``name`` (keeps URL form for URLs, conninfo otherwise)."""
    if "://" in url:
        return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))
    from psycopg.conninfo import make_conninfo

    return make_conninfo(url, dbname=name)


class _DatabaseAdmin:
    """CREATE/DROP DATABASE against whatever server ``url`` points at."""

    @property
    def url(self) -> str:
        raise NotImplementedError

    def create_database(self, name: str) -> str:
        self._admin(f"CREATE DATABASE {_ident(name)}")
        return database_url(self.url, name)

    def drop_database(self, name: str) -> None:
        # FORCE (PG 13+): a test that leaked a connection must not fail the next test's setup.
        self._admin(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")

    def _admin(self, statement: str) -> None:
        import psycopg

        try:
            with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
                conn.execute(statement.encode())
        except psycopg.Error as exc:
            raise StackError(f"{statement.split(' ')[0].lower()} database failed: {exc}") from exc


def _ident(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]{0,62}", name):
        raise StackError(f"refusing unusual database name {name!r}")
    return f'"{name}"'


class ExternalPostgres(_DatabaseAdmin):
    """An existing server given by URL (e.g. ``PIPELINE_DATABASE_URL``); never started/stopped."""

    def __init__(self, url: str) -> None:
        self._url = url

    @property
    def url(self) -> str:
        return self._url

    @property
    def log_path(self) -> Path | None:
        return None


class PostgresCluster(_DatabaseAdmin):
    """A cluster whose files live under ``workdir``, listening on 127.0.0.1 only.

    Postgres refuses to run as root, so under root the server runs as the ``postgres`` OS user
    and its files live in a directory that user can reach (pytest's and root's home dirs are
    mode 0700); ``workdir`` then only holds a pointer to it.
    """

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        detached: bool = False,
        run_dir: Path | None = None,
    ) -> None:
        self.workdir = workdir.resolve()
        self._port_required = port is not None
        self.base = self._base_dir()
        self.port: int | None = port or self._saved_port()
        self.owner_pid: int | None = None if detached else os.getpid()
        self.run_dir = run_dir or procs.default_run_dir()
        self._bin: Path | None = None

    # -- public --------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            raise StackError("the Postgres cluster has no port until it is started")
        return f"postgresql://postgres@{procs.LOCALHOST}:{self.port}/postgres"

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def log_path(self) -> Path:
        return self.base / "postgres.log"

    @property
    def pid(self) -> int | None:
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        # A stale file after a crash may name a pid since reused by something else.
        alive = procs.pid_alive(pid) and str(self.data_dir) in procs.cmdline_of(pid)
        return pid if alive else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self, timeout: float = 60) -> None:
        if self.running:
            return
        procs.reap_stale(self.run_dir)
        self._prepare_dirs()
        if not (self.data_dir / "PG_VERSION").is_file():
            self._run(
                [
                    str(self.bin / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                "initdb",
                timeout=120,
            )
        self.port = procs.pick_port(self.port, required=self._port_required)
        (self.base / "port.json").write_text(json.dumps({"port": self.port}))
        opts = (
            f"-p {self.port} -k {self.base} -c listen_addresses={procs.LOCALHOST} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        pg_ctl = [str(self.bin / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_path)]
        self._run(
            [*pg_ctl, "-o", opts, "-w", "-t", str(int(timeout)), "start"], "pg_ctl start", timeout
        )
        pid = self.pid
        if pid is None:
            raise StackError(self._failure("postgres exited right after starting"))
        procs.register(
            self.run_dir,
            procs.ServiceRecord(
                pid=pid,
                kind=KIND,
                port=self.port,
                owner_pid=self.owner_pid,
                started_at=time.time(),
                signature=str(self.data_dir),
            ),
        )

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        pid = self.pid
        if pid is None:
            return
        pg_ctl = [str(self.bin / "pg_ctl"), "-D", str(self.data_dir)]
        try:
            self._run([*pg_ctl, "-m", mode, "-w", "-t", str(int(timeout)), "stop"], "pg_ctl stop")
        finally:
            if not procs.pid_alive(pid):
                procs.unregister(self.run_dir, KIND, pid)

    def remove_files(self) -> None:
        """Delete the cluster's files (it must be stopped); test sessions call this."""
        if self.running:
            raise StackError("stop the cluster before removing its files")
        shutil.rmtree(self.base, ignore_errors=True)
        (self.workdir / "LOCATION").unlink(missing_ok=True)

    # -- internals -----------------------------------------------------------------------

    @property
    def bin(self) -> Path:
        if self._bin is None:
            self._bin = find_pg_bin()
        return self._bin

    def _service_user(self) -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(_SERVICE_USER)
        except KeyError:
            raise StackError(
                "running as root, but there is no 'postgres' OS user to run Postgres as"
            ) from None

    def _base_dir(self) -> Path:
        if os.geteuid() != 0:
            return self.workdir
        digest = hashlib.sha256(str(self.workdir).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"pipeline-pg-{digest}"

    def _saved_port(self) -> int | None:
        try:
            return int(json.loads((self.base / "port.json").read_text())["port"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _prepare_dirs(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.base.mkdir(mode=0o700, parents=True, exist_ok=True)
        user = self._service_user()
        if user is not None:
            (self.workdir / "LOCATION").write_text(f"{self.base}\n")
            for path in [self.base, *self.base.rglob("*")]:
                os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)

    def _run(self, cmd: list[str], what: str, timeout: float = 60) -> None:
        if self._service_user() is not None:
            cmd = ["runuser", "-u", _SERVICE_USER, "--", *cmd]
        try:
            res = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout + 10, cwd=self.base
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise StackError(self._failure(f"{what} failed to run: {exc}")) from exc
        if res.returncode != 0:
            raise StackError(self._failure(f"{what} failed:\n{res.stdout}{res.stderr}"))

    def _failure(self, what: str) -> str:
        return f"{what}\nlast 40 lines of {self.log_path}:\n{procs.tail(self.log_path, 40)}"
