"""Chaos scenarios that deliver commands again (republished, offsets reset) and a provisioner
that fails, answers late or loses replies: nothing may be applied twice or go missing."""

from __future__ import annotations

import signal
import time
from typing import Any

from chaos_checks import quiet_redelivery
from chaos_run import ChaosRun
from chaos_workload import RULES

from pipeline.devtools.fake_provisioner import Rule

# -- duplicate delivery ------------------------------------------------------------------------


def _duplicates(run: ChaosRun) -> float:
    """Redeliveries the worker recognised, over every worker process of this run.

    Counted from the worker's DEBUG log rather than its counter: a worker that restarts
    itself (an offset gap, a stalled recovery) starts its counters again at zero.
    """
    log = run.p.logdir / "worker.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    return float(
        sum(
            1
            for line in text.splitlines()
            if '"event":"command_seen"' in line
            and ('"action":"reemit"' in line or '"action":"drop"' in line)
        )
    )


def republish_commands(run: ChaosRun) -> None:
    raw = [m for m in run.read_raw(run.commands_topic) if m.value]
    sample = run.rng.sample(raw, min(80, len(raw)))
    acked = run.produce(run.commands_topic, [(m.key, m.value or b"") for m in sample])
    run.fault(
        "commands re-published by hand",
        landed=acked == len(sample) > 0,
        proof=f"{acked} of {len(sample)} acknowledged by the broker",
        of=len(raw),
    )


def republish_when_quiet(run: ChaosRun) -> None:
    def action() -> str:
        raw = [m for m in run.read_raw(run.commands_topic) if m.value]
        sample = run.rng.sample(raw, min(150, len(raw)))
        run.notes["dup_before"] = _duplicates(run)
        acked = run.produce(run.commands_topic, [(m.key, m.value or b"") for m in sample])
        run.notes["dup_sent"] = len(sample)
        run.fault(
            "commands re-published on the quiet pipeline",
            landed=acked == len(sample) > 0,
            proof=f"{acked} of {len(sample)} acknowledged by the broker",
        )
        return f"{len(sample)} commands re-published"

    run.check("quiet_republish_changes_nothing", *_as_pair(quiet_redelivery(run, action)))
    seen = _duplicates(run) - run.notes["dup_before"]
    run.check(
        "redelivery_recognised",
        seen == run.notes["dup_sent"],
        f"duplicates counter +{seen:.0f} for {run.notes['dup_sent']} re-published commands",
    )


def _reset_offsets(run: ChaosRun, what: str, **detail: Any) -> None:
    """Stop the worker, commit offset 0 for its group, prove it, start the worker again."""
    rc = run.stop_component("worker", signal.SIGTERM)
    run.reset_processor_offsets()
    # The group's own committed offsets (None: no commit at all, which would not be a reset)
    mine = [pl for pl in run.lag().partitions if pl.group == run.processor_group]
    committed = {pl.partition: pl.committed for pl in mine}
    end = {pl.partition: pl.end for pl in mine}
    run.fault(
        what,
        landed=bool(mine) and all(c == 0 for c in committed.values()) and any(end.values()),
        proof=f"committed {committed} over ends {end} before the restart (worker exit {rc})",
        **detail,
    )
    run.start_component("worker")


def offset_reset(run: ChaosRun) -> None:
    run.keep_busy(150, 6.0)
    _reset_offsets(run, "processor group offsets reset to 0 (mid-run)")


def offset_reset_when_quiet(run: ChaosRun) -> None:
    def action() -> str:
        commands = len(run.read_raw(run.commands_topic))
        run.notes["dup_before"] = _duplicates(run)
        run.notes["commands"] = commands
        _reset_offsets(run, "processor group offsets reset to 0 (quiet)", commands=commands)
        return f"offsets reset over {commands} commands"

    run.check("quiet_reset_changes_nothing", *_as_pair(quiet_redelivery(run, action)))
    run.p.wait_metrics_up("worker")
    seen = _duplicates(run) - run.notes["dup_before"]
    run.check(
        "every_command_recognised",
        seen == run.notes["commands"],
        f"the restarted worker counted {seen:.0f} duplicates of {run.notes['commands']} commands",
    )


def _as_pair(check: Any) -> tuple[bool, str]:
    return check.ok, check.detail


# -- provisioner faults ------------------------------------------------------------------------

FAULT_RULES = (
    # the effect lands and the reply is lost (the ambiguous case), on paths that apply
    Rule(match="ok-*", action="apply_then_error", code="UNAVAILABLE", rate=0.3, times=3),
    Rule(match="busy*", action="apply_then_error", code="DEADLINE_EXCEEDED", rate=0.3, times=3),
    Rule(match="*", action="error", code="UNAVAILABLE", rate=0.2, times=3),
    Rule(match="*", action="error", code="DEADLINE_EXCEEDED", rate=0.2, times=3),
)


def provisioner_faults(run: ChaosRun) -> None:
    before = len(run.provisioner.calls())
    run.provisioner.set_rules(FAULT_RULES + RULES)
    run.keep_busy(200, 4.0)
    run.wait_progress(0.7)
    time.sleep(1.0)
    run.provisioner.set_rules(RULES)
    calls = run.provisioner.calls()[before:]
    effects = run.provisioner.effects()
    errors: dict[str, int] = {}
    for c in calls:
        if c.outcome.startswith("error:"):
            errors[c.outcome] = errors.get(c.outcome, 0) + 1
    lost_replies = sum(
        1
        for c in calls
        if c.outcome.startswith("error:")
        and c.idempotency_key in effects
        and effects[c.idempotency_key][0].at <= c.at
        and not c.resource_id.startswith(("transient-", "ordflaky-", "ambiguous-"))
    )
    fired = (
        errors.get("error:UNAVAILABLE", 0) > 0
        and errors.get("error:DEADLINE_EXCEEDED", 0) > 0
        and lost_replies > 0
    )
    run.fault(
        "provisioner UNAVAILABLE / DEADLINE_EXCEEDED / apply_then_error at a rate, healed",
        landed=fired,
        proof=f"{errors} over {len(calls)} calls, {lost_replies} errors after the effect landed",
    )
    run.check("faults_fired", fired, f"{errors}, {lost_replies} errors after the effect landed")
