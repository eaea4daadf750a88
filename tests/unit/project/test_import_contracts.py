"""The import contracts hold, and each one fails when its defect is planted.

``make lint`` runs ``lint-imports`` on the tree; this shows the contracts can fail: a copy of
the package gets one forbidden import at a time and must break exactly that contract.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT), "--no-cache", "--config", str(tree / ".importlinter")],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _broken(output: str) -> list[str]:
    return sorted(
        # "<name> BROKEN" or "<name> BROKEN (1 ignored import)"
        line.split(" BROKEN")[0].strip()
        for line in output.splitlines()
        if "BROKEN" in line
    )


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("tree")
    shutil.copytree(
        ROOT / "pipeline", tree / "pipeline", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / ".importlinter", tree / ".importlinter")
    return tree


def test_the_tree_keeps_every_contract(pristine: Path) -> None:
    res = _lint(pristine)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Contracts: 5 kept, 0 broken." in res.stdout


CYCLES = "No import cycles, at any depth"
STORE_ONLY = "Only the store imports psycopg (driver errors translated once)"
PLANTED = {
    # module that gets the line, the line, the contracts it must break (a wrong-way import
    # between layers is also a package cycle, since the right-way imports exist)
    "domain/events.py": (
        "import psycopg  # planted",
        ["The domain imports no driver", STORE_ONLY],
    ),
    "components/relay.py": (
        "import psycopg  # planted: a component catching driver errors itself",
        [STORE_ONLY],
    ),
    "ops/status.py": (
        "from psycopg import errors  # planted",
        [STORE_ONLY],
    ),
    "runtime/httpd.py": (
        "from pipeline.devtools import workload  # planted",
        [CYCLES, "Nothing imports ops or devtools except ops and devtools"],
    ),
    "adapters/topics.py": (
        "from pipeline.components import supervisor  # planted",
        [CYCLES, "Imports flow one way: components > adapters, store > runtime > domain"],
    ),
    "domain/backoff.py": (
        "from pipeline.domain import decide  # planted (decide imports backoff)",
        [CYCLES],
    ),
}


@pytest.mark.parametrize("module", sorted(PLANTED))
def test_a_planted_import_breaks_its_contract(pristine: Path, tmp_path: Path, module: str) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(pristine, tree)
    line, contracts = PLANTED[module]
    target = tree / "pipeline" / module
    target.write_text(target.read_text() + "\n" + line + "\n")
    res = _lint(tree)
    assert res.returncode == 1, res.stdout + res.stderr
    assert _broken(res.stdout) == sorted(contracts)
