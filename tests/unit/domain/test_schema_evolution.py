"""Schema evolution guard (SPEC section 3): a new version may add optional fields only.

Every schema in ``schemas/`` is compared with its previous version: the one before it
(``name.v{N-1}``, in ``schemas/`` or ``schemas/history/``) and the released copy of itself
kept in ``schemas/history/`` (so a released version cannot be edited incompatibly in place
either). Incompatible: a removed field, a field whose definition changed (type, enum,
format, limits), a new required field, or unknown fields no longer allowed. The proto is
held to protobuf's rules: no field removed, renumbered or retyped, no RPC removed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"
HISTORY = SCHEMAS / "history"
_VERSIONED = re.compile(r"^(?P<name>.+)\.v(?P<version>\d+)\.json$")
# Words about a field, not the field: changing them breaks no consumer.
_ANNOTATIONS = {"description", "title", "examples", "$comment", "default"}


def _semantic(definition: Any) -> Any:
    if isinstance(definition, dict):
        return {k: _semantic(v) for k, v in definition.items() if k not in _ANNOTATIONS}
    if isinstance(definition, list):
        return [_semantic(v) for v in definition]
    return definition


def json_schema_problems(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    old_props: dict[str, Any] = old.get("properties", {})
    new_props: dict[str, Any] = new.get("properties", {})
    for name, definition in old_props.items():
        if name not in new_props:
            problems.append(f"field {name!r} removed")
        elif name == "schema":
            continue  # names the version: it changes with it by design
        elif _semantic(definition) != _semantic(new_props[name]):
            problems.append(f"field {name!r} retyped: {definition} -> {new_props[name]}")
    for name in sorted(set(new.get("required", [])) - set(old.get("required", []))):
        problems.append(f"field {name!r} is newly required")
    if old.get("additionalProperties", True) is not False and (
        new.get("additionalProperties", True) is False
    ):
        problems.append("unknown fields no longer allowed")
    return problems


_MESSAGE = re.compile(r"message\s+(\w+)\s*\{(.*?)\}", re.S)
_FIELD = re.compile(r"^\s*(repeated\s+|optional\s+)?([\w.]+)\s+(\w+)\s*=\s*(\d+)\s*;", re.M)
_RPC = re.compile(r"rpc\s+(\w+)\s*\(\s*(\w+)\s*\)\s*returns\s*\(\s*(\w+)\s*\)")
_PACKAGE = re.compile(r"^package\s+([\w.]+)\s*;", re.M)


def _proto_shape(text: str) -> tuple[set[str], dict[tuple[str, int], tuple[str, str]], set[str]]:
    text = re.sub(r"//[^\n]*", "", text)
    fields = {
        (msg, int(num)): ((label or "").strip() + " " + typ, name)
        for msg, body in _MESSAGE.findall(text)
        for label, typ, name, num in _FIELD.findall(body)
    }
    return set(_PACKAGE.findall(text)), fields, {"/".join(r) for r in _RPC.findall(text)}


def proto_problems(old_text: str, new_text: str) -> list[str]:
    old_pkg, old_fields, old_rpcs = _proto_shape(old_text)
    new_pkg, new_fields, new_rpcs = _proto_shape(new_text)
    problems = [f"package changed {old_pkg} -> {new_pkg}"] if old_pkg != new_pkg else []
    for key, (typ, name) in old_fields.items():
        if key not in new_fields:
            problems.append(f"{key[0]} field {name} = {key[1]} removed")
        elif new_fields[key][0] != typ:
            problems.append(
                f"{key[0]} field {name} = {key[1]} retyped {typ} -> {new_fields[key][0]}"
            )
    problems += [f"rpc {r} removed or changed" for r in sorted(old_rpcs - new_rpcs)]
    return problems


def _previous_versions(path: Path) -> list[Path]:
    m = _VERSIONED.match(path.name)
    assert m, f"{path.name}: schema files are named <name>.v<N>.json"
    name, version = m["name"], int(m["version"])
    found = [HISTORY / path.name]
    for folder in (SCHEMAS, HISTORY):
        earlier = folder / f"{name}.v{version - 1}.json"
        if earlier.exists():
            found.append(earlier)
            break
    return found


CURRENT = sorted(SCHEMAS.glob("*.json"))


def test_there_are_schemas_to_guard() -> None:
    assert {p.name for p in CURRENT} >= {
        "propagation.command.v1.json",
        "propagation.outcome.v1.json",
    }


@pytest.mark.parametrize("path", CURRENT, ids=lambda p: p.name)
def test_json_schema_is_compatible_with_its_previous_versions(path: Path) -> None:
    new = json.loads(path.read_text())
    previous = _previous_versions(path)
    assert previous[0].exists(), (
        f"{path.name} has no released copy in schemas/history/: copy it there when it ships, "
        "so later edits are checked against it"
    )
    for old_path in previous:
        problems = json_schema_problems(json.loads(old_path.read_text()), new)
        assert not problems, f"{path.name} vs {old_path.relative_to(SCHEMAS)}: {problems}"


def test_proto_is_compatible_with_its_released_copy() -> None:
    for path in sorted(SCHEMAS.glob("*.proto")):
        old = HISTORY / path.name
        assert old.exists(), f"{path.name} has no released copy in schemas/history/"
        problems = proto_problems(old.read_text(), path.read_text())
        assert not problems, f"{path.name}: {problems}"


# The guard itself must catch each kind of break: checked on synthetic versions.
BASE: dict[str, Any] = {
    "required": ["schema", "event_id", "n"],
    "properties": {
        "schema": {"const": "x.v1"},
        "event_id": {"type": "string"},
        "n": {"type": "integer", "description": "a count"},
        "note": {"type": ["string", "null"]},
    },
}


def _variant(**changes: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(BASE))
    for key, value in changes.items():
        if key == "drop":
            del doc["properties"][value]
        elif key == "props":
            doc["properties"].update(value)
        else:
            doc[key] = value
    return doc


@pytest.mark.parametrize(
    ("new", "expected"),
    [
        (_variant(drop="note"), "field 'note' removed"),
        (_variant(props={"n": {"type": "string"}}), "field 'n' retyped"),
        (_variant(props={"note": {"type": "string"}}), "field 'note' retyped"),
        (_variant(required=[*BASE["required"], "note"]), "field 'note' is newly required"),
        (
            _variant(props={"extra": {"type": "string"}}, required=[*BASE["required"], "extra"]),
            "field 'extra' is newly required",
        ),
        (_variant(additionalProperties=False), "unknown fields no longer allowed"),
    ],
)
def test_guard_rejects_incompatible_changes(new: dict[str, Any], expected: str) -> None:
    problems = json_schema_problems(BASE, new)
    assert any(expected in p for p in problems), problems


def test_guard_accepts_optional_additions_and_new_descriptions() -> None:
    new = _variant(
        props={
            "schema": {"const": "x.v2"},
            "n": {"type": "integer", "description": "a better description"},
            "added": {"type": ["string", "null"]},
        }
    )
    assert json_schema_problems(BASE, new) == []


def test_proto_guard() -> None:
    old = (
        "package p.v1;\nmessage A {\n  string a = 1;\n  bool b = 2;\n}\n"
        "service S { rpc F(A) returns (A); }"
    )
    assert proto_problems(old, old.replace("bool b = 2;", "bool b = 2;\n  int32 c = 3;")) == []
    assert proto_problems(old, old.replace("bool b = 2;", "string b = 2;")) != []
    assert proto_problems(old, old.replace("  bool b = 2;\n", "")) != []
    assert proto_problems(old, old.replace("rpc F", "rpc G")) != []
