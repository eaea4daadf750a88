"""The command line of ``pipeline dev up|down|status``; ``stack.dev`` runs the commands.

Apart so that ``pipeline --help`` builds this parser without loading the stack.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    dev = sub.add_parser(
        "dev",
        help="start, stop or inspect the local stack (Kafka, Postgres, fake provisioner)",
        description=(
            "Run the local stack without Docker: a KRaft Kafka broker (jars fetched once with "
            "Maven into PIPELINE_STACK_CACHE, default ~/.cache/pipeline-stack), a Postgres "
            "cluster (skipped when PIPELINE_DATABASE_URL is set) and the fake provisioner."
        ),
    )
    dev_sub = dev.add_subparsers(dest="dev_command", required=True, metavar="ACTION")

    def with_state_dir(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "--state-dir",
            type=Path,
            default=None,
            help="where the services keep data, logs and state (default: <cache>/dev)",
        )
        return p

    up = with_state_dir(
        dev_sub.add_parser(
            "up",
            help="start the stack (no-op if running) and print export lines",
            description='Start the stack and print export lines; use: eval "$(pipeline dev up)"',
        )
    )
    up.add_argument("--timeout", type=float, default=120, help="seconds per service to start")
    add_brokers_option(
        up,
        "Kafka nodes: 1 (default) or a KRaft quorum of N combined broker+controller nodes, "
        "each with its own ports and data folder; topics then default to factor min(3, N)",
    )
    with_state_dir(dev_sub.add_parser("down", help="stop the stack and forget its state"))
    with_state_dir(
        dev_sub.add_parser("status", help="show each service (exit 1 unless all are running)")
    )
    dev.set_defaults(func=_run)


def add_brokers_option(p: argparse.ArgumentParser, help_text: str) -> None:
    """``--brokers N``: how many Kafka nodes a local stack runs (``dev up`` and ``bench``)."""
    p.add_argument("--brokers", type=int, default=1, metavar="N", help=help_text)


def _run(args: argparse.Namespace) -> int:
    from pipeline.devtools.stack import dev

    command = {"up": dev.cmd_up, "down": dev.cmd_down, "status": dev.cmd_status}
    return command[args.dev_command](args)
