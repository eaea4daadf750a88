"""The local broker's optional SASL_SSL listener: TLS from PEM files, SCRAM-SHA-512 users.

Kept apart from ``kafka.py`` so the default PLAINTEXT broker reads as before; ``KafkaBroker``
takes a :class:`BrokerSecurity` and adds these properties and format arguments.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.devtools.stack.procs import LOCALHOST

SECURE_LISTENER = "SASL_SSL"
SCRAM_MECHANISM = "SCRAM-SHA-512"


@dataclass(frozen=True)
class BrokerSecurity:
    """A SASL_SSL listener served beside the PLAINTEXT one (which stays for inter-broker use).

    TLS comes from PEM files (Kafka reads PEM key stores itself, so no keytool step); clients
    authenticate with SCRAM-SHA-512 as one of ``scram_users`` (name -> password), and with
    ``require_client_cert`` also present a certificate signed by ``cafile`` (mutual TLS).
    """

    cafile: Path  # CA the broker trusts for client certificates (PEM)
    certfile: Path  # the broker's certificate chain (PEM), valid for 127.0.0.1
    keyfile: Path  # the broker's private key, unencrypted PKCS#8 PEM
    scram_users: Mapping[str, str] = field(default_factory=dict)
    require_client_cert: bool = False

    def redact(self, text: str) -> str:
        """``text`` with every SCRAM password replaced by ``***``."""
        for password in self.scram_users.values():
            text = text.replace(password, "***")
        return text


def scram_format_args(sec: BrokerSecurity) -> list[str]:
    """Storage-format arguments creating the SCRAM users.

    SCRAM credentials live in the cluster metadata; KRaft takes the first ones at format time
    (there is no ZooKeeper to write them to before the broker starts).
    """
    args: list[str] = []
    for user, password in sec.scram_users.items():
        args += ["--add-scram", f"{SCRAM_MECHANISM}=[name={user},password={password}]"]
    return args


def secure_listener_properties(
    sec: BrokerSecurity,
    workdir: Path,
    port: int | None,
    secure_port: int | None,
    controller_port: int | None,
) -> dict[str, str]:
    """Properties adding the SASL_SSL client listener; PLAINTEXT stays the inter-broker one."""
    # Kafka's PEM key store wants the key and its chain in one file.
    keystore = workdir / "keystore.pem"
    keystore.write_text(sec.keyfile.read_text() + "\n" + sec.certfile.read_text())
    keystore.chmod(0o600)
    name = SECURE_LISTENER.lower()
    prefix = f"listener.name.{name}."
    secure = f"{SECURE_LISTENER}://{LOCALHOST}:{secure_port}"
    return {
        "listeners": (
            f"PLAINTEXT://{LOCALHOST}:{port},{secure},CONTROLLER://{LOCALHOST}:{controller_port}"
        ),
        "advertised.listeners": f"PLAINTEXT://{LOCALHOST}:{port},{secure}",
        "listener.security.protocol.map": (
            f"PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,{SECURE_LISTENER}:{SECURE_LISTENER}"
        ),
        "sasl.enabled.mechanisms": SCRAM_MECHANISM,
        f"{prefix}sasl.enabled.mechanisms": SCRAM_MECHANISM,
        f"{prefix}{SCRAM_MECHANISM.lower()}.sasl.jaas.config": (
            "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        ),
        f"{prefix}ssl.keystore.type": "PEM",
        f"{prefix}ssl.keystore.location": str(keystore),
        f"{prefix}ssl.truststore.type": "PEM",
        f"{prefix}ssl.truststore.location": str(sec.cafile.resolve()),
        f"{prefix}ssl.client.auth": "required" if sec.require_client_cert else "none",
    }
