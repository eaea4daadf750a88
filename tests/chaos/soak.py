"""The chaos soak (``make chaos``): scenarios at random, with random seeds, for a while.

    python tests/chaos/soak.py --duration 20            # minutes
    python tests/chaos/soak.py --scenario sigterm_each --seed 1234 --iterations 1   # replay

Every run prints its scenario and seed first, so a failure can be replayed exactly (the
workload, the fault timings and the fake provisioner's rule draws all come from the seed;
process scheduling does not). At the end: a table of scenarios, iterations, faults landed
(proven) of faults recorded and pass/fail counts of I1..I5 (a run whose fault did not land,
or with no landed fault, fails), the reports of failed runs, and ``results.json``; the exit
status is 1 if any run failed. Logs of failed runs are kept under ``--out``.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parent / "integration"))  # harness.py

import orjson  # noqa: E402
from chaos_record import Result, render_table  # noqa: E402
from chaos_scenarios import BY_NAME, SCENARIOS  # noqa: E402
from chaos_services import Stack  # noqa: E402
from chaoslib import run_scenario  # noqa: E402
from cluster_scenarios import BY_NAME as CLUSTER_BY_NAME  # noqa: E402
from cluster_scenarios import CLUSTER_SCENARIOS, ClusterStack  # noqa: E402
from rich.console import Console  # noqa: E402

from pipeline.devtools.stack import procs  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", type=float, default=20.0, help="minutes (default 20)")
    ap.add_argument("--iterations", type=int, default=None, help="stop after this many runs")
    ap.add_argument("--seed", type=int, default=None, help="master seed (default: random)")
    ap.add_argument(
        "--scenario",
        action="append",
        choices=sorted(BY_NAME | CLUSTER_BY_NAME),
        default=None,
        help="only these scenarios (repeatable); default: all",
    )
    ap.add_argument("--out", type=Path, default=None, help="results folder")
    args = ap.parse_args(argv)

    console = Console(width=150)
    master = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    rng = random.Random(master)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = (args.out or Path("/tmp/pipeline-chaos") / stamp).resolve()
    out.mkdir(parents=True, exist_ok=True)
    every = BY_NAME | CLUSTER_BY_NAME  # the three-broker ones run on a cluster of their own
    pool = [every[n] for n in args.scenario] if args.scenario else [*SCENARIOS, *CLUSTER_SCENARIOS]
    console.print(f"chaos soak: {args.duration} min, master seed {master}, results in {out}")

    cache = Path(os.environ.get("PIPELINE_STACK_CACHE", procs.default_cache_dir()))
    stack = Stack(out / "stack", cache)
    cluster_stack = ClusterStack(out / "cluster-stack", cache)
    results: list[Result] = []
    deadline = time.monotonic() + args.duration * 60
    try:
        if any(s.name not in CLUSTER_BY_NAME for s in pool):
            stack.start()
        if any(s.name in CLUSTER_BY_NAME for s in pool):
            cluster_stack.postgres.start()
        while time.monotonic() < deadline and (
            args.iterations is None or len(results) < args.iterations
        ):
            scenario = rng.choice(pool)
            seed = (
                args.seed
                if args.seed is not None and args.iterations == 1
                else rng.randrange(2**31)
            )
            console.print(
                f"[bold]run {len(results) + 1}: {scenario.name} seed {seed}[/bold]  (replay: "
                f"python tests/chaos/soak.py --scenario {scenario.name} --seed {seed}"
                " --iterations 1)"
            )
            on = stack
            if scenario.name in CLUSTER_BY_NAME:
                cluster_stack.reformat()  # each on a freshly formatted cluster
                on = cluster_stack
            result = run_scenario(on, scenario, out / "runs", seed=seed, keep_failed=out / "failed")
            results.append(result)
            verdict = "[green]ok[/green]" if result.ok else "[red]FAILED[/red]"
            console.print(
                f"  {verdict} in {result.durations.get('total_s', 0):.0f}s, "
                f"{sum(1 for f in result.faults if f.landed)} faults landed"
                f" ({len(result.faults)} recorded)"
            )
            if not result.ok:
                console.print(result.report(), markup=False, highlight=False)
            _clean_runs(out / "runs")
            (out / "results.json").write_bytes(
                orjson.dumps(
                    {"master_seed": master, "runs": [r.to_dict() for r in results]},
                    option=orjson.OPT_INDENT_2,
                )
            )
    except KeyboardInterrupt:
        console.print("interrupted")
    finally:
        stack.stop()
        cluster_stack.stop()
    console.print(render_table(results, f"chaos soak, master seed {master}"))
    failed = [r for r in results if not r.ok]
    for r in failed:
        console.print(f"FAILED {r.scenario} seed {r.seed}: logs in {r.logdir}", markup=False)
    console.print(f"{len(results)} runs, {len(failed)} failed; results in {out}/results.json")
    return 1 if failed or not results else 0


def _clean_runs(runs: Path) -> None:
    """Passed runs' logs are not kept (failed ones were copied by run_scenario)."""
    import shutil

    shutil.rmtree(runs, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
