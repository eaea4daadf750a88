"""``pipeline lag``: per consumer, topic and partition, how far behind it is; and the outbox.

A table when stdout is a terminal (live with ``--watch``), tab-separated lines otherwise,
``--json`` for scripts. One answer comes within its bound even with a broker down.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipeline.domain.errors import BrokerError, PipelineError
from pipeline.ops.options import add_command
from pipeline.ops.output import age, in_daemon, plain, print_json, table
from pipeline.runtime.exit_codes import ExitCode

if TYPE_CHECKING:
    from pipeline.components.lag import LagReport, Source

LAG_WITHIN_S = 2.5  # `pipeline lag` answers within this, plus the clients' start:
LAG_START_S = 2.0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "lag", cmd_lag)
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


def cmd_lag(args: argparse.Namespace) -> int:
    """consumer lag per group and partition, and the outbox backlog

    Per consumer (the processor's Kafka group, the projector's Postgres checkpoints), topic and
    partition: committed offset, end offset, lag in messages and in seconds (age of the oldest
    unconsumed record); plus due, unpublished outbox rows."""

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
        show = _json
    elif args.watch is None or not sys.stdout.isatty():
        show = _plain
    else:
        return asyncio.run(_live(kw, cfg.database_url, sources, args.watch))
    if args.watch is None:
        return _once(kw, cfg.database_url, sources, show)
    return asyncio.run(_loop(kw, cfg.database_url, sources, args.watch, show))


async def _loop(
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
                return ExitCode.PARTIAL if report.partial else ExitCode.OK
            await asyncio.sleep(watch)


def _once(
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

    report = in_daemon(lambda: asyncio.run(ask()))(LAG_START_S + LAG_WITHIN_S + 0.5, None)
    if report is None:
        raise BrokerError(f"no lag answer from Kafka within {LAG_START_S + LAG_WITHIN_S:.0f} s")
    show(report)
    return ExitCode.PARTIAL if report.partial else ExitCode.OK


async def _live(kw: dict[str, Any], database_url: str, sources: list[Source], watch: float) -> int:
    from rich.live import Live

    from pipeline.components.lag import LagProbe

    async with LagProbe(kw, database_url) as probe:
        with Live(auto_refresh=False) as live:
            while True:
                report = await probe.measure(sources, within_s=LAG_WITHIN_S)
                live.update(_renderable(report), refresh=True)
                await asyncio.sleep(watch)


_COLUMNS = ("group", "topic", "partition", "committed", "end", "lag", "lag_seconds")


def _rows(report: LagReport) -> list[list[str]]:
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


def _footer(report: LagReport) -> list[str]:
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
            f"{age(report.outbox.oldest_age_seconds)}"
        )
    return lines


def _json(report: LagReport) -> None:
    print_json(report.to_dict())


def _plain(report: LagReport) -> None:
    if sys.stdout.isatty():
        from rich.console import Console

        console = Console()
        console.print(_renderable(report))
        return
    plain(_COLUMNS, _rows(report))
    for line in _footer(report):
        print(line)
    sys.stdout.flush()


def _renderable(report: LagReport) -> Any:
    from rich.console import Group

    from pipeline.domain.events import iso

    title = f"consumer lag at {iso(report.measured_at)}"
    return Group(table(title, _COLUMNS, _rows(report)), *_footer(report))
