"""The ``pipeline`` parser: --help loads no driver, and the component commands match the table."""

from __future__ import annotations

import argparse
import subprocess
import sys

from pipeline.components.supervisor import COMPONENTS
from pipeline.ops import cli

# Builds the parser, asks every subcommand for --help, and prints what got imported that
# --help has no use for: the drivers, the local stack and the fake provisioner's server.
_PROBE = """
import argparse, contextlib, io, sys
from pipeline.ops import cli
parser = cli.build_parser()
(action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
commands = action.choices
for argv in (["--help"], *([c, "--help"] for c in commands)):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        parser.parse_args(argv)
print(len(commands))
print(sorted(
    m for m in sys.modules
    if m.split(".")[0] in {"grpc", "faust", "aiokafka", "psycopg", "mode"}
    or (m.startswith(("pipeline.devtools.stack.", "pipeline.devtools.fake_provisioner.server"))
        and m != "pipeline.devtools.stack.cli")
))
"""


def test_help_imports_no_driver_nor_the_stack() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=60
    ).stdout.splitlines()
    assert int(out[0]) >= 15  # every subcommand was asked, not none
    assert out[1] == "[]"


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(
        a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    )
    return dict(action.choices)


def test_every_component_is_a_subcommand_that_runs_one() -> None:
    running_a_component = {
        name for name, p in _subcommands().items() if p.get_default("func") is cli._cmd_component
    }
    assert running_a_component == set(COMPONENTS.values())
    assert list(COMPONENTS) == ["relay", "worker", "projector"]  # start order: ports follow it
