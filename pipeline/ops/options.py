"""The settings every command shares: one flag per PIPELINE_* setting, and loading them.

Every operator command builds its parser from :func:`config_options` and its config with
:func:`load_config`, so a flag always wins over its variable in the same way everywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
from collections.abc import Callable

from pipeline.runtime import config
from pipeline.runtime.config import REQUIRED_FOR_ALL, Config

_SETTING_HELP = {
    "database_url": "Postgres URL of the outbox database",
    "kafka_bootstrap": "Kafka bootstrap servers, host:port[,host:port]",
    "provisioner_addr": "provisioner gRPC address, host:port",
    "topic_prefix": "prefix of topics, consumer groups and internal topics",
    "backoff_scale": "multiplies the retry schedule (1.0 production; 0.001 makes 1m 60ms)",
    "max_attempts": "attempts before a propagation is dead-lettered (default 10)",
    "metrics_port": "port of /metrics (run uses it and the next two; 0 = any free port)",
    "metrics_host": "address /metrics binds to (0.0.0.0 in containers)",
    "partitions": "partitions of the pipeline's topics when they are created",
    "relay_batch_size": "rows the relay claims per transaction",
    "relay_poll_interval": "seconds between relay polls when no NOTIFY arrives",
    "worker_concurrency": "commands a worker keeps in flight (one at a time per resource)",
    "outcome_retention": "retention of the outcome log when created: forever (default) or 90d",
    "command_retention": "retention of the command topic when created (default 7d)",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "ui_host": "address `pipeline ui` binds to (default 127.0.0.1)",
    "ui_port": "port of `pipeline ui` (default 9480)",
    "ui_token": "token that unlocks console actions (prefer PIPELINE_UI_TOKEN: flags show in ps)",
}


def config_options() -> argparse.ArgumentParser:
    """Flags matching every PIPELINE_* setting; a flag wins over the variable."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("settings (each also read from PIPELINE_<NAME>)")
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        help_text = _SETTING_HELP.get(f.name, "see README, configuration table")
        group.add_argument(flag, dest=f"cfg_{f.name}", default=None, metavar="V", help=help_text)
    return parent


def add_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    func: Callable[[argparse.Namespace], int],
    help_text: str | None = None,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """Subcommand ``name`` that takes every setting flag and runs ``func``; its own arguments
    go on the parser returned. Unless given, its help line is the first paragraph of ``func``'s
    docstring and its ``--help`` description the rest, so what a command does is written once,
    where it is done."""
    summary, _, details = (inspect.getdoc(func) or "").partition("\n\n")
    p = sub.add_parser(
        name,
        parents=[config_options()],
        help=help_text or summary,
        description=description or details or None,
    )
    p.set_defaults(func=func)
    return p


def load_config(args: argparse.Namespace, required: tuple[str, ...] = REQUIRED_FOR_ALL) -> Config:
    overrides = {
        k.removeprefix("cfg_"): v
        for k, v in vars(args).items()
        if k.startswith("cfg_") and v is not None
    }
    cfg = config.load(required, **overrides)
    from pipeline.runtime import logs

    logs.configure(cfg.log_level)
    return cfg
