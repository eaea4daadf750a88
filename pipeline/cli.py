"""The ``pipeline`` console script: one subcommand per job, each documented in its help."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline.errors import PipelineError


def build_parser() -> argparse.ArgumentParser:
    # Imports are local so that `pipeline --help` stays fast and a broken optional
    # component cannot stop the others from starting.
    from pipeline import fake_provisioner
    from pipeline.stack import dev

    parser = argparse.ArgumentParser(
        prog="pipeline",
        description=(
            "Event-sourced propagation pipeline: outbox rows are relayed to Kafka, processed "
            "by the faust worker against the provisioner, and outcomes projected back into "
            "Postgres. Configuration comes from PIPELINE_* variables (see README)."
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    dev.add_parser(sub)
    fake_provisioner.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc: int = args.func(args)
    except PipelineError as exc:
        print(f"pipeline {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return rc


if __name__ == "__main__":
    sys.exit(main())
