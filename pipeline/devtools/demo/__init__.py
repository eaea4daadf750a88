"""``pipeline demo``: the whole pipeline on a local stack, a workload covering every outcome path,
live progress, and a summary checked against Postgres, the outcome topic and the provisioner.

It starts its own Kafka, Postgres and fake provisioner in a fresh run folder (so it never
touches a ``pipeline dev`` stack), runs relay, worker and projector as processes, and tears
everything down at the end unless ``--keep`` is given. The workload is ``devtools.workload``.

Modules: this one (the command line), ``run`` (the stack, the processes and the run),
``display`` (live progress and the summary table), ``observe`` (lag and the outcome topic).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.domain.errors import PipelineError

# The stack, drivers, the workload (grpc via the fake's rules) and the event codec load in
# cmd_demo only: build_parser imports this module for every `pipeline` command, and --help
# must stay fast.


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run the pipeline on a local stack with a workload covering every outcome path",
        description=(
            "Start Kafka, Postgres and the fake provisioner, run relay, worker and projector, "
            "enqueue a workload that takes every outcome path, show progress, and check the "
            "result in Postgres and on the outcome topic. Exit 1 on a mismatch or a timeout."
        ),
    )
    p.add_argument("--count", type=int, default=3000, help="propagations to enqueue (3000)")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for all (600)")
    p.add_argument("--keep", action="store_true", help="leave the stack and components running")
    p.add_argument("--state-dir", type=Path, default=None, help="runs folder (<cache>/demo)")
    p.add_argument("--backoff-scale", type=float, default=0.0002, help="(0.0002: 8h is 5.8s)")
    p.add_argument("--partitions", type=int, default=6, help="partitions of the topics (6)")
    p.add_argument("--metrics-port", type=int, default=9400, help="first /metrics port (9400)")
    p.add_argument("--plain", action="store_true", help="periodic lines even on a terminal")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.devtools import workload as wl
    from pipeline.devtools.demo.run import Demo
    from pipeline.devtools.stack import procs
    from pipeline.runtime.config import child_env

    if args.count < wl.MIN_COUNT:
        raise PipelineError(f"--count must be at least {wl.MIN_COUNT} (one per path)")
    # The components get their settings from the demo alone, never from the caller's PIPELINE_*.
    base_env = child_env(with_settings=False)
    live = sys.stdout.isatty() and not args.plain
    return Demo(args, procs.cache_dir(), base_env, live=live).run()
