"""The ``pipeline`` console script: one subcommand per job, each documented in its help."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from pipeline.domain.errors import PipelineError
from pipeline.ops.options import add_command, load_config
from pipeline.runtime import config
from pipeline.runtime.config import Config
from pipeline.runtime.exit_codes import ExitCode


def _cmd_migrate(args: argparse.Namespace) -> int:
    """create or upgrade the schema (idempotent, safe while running)"""
    from pipeline.store.migrate import migrate

    cfg = load_config(args, ("database_url",))
    applied = migrate(cfg.database_url)
    print("applied: " + ", ".join(applied) if applied else "schema is up to date")
    if args.create_roles:
        from pipeline.store import roles

        # Passwords come only from the environment: a flag would show in `ps` and history.
        role_of = {roles.password_variable(spec): spec.name for spec in roles.ROLES}
        passwords = {role_of[var]: pw for var, pw in config.passwords(role_of).items()}
        print("roles: " + ", ".join(roles.create_roles(cfg.database_url, passwords)))
    return 0


def _cmd_component(args: argparse.Namespace) -> int:
    from pipeline.components import supervisor as services

    cfg = load_config(args)
    runner = {
        "relay": services.run_relay,
        "worker": services.run_worker,
        "project": services.run_projector,
    }[args.command]
    return runner(cfg)


def _cmd_run(args: argparse.Namespace) -> int:
    """relay, worker and projector together (three supervised processes)"""
    from pipeline.components import supervisor as services

    cfg = load_config(args)
    env = config.child_env()
    for f in dataclasses.fields(Config):
        value = getattr(args, f"cfg_{f.name}", None)
        if value is not None:
            env[f"PIPELINE_{f.name.upper()}"] = str(value)
    return services.run_all(cfg, env)


def _cmd_enqueue(args: argparse.Namespace) -> int:
    """enqueue propagations by hand (operators; applications call pipeline.store.outbox)

    Insert propagation rows and print their ids. Example: pipeline enqueue tier_elevation --team
    acme --resource-type postgres --resource-id db-1 --target-tier pro"""

    import orjson

    from pipeline.store.db import connected
    from pipeline.store.outbox import enqueue

    cfg = load_config(args, ("database_url",))
    try:
        payload: Any = orjson.loads(args.payload) if args.payload else {}
    except orjson.JSONDecodeError as exc:
        raise PipelineError(f"--payload is not valid JSON: {exc}") from exc
    if args.target_tier:
        payload = {**payload, "target_tier": args.target_tier}
    with connected(cfg.database_url, what="cannot enqueue") as conn:
        ids = [
            enqueue(
                conn,
                args.kind,
                args.team,
                args.resource_type,
                f"{args.resource_id}{'' if args.count == 1 else f'-{i}'}",
                payload,
            )
            for i in range(args.count)
        ]
    for i in ids:
        print(i)
    return 0


def version() -> str:
    return metadata.version("pipeline")


def build_parser() -> argparse.ArgumentParser:
    # Component imports stay inside the command functions so `pipeline --help` stays fast.
    from pipeline.devtools import demo, fake_provisioner
    from pipeline.devtools.bench import cli as bench
    from pipeline.devtools.stack import cli as dev
    from pipeline.ops import history, lag, replay, tail
    from pipeline.ops import status as operator_status
    from pipeline.ops.console import cli as ui

    parser = argparse.ArgumentParser(
        prog="pipeline",
        description=(
            "Event-sourced propagation pipeline: outbox rows are relayed to Kafka, processed "
            "by the faust worker against the provisioner, and outcomes projected back into "
            "Postgres. Settings come from PIPELINE_* variables or the matching flags. "
            "Start with `pipeline dev up`, then `pipeline migrate` and `pipeline run`."
        ),
    )
    # Defined once, in pyproject.toml; read from the installed distribution's metadata.
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = add_command(sub, "migrate", _cmd_migrate)
    p.add_argument(
        "--create-roles",
        action="store_true",
        help=(
            "also create the least-privilege roles pipeline_relay, pipeline_projector, "
            "pipeline_enqueuer and pipeline_operator (NOLOGIN groups) and grant them; "
            "PIPELINE_RELAY_DB_PASSWORD (and _PROJECTOR_, _ENQUEUER_, _OPERATOR_) "
            "create a LOGIN user <role>_user in that group with that password"
        ),
    )
    for name, text in (
        ("relay", "publish due outbox rows to the propagations topic"),
        ("worker", "the faust processor: run handlers, emit outcome events"),
        ("project", "fold outcome events into Postgres"),
    ):
        add_command(sub, name, _cmd_component, text, text)
    add_command(sub, "run", _cmd_run)

    p = add_command(sub, "enqueue", _cmd_enqueue)
    p.add_argument("kind", help="a propagation_kind value, e.g. tier_elevation")
    p.add_argument("--team", required=True, help="team id")
    p.add_argument("--resource-type", required=True, help="e.g. postgres, redis")
    p.add_argument("--resource-id", required=True, help="resource id (suffixed -N with --count)")
    p.add_argument("--target-tier", help="target tier (regrades)")
    p.add_argument("--payload", help="payload as a JSON object")
    p.add_argument("--count", type=int, default=1, help="enqueue this many (default 1)")

    dev.add_parser(sub)
    bench.add_parser(sub)
    demo.add_parser(sub)
    replay.add_parser(sub)
    history.add_parser(sub)
    tail.add_parser(sub)
    operator_status.add_parser(sub)
    lag.add_parser(sub)
    fake_provisioner.add_parser(sub)
    ui.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc: int = args.func(args)
    except PipelineError as exc:
        print(f"pipeline {args.command}: {exc}", file=sys.stderr)
        return ExitCode.ERROR
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    return rc


if __name__ == "__main__":
    sys.exit(main())
