"""``pipeline tail``: follow the outcome topic as a downstream service would.

This is the reference consumer of ``docs/consumer-contract.md``: it assigns every partition
by hand (no consumer group, so it never moves anyone's committed offsets), starts from a
chosen point (the beginning, the end, a timestamp resolved with the broker's
offsets-for-times, or explicit offsets) and prints each event as one JSON line.

``LogReader`` and the start-point options are shared with ``replay`` and ``show``, which read
the same log the same way. Heavy imports (aiokafka) stay inside functions so that
``pipeline --help`` stays fast.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pipeline.domain.errors import BrokerError, PipelineError

ALL_PARTITIONS = -1
Where = Literal["beginning", "end", "timestamp", "offsets"]


@dataclass(frozen=True, slots=True)
class StartPoint:
    """Where reading begins; ``offsets`` maps partition -> offset (``ALL_PARTITIONS``: each)."""

    where: Where = "beginning"
    timestamp: datetime | None = None
    offsets: Mapping[int, int] = field(default_factory=dict)


def parse_offsets(specs: list[str]) -> dict[int, int]:
    """``120`` (every partition) or ``P:O`` (one partition), repeatable."""
    out: dict[int, int] = {}
    for spec in specs:
        part, sep, off = spec.partition(":")
        try:
            if sep:
                out[int(part)] = int(off)
            else:
                out[ALL_PARTITIONS] = int(part)
        except ValueError as exc:
            raise PipelineError(
                f"--from-offset {spec!r}: expected OFFSET or PARTITION:OFFSET"
            ) from exc
    if any(v < 0 for v in out.values()):
        raise PipelineError("--from-offset: offsets are >= 0")
    return out


def add_start_options(p: argparse.ArgumentParser, default: Where) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--from-beginning",
        action="store_const",
        const="beginning",
        dest="start_where",
        help="start at the first retained event" + (" (default)" if default == "beginning" else ""),
    )
    g.add_argument(
        "--from-end",
        action="store_const",
        const="end",
        dest="start_where",
        help="start after the last event" + (" (default)" if default == "end" else ""),
    )
    g.add_argument(
        "--from-timestamp",
        metavar="ISO",
        dest="start_timestamp",
        help="start at the first event written at or after this time, e.g. 2025-01-31T12:00Z "
        "(resolved per partition with the broker's offsets-for-times)",
    )
    g.add_argument(
        "--from-offset",
        metavar="[P:]OFFSET",
        action="append",
        dest="start_offsets",
        help="start at OFFSET on every partition, or at P:OFFSET on partition P only "
        "(repeatable; with P:OFFSET only the partitions named are read)",
    )
    p.set_defaults(start_where=default)


def start_from_args(args: argparse.Namespace) -> StartPoint:
    if args.start_timestamp:
        text = str(args.start_timestamp).replace("Z", "+00:00")
        try:
            ts = datetime.fromisoformat(text)
        except ValueError as exc:
            raise PipelineError(f"--from-timestamp {args.start_timestamp!r}: not ISO-8601") from exc
        if ts.tzinfo is None:
            raise PipelineError("--from-timestamp needs a time zone, e.g. a trailing Z for UTC")
        return StartPoint("timestamp", timestamp=ts)
    if args.start_offsets:
        return StartPoint("offsets", offsets=parse_offsets(args.start_offsets))
    where: Where = args.start_where
    return StartPoint(where)


class LogReader:
    """Reads one topic from a start point by manual assignment.

    ``bounded`` readers stop at the end offsets seen when they opened (a replay's total is
    fixed up front, so progress and ETA mean something); unbounded ones follow forever.
    """

    def __init__(
        self,
        client_kwargs: dict[str, Any],
        topic: str,
        start: StartPoint,
        *,
        bounded: bool,
    ) -> None:
        self._kw = client_kwargs
        self.topic = topic
        self._start = start
        self.bounded = bounded
        self._consumer: Any = None
        self._tps: dict[int, Any] = {}
        self.starts: dict[int, int] = {}
        self.ends: dict[int, int] = {}
        self.positions: dict[int, int] = {}

    async def open(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.errors import KafkaError

        from pipeline.adapters.topics import partitions_for

        parts = await partitions_for(self._kw, self.topic)
        named = {p for p in self._start.offsets if p != ALL_PARTITIONS}
        if named - set(parts):
            raise PipelineError(f"{self.topic} has no partition {sorted(named - set(parts))}")
        if named:
            parts = sorted(named)
        self._tps = {p: TopicPartition(self.topic, p) for p in parts}
        tps = list(self._tps.values())
        self._consumer = AIOKafkaConsumer(
            **self._kw,
            group_id=None,
            enable_auto_commit=False,
            # A bounded read (a replay) must read all of [start, end): if retention deletes
            # its start before it is fetched, "earliest" would skip ahead silently and a
            # rebuild would commit rows reset but never refolded. "none" raises instead.
            auto_offset_reset="none" if self.bounded else "earliest",
            max_partition_fetch_bytes=4 * 1024 * 1024,
        )
        try:
            await self._consumer.start()
            self._consumer.assign(tps)
            firsts = await self._consumer.beginning_offsets(tps)
            lasts = await self._consumer.end_offsets(tps)
            found: dict[Any, Any] = {}
            if self._start.where == "timestamp" and self._start.timestamp is not None:
                ms = int(self._start.timestamp.timestamp() * 1000)
                found = await self._consumer.offsets_for_times({tp: ms for tp in tps})
        except KafkaError as exc:
            await self.close()
            raise BrokerError(f"cannot read {self.topic}: {exc}") from exc
        for p, tp in self._tps.items():
            first, last = int(firsts[tp]), int(lasts[tp])
            self.ends[p] = last
            if self._start.where == "end":
                want = last
            elif self._start.where == "timestamp":
                # None: nothing at or after the timestamp on this partition yet
                hit = found.get(tp)
                want = int(hit.offset) if hit is not None else last
            elif self._start.where == "offsets":
                want = self._start.offsets.get(p, self._start.offsets.get(ALL_PARTITIONS, first))
            else:
                want = first
            self.seek(p, min(max(want, first), last))

    def seek(self, partition: int, offset: int) -> None:
        self.starts[partition] = offset
        self.positions[partition] = offset
        self._consumer.seek(self._tps[partition], offset)

    @property
    def total(self) -> int:
        return sum(max(0, self.ends[p] - self.starts[p]) for p in self._tps)

    def done(self, partition: int) -> int:
        end = self.ends[partition] if self.bounded else self.positions[partition]
        return max(0, min(self.positions[partition], end) - self.starts[partition])

    def finished(self) -> bool:
        return all(self.positions[p] >= self.ends[p] for p in self._tps)

    async def batches(self, stop: asyncio.Event, max_records: int) -> AsyncIterator[list[Any]]:
        """Yields lists of records in log order per partition until stopped or (bounded) done.

        ``stop`` is only looked at between batches: a caller that commits per batch thus
        always stops at a transaction boundary.
        """
        from aiokafka.errors import KafkaError, OffsetOutOfRangeError

        while not stop.is_set() and not (self.bounded and self.finished()):
            try:
                got = await self._consumer.getmany(timeout_ms=200, max_records=max_records)
                records: list[Any] = []
                for tp, msgs in got.items():
                    end = self.ends[tp.partition]
                    records.extend(m for m in msgs if not self.bounded or m.offset < end)
                for p, tp in self._tps.items():
                    # position() rather than last offset + 1: transaction markers and
                    # compaction leave gaps the consumer steps over silently
                    self.positions[p] = int(await self._consumer.position(tp))
                    if self.bounded and self.positions[p] >= self.ends[p]:
                        self._consumer.pause(tp)
            except OffsetOutOfRangeError as exc:
                raise BrokerError(
                    f"reading {self.topic} failed: records were deleted (retention) before "
                    f"they were read, so the range read is incomplete ({exc}); start again "
                    "from what the log still holds"
                ) from exc
            except KafkaError as exc:
                raise BrokerError(f"reading {self.topic} failed: {exc}") from exc
            yield records

    async def close(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
            self._consumer = None


def install_stop(stop: asyncio.Event) -> None:
    """SIGINT/SIGTERM set ``stop``; the loops check it between batches."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)


async def tail(
    client_kwargs: dict[str, Any],
    topic: str,
    start: StartPoint,
    *,
    outcomes: frozenset[str],
    kinds: frozenset[str],
    teams: frozenset[str],
    until_end: bool,
    limit: int | None,
    out: Any,
) -> int:
    """Prints matching events as JSON lines; returns how many were printed."""
    import orjson

    from pipeline.domain.codec import decode_outcomes
    from pipeline.runtime import logs

    stop = asyncio.Event()
    install_stop(stop)
    reader = LogReader(client_kwargs, topic, start, bounded=until_end)
    printed = 0
    await reader.open()
    logs.event(
        logs.get("tail"),
        "tail_started",
        topic=topic,
        starts={str(k): v for k, v in reader.starts.items()},
    )
    try:
        async for batch in reader.batches(stop, 500):
            decoded = decode_outcomes(batch)
            for skip in decoded.skipped:
                logs.event(logs.get("tail"), "undecodable_skipped", **skip.log_fields())
            for item in decoded.items:
                doc = item.event.to_dict()
                if (
                    (outcomes and doc["outcome"] not in outcomes)
                    or (kinds and doc["kind"] not in kinds)
                    or (teams and doc["team_id"] not in teams)
                ):
                    continue
                doc.update(_topic=item.topic, _partition=item.partition, _offset=item.offset)
                out.write(orjson.dumps(doc).decode() + "\n")
                printed += 1
                if limit is not None and printed >= limit:
                    stop.set()
                    break
            out.flush()
    finally:
        await reader.close()
    return printed


def _cmd_tail(args: argparse.Namespace) -> int:
    """follow the outcome topic as JSON lines (the reference downstream consumer)

    Print outcome events as JSON lines, as a downstream service sees them, with
    _topic/_partition/_offset added. Uses no consumer group. Example: pipeline tail
    --from-timestamp 2025-01-31T00:00Z --outcome applied --kind tier_elevation"""
    from pipeline.ops.options import load_config

    cfg = load_config(args, ("kafka_bootstrap",))
    try:
        asyncio.run(
            tail(
                cfg.kafka_client_kwargs(),
                cfg.outcomes_topic,
                start_from_args(args),
                outcomes=frozenset(args.outcome or ()),
                kinds=frozenset(args.kind or ()),
                teams=frozenset(args.team or ()),
                until_end=args.until_end,
                limit=args.max,
                out=sys.stdout,
            )
        )
    except BrokenPipeError:  # `pipeline tail | head`: the reader left, which is fine
        with contextlib.suppress(OSError):
            sys.stdout = open(  # noqa: SIM115 - silence the interpreter's flush at exit
                "/dev/null", "w"
            )
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from pipeline.domain.events import Outcome
    from pipeline.ops.options import add_command

    p = add_command(sub, "tail", _cmd_tail)
    add_start_options(p, default="end")
    p.add_argument(
        "--outcome",
        action="append",
        choices=[o.value for o in Outcome],
        help="only this outcome (repeatable)",
    )
    p.add_argument("--kind", action="append", help="only this kind (repeatable)")
    p.add_argument("--team", action="append", help="only this team (repeatable)")
    p.add_argument(
        "--until-end",
        action="store_true",
        help="stop at the end of the log as it was at start instead of following",
    )
    p.add_argument("--max", type=int, default=None, metavar="N", help="stop after N events")
