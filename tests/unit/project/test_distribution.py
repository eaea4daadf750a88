"""The distribution's promises that need no build: one copy of the schemas, one version, one
Python range. (tests/integration/test_wheel.py builds and installs the wheel.)"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from distribution import (
    PACKAGED_SCHEMAS,
    PUBLISHED_SCHEMAS,
    differing_schemas,
    pyproject,
    python_range_problems,
    supported_pythons,
    version,
)

import pipeline
from pipeline.adapters.proto import generate
from pipeline.devtools.stack import kafka
from pipeline.domain import codec
from pipeline.ops import cli


def test_packaged_schemas_are_the_published_ones() -> None:
    problems = differing_schemas(PUBLISHED_SCHEMAS, PACKAGED_SCHEMAS)
    assert problems == [], (
        f"{problems}: the package ships pipeline/schemas/, a copy of the published schemas/ "
        "(edit schemas/, then `cp schemas/*.json schemas/*.proto pipeline/schemas/` and "
        "`make proto`)"
    )


def test_a_stale_or_missing_copy_is_found(tmp_path: Path) -> None:
    published, packaged = tmp_path / "published", tmp_path / "packaged"
    published.mkdir()
    packaged.mkdir()
    (published / "history").mkdir()  # not shipped, so never compared
    (published / "a.json").write_text('{"v": 1}')
    (packaged / "a.json").write_text('{"v": 1}')
    assert differing_schemas(published, packaged) == []
    (packaged / "a.json").write_text('{"v": 2}')
    (published / "b.proto").write_text("syntax")
    (packaged / "c.json").write_text("{}")
    assert differing_schemas(published, packaged) == [
        f"b.proto: not in {packaged}",
        f"c.json: not in {published}",
        "a.json: differs",
    ]


def test_runtime_files_are_read_from_the_package() -> None:
    # Not from the repository root, which an installed wheel does not have.
    package = Path(pipeline.__file__).resolve().parent
    assert Path(str(codec.SCHEMA_DIR)).resolve() == package / "schemas"
    assert kafka.pom_path().resolve() == package / "devtools" / "stack" / "kafka-pom.xml"
    assert Path(str(generate.PROTO)).resolve() == package / "schemas" / "provisioner.proto"
    assert codec.schema_document("propagation.command.v1")["title"] == "propagation.command.v1"


def test_version_flag_prints_the_pyproject_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"pipeline {version()}\n"


def test_python_range_is_stated_once_consistently() -> None:
    doc = pyproject()
    assert python_range_problems(doc) == []
    assert supported_pythons(doc["project"])[0] == "3.11"


def test_an_inconsistent_python_range_is_found() -> None:
    doc = pyproject()
    lo, hi = supported_pythons(doc["project"])[0], supported_pythons(doc["project"])[-1]
    narrowed = copy.deepcopy(doc)
    narrowed["project"]["requires-python"] = f">={lo},<{hi}"
    assert python_range_problems(narrowed) == [
        f"requires-python '>={lo},<{hi}' does not match the classifiers "
        f"(expected '>={lo},<3.{int(hi[2:]) + 1}')"
    ]
    gap = copy.deepcopy(doc)
    gap["project"]["classifiers"].remove(f"Programming Language :: Python :: {lo}")
    gap["tool"]["mypy"]["python_version"] = "3.10"
    problems = python_range_problems(gap)
    assert len(problems) == 3, problems
    assert "requires-python" in problems[0]
    assert problems[1].startswith("ruff target-version")
    assert problems[2].startswith("mypy python_version")
