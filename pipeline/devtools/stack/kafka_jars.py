"""The Kafka broker's jars: resolved once with Maven from the packaged pom into a cache folder
that concurrent sessions share safely."""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from pipeline.domain.errors import StackError

KAFKA_VERSION = "4.1.1"
_MARKER = ".complete"


def pom_path() -> Path:
    # Package data, so an installed wheel has it too. mvn needs a file on disk: wheels install
    # unpacked, so the resource is a real path (a zipped install would be refused here).
    resource = resources.files("pipeline.devtools.stack") / "kafka-pom.xml"
    if not isinstance(resource, Path) or not resource.is_file():
        raise StackError(f"Kafka pom not found at {resource}: package data missing from install")
    return resource


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Two test sessions (or a test and `dev up`) resolving at once would corrupt the cache.
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_jars(cache_dir: Path) -> Path:
    """Resolve the broker's jars into ``cache_dir/kafka-<v>/libs``; instant when cached.

    Maven's local repository lives under ``cache_dir`` too, so deleting ``cache_dir`` is a
    truly cold start.
    """
    pom = pom_path()
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    libs = cache_dir / f"kafka-{KAFKA_VERSION}" / "libs"
    marker = libs / _MARKER
    if _marker_ok(marker, digest):
        return libs
    with _locked(cache_dir / f"kafka-{KAFKA_VERSION}.lock"):
        if _marker_ok(marker, digest):
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise StackError("Maven (mvn) is not on PATH; it is needed to fetch the Kafka jars")
        staging = libs.with_name("libs.partial")
        shutil.rmtree(staging, ignore_errors=True)
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
            f"-Dmaven.repo.local={cache_dir / 'm2'}",
        ]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.SubprocessError) as exc:
            raise StackError(f"mvn failed to run: {exc}") from exc
        if res.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            out = "\n".join((res.stdout + res.stderr).splitlines()[-40:])
            raise StackError(f"mvn could not resolve the Kafka jars (rc={res.returncode}):\n{out}")
        shutil.rmtree(libs, ignore_errors=True)
        staging.rename(libs)
        marker.write_text(digest)
    return libs


def _marker_ok(marker: Path, digest: str) -> bool:
    try:
        return marker.read_text().strip() == digest
    except OSError:
        return False
