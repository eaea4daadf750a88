"""Session-wide services for the integration and acceptance tests.

Services are real (a KRaft broker from cached jars, a Postgres cluster) and started once per
session. Nothing here ever skips: a missing Java, Maven or Postgres is a test failure, so CI
cannot pass by silently testing nothing.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from pipeline.devtools.stack import procs
from pipeline.devtools.stack.kafka import KafkaBroker
from pipeline.devtools.stack.postgres import ExternalPostgres, PostgresCluster

# Log files of the services this session started, for the failure report hook below.
_SERVICE_LOGS: dict[str, Path] = {}
_LOG_TAIL_LINES = 60
_SERVICE_TEST_DIRS = ("integration", "acceptance")
_S = TypeVar("_S", KafkaBroker, PostgresCluster)


@pytest.fixture(scope="session")
def stack_cache_dir() -> Path:
    override = os.environ.get("PIPELINE_STACK_CACHE")
    return Path(override).expanduser() if override else procs.default_cache_dir()


@pytest.fixture(scope="session")
def kafka_broker(
    tmp_path_factory: pytest.TempPathFactory, stack_cache_dir: Path
) -> Iterator[KafkaBroker]:
    yield from _running(
        "kafka broker", KafkaBroker(tmp_path_factory.mktemp("kafka"), stack_cache_dir)
    )


@pytest.fixture(scope="session")
def postgres(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[PostgresCluster | ExternalPostgres]:
    external = os.environ.get("PIPELINE_DATABASE_URL")
    if external:
        yield ExternalPostgres(external)
        return
    cluster = PostgresCluster(tmp_path_factory.mktemp("postgres"))
    try:
        yield from _running("postgres", cluster)
    finally:
        # Under root the cluster lives outside pytest's tmp dirs, which pytest would prune.
        cluster.remove_files()


def _running(name: str, service: _S) -> Iterator[_S]:
    """Start a session service, name its log for the failure report, stop it at the end."""
    _SERVICE_LOGS[name] = service.log_path
    service.start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def database_url(postgres: PostgresCluster | ExternalPostgres) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = postgres.create_database(name)
    try:
        yield url
    finally:
        postgres.drop_database(name)


@pytest.fixture
def topic_prefix() -> str:
    """A unique prefix, so topics and consumer groups never collide across tests."""
    return f"t-{uuid.uuid4().hex[:8]}-"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    setattr(item, f"rep_{report.when}", report)  # fixtures read it to print component logs
    if report.failed and _is_service_test(item):
        for name, path in _SERVICE_LOGS.items():
            report.sections.append(
                (
                    f"{name} log (last {_LOG_TAIL_LINES} lines of {path})",
                    procs.tail(path, _LOG_TAIL_LINES),
                )
            )
    return report


def _is_service_test(item: pytest.Item) -> bool:
    return any(part in _SERVICE_TEST_DIRS for part in Path(str(item.path)).parts)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI a skipped test is a failed build: it would hide a missing service."""
    if os.environ.get("CI", "").lower() != "true":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped:
        print(f"\nCI=true: {len(skipped)} test(s) skipped; failing the run")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
