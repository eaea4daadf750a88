#!/usr/bin/env python3
"""Example downstream consumer: a billing service counting applied tier elevations per team.

It follows ``docs/consumer-contract.md`` and depends on nothing of the pipeline's code, only
on the topic: copy it as a starting point.

Exactly once across its own restarts, with at-least-once delivery underneath:

* its offsets live in its own store, next to its counts, and both change in **one SQLite
  transaction per batch**: a crash either keeps a batch whole (counts and offsets) or loses
  it whole (and it is read again), never half;
* the topic itself may hold the same event twice (a re-emitted outcome keeps its
  ``event_id``), so each counted ``event_id`` is recorded, in the same transaction, and a
  second copy is ignored.

No consumer group is used (partitions are assigned by hand, offsets are not committed to
Kafka): Kafka's committed offsets could not be updated atomically with the counts.

    python examples/billing_consumer.py --bootstrap localhost:9092 \\
        --topic propagation-outcomes --state billing.sqlite [--until-end] [--report]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sqlite3
import sys
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

DDL = """
CREATE TABLE IF NOT EXISTS offsets (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition));
CREATE TABLE IF NOT EXISTS counted_events (event_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS applied_elevations (
    team_id TEXT PRIMARY KEY, applied INTEGER NOT NULL);
"""


class BillingState:
    def __init__(self, path: str) -> None:
        # autocommit mode: transactions are exactly the BEGIN ... COMMIT written below
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(DDL)

    def offsets(self, topic: str) -> dict[int, int]:
        rows = self.db.execute(
            "SELECT partition, next_offset FROM offsets WHERE topic = ?", (topic,)
        )
        return {int(p): int(o) for p, o in rows}

    def apply(self, topic: str, records: list[Any]) -> None:
        """Counts a batch and moves the offsets past it, in one transaction."""
        next_offsets: dict[int, int] = {}
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for r in records:
                next_offsets[r.partition] = r.offset + 1
                event = decode(r.value)
                if event is None or not is_billable(event):
                    continue
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO counted_events (event_id) VALUES (?)",
                    (event["event_id"],),
                )
                if cur.rowcount == 1:  # first time this event_id is seen: count it
                    self.db.execute(
                        "INSERT INTO applied_elevations (team_id, applied) VALUES (?, 1)"
                        " ON CONFLICT (team_id) DO UPDATE SET applied = applied + 1",
                        (event["team_id"],),
                    )
            self.db.executemany(
                "INSERT INTO offsets (topic, partition, next_offset) VALUES (?, ?, ?)"
                " ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
                [(topic, p, o) for p, o in next_offsets.items()],
            )
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def counts(self) -> dict[str, int]:
        rows = self.db.execute("SELECT team_id, applied FROM applied_elevations ORDER BY team_id")
        return {str(t): int(n) for t, n in rows}


def decode(raw: bytes | None) -> dict[str, Any] | None:
    """Skips what is not an outcome event; unknown fields are ignored (contract rule)."""
    try:
        doc = json.loads(raw or b"")
    except ValueError:
        return None
    if not isinstance(doc, dict) or not str(doc.get("schema", "")).startswith(
        "propagation.outcome."
    ):
        return None
    return doc


def is_billable(event: dict[str, Any]) -> bool:
    return event.get("outcome") == "applied" and event.get("kind") == "tier_elevation"


async def partitions(consumer: AIOKafkaConsumer, topic: str, wait_s: float = 60) -> list[int]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        await consumer._client.force_metadata_update()
        found = consumer.partitions_for_topic(topic)
        if found:
            return sorted(found)
        if loop.time() > deadline:
            raise SystemExit(f"topic {topic} does not exist")
        await asyncio.sleep(0.5)


async def consume(args: argparse.Namespace, state: BillingState) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=args.bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(args.topic, p) for p in await partitions(consumer, args.topic)]
        consumer.assign(tps)
        saved = state.offsets(args.topic)
        start_ts: dict[TopicPartition, Any] = {}
        if args.from_timestamp:
            ms = int(
                datetime.fromisoformat(args.from_timestamp.replace("Z", "+00:00")).timestamp()
                * 1000
            )
            start_ts = await consumer.offsets_for_times({tp: ms for tp in tps})
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            if tp.partition in saved:  # our own offsets win: this is what makes restarts exact
                consumer.seek(tp, saved[tp.partition])
            elif start_ts:
                hit = start_ts.get(tp)
                consumer.seek(tp, hit.offset if hit is not None else ends[tp])
            else:
                await consumer.seek_to_beginning(tp)
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=500, max_records=1000)
            records = [r for msgs in batch.values() for r in msgs]
            if records:
                state.apply(args.topic, records)
            if args.until_end and all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                break
    finally:
        await consumer.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True, help="Kafka bootstrap servers")
    parser.add_argument("--topic", required=True, help="the outcome topic (with its prefix)")
    parser.add_argument("--state", required=True, help="SQLite file for offsets and counts")
    parser.add_argument(
        "--from-timestamp",
        help="first start only (no saved offsets yet): begin at this ISO-8601 time",
    )
    parser.add_argument(
        "--until-end", action="store_true", help="stop at the end of the log instead of following"
    )
    parser.add_argument("--report", action="store_true", help="print the counts and exit")
    args = parser.parse_args()
    state = BillingState(args.state)
    if not args.report:
        asyncio.run(consume(args, state))
    counts = state.counts()
    print(json.dumps({"applied_tier_elevations": counts, "total": sum(counts.values())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
