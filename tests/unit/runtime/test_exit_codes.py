"""The exit codes are a contract with the supervisor and with operators' scripts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.runtime.exit_codes import ExitCode


def test_the_codes_keep_their_values() -> None:
    assert {c.name: int(c) for c in ExitCode} == {
        "OK": 0,
        "FAILED": 1,
        "ERROR": 2,
        "RESTART": 3,
        "PARTIAL": 4,
        "REFUSED": 5,
        "INTERRUPTED": 130,
    }
    assert ExitCode.NOT_DRAINED is ExitCode.FAILED


def test_a_pipeline_error_exits_with_error(capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.ops.cli import main

    # A database that refuses the connection: a StoreError, said on stderr.
    argv = ["retry", "7", "--reason", "why", "--database-url", "postgresql://x@127.0.0.1:1/x"]
    assert main(argv) == ExitCode.ERROR == 2
    assert capsys.readouterr().err.startswith("pipeline retry: ")


def test_exit_now_ends_the_process_with_the_code_and_flushed_logs() -> None:
    code = (
        "import logging, threading\n"
        "from pipeline.runtime import logs\n"
        "from pipeline.runtime.exit_codes import ExitCode, exit_now\n"
        "logs.configure()\n"
        "logs.event(logs.get('worker'), 'about_to_exit')\n"
        # From a thread, as the stop deadline does: sys.exit there would end only the thread.
        "threading.Thread(target=exit_now, args=(ExitCode.RESTART,)).start()\n"
        "threading.Event().wait(60)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == ExitCode.RESTART == 3
    assert '"event":"about_to_exit"' in res.stdout + res.stderr
