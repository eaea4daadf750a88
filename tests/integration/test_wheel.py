"""Install as users do: build the sdist and wheel, install the wheel into a fresh virtualenv per
supported Python, far from the source tree, and run the pipeline from there.

Every supported version (the pyproject classifiers) gets ``pipeline --version``, an import of
every module and a codec round trip through the packaged schemas; the oldest and the newest
also run ``dev up`` -> ``migrate`` -> ``run`` -> one propagation applied -> ``dev down``.
"""

from __future__ import annotations

import os
import pkgutil
import shlex
import subprocess
import sys
import tarfile
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from distribution import PACKAGE_DATA, ROOT, find_python, supported_pythons, version

import pipeline
from pipeline.devtools.stack import procs

# Three venvs are made at once and two stacks started; on a loaded machine that has taken 5
# minutes (about 75 s of CPU), hence more than the default 600 s for the first test.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

SUPPORTED = supported_pythons()
ENDS = sorted({SUPPORTED[0], SUPPORTED[-1]})

# Run by each venv's interpreter: every module of the source tree (given as arguments) imports
# from the installed copy, and the packaged schemas validate events.
_SMOKE = """
import importlib, sys
import pipeline
from pipeline.domain import codec
from pipeline.domain.events import Command
from pipeline.devtools.stack import kafka
for name in sys.argv[1:]:
    importlib.import_module(name)
cmd = Command(event_id="e-1", propagation_id=7, kind="tier_elevation", attempt=1,
              team_id="acme", resource_type="postgres", resource_id="db-1",
              payload={"target_tier": "pro"}, timestamp="2026-01-01T00:00:00Z")
assert codec.decode_command(codec.encode_validated(cmd)) == cmd
assert kafka.pom_path().is_file()
print(pipeline.__file__)
"""


def _modules() -> list[str]:
    """Every module of the source tree, but the bench's (they need the `bench` extra)."""
    return [
        m.name
        for m in pkgutil.walk_packages(pipeline.__path__, "pipeline.")
        if not m.name.startswith("pipeline.devtools.bench.")
    ]


def _run(
    args: list[str], *, cwd: Path, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise AssertionError(
            f"{shlex.join(args)} exited {res.returncode}\n"
            f"stdout:\n{res.stdout[-3000:]}\nstderr:\n{res.stderr[-5000:]}"
        )
    return res


def _user_env(venv: Path) -> dict[str, str]:
    # A user's shell: the venv first on PATH, nothing pointing into this repository, no
    # PIPELINE_* of the caller (the jar cache location is kept so Kafka is not fetched again).
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PIPELINE_", "PYTHON", "VIRTUAL_ENV"))
    }
    if "PIPELINE_STACK_CACHE" in os.environ:
        env["PIPELINE_STACK_CACHE"] = os.environ["PIPELINE_STACK_CACHE"]
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("wheel")
    assert not folder.resolve().is_relative_to(ROOT), "the test must run outside the repository"
    return folder


@pytest.fixture(scope="module")
def dist(outside: Path) -> Path:
    """``python -m build``: the sdist, then the wheel built from that sdist."""
    out = outside / "dist"
    _run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        cwd=outside,
        env=_user_env(Path(sys.executable).parent.parent),
        timeout=600,
    )
    return out


def _make_venv(minor: str, wheel: Path, outside: Path) -> Path:
    python = find_python(minor)
    if python is None:
        raise AssertionError(
            f"Python {minor} is supported (pyproject classifiers) but no interpreter was "
            f"found: install it (pyenv install {minor}) or put python{minor} on PATH"
        )
    venv = outside / f"venv-{minor}"
    _run([python, "-m", "venv", str(venv)], cwd=outside, env=_user_env(venv))
    _run(
        # With the console's extra: `pipeline ui` is part of what users install, and its
        # templates and static files are package data the import walk below must find.
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{wheel}[ui]"],
        cwd=outside,
        env=_user_env(venv),
        timeout=900,
    )
    return venv


@pytest.fixture(scope="module")
def venv_for(dist: Path, outside: Path) -> Iterator[Callable[[str], Path]]:
    """A fresh venv per supported Python with only the wheel installed; all are made at once
    (pip mostly waits on I/O), and a version's failure fails only that version's tests."""
    (wheel,) = dist.glob("*.whl")
    with ThreadPoolExecutor(max_workers=len(SUPPORTED)) as pool:
        made = {minor: pool.submit(_make_venv, minor, wheel, outside) for minor in SUPPORTED}
        yield lambda minor: made[minor].result()


def test_build_makes_an_sdist_and_a_wheel_with_the_package_data(dist: Path) -> None:
    v = version()
    assert sorted(p.name for p in dist.iterdir()) == [
        f"pipeline-{v}-py3-none-any.whl",
        f"pipeline-{v}.tar.gz",
    ]
    with zipfile.ZipFile(dist / f"pipeline-{v}-py3-none-any.whl") as whl:
        names = set(whl.namelist())
    assert {n.split("/")[0] for n in names} == {"pipeline", f"pipeline-{v}.dist-info"}
    assert set(PACKAGE_DATA) <= names
    with tarfile.open(dist / f"pipeline-{v}.tar.gz") as sdist:
        members = {m.name.removeprefix(f"pipeline-{v}/") for m in sdist.getmembers()}
    assert set(PACKAGE_DATA) <= members


@pytest.mark.parametrize("minor", SUPPORTED)
def test_installed_wheel_runs(minor: str, venv_for: Callable[[str], Path], outside: Path) -> None:
    venv = venv_for(minor)
    env = _user_env(venv)
    assert _run(["pipeline", "--version"], cwd=outside, env=env).stdout == (
        f"pipeline {version()}\n"
    )
    modules = _modules()
    assert len(modules) > 40, modules  # the walk found the tree
    location = _run(
        [str(venv / "bin" / "python"), "-c", _SMOKE, *modules], cwd=outside, env=env
    ).stdout.strip()
    assert Path(location).is_relative_to(venv / "lib" / f"python{minor}" / "site-packages")


class _User:
    """A shell in a folder outside the repository with the venv on PATH and the stack's exports."""

    def __init__(self, venv: Path, cwd: Path) -> None:
        self.env = _user_env(venv)
        self.cwd = cwd

    def pipeline(self, *args: str, timeout: float = 300) -> str:
        return _run(["pipeline", *args], cwd=self.cwd, env=self.env, timeout=timeout).stdout

    def json(self, *args: str) -> Any:
        return orjson.loads(self.pipeline(*args, "--json"))


@pytest.mark.parametrize("minor", ENDS)
def test_installed_wheel_applies_a_propagation(
    minor: str, venv_for: Callable[[str], Path], outside: Path
) -> None:
    venv = venv_for(minor)
    cwd = outside / f"run-{minor}"
    cwd.mkdir()
    user = _User(venv, cwd)
    state = cwd / "stack"
    out = user.pipeline("dev", "up", "--state-dir", str(state))
    try:
        for line in out.splitlines():
            name, _, value = line.removeprefix("export ").partition("=")
            user.env[name] = shlex.split(value)[0]
        user.env.update(
            PIPELINE_TOPIC_PREFIX=f"whl-{uuid.uuid4().hex[:8]}-",
            PIPELINE_METRICS_PORT="0",
            PIPELINE_PARTITIONS="2",
            PIPELINE_RELAY_POLL_INTERVAL="0.05",
            PIPELINE_LOG_LEVEL="WARNING",
        )
        assert "applied: 0001_outbox.sql" in user.pipeline("migrate")
        _run_and_apply_one(user)
    finally:
        user.pipeline("dev", "down", "--state-dir", str(state))
    status = subprocess.run(
        ["pipeline", "dev", "status", "--state-dir", str(state)],
        cwd=cwd,
        env=user.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 1, status.stderr
    # The worker's local state went where a user's would: the working directory.
    assert (cwd / ".pipeline-data").is_dir()


def _run_and_apply_one(user: _User) -> None:
    log_path = user.cwd / "run.log"
    with log_path.open("ab") as log:
        run = subprocess.Popen(
            ["pipeline", "run"], cwd=user.cwd, env=user.env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        enqueue = "enqueue tier_elevation --team acme --resource-type postgres --resource-id db-1"
        (pid,) = user.pipeline(*enqueue.split(), "--target-tier", "pro").split()
        deadline = time.monotonic() + 180
        while user.json("status")["totals"]["applied"] != 1:
            assert run.poll() is None, f"pipeline run exited\n{log_path.read_text()[-5000:]}"
            assert time.monotonic() < deadline, f"not applied\n{log_path.read_text()[-5000:]}"
            time.sleep(0.5)
        assert user.json("status")["totals"] == {
            "pending": 0,
            "in_flight": 0,
            "retrying": 0,
            "applied": 1,
            "dead_lettered": 0,
        }
        # Witnesses apart from the CLI's summary: the row itself, and the outcome on Kafka.
        with psycopg.connect(user.env["PIPELINE_DATABASE_URL"]) as conn:
            row = conn.execute(
                "SELECT applied_at IS NOT NULL, failed_at IS NULL, attempts"
                " FROM pending_propagations WHERE id = %s",
                (int(pid),),
            ).fetchone()
        assert row == (True, True, 1)
        prefix = user.env["PIPELINE_TOPIC_PREFIX"]
        shown = [orjson.loads(line) for line in user.pipeline("show", pid, "--json").splitlines()]
        assert [(e["type"], e["topic"], e["attempt"], e["outcome"]) for e in shown[1:]] == [
            ("command", f"{prefix}propagations", 1, None),
            ("outcome", f"{prefix}propagation-outcomes", 1, "applied"),
        ], shown
    finally:
        procs.terminate(run.pid, timeout=90)  # SIGTERM; SIGKILL if it has not gone by then
        rc = run.wait(timeout=30)
    assert rc == 0, f"pipeline run did not stop cleanly on SIGTERM\n{log_path.read_text()[-5000:]}"
