"""Operator commands: ``pipeline status`` and ``pipeline retry ID`` (``pipeline lag`` is ``lag``).

Tables when stdout is a terminal, tab-separated lines otherwise, ``--json`` for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from typing import TYPE_CHECKING, Any

from pipeline.domain.errors import PipelineError
from pipeline.domain.rowstate import STATES
from pipeline.ops.options import add_command
from pipeline.ops.output import age, in_daemon, plain, print_json, table
from pipeline.runtime.exit_codes import ExitCode

KAFKA_STATUS_TIMEOUT_S = 4.0  # `pipeline status` answers within 5 s with a broker down

if TYPE_CHECKING:
    from pipeline.runtime.config import Config


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "status", cmd_status)
    p.add_argument("--json", action="store_true", help="print one JSON document")

    p = add_command(sub, "retry", cmd_retry)
    p.add_argument("id", type=int, help="propagation id")
    p.add_argument("--reason", help="why (kept in the audit row)")
    p.add_argument("--actor", help="who (default: the current user)")
    p.add_argument(
        "--force", action="store_true", help="retry even if a later propagation was applied"
    )


# --- status -----------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    """propagations by state and kind, oldest pending, recent dead letters

    Count propagations by state (pending, in_flight = published without an outcome, retrying =
    the last attempt failed or was skipped unexpectedly and the next waits for its backoff,
    applied, dead_lettered) and kind; show the oldest pending one and the dead letters of the
    last hour."""

    from pipeline.ops.options import load_config
    from pipeline.store import status as status_store
    from pipeline.store.db import connected

    cfg = load_config(args, ("database_url",))
    _import_kafka_side()
    with connected(cfg.database_url, what="cannot read status", autocommit=True) as conn:
        report = status_store.status(conn)
    # Both Kafka questions at once, each bounded: status answers within 5 s with a broker down.
    log_start_get = in_daemon(lambda: _outcome_log_start(cfg))
    kafka_get = in_daemon(lambda: _kafka_section(cfg))
    late = f"no answer within {KAFKA_STATUS_TIMEOUT_S:.0f} s"
    log_start = log_start_get(
        KAFKA_STATUS_TIMEOUT_S + 0.5,
        {"topic": cfg.outcomes_topic, "earliest_retained": None, "error": f"unknown: {late}"},
    )
    kafka = kafka_get(0.5, {"error": late, "under_replicated": None})
    rc = ExitCode.OK if kafka is None or kafka["error"] is None else ExitCode.PARTIAL
    if args.json:
        print_json(
            {**report.to_dict(), "outcome_log": log_start, "kafka": kafka, "partial": rc != 0}
        )
        return rc
    columns = ["kind", *STATES]
    rows = [[kind, *(str(by[s]) for s in STATES)] for kind, by in report.counts.items()]
    rows.append(["total", *(str(n) for n in report.totals().values())])
    oldest = (
        f"#{report.oldest_pending_id}, {age(report.oldest_pending_age_seconds)} old"
        if report.oldest_pending_id is not None
        else "none"
    )
    footer = [
        f"oldest pending: {oldest}",
        f"dead-lettered in the last hour: {report.dead_lettered_last_hour}",
        f"outcome log {log_start['topic']}: earliest retained record "
        + (log_start["error"] or log_start["earliest_retained"] or "none (empty log)")
        + " (a replay or rebuild reaches back no further)",
        *_kafka_lines(kafka),
    ]
    if sys.stdout.isatty():
        from rich.console import Console

        console = Console()
        console.print(table("propagations", columns, rows))
        for line in footer:
            console.print(line)
    else:
        plain(columns, rows)
        for line in footer:
            print(line)
    return rc


def _import_kafka_side() -> None:
    # Before the clocks below start: their bounds are for the brokers' answers, and a cold
    # import of aiokafka and faust (a fresh install compiles them) can take seconds on its own.
    import pipeline.adapters.replication
    import pipeline.components.lag
    import pipeline.components.worker.replicated  # noqa: F401


def _kafka_section(cfg: Any) -> dict[str, Any] | None:
    """The pipeline topics' replication, or why it could not be read (within 4 s)."""
    if not cfg.kafka_bootstrap:
        return None
    from pipeline.adapters.replication import check
    from pipeline.components.worker.replicated import worker_topic_names

    async def ask() -> Any:
        return await asyncio.wait_for(
            check(
                cfg.kafka_client_kwargs(),
                worker_topic_names(cfg),
                cfg.replication_factor,
                cfg.min_insync_replicas,
            ),
            KAFKA_STATUS_TIMEOUT_S,
        )

    try:
        results = asyncio.run(ask())
    except (PipelineError, TimeoutError) as exc:
        return {"error": str(exc) or "no answer in time", "under_replicated": None}
    return {
        "error": None,
        "under_replicated": [
            {
                "topic": r.topic,
                "factor": r.factor,
                "min_insync_replicas": r.min_insync,
                "problems": list(r.problems),
            }
            for r in results
            if r.under_replicated
        ],
        "shrunk_partitions": {r.topic: r.shrunk_partitions for r in results if r.shrunk_partitions},
    }


def _kafka_lines(kafka: dict[str, Any] | None) -> list[str]:
    if kafka is None:
        return []
    if kafka["error"] is not None:
        return [f"kafka: unavailable ({kafka['error'][:200]}); the answer above is partial"]
    lines = [
        f"under-replicated topic: {u['topic']} ({'; '.join(u['problems'])})"
        for u in kafka["under_replicated"]
    ]
    lines += [
        f"partitions below their replica count (ISR shrunk): {t} {n}"
        for t, n in kafka["shrunk_partitions"].items()
    ]
    return lines or ["kafka topics: replicated as configured"]


def _outcome_log_start(cfg: Config) -> dict[str, Any]:
    """How far back the outcome log reaches; an error is shown, not raised (status is DB-first)."""
    from pipeline.components.lag import earliest_retained
    from pipeline.domain.events import iso

    doc: dict[str, Any] = {"topic": cfg.outcomes_topic, "earliest_retained": None, "error": None}
    if not cfg.kafka_bootstrap:
        doc["error"] = "unknown: set PIPELINE_KAFKA_BOOTSTRAP to read it"
        return doc
    try:
        at = asyncio.run(
            asyncio.wait_for(
                earliest_retained(cfg.kafka_client_kwargs(), cfg.outcomes_topic),
                KAFKA_STATUS_TIMEOUT_S,
            )
        )
    except TimeoutError:
        doc["error"] = f"unknown: Kafka did not answer within {KAFKA_STATUS_TIMEOUT_S:.0f} s"
        return doc
    except PipelineError as exc:
        doc["error"] = f"unknown: {exc}"
        return doc
    doc["earliest_retained"] = iso(at) if at else None
    return doc


# --- retry ------------------------------------------------------------------------------


def cmd_retry(args: argparse.Namespace) -> int:
    """retry a dead-lettered (or stuck) propagation now, audited

    Make propagation ID due now. A dead-lettered one is re-opened: its attempt numbers keep
    counting and its attempt budget restarts. Every retry is recorded in
    propagation_operator_actions with --reason and the actor. Refused for applied or unknown
    ids, and for a propagation whose resource has a later applied one (unless --force)."""

    from pipeline.ops.options import load_config
    from pipeline.store import status as status_store
    from pipeline.store.db import connected

    cfg = load_config(args, ("database_url",))
    actor = args.actor or _current_user()
    with connected(cfg.database_url, what="cannot retry", autocommit=True) as conn:
        result = status_store.retry(
            conn, args.id, reason=args.reason, actor=actor, force=args.force
        )
    budget = " with a fresh attempt budget" if result.action == "retry_dead_lettered" else ""
    print(
        f"propagation {result.propagation_id} ({result.previous_state}): attempt "
        f"{result.next_attempt} is due now{budget}; recorded as operator action "
        f"#{result.action_id} ({result.action}) by {actor}"
    )
    return 0


def _current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
