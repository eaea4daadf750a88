"""The peers: the same job done by pgqueuer (asyncpg) and by procrastinate (psycopg).

The job: one RegradeResource call to the fake provisioner, then
``UPDATE bench_jobs_<peer> SET applied_at = now() WHERE id = ...``. Each peer's worker runs in
a clean process of its own (``python -m pipeline.devtools.bench.peers PEER ...``, which prints
``ready`` and works until SIGTERM); the bench enqueues from its own process with the
library's batch API and watches the job table until every row is stamped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg

from pipeline.adapters.provisioner import GrpcProvisioner
from pipeline.devtools.bench.pacing import poll_delay
from pipeline.devtools.bench.procstats import ProcSampler
from pipeline.domain.events import Applied
from pipeline.runtime.config import CALL_TRIES_PER_ATTEMPT, HANDLER_DEADLINE
from pipeline.runtime.gc_tuning import freeze_after_startup
from pipeline.store import bench as store

PEERS = ("pgqueuer", "procrastinate")
TASK = "bench_job"
ENQUEUE_CHUNK = 5000
POOL_SIZE = 10

# Settings tried per peer; the best trial is reported. pgqueuer: dequeue batch size and the
# entrypoint's concurrency_limit (0 = unlimited). procrastinate: worker concurrency (it
# fetches one job per free slot; it has no batch setting). grpc_batch: the peers get the
# pipeline's own provisioner client, so they may share ApplyBatch round trips too (0 = one
# RegradeResource call per job, the job as the issue states it). processes: worker processes
# sharing the queue (default 1).
TRIALS: dict[str, list[dict[str, int]]] = {
    "pgqueuer": [
        {"batch_size": 10, "concurrency": 0, "grpc_batch": 0},
        {"batch_size": 100, "concurrency": 0, "grpc_batch": 0},
        {"batch_size": 100, "concurrency": 0, "grpc_batch": 64},
        # The pipeline's own round-trip size (PIPELINE_PROVISIONER_BATCH), with dequeues to fill it.
        {"batch_size": 200, "concurrency": 0, "grpc_batch": 128},
        # Two worker processes, as the pipeline may run two (``pipeline bench --workers``).
        {"batch_size": 100, "concurrency": 0, "grpc_batch": 64, "processes": 2},
    ],
    "procrastinate": [
        {"batch_size": 1, "concurrency": 16, "grpc_batch": 0},
        {"batch_size": 1, "concurrency": 64, "grpc_batch": 0},
        {"batch_size": 1, "concurrency": 64, "grpc_batch": 64},
    ],
}


@dataclass(frozen=True, slots=True)
class PeerTrial:
    peer: str
    settings: dict[str, int]
    count: int
    applied: int
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float

    @property
    def per_second(self) -> float:
        return self.applied / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "per_second": self.per_second}


# --- the bench's side -------------------------------------------------------------------


async def wait_applied(
    applied_now: Callable[[], Awaitable[int]],
    count: int,
    t0: float,
    limit_s: float,
    died: Callable[[], bool],
    floor_s: float,
) -> tuple[int, float]:
    """Poll until ``count`` jobs are applied, a worker process died or ``limit_s`` passed since
    ``t0`` (perf_counter, taken before the enqueue): the jobs applied, the seconds since ``t0``.
    Paced as the pipeline's count is (``pacing``), from ``floor_s``."""
    applied = 0
    while (elapsed := time.perf_counter() - t0) < limit_s:
        applied = await applied_now()
        if applied >= count or died():
            break
        await asyncio.sleep(poll_delay(applied, count, elapsed, floor_s))
    return applied, time.perf_counter() - t0


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, 30 s to stop, then SIGKILL; and close the pipe of its stdout."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


async def run_trial(
    peer: str,
    settings: dict[str, int],
    *,
    database_url: str,
    provisioner_addr: str,
    count: int,
    key_prefix: str,
    logdir: Path,
    limit_s: float,
) -> PeerTrial:
    with psycopg.connect(database_url, autocommit=True) as conn:
        store.reset_peer_table(conn, peer, count)
    await _install(peer, database_url)
    with psycopg.connect(database_url, autocommit=True) as conn:
        store.reset_peer_schema(conn, peer)
    procs = [
        _spawn_worker(peer, settings, database_url, provisioner_addr, key_prefix, logdir)
        for _ in range(settings.get("processes", 1))
    ]
    names = [f"{peer}-{i}" for i in range(len(procs))]
    sampler = ProcSampler()
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), timeout=60)
            if line.strip() != b"ready":
                raise RuntimeError(f"{peer} worker did not start (see {logdir}/peer-{peer}.log)")
        await asyncio.sleep(0.5)  # let it finish connecting and LISTENing
        for name, proc in zip(names, procs, strict=True):
            sampler.track(name, proc.pid)
        sampler.start()
        sampler.mark()
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            t0 = time.perf_counter()
            await _enqueue(peer, database_url, count)
            applied, elapsed = await wait_applied(
                lambda: store.peer_applied(conn, peer),
                count,
                t0,
                limit_s,
                lambda: any(proc.poll() is not None for proc in procs),
                floor_s=0.05,
            )
        sampler.end_phase()
        await sampler.stop()
    finally:
        for proc in procs:
            await asyncio.to_thread(stop_process, proc)
    return PeerTrial(
        peer,
        dict(settings),
        count,
        applied,
        elapsed,
        sum(sampler.cpu_seconds(name) for name in names),
        max(sampler.peak_rss_mb(name) for name in names),
    )


def _spawn_worker(
    peer: str,
    settings: dict[str, int],
    database_url: str,
    provisioner_addr: str,
    key_prefix: str,
    logdir: Path,
) -> subprocess.Popen[bytes]:
    log = (logdir / f"peer-{peer}.log").open("ab")
    cmd = [
        sys.executable,
        "-m",
        "pipeline.devtools.bench.peers",
        peer,
        "--dsn",
        database_url,
        "--provisioner",
        provisioner_addr,
        "--batch-size",
        str(settings["batch_size"]),
        "--concurrency",
        str(settings["concurrency"]),
        "--grpc-batch",
        str(settings.get("grpc_batch", 0)),
        "--key-prefix",
        key_prefix,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log)
    log.close()
    return proc


async def _install(peer: str, dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        if store.peer_schema_installed(conn, peer):
            return
    if peer == "pgqueuer":
        import asyncpg
        from pgqueuer import AsyncpgDriver, Queries

        aconn = await asyncpg.connect(dsn)
        try:
            await Queries(AsyncpgDriver(aconn)).install()
        finally:
            await aconn.close()
        return
    app = _procrastinate_app(dsn)
    async with app.open_async():
        await app.schema_manager.apply_schema_async()


async def _enqueue(peer: str, dsn: str, count: int) -> None:
    """``count`` jobs (payload = the job row's id) with the library's batch API."""
    ids = range(1, count + 1)
    if peer == "pgqueuer":
        import asyncpg
        from pgqueuer import AsyncpgDriver, Queries

        aconn = await asyncpg.connect(dsn)
        try:
            queries = Queries(AsyncpgDriver(aconn))
            for i in range(0, count, ENQUEUE_CHUNK):
                chunk = ids[i : i + ENQUEUE_CHUNK]
                await queries.enqueue(
                    [TASK] * len(chunk), [str(j).encode() for j in chunk], [0] * len(chunk)
                )
        finally:
            await aconn.close()
        return
    app = _procrastinate_app(dsn)
    async with app.open_async():
        deferrer = app.configure_task(TASK)
        for i in range(0, count, ENQUEUE_CHUNK):
            await deferrer.batch_defer_async(*({"job_id": j} for j in ids[i : i + ENQUEUE_CHUNK]))


def _procrastinate_app(dsn: str) -> Any:
    from procrastinate import App, PsycopgConnector

    return App(connector=PsycopgConnector(conninfo=dsn, min_size=1, max_size=POOL_SIZE))


# --- the worker process -----------------------------------------------------------------


def provisioner_client(addr: str, batch: int) -> GrpcProvisioner:
    return GrpcProvisioner(
        addr, deadline=HANDLER_DEADLINE.total_seconds(), tries=CALL_TRIES_PER_ATTEMPT, batch=batch
    )


async def regrade(port: GrpcProvisioner, key: str) -> None:
    reply = await port.regrade(
        idempotency_key=key,
        team_id="bench",
        resource_type="postgres",
        resource_id=key,
        target_tier="pro",
    )
    if not isinstance(reply, Applied):
        raise RuntimeError(f"regrade {key} not applied: {reply}")


async def _pgqueuer_worker(args: argparse.Namespace) -> None:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries, QueueManager
    from pgqueuer.models import Job

    conn = await asyncpg.connect(args.dsn)
    pool = await asyncpg.create_pool(args.dsn, min_size=2, max_size=POOL_SIZE)
    port = provisioner_client(args.provisioner, args.grpc_batch)
    update = store.peer_update_sql("pgqueuer", "asyncpg")
    qm = QueueManager(Queries(AsyncpgDriver(conn)))

    @qm.entrypoint(TASK, concurrency_limit=args.concurrency)
    async def bench_job(job: Job) -> None:
        job_id = int(job.payload or b"0")
        await regrade(port, f"{args.key_prefix}{job_id}")
        await pool.execute(update, job_id)

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, qm.shutdown.set)
    freeze_after_startup()  # as the pipeline's components do
    print("ready", flush=True)
    try:
        await qm.run(batch_size=args.batch_size, dequeue_timeout=timedelta(seconds=1))
    finally:
        await port.close()
        await pool.close()
        await conn.close()


async def _procrastinate_worker(args: argparse.Namespace) -> None:
    from psycopg_pool import AsyncConnectionPool

    app = _procrastinate_app(args.dsn)
    port = provisioner_client(args.provisioner, args.grpc_batch)
    update = store.peer_update_sql("procrastinate", "psycopg")
    pool = AsyncConnectionPool(
        args.dsn, min_size=2, max_size=POOL_SIZE, open=False, kwargs={"autocommit": True}
    )

    @app.task(name=TASK)  # type: ignore[untyped-decorator]
    async def bench_job(job_id: int) -> None:
        await regrade(port, f"{args.key_prefix}{job_id}")
        async with pool.connection() as conn:
            await conn.execute(update, (job_id,))

    await pool.open()
    try:
        async with app.open_async():
            freeze_after_startup()  # as the pipeline's components do
            print("ready", flush=True)
            await app.run_worker_async(
                concurrency=args.concurrency,
                wait=True,
                listen_notify=True,
                delete_jobs="successful",
                install_signal_handlers=True,
            )
    finally:
        await port.close()
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.devtools.bench.peers")
    p.add_argument("peer", choices=PEERS)
    p.add_argument("--dsn", required=True)
    p.add_argument("--provisioner", required=True)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--concurrency", type=int, default=0)
    p.add_argument("--grpc-batch", type=int, default=0)
    p.add_argument("--key-prefix", default="peer-")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    worker = _pgqueuer_worker if args.peer == "pgqueuer" else _procrastinate_worker
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(worker(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
