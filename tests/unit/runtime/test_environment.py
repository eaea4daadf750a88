"""The process environment is read in runtime/config.py alone, through its few readers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import pipeline
from pipeline.runtime import config

PACKAGE = Path(pipeline.__file__).parent
READS_ENV = re.compile(r"\bos\.(environ|getenv|environb)\b|\bfrom os import .*\b(environ|getenv)\b")


def test_only_runtime_config_reads_the_environment() -> None:
    readers = sorted(
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if READS_ENV.search(p.read_text())
    )
    assert readers == ["runtime/config.py"]


def test_child_env_keeps_or_drops_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_TOPIC_PREFIX", "x.")
    monkeypatch.setenv("SOME_OTHER", "kept")
    assert config.child_env()["PIPELINE_TOPIC_PREFIX"] == "x."
    without = config.child_env(with_settings=False)
    assert without["SOME_OTHER"] == "kept"
    assert [k for k in without if k.startswith("PIPELINE_")] == []


def test_passwords_are_the_set_non_empty_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_RELAY_DB_PASSWORD", "s3cret")
    monkeypatch.setenv("PIPELINE_OPERATOR_DB_PASSWORD", "")
    monkeypatch.delenv("PIPELINE_PROJECTOR_DB_PASSWORD", raising=False)
    asked = (
        "PIPELINE_RELAY_DB_PASSWORD",
        "PIPELINE_OPERATOR_DB_PASSWORD",
        "PIPELINE_PROJECTOR_DB_PASSWORD",
    )
    assert config.passwords(asked) == {"PIPELINE_RELAY_DB_PASSWORD": "s3cret"}


def test_setting_variable_is_raw_and_only_for_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_DATABASE_URL", "not validated")
    assert config.setting_variable("database_url") == "not validated"
    with pytest.raises(KeyError):
        config.setting_variable("stack_cache")


def test_stack_cache_expands_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_STACK_CACHE", "~/stack")
    assert config.stack_cache() == Path.home() / "stack"
    monkeypatch.setenv("PIPELINE_STACK_CACHE", "")
    assert config.stack_cache() is None
