"""Operator commands: ``pipeline status``, ``pipeline retry ID`` and ``pipeline lag``.

Tables when stdout is a terminal, tab-separated lines otherwise, ``--json`` for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import queue
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from pipeline.domain.errors import BrokerError, PipelineError
from pipeline.domain.rowstate import STATES
from pipeline.runtime.config import PARTIAL_EXIT_CODE

KAFKA_STATUS_TIMEOUT_S = 4.0  # `pipeline status` answers within 5 s with a broker down
LAG_WITHIN_S = 2.5  # `pipeline lag` too, plus the clients' start:
LAG_START_S = 2.0

if TYPE_CHECKING:
    from pipeline.components.lag import LagReport, Source
    from pipeline.runtime.config import Config


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from pipeline.ops.options import config_options

    settings = config_options()
    p = sub.add_parser(
        "status",
        parents=[settings],
        help="propagations by state and kind, oldest pending, recent dead letters",
        description=(
            "Count propagations by state (pending, in_flight = published without an outcome, "
            "retrying = the last attempt failed or was skipped unexpectedly and the next waits "
            "for its backoff, applied, dead_lettered) and kind; show the oldest pending one "
            "and the dead letters of the last hour."
        ),
    )
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "retry",
        parents=[settings],
        help="retry a dead-lettered (or stuck) propagation now, audited",
        description=(
            "Make propagation ID due now. A dead-lettered one is re-opened: its attempt numbers "
            "keep counting and its attempt budget restarts. Every retry is recorded in "
            "propagation_operator_actions with --reason and the actor. Refused for applied or "
            "unknown ids, and for a propagation whose resource has a later applied one (unless "
            "--force)."
        ),
    )
    p.add_argument("id", type=int, help="propagation id")
    p.add_argument("--reason", help="why (kept in the audit row)")
    p.add_argument("--actor", help="who (default: the current user)")
    p.add_argument(
        "--force", action="store_true", help="retry even if a later propagation was applied"
    )
    p.set_defaults(func=cmd_retry)

    p = sub.add_parser(
        "lag",
        parents=[settings],
        help="consumer lag per group and partition, and the outbox backlog",
        description=(
            "Per consumer (the processor's Kafka group, the projector's Postgres checkpoints), "
            "topic and partition: committed offset, end offset, lag in messages and in seconds "
            "(age of the oldest unconsumed record); plus due, unpublished outbox rows."
        ),
    )
    p.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=2.0,
        default=None,
        metavar="SECONDS",
        help="refresh every SECONDS (default 2) until interrupted",
    )
    p.add_argument("--json", action="store_true", help="print JSON (one document per refresh)")
    p.set_defaults(func=cmd_lag)


def _age(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _print_json(doc: Any) -> None:
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS).decode() + "\n")
    sys.stdout.flush()


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for i, c in enumerate(columns):
        table.add_column(c, justify="right" if i and c != "topic" else "left")
    for row in rows:
        table.add_row(*row)
    return table


def _plain(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    print("\t".join(columns))
    for row in rows:
        print("\t".join(row))


# --- status -----------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    from pipeline.ops.options import load_config
    from pipeline.store import status as status_store
    from pipeline.store.db import connected

    cfg = load_config(args, ("database_url",))
    with connected(cfg.database_url, what="cannot read status", autocommit=True) as conn:
        report = status_store.status(conn)
    # Both Kafka questions at once, each bounded: status answers within 5 s with a broker down.
    log_start_get = _in_daemon(lambda: _outcome_log_start(cfg))
    kafka_get = _in_daemon(lambda: _kafka_section(cfg))
    late = f"no answer within {KAFKA_STATUS_TIMEOUT_S:.0f} s"
    log_start = log_start_get(
        KAFKA_STATUS_TIMEOUT_S + 0.5,
        {"topic": cfg.outcomes_topic, "earliest_retained": None, "error": f"unknown: {late}"},
    )
    kafka = kafka_get(0.5, {"error": late, "under_replicated": None})
    rc = 0 if kafka is None or kafka["error"] is None else PARTIAL_EXIT_CODE
    if args.json:
        _print_json(
            {**report.to_dict(), "outcome_log": log_start, "kafka": kafka, "partial": rc != 0}
        )
        return rc
    columns = ["kind", *STATES]
    rows = [[kind, *(str(by[s]) for s in STATES)] for kind, by in report.counts.items()]
    rows.append(["total", *(str(n) for n in report.totals().values())])
    oldest = (
        f"#{report.oldest_pending_id}, {_age(report.oldest_pending_age_seconds)} old"
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
        console.print(_table("propagations", columns, rows))
        for line in footer:
            console.print(line)
    else:
        _plain(columns, rows)
        for line in footer:
            print(line)
    return rc


def _in_daemon(fn: Callable[[], Any]) -> Callable[[float, Any], Any]:
    """Start ``fn`` in a daemon thread; the returned getter waits at most its timeout and then
    answers its fallback. A Kafka client that does not let go (its event loop's shutdown waits
    for tasks a dead broker keeps busy) then cannot hold the command past its bound."""
    box: queue.Queue[tuple[bool, Any]] = queue.Queue(1)

    def run() -> None:
        try:
            box.put((True, fn()))
        except BaseException as exc:  # handed to the caller
            box.put((False, exc))

    threading.Thread(target=run, daemon=True).start()

    def get(timeout: float, fallback: Any) -> Any:
        try:
            ok, value = box.get(timeout=timeout)
        except queue.Empty:
            return fallback
        if not ok:
            raise value
        return value

    return get


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


# --- lag --------------------------------------------------------------------------------


def cmd_lag(args: argparse.Namespace) -> int:
    from pipeline.components import lag
    from pipeline.ops.options import load_config

    cfg = load_config(args, ("database_url", "kafka_bootstrap"))
    sources = lag.pipeline_sources(
        cfg.processor_group, cfg.commands_topic, cfg.projection_name, cfg.outcomes_topic
    )
    kw = cfg.kafka_client_kwargs()
    if args.watch is not None and args.watch <= 0:
        raise PipelineError("--watch needs a positive number of seconds")
    show: Callable[[LagReport], None]
    if args.json:
        show = _lag_json
    elif args.watch is None or not sys.stdout.isatty():
        show = _lag_plain
    else:
        return asyncio.run(_lag_live(kw, cfg.database_url, sources, args.watch))
    if args.watch is None:
        return _lag_once(kw, cfg.database_url, sources, show)
    return asyncio.run(_lag_loop(kw, cfg.database_url, sources, args.watch, show))


async def _lag_loop(
    kw: dict[str, Any],
    database_url: str,
    sources: list[Source],
    watch: float | None,
    show: Callable[[LagReport], None],
) -> int:
    from pipeline.components.lag import LagProbe

    async with LagProbe(kw, database_url) as probe:
        while True:
            report = await probe.measure(sources, within_s=LAG_WITHIN_S)
            show(report)
            if watch is None:
                return PARTIAL_EXIT_CODE if report.partial else 0
            await asyncio.sleep(watch)


def _lag_once(
    kw: dict[str, Any], database_url: str, sources: list[Source], show: Callable[[LagReport], None]
) -> int:
    """One measurement, answered within its bound even if a client hangs on the way out."""
    from pipeline.components.lag import LagProbe

    async def ask() -> LagReport:
        probe = LagProbe(kw, database_url)
        await asyncio.wait_for(probe.start(), LAG_START_S)
        try:
            return await probe.measure(sources, within_s=LAG_WITHIN_S)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(probe.close(), 1.0)

    report = _in_daemon(lambda: asyncio.run(ask()))(LAG_START_S + LAG_WITHIN_S + 0.5, None)
    if report is None:
        raise BrokerError(f"no lag answer from Kafka within {LAG_START_S + LAG_WITHIN_S:.0f} s")
    show(report)
    return PARTIAL_EXIT_CODE if report.partial else 0


async def _lag_live(
    kw: dict[str, Any], database_url: str, sources: list[Source], watch: float
) -> int:
    from rich.live import Live

    from pipeline.components.lag import LagProbe

    async with LagProbe(kw, database_url) as probe:
        with Live(auto_refresh=False) as live:
            while True:
                report = await probe.measure(sources, within_s=LAG_WITHIN_S)
                live.update(_lag_renderable(report), refresh=True)
                await asyncio.sleep(watch)


_LAG_COLUMNS = ("group", "topic", "partition", "committed", "end", "lag", "lag_seconds")


def _lag_rows(report: LagReport) -> list[list[str]]:
    return [
        [
            p.group,
            p.topic,
            str(p.partition),
            "-" if p.committed is None else str(p.committed),
            str(p.end),
            str(p.lag),
            f"{p.lag_seconds:.1f}",
        ]
        for p in report.partitions
    ] + [[g, t, str(p), *(["unavailable"] * 4)] for g, t, p in report.unavailable]


def _lag_footer(report: LagReport) -> list[str]:
    from pipeline.domain.events import iso

    lines = [f"missing topic: {t}" for t in report.topics_missing]
    if report.partial:
        lines.append(
            f"partial answer: {len(report.unavailable)} partition(s) unavailable "
            "(a broker did not answer in time)"
        )
    lines += [
        f"{t}: earliest retained record {iso(at) if at else 'none (empty)'}"
        for t, at in sorted(report.earliest_retained.items())
    ]
    if report.outbox is not None:
        lines.append(
            f"outbox: {report.outbox.due_unpublished} due unpublished, oldest "
            f"{_age(report.outbox.oldest_age_seconds)}"
        )
    return lines


def _lag_json(report: LagReport) -> None:
    _print_json(report.to_dict())


def _lag_plain(report: LagReport) -> None:
    if sys.stdout.isatty():
        from rich.console import Console

        console = Console()
        console.print(_lag_renderable(report))
        return
    _plain(_LAG_COLUMNS, _lag_rows(report))
    for line in _lag_footer(report):
        print(line)
    sys.stdout.flush()


def _lag_renderable(report: LagReport) -> Any:
    from rich.console import Group

    from pipeline.domain.events import iso

    table = _table(f"consumer lag at {iso(report.measured_at)}", _LAG_COLUMNS, _lag_rows(report))
    return Group(table, *_lag_footer(report))
