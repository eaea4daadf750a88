"""``pipeline replay``: fold the outcome log into Postgres again, with progress.

The log is the source of truth and the Postgres columns are its projection, so replay runs
the live projector's own fold (``ProjectionStore.fold_batch``) over a range of the log.
Folding is idempotent (an attempt already folded, or a terminal row, matches nothing), so a
replay over events the projection already holds changes nothing, and replaying twice is the
same as replaying once.

Three ways to run, by how they commit:

* **incremental** (default): from the beginning, offsets or a timestamp; one transaction per
  batch, like the projector. The replay's position is kept as checkpoints of the pseudo
  projection ``<name>#replay``, written in the same transaction as the batch, so a replay
  stopped by Ctrl-C (at a batch boundary) or killed resumes where it stopped when re-run
  (``--restart`` ignores the saved position). When it completes, the live checkpoints move
  forward to where it ended, never back, and only on partitions where it started at or
  before the live checkpoint (otherwise the projector still has the gap to fold).
* **--rebuild**: reset the projected columns, delete the audit rows and this projection's
  checkpoints and fold from the beginning, *all in one transaction on the live tables*, not
  in a shadow schema: the projected state is columns of ``pending_propagations``, a table
  the relay and enqueuers write concurrently, so swapping in a shadow copy would lose their
  writes, while one transaction shows readers the old state until the commit and the new
  one after, never a half-rebuilt one (audit rows go with DELETE, not TRUNCATE, whose lock
  would block readers). The cost: rows stay locked during the rebuild, so the relay (SKIP
  LOCKED) waits for it, and an interrupted rebuild rolls back whole and starts over. The
  relay's rescue lease on attempts in flight (not in the log) is kept. The report counts
  rows whose projected columns differ from before: 0 means the projection equalled the log.
* **--dry-run**: either of the above inside one transaction that is rolled back, so the
  report (events, rows changed, audit rows added) is exactly what would happen.

A replay and the live projector must not both write: replay takes the projector's
session-level advisory lock (``pg_try_advisory_lock(hashtext(<projection>))``) and refuses,
naming the holder, while a projector (or another replay) holds it; ``--wait`` waits instead.
A projector started during a replay waits as a standby and resumes from its checkpoints.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pipeline import logs
from pipeline.errors import PipelineError, StoreError
from pipeline.tail import LogReader, StartPoint, add_start_options, install_stop, start_from_args

if TYPE_CHECKING:
    import psycopg

    from pipeline.projections.replay_store import ReplayStore
    from pipeline.projections.store import Located, ProjectionStore

_log = logs.get("replay")
CURSOR_SUFFIX = "#replay"


class ReplayRefused(PipelineError):
    """The projection is being written by someone else (a live projector, another replay)."""


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    start: StartPoint = field(default_factory=StartPoint)
    rebuild: bool = False
    dry_run: bool = False
    wait: bool = False
    restart: bool = False
    batch_size: int = 2000
    max_rate: float | None = None  # events per second, to spare a busy database
    progress_interval: float = 5.0


@dataclass(slots=True)
class ReplayReport:
    mode: str
    dry_run: bool
    events_read: int = 0
    events_folded: int = 0
    invalid_skipped: int = 0
    rows_changed: int = 0  # events whose fold changed a propagation row
    audit_rows_added: int = 0
    rows_differing: int | None = None  # rebuild: rows unlike before it (0: nothing drifted)
    resumed: bool = False
    interrupted: bool = False
    committed: bool = False
    partitions: dict[int, list[int]] = field(default_factory=dict)  # p -> [start, end]
    seconds: float = 0.0
    events_per_second: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["partitions"] = {str(p): v for p, v in self.partitions.items()}  # JSON keys
        return doc


class Progress(Protocol):
    def update(self, reader: LogReader) -> None: ...
    def close(self, reader: LogReader) -> None: ...


class LogProgress:
    """Not a terminal: one JSON log line per interval, with per-partition counts."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._t0 = self._last = time.monotonic()

    def update(self, reader: LogReader) -> None:
        if time.monotonic() - self._last >= self._interval:
            self._emit(reader, "replay_progress")

    def close(self, reader: LogReader) -> None:
        self._emit(reader, "replay_progress_final")

    def _emit(self, reader: LogReader, name: str) -> None:
        self._last = time.monotonic()
        done = sum(reader.done(p) for p in reader.starts)
        eps = done / max(self._last - self._t0, 1e-9)
        total = reader.total
        logs.event(
            _log,
            name,
            done=done,
            total=total,
            events_per_second=round(eps, 1),
            eta_s=round((total - done) / eps, 1) if eps > 0 else None,
            partitions={
                str(p): [reader.done(p), reader.ends[p] - reader.starts[p]] for p in reader.starts
            },
        )


class RichProgress:
    """A terminal: one bar per partition and one for the total, with events/s and ETA."""

    def __init__(self, reader: LogReader) -> None:
        import rich.progress as rp
        from rich.console import Console
        from rich.text import Text

        class Speed(rp.ProgressColumn):
            def render(self, task: Any) -> Text:
                return Text(f"{task.speed or 0:>9,.0f} ev/s")

        cols = (rp.BarColumn(), rp.MofNCompleteColumn(), Speed(), rp.TimeRemainingColumn())
        self._bars = rp.Progress(
            rp.TextColumn("{task.description}"), *cols, console=Console(stderr=True)
        )
        self._tasks = {
            p: self._bars.add_task(f"partition {p}", total=reader.ends[p] - reader.starts[p])
            for p in sorted(reader.starts)
        }
        self._total = self._bars.add_task("total", total=reader.total)
        self._bars.start()

    def update(self, reader: LogReader) -> None:
        for p, task in self._tasks.items():
            self._bars.update(task, completed=reader.done(p))
        self._bars.update(self._total, completed=sum(reader.done(p) for p in self._tasks))

    def close(self, reader: LogReader) -> None:
        self.update(reader)
        self._bars.stop()


def _locate(batch: list[Any]) -> tuple[list[Located], dict[tuple[str, int], int], int]:
    """Decodes a batch as the projector does: undecodable messages are skipped, not fatal."""
    from pipeline import codec
    from pipeline.projections.store import Located

    items: list[Located] = []
    next_offsets: dict[tuple[str, int], int] = {}
    invalid = 0
    for msg in batch:
        next_offsets[(msg.topic, msg.partition)] = msg.offset + 1
        decoded = codec.decode_outcome(msg.value)
        if isinstance(decoded, codec.Undecodable):
            invalid += 1
            continue
        items.append(Located(decoded, msg.topic, msg.partition, msg.offset))
    return items, next_offsets, invalid


class Replayer:
    def __init__(
        self,
        *,
        database_url: str,
        client_kwargs: dict[str, Any],
        topic: str,
        projection: str,
        options: ReplayOptions,
        tty: bool = False,
    ) -> None:
        self._url = database_url
        self._kafka = client_kwargs
        self._topic = topic
        self._projection = projection
        self._opt = options
        self._tty = tty

    async def run(self, stop: asyncio.Event) -> ReplayReport:
        import psycopg

        from pipeline.projections.replay_store import ReplayStore

        try:
            conn = await psycopg.AsyncConnection.connect(
                self._url, autocommit=True, application_name="pipeline replay"
            )
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to Postgres: {exc}") from exc
        async with conn:
            rstore = ReplayStore(conn, self._projection)
            await self._lock(rstore, stop)
            try:
                report = await self._replay(conn, rstore, stop)
                await self._keep(rstore, report)
                return report
            finally:
                with contextlib.suppress(StoreError):
                    await rstore.unlock()

    @staticmethod
    async def _keep(rstore: ReplayStore, report: ReplayReport) -> None:
        # For `pipeline ui`'s replay page; a role without the grant still gets its replay.
        try:
            await rstore.record_report(report.to_dict())
        except StoreError as exc:
            logs.event(_log, "report_not_stored", error=str(exc)[:500])

    async def _lock(self, rstore: ReplayStore, stop: asyncio.Event) -> None:
        announced = False
        while not await rstore.try_lock():
            holder = await rstore.lock_holder()
            who = holder.describe() if holder else "a session that has just released it"
            if not self._opt.wait:
                raise ReplayRefused(
                    f"projection {self._projection!r} is locked by a live projector or another "
                    f"replay: {who}. Stop it first (a projector restarted during the replay "
                    "waits as a standby), or pass --wait to wait for the lock."
                )
            if not announced:
                logs.event(_log, "waiting_for_lock", projection=self._projection, holder=who)
                announced = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            if stop.is_set():
                raise ReplayRefused("interrupted while waiting for the projection lock")
        logs.event(_log, "locked", projection=self._projection)

    async def _replay(
        self, conn: psycopg.AsyncConnection[Any], rstore: ReplayStore, stop: asyncio.Event
    ) -> ReplayReport:
        import psycopg

        from pipeline.projections.store import ProjectionStore

        o = self._opt
        report = ReplayReport("rebuild" if o.rebuild else "replay", o.dry_run)
        reader = LogReader(
            self._kafka, self._topic, StartPoint() if o.rebuild else o.start, bounded=True
        )
        await reader.open()
        try:
            requested = dict(reader.starts)
            live = ProjectionStore(conn, self._projection)
            cursor_name = self._projection + CURSOR_SUFFIX
            cursor_store = ProjectionStore(conn, cursor_name)
            checkpoints = await live.load_checkpoints(self._topic)
            if not o.rebuild and not o.restart:
                for p, at in (await cursor_store.load_checkpoints(self._topic)).items():
                    if p in reader.starts and reader.starts[p] < at <= reader.ends[p]:
                        reader.seek(p, at)
                        report.resumed = True
            report.partitions = {p: [reader.starts[p], reader.ends[p]] for p in reader.starts}
            logs.event(_log, "replay_started", total=reader.total, **report.to_dict())
            audit_before = await rstore.count_audit()
            t0 = time.monotonic()
            if o.rebuild or o.dry_run:
                async with conn.transaction() as tx:
                    if o.rebuild:
                        await rstore.begin_rebuild(self._topic)
                    await self._fold_all(reader, live if o.rebuild else cursor_store, stop, report)
                    report.interrupted = not reader.finished()
                    if o.rebuild and not report.interrupted:
                        report.rows_differing = await rstore.finish_rebuild()
                    report.audit_rows_added = await rstore.count_audit() - audit_before
                    if o.dry_run or report.interrupted:
                        raise psycopg.Rollback(tx)
                    report.committed = True
            else:
                if o.restart:
                    await rstore.clear_checkpoints(cursor_name, self._topic)
                await self._fold_all(reader, cursor_store, stop, report)
                report.interrupted = not reader.finished()
                if not report.interrupted:
                    advance = {
                        p: reader.ends[p]
                        for p in reader.ends
                        if requested[p] <= checkpoints.get(p, 0)
                    }
                    await rstore.finish_replay(self._topic, advance, cursor_name)
                report.audit_rows_added = await rstore.count_audit() - audit_before
                report.committed = True
            report.seconds = round(time.monotonic() - t0, 3)
            report.events_per_second = round(report.events_read / max(report.seconds, 1e-9), 1)
        finally:
            await reader.close()
        logs.event(_log, "replay_finished", **report.to_dict())
        return report

    async def _fold_all(
        self, reader: LogReader, store: ProjectionStore, stop: asyncio.Event, report: ReplayReport
    ) -> None:
        progress: Progress = (
            RichProgress(reader) if self._tty else LogProgress(self._opt.progress_interval)
        )
        t0 = time.monotonic()
        try:
            async for batch in reader.batches(stop, self._opt.batch_size):
                if batch:
                    items, next_offsets, invalid = _locate(batch)
                    changed = await store.fold_batch(items, next_offsets)
                    report.events_read += len(batch)
                    report.events_folded += len(items)
                    report.invalid_skipped += invalid
                    report.rows_changed += sum(changed)
                progress.update(reader)
                if self._opt.max_rate:
                    ahead = report.events_read / self._opt.max_rate - (time.monotonic() - t0)
                    if ahead > 0:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), timeout=ahead)
        finally:
            progress.close(reader)


def _cmd_replay(args: argparse.Namespace) -> int:
    import orjson

    from pipeline.cli import load_config

    cfg = load_config(args, ("database_url", "kafka_bootstrap"))
    start = start_from_args(args)
    if args.rebuild and start.where != "beginning":
        raise PipelineError("--rebuild always replays from the beginning; drop --from-*")
    if args.batch_size < 1 or (args.max_rate is not None and args.max_rate <= 0):
        raise PipelineError("--batch-size and --max-rate must be positive")
    options = ReplayOptions(
        start=start,
        rebuild=args.rebuild,
        dry_run=args.dry_run,
        wait=args.wait,
        restart=args.restart,
        batch_size=args.batch_size,
        max_rate=args.max_rate,
        progress_interval=args.progress_interval,
    )

    async def main() -> ReplayReport:
        stop = asyncio.Event()
        install_stop(stop)
        return await Replayer(
            database_url=cfg.database_url,
            client_kwargs=cfg.kafka_client_kwargs(),
            topic=cfg.outcomes_topic,
            projection=cfg.projection_name,
            options=options,
            tty=sys.stderr.isatty(),
        ).run(stop)

    report = asyncio.run(main())
    print(orjson.dumps(report.to_dict()).decode(), flush=True)
    if report.interrupted:
        one_tx = options.rebuild or options.dry_run
        what = "rolled back; re-run to start over" if one_tx else "re-run the same to resume"
        print(f"replay interrupted: {what}", file=sys.stderr)
        return 130
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from pipeline.cli import _config_options

    p = sub.add_parser(
        "replay",
        parents=[_config_options()],
        help="re-fold the outcome log into Postgres (backfill, rebuild), with progress",
        description=(
            "Fold outcome events from the log into pending_propagations and "
            "propagation_audit with the projector's own (idempotent) fold. Refuses while a "
            "live projector holds the projection lock (or waits with --wait). Examples: "
            "pipeline replay --from-timestamp 2025-01-31T12:00Z --dry-run; "
            "pipeline replay --rebuild. Prints a JSON report on stdout."
        ),
    )
    add_start_options(p, default="beginning")
    flag = {"action": "store_true"}
    for name, kw, text in (
        ("--rebuild", flag, "rebuild projected columns and audit rows from the whole log"),
        ("--dry-run", flag, "report what would change, then roll back: writes nothing"),
        ("--wait", flag, "wait for the projection lock instead of refusing"),
        ("--restart", flag, "ignore the position saved by an interrupted replay"),
        ("--batch-size", {"type": int, "default": 2000}, "events per transaction"),
        ("--max-rate", {"type": float, "metavar": "EPS"}, "at most EPS events/s (spare the db)"),
        ("--progress-interval", {"type": float, "default": 5.0, "metavar": "S"},
         "seconds between progress log lines when not on a terminal"),
    ):  # fmt: skip
        p.add_argument(name, help=text, **kw)
    p.set_defaults(func=_cmd_replay)
