"""What the operator commands share: bounded waits and their output (tables on a terminal,
tab-separated lines otherwise, ``--json`` for scripts)."""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import orjson


def age(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def print_json(doc: Any) -> None:
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS).decode() + "\n")
    sys.stdout.flush()


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for i, c in enumerate(columns):
        table.add_column(c, justify="right" if i and c != "topic" else "left")
    for row in rows:
        table.add_row(*row)
    return table


def plain(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    print("\t".join(columns))
    for row in rows:
        print("\t".join(row))


def in_daemon(fn: Callable[[], Any]) -> Callable[[float, Any], Any]:
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
