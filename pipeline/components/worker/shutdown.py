"""A worker told to stop exits in bounded time, and says so when it did not drain.

faust's shutdown waits for every in-flight message (``wait_empty``) and flushes the producer;
with a broker unreachable both can wait for minutes, and a supervisor that sent SIGTERM is
left waiting. Nothing is committed past an unfinished command (the AckGuard), so ending the
process is safe: the exit code tells the supervisor the worker did not drain.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any, NoReturn

from pipeline.adapters.faust_compat import StopSignalWorker
from pipeline.runtime import logs
from pipeline.runtime.exit_codes import ExitCode, exit_now

STOP_DEADLINE_S = 25.0  # under the 30 s a supervisor gives before it SIGKILLs
_log = logs.get("worker")


def exit_not_drained(reason: str, **fields: Any) -> NoReturn:
    logs.event(_log, "stopped_without_draining", logging.ERROR, reason=reason, **fields)
    exit_now(ExitCode.NOT_DRAINED)


def arm_stop_deadline(seconds: float = STOP_DEADLINE_S) -> threading.Timer:
    """From now on, the process ends within ``seconds`` whatever faust is waiting for."""
    timer = threading.Timer(seconds, exit_not_drained, args=("stop_deadline",))
    timer.daemon = True
    timer.start()
    return timer


class BoundedStopWorker(StopSignalWorker):
    """faust's Worker whose SIGTERM/SIGINT shutdown has a deadline."""

    stop_deadline_s = STOP_DEADLINE_S
    _deadline: threading.Timer | None = None

    def on_stop_signal(self, signal: signal.Signals) -> None:
        if self._deadline is None:
            self._deadline = arm_stop_deadline(self.stop_deadline_s)
