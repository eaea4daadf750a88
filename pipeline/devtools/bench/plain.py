"""The plain reference peer: the pipeline's own architecture, written plainly for the bench.

Outbox -> relay -> Kafka -> worker (provisioner over gRPC) -> Kafka -> projector -> Postgres,
each role in a process of its own, with no faust, no validation, no de-duplication, no
decisions, no metrics and no retries. It is what this architecture costs on this machine
when nothing but the hot path runs, so the report can show the pipeline's ratio to its own
ceiling, not only to pgqueuer's. It is a bench peer, never a second implementation: nothing
outside ``pipeline.devtools.bench`` imports it.

Each role runs as ``python -m pipeline.devtools.bench.plain ROLE ...``, prints ``ready`` once
started and works until SIGTERM. The bench side (:func:`run_trial`) creates the tables and topics,
starts the three roles, inserts ``count`` rows in one statement and watches until each one
is stamped ``applied_at``.
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
from pathlib import Path
from typing import Any

import orjson
import psycopg

from pipeline.devtools.bench.peers import (
    PeerTrial,
    provisioner_client,
    regrade,
    stop_process,
    wait_applied,
)
from pipeline.devtools.bench.procstats import ProcSampler
from pipeline.runtime.gc_tuning import freeze_after_startup
from pipeline.store import bench as store

ROLES = ("relay", "worker", "projector")
CLAIM_BATCH = 500  # rows per relay claim, as the reference run in issue 16
FETCH_MAX = 500  # records per getmany
GRPC_BATCH = 64  # ApplyBatch items, the pipeline's default
IDLE_S = 0.005  # the relay's nap when the outbox is empty


def topics(prefix: str) -> tuple[str, str]:
    return f"{prefix}plain-commands", f"{prefix}plain-outcomes"


# --- the bench's side -------------------------------------------------------------------


async def run_trial(
    *,
    database_url: str,
    bootstrap: str,
    provisioner_addr: str,
    prefix: str,
    partitions: int,
    count: int,
    logdir: Path,
    limit_s: float,
) -> PeerTrial:
    """One run of ``count`` jobs through the three plain roles; CPU summed over them."""
    from pipeline.adapters.topics import ensure_topics

    with psycopg.connect(database_url, autocommit=True) as conn:
        store.reset_plain_tables(conn)
    await ensure_topics({"bootstrap_servers": bootstrap}, list(topics(prefix)), partitions)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    sampler = ProcSampler()
    try:
        for role in ROLES:
            procs[role] = _spawn(role, database_url, bootstrap, provisioner_addr, prefix, logdir)
        for role, proc in procs.items():
            assert proc.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), timeout=90)
            if line.strip() != b"ready":
                raise RuntimeError(f"plain {role} did not start (see {logdir}/plain-{role}.log)")
            sampler.track(role, proc.pid)
        # Consumers joined and assigned before the clock starts, as the pipeline's warm-up does.
        await _warm(database_url)
        sampler.start()
        sampler.mark()
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            t0 = time.perf_counter()
            await store.plain_insert(conn, count)
            applied, elapsed = await wait_applied(
                lambda: store.plain_applied(conn),
                count,
                t0,
                limit_s,
                lambda: any(p.poll() is not None for p in procs.values()),
                floor_s=0.02,
            )
        sampler.end_phase()
        await sampler.stop()
    finally:
        await sampler.stop()
        for proc in procs.values():
            stop_process(proc)
    cpu = {role: sampler.cpu_seconds(role) for role in ROLES}
    trial = PeerTrial(
        "plain",
        {"claim_batch": CLAIM_BATCH, "fetch_max": FETCH_MAX, "grpc_batch": GRPC_BATCH},
        count,
        applied,
        elapsed,
        sum(cpu.values()),
        max(sampler.peak_rss_mb(role) for role in ROLES),
    )
    return trial


async def _warm(database_url: str, n: int = 20, limit_s: float = 90.0) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await store.plain_insert(conn, n, warm=True)
        t0 = time.perf_counter()
        while await store.plain_applied(conn, warm=True) < n:
            if time.perf_counter() - t0 > limit_s:
                raise RuntimeError("the plain peer did not finish its warm-up")
            await asyncio.sleep(0.05)


def _spawn(
    role: str, dsn: str, bootstrap: str, provisioner: str, prefix: str, logdir: Path
) -> subprocess.Popen[bytes]:
    log = (logdir / f"plain-{role}.log").open("ab")
    cmd = [sys.executable, "-m", "pipeline.devtools.bench.plain", role, "--dsn", dsn]
    cmd += ["--bootstrap", bootstrap, "--provisioner", provisioner, "--prefix", prefix]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log)
    log.close()
    return proc


# --- the role processes -----------------------------------------------------------------


async def _relay(args: argparse.Namespace, stop: asyncio.Event) -> None:
    from aiokafka import AIOKafkaProducer

    commands, _ = topics(args.prefix)
    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap, enable_idempotence=True, acks="all", linger_ms=5
    )
    await producer.start()
    try:
        async with await psycopg.AsyncConnection.connect(args.dsn) as conn:
            freeze_after_startup()  # as the pipeline's components do
            print("ready", flush=True)
            while not stop.is_set():
                async with conn.transaction():
                    rows = await store.plain_claim(conn, CLAIM_BATCH)
                    if rows:
                        sends = [
                            await producer.send(commands, orjson.dumps({"id": i}), key=k.encode())
                            for i, k in rows
                        ]
                        await asyncio.gather(*sends)
                        await store.plain_mark_published(conn, [i for i, _ in rows])
                if not rows:
                    await asyncio.sleep(IDLE_S)
    finally:
        await producer.stop()


def _consumer(args: argparse.Namespace, topic: str, role: str) -> Any:
    """Manual commits after each batch is done, the way the pipeline's consumers commit."""
    from aiokafka import AIOKafkaConsumer

    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=args.bootstrap,
        group_id=f"{args.prefix}plain-{role}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
    )


async def _worker(args: argparse.Namespace, stop: asyncio.Event) -> None:
    from aiokafka import AIOKafkaProducer

    commands, outcomes = topics(args.prefix)
    consumer = _consumer(args, commands, "worker")
    producer = AIOKafkaProducer(
        bootstrap_servers=args.bootstrap, enable_idempotence=True, acks="all", linger_ms=5
    )
    port = provisioner_client(args.provisioner, GRPC_BATCH)
    await producer.start()
    await consumer.start()
    freeze_after_startup()  # as the pipeline's components do
    print("ready", flush=True)
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=FETCH_MAX)
            records = [r for part in batches.values() for r in part]
            if not records:
                continue
            await asyncio.gather(*(regrade(port, r.key.decode()) for r in records if r.key))
            sends = [
                await producer.send(outcomes, r.value, key=r.key, partition=r.partition)
                for r in records
            ]
            await asyncio.gather(*sends)
            await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()
        await port.close()


async def _projector(args: argparse.Namespace, stop: asyncio.Event) -> None:
    _, outcomes = topics(args.prefix)
    consumer = _consumer(args, outcomes, "projector")
    await consumer.start()
    freeze_after_startup()  # as the pipeline's components do
    print("ready", flush=True)
    try:
        async with await psycopg.AsyncConnection.connect(args.dsn) as conn:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=100, max_records=FETCH_MAX)
                ids = [int(orjson.loads(r.value)["id"]) for p in batches.values() for r in p]
                if not ids:
                    continue
                async with conn.transaction():
                    await store.plain_project(conn, ids)
                await consumer.commit()
    finally:
        await consumer.stop()


_ROLE_MAINS: dict[str, Any] = {"relay": _relay, "worker": _worker, "projector": _projector}


async def _main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await _ROLE_MAINS[args.role](args, stop)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.devtools.bench.plain")
    p.add_argument("role", choices=ROLES)
    p.add_argument("--dsn", required=True)
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--provisioner", required=True)
    p.add_argument("--prefix", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
