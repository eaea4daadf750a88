"""The process exit codes of every pipeline command and component, and the one hard exit.

The supervisor (`pipeline run`, pipeline/components/supervisor.py) restarts a component that
exits with anything but ``OK``; operator commands use the rest to say how far they got.
"""

from __future__ import annotations

import enum
import logging
import os
from typing import NoReturn


class ExitCode(enum.IntEnum):
    OK = 0
    # Any failure; also the worker that stopped without draining its in-flight commands.
    FAILED = 1
    NOT_DRAINED = 1
    # A PipelineError: bad configuration, or a refusal or failure the message explains (and
    # argparse's own code for a bad command line).
    ERROR = 2
    # A component asking its supervisor for a restart (the worker after a stall or a gap).
    RESTART = 3
    # An operator command that answered with part of what it was asked (a broker down).
    PARTIAL = 4
    # A refused replay: the projection's lock is held, or the log lacks needed history.
    REFUSED = 5
    # Interrupted by SIGINT/SIGTERM before it finished (128 + SIGINT, the shell's convention).
    INTERRUPTED = 130


def exit_now(code: ExitCode) -> NoReturn:
    """End the process at once with ``code``, after flushing the log handlers.

    os._exit, not sys.exit: the callers run inside faust's event loop or a timer thread,
    where SystemExit is caught by faust/mode (or only ends the thread) and its shutdown then
    waits on the very thing that is stuck. Nothing is committed past an unfinished command,
    so skipping the clean-up loses nothing; the supervisor restarts the process.
    """
    logging.shutdown()
    os._exit(int(code))
