"""The faust app's settings: broker, credentials, data directory, commit and session timing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faust

from pipeline.adapters.replication import Replication
from pipeline.runtime.config import Config


def _faust_broker(bootstrap: str) -> str:
    return ";".join(f"kafka://{host.strip()}" for host in bootstrap.split(","))


def _credentials(cfg: Config) -> Any:
    if cfg.kafka_security_protocol == "PLAINTEXT":
        return None
    import ssl

    ssl_ctx = None
    if cfg.kafka_security_protocol in ("SSL", "SASL_SSL"):
        ssl_ctx = ssl.create_default_context(cafile=cfg.kafka_ssl_cafile)
        if cfg.kafka_ssl_certfile:
            ssl_ctx.load_cert_chain(cfg.kafka_ssl_certfile, cfg.kafka_ssl_keyfile)
    if cfg.kafka_security_protocol.startswith("SASL"):
        password = cfg.kafka_sasl_password.reveal() if cfg.kafka_sasl_password else ""
        return faust.SASLCredentials(
            username=cfg.kafka_sasl_username,
            password=password,
            ssl_context=ssl_ctx,
            mechanism=cfg.kafka_sasl_mechanism,
        )
    return faust.SSLCredentials(ssl_ctx)


def _datadir(cfg: Config) -> str:
    path = Path(cfg.data_dir).resolve() / f"faust-{cfg.processor_group}"
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def new_faust_app(cfg: Config, want: Replication) -> faust.App:
    """The worker's faust app with its settings, before topics, tables and agents."""
    return faust.App(
        cfg.processor_group,
        broker=_faust_broker(cfg.kafka_bootstrap),
        broker_credentials=_credentials(cfg),
        store="memory://",
        topic_partitions=cfg.partitions,
        topic_replication_factor=want.factor,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_linger=0.002,
        # faust commits inline in its fetch loop every N acks, after flushing the producer:
        # no message reaches the streams meanwhile. At 500 that stalled the loop 8 times a
        # second at saturation; the 0.5 s timer commits in the background instead, and N
        # is only the backstop (issue 16: +8% end to end).
        broker_commit_every=10_000,
        broker_commit_interval=0.5,
        datadir=_datadir(cfg),
        table_standby_replicas=0,
        # A killed worker's partitions move after this long; faust's 60 s default leaves
        # them idle for a minute.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
    )
