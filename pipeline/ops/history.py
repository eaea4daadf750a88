"""``pipeline show ID``: one propagation's whole history, as a table or as JSON lines.

Postgres holds the row and one audit row per projected outcome, each with the topic,
partition and offset it came from. The log adds what Postgres does not keep: the command
events (every attempt the relay published, re-publications included) and duplicate outcome
events. Both topics are scanned from the row's ``created_at`` (resolved with the broker's
offsets-for-times, a minute early for clock skew) to the end, up to ``--scan-limit``
messages each; ``--no-log`` shows the Postgres side only.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from pipeline.domain.errors import PipelineError
from pipeline.domain.events import iso, parse_iso
from pipeline.ops.tail import LogReader, StartPoint

if TYPE_CHECKING:
    from pipeline.runtime.config import Config

CLOCK_SKEW = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class Entry:
    event: str  # command | outcome
    time: str
    topic: str
    partition: int
    offset: int
    attempt: int
    outcome: str | None
    reason: str | None
    event_id: str
    note: str

    def sort_key(self) -> tuple[datetime, int, int]:
        return (parse_iso(self.time), 0 if self.event == "command" else 1, self.offset)


async def scan_topic(
    client_kwargs: dict[str, Any], topic: str, since: datetime, propagation_id: int, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """Events of one propagation on ``topic`` from ``since``; True when the cap was hit."""
    import orjson

    needle = b'"propagation_id":%d' % propagation_id  # cheap filter before parsing
    reader = LogReader(client_kwargs, topic, StartPoint("timestamp", timestamp=since), bounded=True)
    found: list[dict[str, Any]] = []
    scanned = 0
    await reader.open()
    try:
        async for batch in reader.batches(asyncio.Event(), 5000):
            for m in batch:
                if m.value and needle in m.value:
                    try:
                        doc = orjson.loads(m.value)
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(doc, dict) and doc.get("propagation_id") == propagation_id:
                        doc.update(_topic=m.topic, _partition=m.partition, _offset=m.offset)
                        found.append(doc)
            scanned += len(batch)
            if scanned >= limit:
                return found, True
    finally:
        await reader.close()
    return found, False


def _reason(d: dict[str, Any]) -> str | None:
    parts = [
        f"{k}={d[k]}"
        for k in ("skip_reason", "skip_reason_bucket", "error", "dead_letter_reason")
        if d.get(k)
    ]
    return "; ".join(parts) or None


def build_entries(
    audit: list[dict[str, Any]], commands: list[dict[str, Any]], outcomes: list[dict[str, Any]]
) -> list[Entry]:
    entries: list[Entry] = []
    seen: set[str] = set()
    for c in commands:
        note = "re-published" if c["event_id"] in seen else ""
        seen.add(c["event_id"])
        entries.append(
            Entry(
                "command",
                c["timestamp"],
                c["_topic"],
                c["_partition"],
                c["_offset"],
                c["attempt"],
                None,
                None,
                c["event_id"],
                note,
            )
        )
    audited = {a["event_id"]: a for a in audit}
    matched: set[str] = set()
    for e in outcomes:
        a = audited.get(e["event_id"])
        if a is not None and (a["source_partition"], a["source_offset"]) == (
            e["_partition"],
            e["_offset"],
        ):
            note = "projected"
            matched.add(e["event_id"])
        elif e["event_id"] in seen or a is not None:
            note = "duplicate (ignored by the projector)"
        else:
            note = "not projected yet"
        seen.add(e["event_id"])
        entries.append(
            Entry(
                "outcome",
                e["occurred_at"],
                e["_topic"],
                e["_partition"],
                e["_offset"],
                e["attempt"],
                e["outcome"],
                _reason(e),
                e["event_id"],
                note,
            )
        )
    for a in audit:
        if a["event_id"] not in matched:
            entries.append(
                Entry(
                    "outcome",
                    iso(a["occurred_at"]),
                    a["source_topic"],
                    a["source_partition"],
                    a["source_offset"],
                    a["attempt"],
                    a["outcome"],
                    _reason(a),
                    a["event_id"],
                    "projected (from the audit table)",
                )
            )
    return sorted(entries, key=Entry.sort_key)


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: iso(v) if isinstance(v, datetime) else v for k, v in row.items()}


def render_json(row: dict[str, Any], entries: list[Entry], truncated: bool, out: Any) -> None:
    import orjson

    head = {"type": "propagation", **_jsonable(row), "log_scan_truncated": truncated}
    out.write(orjson.dumps(head).decode() + "\n")
    for e in entries:
        out.write(orjson.dumps({"type": e.event, **asdict(e)}).decode() + "\n")


def render_table(row: dict[str, Any], entries: list[Entry], truncated: bool) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    r = _jsonable(row)
    state = (
        f"applied at {r['applied_at']}"
        if r["applied_at"]
        else f"failed at {r['failed_at']}"
        if r["failed_at"]
        else f"open, next attempt at {r['next_attempt_at']}"
    )
    # Piped output would be cut to 80 columns; a file or a pager gets the full rows.
    console = Console(width=None if sys.stdout.isatty() else 250)
    console.print(
        f"propagation {r['id']}: {r['kind']} {r['team_id']}:{r['resource_type']}:"
        f"{r['resource_id']} payload={r['payload']}\n"
        f"  created {r['created_at']}; {state}; attempts {r['attempts']} "
        f"(published {r['published_attempt']}); last outcome {r['last_outcome']}",
        highlight=False,
        markup=False,
    )
    table = Table(
        "time",
        "event",
        "topic",
        "part",
        "offset",
        "attempt",
        "outcome",
        "reason",
        "event_id",
        "note",
    )
    for column in table.columns:
        column.overflow = "fold"  # never cut an id or a reason short
    for e in entries:
        # escape(): reasons are free text from the provisioner, not rich markup
        table.add_row(
            *(
                escape(v)
                for v in (
                    e.time,
                    e.event,
                    e.topic,
                    str(e.partition),
                    str(e.offset),
                    str(e.attempt),
                    e.outcome or "",
                    e.reason or "",
                    e.event_id,
                    e.note,
                )
            )
        )
    console.print(table)
    if truncated:
        console.print("log scan stopped at --scan-limit; older or later events may be missing")


@dataclass(frozen=True, slots=True)
class Story:
    """One propagation as ``pipeline show`` and the console tell it."""

    row: dict[str, Any]
    entries: list[Entry]
    truncated: bool


async def load_story(
    cfg: Config, propagation_id: int, *, scan_limit: int, with_log: bool = True
) -> Story | None:
    """The row, its audit rows and (``with_log``) its events on both topics; None if unknown."""
    from pipeline.store import history as history_store

    row, audit = await asyncio.to_thread(history_store.load, cfg.database_url, propagation_id)
    if row is None:
        return None
    commands: list[dict[str, Any]] = []
    outcomes: list[dict[str, Any]] = []
    truncated = False
    if with_log:
        since = row["created_at"] - CLOCK_SKEW
        kw = cfg.kafka_client_kwargs()
        (commands, t1), (outcomes, t2) = await asyncio.gather(
            scan_topic(kw, cfg.commands_topic, since, propagation_id, scan_limit),
            scan_topic(kw, cfg.outcomes_topic, since, propagation_id, scan_limit),
        )
        truncated = t1 or t2
    return Story(row, build_entries(audit, commands, outcomes), truncated)


def _cmd_show(args: argparse.Namespace) -> int:
    """one propagation's whole history: commands and outcomes with their offsets

    Show a propagation's row and every command and outcome event of it, with
    topic/partition/offset, attempt, reasons and times, from Postgres and the log."""

    from pipeline.ops.options import load_config

    required = ("database_url",) if args.no_log else ("database_url", "kafka_bootstrap")
    cfg = load_config(args, required)
    story = asyncio.run(
        load_story(cfg, args.id, scan_limit=args.scan_limit, with_log=not args.no_log)
    )
    if story is None:
        raise PipelineError(f"no propagation {args.id}")
    if args.json:
        render_json(story.row, story.entries, story.truncated, sys.stdout)
    else:
        render_table(story.row, story.entries, story.truncated)
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from pipeline.ops.options import add_command

    p = add_command(sub, "show", _cmd_show)
    p.add_argument("id", type=int, help="propagation id")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    p.add_argument("--no-log", action="store_true", help="Postgres only; do not scan the log")
    p.add_argument(
        "--scan-limit",
        type=int,
        default=1_000_000,
        metavar="N",
        help="read at most N messages per topic (default 1000000)",
    )
