"""`pipeline demo` end to end: its own stack, every outcome path, a summary that says OK."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.devtools.stack import procs
from pipeline.devtools.workload import PATHS

pytestmark = pytest.mark.acceptance


@pytest.mark.timeout(300)
def test_demo_runs_every_path_to_its_expected_end_and_tears_down(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    result = subprocess.run(
        [
            *(sys.executable, "-m", "pipeline.ops.cli", "demo", "--count", "300", "--plain"),
            *("--state-dir", str(tmp_path), "--metrics-port", str(procs.free_port())),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    for path in PATHS:
        line = re.search(rf"^{path.name}\s.*$", result.stdout, re.MULTILINE)
        assert line is not None, f"no summary line for {path.name}:\n{out}"
        assert line.group(0).rstrip().endswith("OK"), line.group(0)
    assert "summary: OK" in result.stdout
    assert "/metrics http://127.0.0.1:" in result.stdout
    assert "console   http://127.0.0.1:" in result.stdout  # the operator console ran too
    # Torn down: nothing of this run is left in the registry or running.
    (run,) = [d for d in tmp_path.iterdir() if d.is_dir()]
    assert (run / "logs" / "worker.log").is_file()
    assert "Traceback" not in (run / "logs" / "console.log").read_text()
    assert not (run / "state.json").exists()
    leftovers = [r for r in procs.read_records(procs.default_run_dir()) if str(run) in r.signature]
    assert not [r for r in leftovers if r.matches_process()], leftovers
