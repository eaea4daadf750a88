from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from certs import make_certs
from harness import Pipeline

from pipeline.devtools.fake_provisioner import FakeProvisioner
from pipeline.devtools.stack.kafka import KafkaBroker


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, server and client certificates: one set for every TLS test (gRPC and Kafka)."""
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def provisioner() -> Iterator[FakeProvisioner]:
    fake = FakeProvisioner(seed=1)
    fake.start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def make_pipeline(
    kafka_broker: KafkaBroker,
    database_url: str,
    topic_prefix: str,
    provisioner: FakeProvisioner,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., Pipeline]]:
    made: list[Pipeline] = []

    def make(**kw: Any) -> Pipeline:
        p = Pipeline(
            database_url=database_url,
            bootstrap=kafka_broker.bootstrap,
            provisioner_addr=str(provisioner.address),
            prefix=topic_prefix,
            logdir=tmp_path,
            **kw,
        )
        p.migrate()
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            print(p.logs(tail=80))
