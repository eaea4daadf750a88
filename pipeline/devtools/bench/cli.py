"""``pipeline bench``: measure the pipeline, its raw limits and its peers on a real stack."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from pipeline.devtools.stack.cli import add_brokers_option
from pipeline.domain.errors import PipelineError

_DESCRIPTION = """\
Drive the real local stack and report, in one run: end-to-end throughput at saturation
(--count rows inserted at once, relay/worker/projector already running), insert-to-applied
latency at a fixed offered rate (--rate for --latency-seconds), per-stage rates, the raw
limits of aiokafka, gRPC and a batched UPDATE, CPU and peak RSS per component, and the same
job done by pgqueuer and procrastinate at their best tried settings (ratios pipeline/peer).

Starts its own Kafka and Postgres in a temporary folder, unless --use-env points it at the
PIPELINE_KAFKA_BOOTSTRAP and PIPELINE_DATABASE_URL server (a fresh database is created there
and dropped afterwards). The fake provisioner always runs in a process of its own.
Needs the bench extra: pip install -e '.[bench]'.
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark the pipeline against its raw limits and pgqueuer/procrastinate",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--count", type=int, default=20_000, help="propagations (default 20000)")
    p.add_argument("--rate", type=float, default=500.0, help="offered rate/s (default 500)")
    p.add_argument(
        "--latency-seconds", type=float, default=10.0, help="latency phase length (default 10)"
    )
    p.add_argument("--partitions", type=int, default=6, help="topic partitions (default 6)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes in the group (default 1); pgqueuer's trials may use as many "
        "processes",
    )
    p.add_argument("--json", metavar="FILE", type=Path, help="also write the report as JSON")
    p.add_argument(
        "--profile", metavar="DIR", type=Path, help="py-spy each component while saturated"
    )
    p.add_argument("--no-peers", action="store_true", help="skip pgqueuer and procrastinate")
    p.add_argument(
        "--steady-minutes",
        type=float,
        default=0.0,
        metavar="M",
        help="also offer --rate for M minutes and report whether each component's RSS stays"
        " flat (default 0 = skip; the issue's check is 10)",
    )
    p.add_argument(
        "--no-single-calls",
        action="store_true",
        help="skip the second saturation run with PIPELINE_PROVISIONER_BATCH=0",
    )
    p.add_argument(
        "--use-env",
        action="store_true",
        help="use the Kafka and Postgres of PIPELINE_KAFKA_BOOTSTRAP / PIPELINE_DATABASE_URL",
    )
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs, data)")
    add_brokers_option(
        p,
        "Kafka nodes of the bench's own stack (default 1); 3 runs a replicated KRaft "
        "quorum (factor 3, min.insync.replicas 2), to measure what replication costs",
    )
    p.set_defaults(func=cmd_bench)


def _say(msg: str) -> None:
    print(f"pipeline bench: {msg}", file=sys.stderr, flush=True)


def cmd_bench(args: argparse.Namespace) -> int:
    from pipeline.devtools.bench import report as report_mod
    from pipeline.devtools.bench.run import Settings

    if args.count < 1 or args.rate <= 0 or args.latency_seconds <= 0:
        raise PipelineError("--count, --rate and --latency-seconds must be positive")
    if not 1 <= args.workers <= args.partitions:
        raise PipelineError("--workers must be between 1 and --partitions")
    if args.steady_minutes < 0:
        raise PipelineError("--steady-minutes must be 0 or more")
    if not 1 <= args.brokers <= 9 or (args.use_env and args.brokers != 1):
        raise PipelineError("--brokers must be between 1 and 9 (and not with --use-env)")
    settings = Settings(
        count=args.count,
        rate=args.rate,
        latency_seconds=args.latency_seconds,
        partitions=args.partitions,
        workers=args.workers,
        peers=not args.no_peers,
        profile_dir=args.profile.resolve() if args.profile else None,
        steady_minutes=args.steady_minutes,
        single_calls=not args.no_single_calls,
        progress=_say,
    )
    workdir = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    ok = False
    try:
        report = _with_stack(args.use_env, workdir, settings, args.brokers)
        ok = True
    finally:
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            _say(f"logs and data kept in {workdir}")
    report_mod.add_targets(report)
    report_mod.render(report)
    if args.json:
        report_mod.write_json(report, args.json)
        _say(f"report written to {args.json}")
    return 0


def _with_stack(use_env: bool, workdir: Path, settings: Any, brokers: int = 1) -> dict[str, Any]:
    from pipeline.devtools.bench.components import Stack
    from pipeline.devtools.bench.run import run_bench
    from pipeline.devtools.stack import procs
    from pipeline.devtools.stack.kafka_cluster import KafkaCluster
    from pipeline.devtools.stack.postgres import ExternalPostgres, PostgresCluster
    from pipeline.runtime import config
    from pipeline.runtime.gc_tuning import freeze_after_startup

    # This process paces the latency phase's inserts: no long collector pauses in it either.
    freeze_after_startup()
    prefix = f"bench-{uuid.uuid4().hex[:8]}-"
    db_name = f"bench_{uuid.uuid4().hex[:8]}"
    if use_env:
        cfg = config.load(("database_url", "kafka_bootstrap"))
        server = ExternalPostgres(cfg.database_url)
        url = server.create_database(db_name)
        try:
            stack = Stack(url, cfg.kafka_bootstrap, prefix, workdir)
            return asyncio.run(run_bench(stack, settings))
        finally:
            server.drop_database(db_name)
    # One node is a KRaft quorum of one: the same broker settings as a lone KafkaBroker.
    broker = KafkaCluster(workdir / "kafka", procs.cache_dir(), brokers)
    cluster = PostgresCluster(workdir / "postgres")
    try:
        _say(f"starting Kafka ({brokers} node(s)) and Postgres")
        broker.start()
        cluster.start()
        url = cluster.create_database(db_name)
        extra = {
            "kafka" if brokers == 1 else f"kafka-{n.node_id}": n.pid for n in broker.nodes if n.pid
        }
        trees = {"postgres": cluster.pid} if cluster.pid else {}
        stack = Stack(url, broker.bootstrap, prefix, workdir, extra_pids=extra, extra_trees=trees)
        settings.brokers = brokers
        return asyncio.run(run_bench(stack, settings))
    finally:
        cluster.stop()
        cluster.remove_files()
        broker.stop()
