"""The bench restarts a component that asks for it, and still counts the CPU it used."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.devtools.bench.components import Components, Stack
from pipeline.devtools.bench.procstats import ProcSampler
from pipeline.domain.errors import PipelineError
from pipeline.runtime.config import child_env

BURN = (
    "import time\nx = 0\nfor i in range(3_000_000): x += i\n"
    "print('burnt', flush=True)\ntime.sleep(60)"
)


def _components(tmp_path: Path) -> Components:
    return Components(Stack("postgresql://unused", "127.0.0.1:1", "t", tmp_path), partitions=1)


def test_a_restart_exit_is_restarted_and_counted_any_other_exit_fails(tmp_path: Path) -> None:
    comps = _components(tmp_path)
    comps.procs["worker"] = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    comps.procs["worker"].wait(30)
    # What the restart runs again: `pipeline --version`, which exits 0 at once.
    comps._spawned["worker"] = (["--version"], child_env())
    seen: list[tuple[str, int]] = []
    comps.on_restart.append(lambda name, pid: seen.append((name, pid)))
    comps.check()
    assert comps.restarts == {"worker": 1}
    assert seen == [("worker", comps.procs["worker"].pid)]
    assert comps.procs["worker"].wait(60) == 0
    with pytest.raises(PipelineError, match=r"bench components exited: \{'worker': 0\}"):
        comps.check()  # exit 0 is not a request to restart: the bench stops
    assert comps.restarts == {"worker": 1}


def test_the_cpu_of_a_replaced_process_still_counts_in_its_phase() -> None:
    sampler = ProcSampler()
    first = subprocess.Popen([sys.executable, "-c", BURN], stdout=subprocess.PIPE, text=True)
    second = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        sampler.track("worker", first.pid)
        sampler.mark()
        assert first.stdout is not None and first.stdout.readline() == "burnt\n"
        sampler._sample_one(sampler._tracked["worker"])  # what the sampling loop does
        burnt = sampler._tracked["worker"].cpu_last - sampler._tracked["worker"].cpu_mark
        first.kill()
        first.wait()
        sampler.track("worker", second.pid)  # the restart
        time.sleep(0.1)
        sampler.end_phase()
        assert burnt > 0.05
        assert sampler.cpu_seconds("worker") >= burnt
    finally:
        for p in (first, second):
            p.kill()
            p.wait()
        assert first.stdout is not None
        first.stdout.close()
