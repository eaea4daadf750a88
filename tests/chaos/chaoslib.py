"""A small chaos framework over the real pipeline: workload, fault, heal, invariants.

``run_scenario(stack, scenario, workdir)`` runs one :class:`Scenario` against a dedicated
:class:`Stack` (its own Kafka broker and Postgres cluster, so faults never touch the test
session's shared services):

1. a fresh database, topic prefix and seeded fake provisioner; a few hundred propagations
   mixing every outcome path, with several rows per resource (for ordering);
2. relay, worker and projector started as processes (``tests/integration/harness.py``);
3. once ``inject_at`` of the rows are terminal, ``scenario.fault(run)`` injects its fault and
   heals it (each fault is recorded with what it hit);
4. the invariants are checked and returned as a :class:`Result`, never raised, so a soak can
   count them:

   * I1 no lost propagation: every row ends with exactly one of applied_at / failed_at, the
     terminal outcome its path expects, within ``TERMINAL_BOUND_S`` after the heal, after no
     more attempts than the retry budget (a dead-letter path: exactly the budget, or 1 for an
     invalid command);
   * I2 no duplicated effect, from the fake provisioner's own record of every applying call
     per key: one per key, plus one after each lost reply (the ambiguous case) and one per
     command in a declared crash window (:class:`Window`: a worker died or lost partitions
     with those commands uncommitted); exactly one effect for paths that apply, none for the
     others, none under a key outside the workload; redelivery after quiescence calls nothing;
   * I3 per-resource order: a resource's outcomes follow enqueue order in its partition and
     its terminal times are non-decreasing; each propagation's attempts run 1..n; and on the
     provisioner's side each effect is its row's change, applied in enqueue order by the
     fake's own call sequence and clock;
   * I4 projection equals an independent oracle and the replay: :func:`oracle_fold` computes
     every row (attempts, terminal column and time, last_outcome/error/skip_reason) and audit
     row from the outcome log; the projection must equal it, and ``pipeline replay
     --rebuild`` (projector stopped) must leave every projected column and the audit as they
     were (and equal to the oracle);
   * I5 liveness: processor lag 0 with a commit on every partition, projector checkpoints at
     the end offsets and no due unpublished outbox row, within ``LIVENESS_BOUND_S``; and every
     command on the log that names a propagation attempt has an outcome for it (processed,
     not only received).

Every fault proves it landed (``run.fault(..., landed=..., proof=...)``): a run with a fault
that did not land, or with no fault proven to have landed, fails.

A row stuck "published but no outcome" after the heal is reported with the worker's log
lines around its command (the worker runs with ``PIPELINE_LOG_LEVEL=DEBUG``).
"""

from __future__ import annotations

import os
import shutil
import time
import traceback
from pathlib import Path

from chaos_checks import (
    check_i1,
    check_i2,
    check_i3,
    check_i4,
    check_i5,
    check_processed,
)
from chaos_record import INVARIANTS, Result, count_self_restarts
from chaos_run import ChaosRun, Scenario
from chaos_services import Stack


def run_scenario(
    stack: Stack,
    scenario: Scenario,
    workdir: Path,
    seed: int | None = None,
    keep_failed: Path | None = None,
) -> Result:
    """Run one scenario; a failed run's logs are copied under ``keep_failed``."""
    seed = scenario.seed if seed is None else seed
    logdir = workdir / f"{scenario.name}-{seed}"
    logdir.mkdir(parents=True, exist_ok=True)
    run = ChaosRun(stack, scenario, seed, logdir)
    res = run.result
    d = res.durations
    try:
        run.start()
        t = time.monotonic()
        run.wait_progress(scenario.inject_at)
        d["before_fault_s"] = round(time.monotonic() - run.t0, 2)
        t = time.monotonic()
        scenario.fault(run)
        d["fault_s"] = round(time.monotonic() - t, 2)
        t = time.monotonic()
        res.invariants["I1"] = check_i1(run)
        d["recovery_s"] = round(time.monotonic() - t, 2)
        t = time.monotonic()
        res.invariants["I5"] = check_i5(run)
        if res.invariants["I5"].ok:
            processed = check_processed(run)
            if not processed.ok:
                res.invariants["I5"] = processed
        if scenario.after is not None and res.invariants["I1"].ok and res.invariants["I5"].ok:
            scenario.after(run)
        res.invariants["I2"] = check_i2(run)
        res.invariants["I3"] = check_i3(run)
        res.invariants["I4"] = check_i4(run)
        d["checks_s"] = round(time.monotonic() - t, 2)
    except Exception as exc:
        res.error = f"{exc!r}\n{traceback.format_exc()[-3000:]}"
    finally:
        res.self_restarts = count_self_restarts(logdir)
        if not res.ok and run.pipeline is not None:
            res.log_tail = run.p.logs(tail=30) + "\n" + stack.logs(20)
            if keep_failed is not None:
                kept = keep_failed / f"{scenario.name}-{seed}-{int(time.time())}"
                shutil.copytree(
                    logdir, kept, dirs_exist_ok=True, ignore=shutil.ignore_patterns("data", "data2")
                )
                (kept / "result.txt").write_text(res.report())
                res.logdir = str(kept)
        run.cleanup()
        d["total_s"] = run.elapsed()
    return res


def run_fixed(stack: Stack, scenario: Scenario, workdir: Path) -> Result:
    """A CI run: the scenario's fixed seed (``CHAOS_SEED`` overrides it), a failed run's logs
    kept under ``CHAOS_KEEP_FAILED``; the report is printed."""
    seed = int(os.environ.get("CHAOS_SEED", scenario.seed))
    keep = Path(os.environ.get("CHAOS_KEEP_FAILED", "/tmp/pipeline-chaos-failures"))
    result = run_scenario(stack, scenario, workdir, seed=seed, keep_failed=keep)
    print(result.report())
    return result


def assert_kept(result: Result) -> None:
    """The run did not break, every invariant held and every scenario check passed."""
    assert result.error is None, result.report()
    failed = [i for i in INVARIANTS if not result.invariants[i].ok]
    assert not failed, f"invariants {failed} failed\n{result.report()}"
    failed = [n for n, c in result.checks.items() if not c.ok]
    assert not failed, f"scenario checks {failed} failed\n{result.report()}"
