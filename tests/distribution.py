"""What the distribution promises, read from the files that make it (shared by the test tiers).

pyproject.toml is the one place for the version and the Python range; the published event
schemas live in ``schemas/`` and ship as a copy in ``pipeline/schemas`` (package data).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED_SCHEMAS = ROOT / "schemas"
PACKAGED_SCHEMAS = ROOT / "pipeline" / "schemas"
# What the code reads at run time, as it must appear in the wheel.
PACKAGE_DATA = (
    "pipeline/schemas/propagation.command.v1.json",
    "pipeline/schemas/propagation.outcome.v1.json",
    "pipeline/schemas/provisioner.proto",
    "pipeline/devtools/stack/kafka-pom.xml",
    "pipeline/store/migrations/0001_outbox.sql",
    "pipeline/store/migrations/0005_outcome_provenance.sql",
    "pipeline/py.typed",
    "pipeline/ops/console/templates/base.html",
    "pipeline/ops/console/static/console.js",
    "pipeline/ops/console/static/uPlot.iife.min.js",
    "pipeline/ops/console/static/uPlot.LICENSE",
)
_CLASSIFIER = re.compile(r"^Programming Language :: Python :: 3\.(\d+)$")


def pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)


def version() -> str:
    v: str = pyproject()["project"]["version"]
    return v


def supported_pythons(project: dict[str, Any] | None = None) -> list[str]:
    """``3.X`` for every version the classifiers name, oldest first."""
    project = project if project is not None else pyproject()["project"]
    minors = sorted(
        int(m.group(1)) for c in project["classifiers"] if (m := _CLASSIFIER.match(c)) is not None
    )
    return [f"3.{m}" for m in minors]


def python_range_problems(doc: dict[str, Any]) -> list[str]:
    """The classifiers, ``requires-python`` and the lint targets (the oldest) name one range."""
    project, tool = doc["project"], doc["tool"]
    versions = supported_pythons(project)
    if not versions:
        return ["no 'Programming Language :: Python :: 3.X' classifiers"]
    lo, hi = int(versions[0][2:]), int(versions[-1][2:])
    problems = []
    contiguous = [f"3.{m}" for m in range(lo, hi + 1)]
    if versions != contiguous:
        problems.append(f"classifiers skip a version: {versions} (expected {contiguous})")
    expected = {f">=3.{lo}", f"<3.{hi + 1}"}
    given = {part.strip() for part in project["requires-python"].split(",")}
    if given != expected:
        problems.append(
            f"requires-python {project['requires-python']!r} does not match the classifiers "
            f"(expected '>=3.{lo},<3.{hi + 1}')"
        )
    if tool["ruff"]["target-version"] != f"py3{lo}":
        problems.append(f"ruff target-version is not the oldest supported, py3{lo}")
    if tool["mypy"]["python_version"] != f"3.{lo}":
        problems.append(f"mypy python_version is not the oldest supported, 3.{lo}")
    return problems


def differing_schemas(published: Path, packaged: Path) -> list[str]:
    """Files of the published contract (top level; history/ is not shipped) whose packaged copy
    is missing, extra or different."""

    def files(folder: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}

    pub, pkg = files(published), files(packaged)
    out = [f"{name}: not in {packaged}" for name in sorted(pub.keys() - pkg.keys())]
    out += [f"{name}: not in {published}" for name in sorted(pkg.keys() - pub.keys())]
    out += [f"{n}: differs" for n in sorted(pub.keys() & pkg.keys()) if pub[n] != pkg[n]]
    return out


def find_python(minor: str) -> str | None:
    """An interpreter of ``3.X``: pyenv's (in the machine image), else ``python3.X`` on PATH."""
    candidates = sorted(
        (Path.home() / ".pyenv" / "versions").glob(f"{minor}.*/bin/python{minor}"), reverse=True
    )
    on_path = shutil.which(f"python{minor}")
    for exe in [*map(str, candidates), *([on_path] if on_path else [])]:
        probe = subprocess.run(
            [exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip() == minor:
            return exe
    return None
