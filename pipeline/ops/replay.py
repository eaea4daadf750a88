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
* **--rebuild**: reset the rows whose *whole* outcome history lies in the range read and
  fold that range again, *all in one transaction on the live tables*, not in a shadow
  schema: the projected state is columns of ``pending_propagations``, a table the relay and
  enqueuers write concurrently, so swapping in a shadow copy would lose their writes, while
  one transaction shows readers the old state until the commit and the new one after. Each
  row records where its first outcome lies on the log (``first_outcome_*``, written by the
  fold); a row whose first outcome is before the range (retention trimmed it, or
  ``--from-*`` skipped it), on another topic (another prefix sharing the database) or
  unknown keeps its projection. A rebuild that would have to keep rows of its own topic
  this way refuses (exit 5) unless ``--covered-only`` narrows it to what the log covers.
  The audit table is append-only: a rebuild adds missing rows (by ``event_id``) and never
  deletes one. A terminal row is never reopened, and the relay's rescue lease on attempts
  in flight (not in the log) is kept: a replay never makes a row due.
* **--dry-run**: either of the above inside one transaction that is rolled back, on private
  copies of the tables taken in one snapshot, so the report is exactly what a real run
  would do; it needs no projection lock and works beside a live projector.

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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.domain.errors import PipelineError, StoreError
from pipeline.ops.replay_report import (
    LogProgress,
    Progress,
    ReplayOptions,
    ReplayReport,
    RichProgress,
)
from pipeline.ops.tail import (
    ALL_PARTITIONS,
    LogReader,
    add_start_options,
    install_stop,
    start_from_args,
)
from pipeline.runtime import logs
from pipeline.runtime.exit_codes import ExitCode

if TYPE_CHECKING:
    from pipeline.store.db import AsyncConn
    from pipeline.store.projection import ProjectionStore
    from pipeline.store.replay import ReplayStore

_log = logs.get("replay")
CURSOR_SUFFIX = "#replay"
# Rows a rebuild keeps that it would have had to reset: their history is not in the range.
NEEDED = ("first_outcome_before_range", "unknown_provenance")


class ReplayRefused(PipelineError):
    """The projection is being written by someone else (a live projector, another replay)."""


class HistoryMissing(ReplayRefused):
    """A rebuild would need outcome history the range read does not hold."""


@dataclass(kw_only=True, eq=False)
class Replayer:
    database_url: str
    client_kwargs: dict[str, Any]
    topic: str
    projection: str
    options: ReplayOptions
    tty: bool = False

    async def run(self, stop: asyncio.Event) -> ReplayReport:
        from pipeline.store.db import session
        from pipeline.store.replay import ReplayStore

        async with session(self.database_url, application_name="pipeline replay") as conn:
            rstore = ReplayStore(conn, self.projection)
            if self.options.dry_run:  # private copies: no lock, nothing the live pipeline sees
                return await self._replay(conn, rstore, stop)
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
            if not self.options.wait:
                raise ReplayRefused(
                    f"projection {self.projection!r} is locked by a live projector or another "
                    f"replay: {who}. Stop it first (a projector restarted during the replay "
                    "waits as a standby), pass --wait to wait for the lock, or --dry-run to "
                    "see what a replay would change without the lock."
                )
            if not announced:
                logs.event(_log, "waiting_for_lock", projection=self.projection, holder=who)
                announced = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            if stop.is_set():
                raise ReplayRefused("interrupted while waiting for the projection lock")
        logs.event(_log, "locked", projection=self.projection)

    async def _replay(
        self, conn: AsyncConn, rstore: ReplayStore, stop: asyncio.Event
    ) -> ReplayReport:
        from pipeline.store.db import transaction

        o = self.options
        report = ReplayReport("rebuild" if o.rebuild else "replay", o.dry_run)
        reader = LogReader(self.client_kwargs, self.topic, o.start, bounded=True)
        await reader.open()
        try:
            t0 = time.monotonic()
            if o.rebuild or o.dry_run:
                async with transaction(conn, what="replay transaction failed") as tx:
                    if o.dry_run:
                        await rstore.shadow()
                    await self._run_range(conn, rstore, reader, stop, report)
                    if o.dry_run or report.interrupted:
                        tx.discard()
                    else:
                        report.committed = True
            else:
                await self._run_range(conn, rstore, reader, stop, report)
                report.committed = True
            report.seconds = round(time.monotonic() - t0, 3)
            report.events_per_second = round(report.events_read / max(report.seconds, 1e-9), 1)
        finally:
            await reader.close()
        logs.event(_log, "replay_finished", **report.to_dict())
        return report

    async def _run_range(
        self,
        conn: AsyncConn,
        rstore: ReplayStore,
        reader: LogReader,
        stop: asyncio.Event,
        report: ReplayReport,
    ) -> None:
        """Fold the range into the replay's cursor, then move the live checkpoints forward.

        A rebuild first resets the rows in range (and refuses, or keeps, rows that need
        history outside it). Runs in the caller's transaction for a rebuild or a dry run.
        """
        from pipeline.store.projection import ProjectionStore

        o = self.options
        cursor_name = self.projection + CURSOR_SUFFIX
        cursor_store = ProjectionStore(conn, cursor_name)
        requested = dict(reader.starts)
        checkpoints = await ProjectionStore(conn, self.projection).load_checkpoints(self.topic)
        if o.restart or o.rebuild:
            await rstore.clear_checkpoints(cursor_name, self.topic)
        else:
            for p, at in (await cursor_store.load_checkpoints(self.topic)).items():
                if p in reader.starts and reader.starts[p] < at <= reader.ends[p]:
                    reader.seek(p, at)
                    report.resumed = True
        report.partitions = {p: [reader.starts[p], reader.ends[p]] for p in reader.starts}
        if o.rebuild:
            await self._reset(rstore, reader, report)
        logs.event(_log, "replay_started", total=reader.total, **report.to_dict())
        audit_before = await rstore.count_audit()
        await self._fold_all(reader, cursor_store, stop, report)
        report.interrupted = not reader.finished()
        if not report.interrupted:
            if o.rebuild:
                kept, differing = await rstore.finish_rebuild()
                self._count_kept(report, "terminal_kept", kept)
                report.rows_reset = (report.rows_reset or 0) - kept
                report.rows_differing, report.differing_ids = len(differing), differing[:100]
            # The live checkpoints move forward to where the replay ended, never back, and
            # only where it started at or before them (otherwise the projector still has the
            # gap to fold).
            advance = {
                p: reader.ends[p] for p in reader.ends if requested[p] <= checkpoints.get(p, 0)
            }
            await rstore.finish_replay(self.topic, advance, cursor_name)
        report.audit_rows_added = await rstore.count_audit() - audit_before

    async def _reset(self, rstore: ReplayStore, reader: LogReader, report: ReplayReport) -> None:
        read = {p: (reader.starts[p], reader.ends[p]) for p in reader.starts}
        classes = await rstore.classify(self.topic, read)
        needed = {k: n for k, n in classes.items() if k in NEEDED}
        if needed and not self.options.covered_only:
            raise HistoryMissing(
                f"refusing to rebuild: {sum(needed.values())} rows have outcome history that "
                f"the range read does not hold ({_reasons(needed)}; range read, partition: "
                f"[start, end) = {_ranges(read)}). Resetting them would un-apply them and "
                "lose their history. Pass --covered-only to rebuild only the rows whose "
                "whole history the log still covers (the others keep their projection and "
                "audit), or start from an earlier point. See docs/runbook.md, 'Rebuilding on "
                "a trimmed log'."
            )
        for reason, n in classes.items():
            if reason != "in_range":
                self._count_kept(report, reason, n)
        report.rows_reset = await rstore.begin_rebuild(self.topic, read)

    @staticmethod
    def _count_kept(report: ReplayReport, reason: str, n: int) -> None:
        if n:
            report.kept_reasons[reason] = report.kept_reasons.get(reason, 0) + n
        report.rows_kept = (report.rows_kept or 0) + n

    async def _fold_all(
        self, reader: LogReader, store: ProjectionStore, stop: asyncio.Event, report: ReplayReport
    ) -> None:
        from pipeline.domain.codec import decode_outcomes

        progress: Progress = (
            RichProgress(reader) if self.tty else LogProgress(self.options.progress_interval)
        )
        t0 = time.monotonic()
        try:
            async for batch in reader.batches(stop, self.options.batch_size):
                if batch:
                    decoded = decode_outcomes(batch)
                    changed = await store.fold_batch(decoded.items, decoded.next_offsets)
                    report.events_read += len(batch)
                    report.events_folded += len(decoded.items)
                    report.invalid_skipped += len(decoded.skipped)
                    report.rows_changed += sum(changed)
                progress.update(reader)
                if self.options.max_rate:
                    ahead = report.events_read / self.options.max_rate - (time.monotonic() - t0)
                    if ahead > 0:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop.wait(), timeout=ahead)
        finally:
            progress.close(reader)


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))


def _ranges(read: dict[int, tuple[int, int]]) -> str:
    return ", ".join(f"{p}: [{a}, {b})" for p, (a, b) in sorted(read.items()))


def _cmd_replay(args: argparse.Namespace) -> int:
    """re-fold the outcome log into Postgres (backfill, rebuild), with progress

    Fold outcome events from the log into pending_propagations and propagation_audit with the
    projector's own (idempotent) fold. Refuses while a live projector holds the projection lock
    (or waits with --wait). Examples: pipeline replay --from-timestamp 2025-01-31T12:00Z
    --dry-run; pipeline replay --rebuild. Prints a JSON report on stdout. A rebuild never
    deletes audit rows and never un-applies a row; it refuses (exit 5) when rows need history
    the log no longer holds, unless --covered-only. Exit codes: 0 done, 2 bad usage, 5 refused
    (lock held or history trimmed), 130 interrupted."""
    import orjson

    from pipeline.ops.options import load_config

    cfg = load_config(args, ("database_url", "kafka_bootstrap"))
    start = start_from_args(args)
    if args.rebuild and set(start.offsets) - {ALL_PARTITIONS}:
        raise PipelineError("--rebuild reads every partition: give --from-offset as one offset")
    if args.covered_only and not args.rebuild:
        raise PipelineError("--covered-only narrows a --rebuild; add --rebuild")
    if args.batch_size < 1 or (args.max_rate is not None and args.max_rate <= 0):
        raise PipelineError("--batch-size and --max-rate must be positive")
    options = ReplayOptions(
        start=start,
        rebuild=args.rebuild,
        dry_run=args.dry_run,
        wait=args.wait,
        restart=args.restart,
        covered_only=args.covered_only,
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

    try:
        report = asyncio.run(main())
    except ReplayRefused as exc:
        print(f"pipeline replay: {exc}", file=sys.stderr)
        return ExitCode.REFUSED
    print(orjson.dumps(report.to_dict()).decode(), flush=True)
    if report.interrupted:
        one_tx = options.rebuild or options.dry_run
        what = "rolled back; re-run to start over" if one_tx else "re-run the same to resume"
        print(f"replay interrupted: {what}", file=sys.stderr)
        return ExitCode.INTERRUPTED
    return ExitCode.OK


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from pipeline.ops.options import add_command

    p = add_command(sub, "replay", _cmd_replay)
    add_start_options(p, default="beginning")
    flag = {"action": "store_true"}
    for name, kw, text in (
        ("--rebuild", flag, "reset and refold the rows whose whole history is in the range"),
        ("--covered-only", flag,
         "with --rebuild: keep rows whose history the log lacks (trimmed) instead of refusing"),
        ("--dry-run", flag,
         "report exactly what would change, on a private snapshot: writes nothing, needs no lock"),
        ("--wait", flag, "wait for the projection lock instead of refusing"),
        ("--restart", flag, "ignore the position saved by an interrupted replay"),
        ("--batch-size", {"type": int, "default": 2000}, "events per transaction"),
        ("--max-rate", {"type": float, "metavar": "EPS"}, "at most EPS events/s (spare the db)"),
        ("--progress-interval", {"type": float, "default": 5.0, "metavar": "S"},
         "seconds between progress log lines when not on a terminal"),
    ):  # fmt: skip
        p.add_argument(name, help=text, **kw)
