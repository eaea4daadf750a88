"""Test certificates made with the openssl CLI: a CA, a server and a client certificate, and a
SASL_SSL broker that uses them.

Shared by the gRPC and Kafka TLS tests. A missing openssl is a broken test machine, never a
reason to skip.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from pipeline.devtools.stack.kafka import BrokerSecurity, KafkaBroker

SASL_USER = "pipeline-svc"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certs(d: Path) -> Path:
    """Write ``ca.pem``, ``server.pem``/``.key`` and ``client.pem``/``.key`` into ``d``.

    The server certificate is valid for ``localhost`` and ``127.0.0.1``; keys are
    unencrypted PKCS#8 (what both grpc and Kafka's PEM key store read).
    """
    assert shutil.which("openssl") is not None, (
        "the openssl CLI is needed to make test certificates"
    )
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
             "-subj", "/CN=test-ca", cwd=d)  # fmt: skip
    (d / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, ext in (("server", ["-extfile", "server.ext"]), ("client", [])):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={name}", cwd=d)  # fmt: skip
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", *ext, cwd=d)  # fmt: skip
    return d


@contextlib.contextmanager
def sasl_ssl_broker(
    workdir: Path, cache_dir: Path, certs: Path, password: str, *, require_client_cert: bool
) -> Iterator[KafkaBroker]:
    """A started broker whose secure listener takes SCRAM-SHA-512 from ``SASL_USER``."""
    security = BrokerSecurity(
        cafile=certs / "ca.pem",
        certfile=certs / "server.pem",
        keyfile=certs / "server.key",
        scram_users={SASL_USER: password},
        require_client_cert=require_client_cert,
    )
    broker = KafkaBroker(workdir, cache_dir, security=security)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def sasl_env(certs: Path, password: str, *, client_cert: bool) -> dict[str, str]:
    """The PIPELINE_KAFKA_* settings of a client of :func:`sasl_ssl_broker`."""
    env = {
        "PIPELINE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "PIPELINE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "PIPELINE_KAFKA_SASL_USERNAME": SASL_USER,
        "PIPELINE_KAFKA_SASL_PASSWORD": password,
        "PIPELINE_KAFKA_SSL_CAFILE": str(certs / "ca.pem"),
    }
    if client_cert:
        env["PIPELINE_KAFKA_SSL_CERTFILE"] = str(certs / "client.pem")
        env["PIPELINE_KAFKA_SSL_KEYFILE"] = str(certs / "client.key")
    return env
