"""A chaos run's record: faults, invariant and scenario checks, the result and the soak table."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from invariants import unlanded

INVARIANTS = ("I1", "I2", "I3", "I4", "I5")


@dataclass
class Check:
    ok: bool
    detail: str


@dataclass
class Fault:
    what: str
    at_s: float
    detail: dict[str, Any] = field(default_factory=dict)
    # True: the fault proved it hit (``proof`` says how); False: it provably did not (the run
    # fails); None: a record that needs no proof (a heal, a note).
    landed: bool | None = None
    proof: str = ""


@dataclass
class Result:
    scenario: str
    seed: int
    iterations: int = 1
    faults: list[Fault] = field(default_factory=list)
    invariants: dict[str, Check] = field(default_factory=dict)
    checks: dict[str, Check] = field(default_factory=dict)  # the scenario's own assertions
    durations: dict[str, float] = field(default_factory=dict)
    error: str | None = None  # the run itself broke (a fault could not be injected...)
    # The worker restarting itself (exit 3): offset_gap, progress_stalled, recovery_stalled.
    self_restarts: dict[str, int] = field(default_factory=dict)
    logdir: str = ""
    log_tail: str = ""  # component and service logs of a failed run

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and not unlanded(self.faults)
            and all(self.invariants.get(i, Check(False, "not checked")).ok for i in INVARIANTS)
            and all(c.ok for c in self.checks.values())
        )

    def report(self) -> str:
        lines = [f"scenario {self.scenario} seed {self.seed}: {'ok' if self.ok else 'FAILED'}"]
        for f in self.faults:
            landed = {True: "landed", False: "DID NOT LAND", None: "record"}[f.landed]
            lines.append(
                f"  fault @{f.at_s:.1f}s {f.what} [{landed}: {f.proof}]"
                f" {orjson.dumps(f.detail).decode()}"
            )
        for problem in unlanded(self.faults):
            lines.append(f"  FAULTS: {problem}")
        for name in INVARIANTS:
            c = self.invariants.get(name, Check(False, "not checked"))
            lines.append(f"  {name} {'pass' if c.ok else 'FAIL'}: {c.detail}")
        for name, c in self.checks.items():
            lines.append(f"  check {name} {'pass' if c.ok else 'FAIL'}: {c.detail}")
        if self.error:
            lines.append(f"  error: {self.error}")
        lines.append(f"  durations: {self.durations}")
        lines.append(f"  worker self-restarts: {self.self_restarts}")
        lines.append(f"  logs: {self.logdir}")
        if self.log_tail:
            lines.append(self.log_tail)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "seed": self.seed,
            "ok": self.ok,
            "faults": [f.__dict__ for f in self.faults],
            "invariants": {k: v.__dict__ for k, v in self.invariants.items()},
            "checks": {k: v.__dict__ for k, v in self.checks.items()},
            "durations": self.durations,
            "self_restarts": self.self_restarts,
            "error": self.error,
            "logdir": self.logdir,
        }


class ScenarioError(Exception):
    """A fault could not be injected as the scenario intends (not an invariant failure)."""


SELF_RESTART_EVENTS = ("offset_gap", "progress_stalled", "recovery_stalled")


def count_self_restarts(logdir: Path) -> dict[str, int]:
    """How often a worker of this run exited 3 to be restarted, by reason (from its logs)."""
    counts: dict[str, int] = {}
    for path in sorted(logdir.glob("worker*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                event = orjson.loads(line).get("event")
            except orjson.JSONDecodeError:
                continue
            if event in SELF_RESTART_EVENTS:
                counts[event] = counts.get(event, 0) + 1
    return counts


def merge(results: Iterable[Result]) -> dict[str, dict[str, Any]]:
    """Per scenario: iterations, faults injected, pass/fail counts per invariant and check."""
    table: dict[str, dict[str, Any]] = {}
    for r in results:
        row = table.setdefault(
            r.scenario,
            {
                "iterations": 0,
                "faults": 0,
                "landed": 0,
                "errors": 0,
                "restarts": 0,
                "seconds": 0.0,
                **{i: [0, 0] for i in (*INVARIANTS, "checks")},
            },
        )
        row["iterations"] += 1
        row["faults"] += len(r.faults)
        row["landed"] += sum(1 for f in r.faults if f.landed)
        row["errors"] += r.error is not None
        row["restarts"] += sum(r.self_restarts.values())
        row["seconds"] += r.durations.get("total_s", 0.0)
        for i in INVARIANTS:
            c = r.invariants.get(i)
            if c is not None:
                row[i][0 if c.ok else 1] += 1
        if r.checks:
            row["checks"][0 if all(c.ok for c in r.checks.values()) else 1] += 1
    return table


def render_table(results: list[Result], title: str = "chaos") -> Any:
    from rich.table import Table

    table = Table(title=title)
    columns = ("scenario", "iterations", "faults landed/recorded", *INVARIANTS, "checks")
    columns += ("self-restarts",)
    for col in (*columns, "errors", "mean s"):
        table.add_column(col, justify="left" if col == "scenario" else "right")
    for name, row in sorted(merge(results).items()):
        cells = [
            f"{row[i][0]}/{row[i][0] + row[i][1]}" + (" FAIL" if row[i][1] else "")
            for i in (*INVARIANTS, "checks")
        ]
        table.add_row(
            name,
            str(row["iterations"]),
            f"{row['landed']}/{row['faults']}",
            *cells,
            str(row["restarts"]),
            str(row["errors"]),
            f"{row['seconds'] / row['iterations']:.0f}",
        )
    return table


def print_table(results: list[Result], title: str, width: int = 140) -> None:
    """The table of a test module's runs, printed at its end (nothing when none ran)."""
    if results:
        from rich.console import Console

        Console(width=width).print(render_table(results, title))
