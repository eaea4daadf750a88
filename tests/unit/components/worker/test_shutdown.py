"""A stopping worker ends within its deadline, with the non-drained exit code."""

from __future__ import annotations

import subprocess
import sys
import time

from mode.worker import Worker

from pipeline.components.worker.shutdown import NOT_DRAINED_EXIT_CODE, BoundedStopWorker


def test_the_deadline_ends_a_process_that_hangs() -> None:
    code = (
        "import time\n"
        "from pipeline.runtime import logs\n"
        "from pipeline.components.worker.shutdown import arm_stop_deadline\n"
        "logs.configure()\n"
        "arm_stop_deadline(0.3)\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == NOT_DRAINED_EXIT_CODE != 0
    assert time.monotonic() - started < 30
    assert '"event":"stopped_without_draining"' in res.stdout + res.stderr
    assert '"reason":"stop_deadline"' in res.stdout + res.stderr


def test_modes_signal_hook_is_the_one_overridden() -> None:
    # Both SIGTERM and SIGINT go through mode.Worker._schedule_shutdown.
    assert "_schedule_shutdown" in Worker.__dict__
    assert "_schedule_shutdown" in BoundedStopWorker.__dict__
    import inspect

    assert "self._schedule_shutdown(signal.SIGTERM)" in inspect.getsource(Worker._on_sigterm)
