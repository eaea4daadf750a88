"""The one configuration object, built from ``PIPELINE_*`` variables at start-up.

Components take plain values from it; nothing else in the package reads ``os.environ``: the
few readers at the end of this module serve what is not a setting (the dev stack's cache, role
passwords, the environment a child process starts from).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from pipeline.domain.errors import ConfigError

# Pinned timeouts. They are constants, not settings: changing one is a code review, and
# each component stamps them into its startup log line.
HANDLER_DEADLINE = timedelta(seconds=10)
CALL_TRIES_PER_ATTEMPT = 3
# An attempt can take at most HANDLER_DEADLINE * CALL_TRIES_PER_ATTEMPT plus pauses (~31 s);
# 25 minutes is ample headroom and far below the 80 minutes a default job rescuer allows.
RESCUE_STUCK_AFTER = timedelta(minutes=25)
# The worker's memory of answered (propagation, attempt) pairs: the most recent this many, read
# back at each assignment from the outcome topic no further back than this
# (components/worker/recall.py), so memory and restart time stay bounded at any throughput. A
# redelivery older than both is executed again (the provisioner's idempotency key makes that
# safe) instead of re-emitting the recorded outcome.
DEDUPE_MAX_ENTRIES = 50_000
DEDUPE_RECALL_WINDOW = timedelta(minutes=15)
# Exit codes: pipeline/runtime/exit_codes.py.

REQUIRED_FOR_ALL = ("database_url", "kafka_bootstrap", "provisioner_addr")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class Secret(str):
    """A string that never shows itself in repr, logs or tracebacks."""

    def __repr__(self) -> str:
        return "Secret('***')"

    def reveal(self) -> str:
        return str.__str__(self)


@dataclass(frozen=True, slots=True)
class Config:
    database_url: str = ""
    kafka_bootstrap: str = ""
    provisioner_addr: str = ""
    topic_prefix: str = ""
    backoff_scale: float = 1.0
    max_attempts: int = 10
    metrics_port: int = 9400
    metrics_host: str = "127.0.0.1"
    partitions: int = 6
    relay_batch_size: int = 500
    relay_poll_interval: float = 1.0
    worker_concurrency: int = 512
    # Retention of the topics the pipeline creates, in ms (-1: forever). The outcome log is
    # the source the projection and every backfill are rebuilt from, so it is kept forever
    # unless bounded on purpose; a command is only needed until the worker has read it.
    outcome_retention: int = -1
    command_retention: int = int(timedelta(days=7).total_seconds() * 1000)
    log_level: str = "INFO"
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: Secret | None = None
    kafka_ssl_cafile: str | None = None
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None
    provisioner_tls_ca: str | None = None
    provisioner_tls_cert: str | None = None
    provisioner_tls_key: str | None = None
    provisioner_batch: int = 128
    data_dir: str = ".pipeline-data"
    # `pipeline ui`: read-only unless a token is set; actions need it.
    ui_host: str = "127.0.0.1"
    ui_port: int = 9480
    ui_token: Secret | None = None
    # 0 = not set: the cluster's default.replication.factor capped by live brokers, and
    # min.insync.replicas 2 from factor 3 on (pipeline/adapters/replication.py decides).
    replication_factor: int = 0
    min_insync_replicas: int = 0

    @property
    def commands_topic(self) -> str:
        return f"{self.topic_prefix}propagations"

    @property
    def outcomes_topic(self) -> str:
        return f"{self.topic_prefix}propagation-outcomes"

    @property
    def processor_group(self) -> str:
        return f"{self.topic_prefix}propagation-processor"

    @property
    def projection_name(self) -> str:
        return f"{self.topic_prefix}propagation-projection"

    def topic_configs(self) -> dict[str, dict[str, str]]:
        """Settings the pipeline's topics are created with: retention is decided, not inherited."""
        return {
            self.commands_topic: {"retention.ms": str(self.command_retention)},
            self.outcomes_topic: {"retention.ms": str(self.outcome_retention)},
        }

    def pinned(self) -> dict[str, Any]:
        """Settings every startup log line carries."""
        return {
            "rescue_stuck_after_s": RESCUE_STUCK_AFTER.total_seconds(),
            "handler_deadline_s": HANDLER_DEADLINE.total_seconds(),
            "call_tries_per_attempt": CALL_TRIES_PER_ATTEMPT,
            "dedupe_max_entries": DEDUPE_MAX_ENTRIES,
            "dedupe_recall_window_s": DEDUPE_RECALL_WINDOW.total_seconds(),
            "max_attempts": self.max_attempts,
            "backoff_scale": self.backoff_scale,
            "topic_prefix": self.topic_prefix,
        }

    def kafka_client_kwargs(self) -> dict[str, Any]:
        """Connection settings for aiokafka clients (producer, consumer, admin)."""
        kw: dict[str, Any] = {
            "bootstrap_servers": self.kafka_bootstrap,
            "security_protocol": self.kafka_security_protocol,
        }
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            import ssl

            ctx = ssl.create_default_context(cafile=self.kafka_ssl_cafile)
            if self.kafka_ssl_certfile:
                ctx.load_cert_chain(self.kafka_ssl_certfile, self.kafka_ssl_keyfile)
            kw["ssl_context"] = ctx
        if self.kafka_security_protocol.startswith("SASL"):
            kw["sasl_mechanism"] = self.kafka_sasl_mechanism
            kw["sasl_plain_username"] = self.kafka_sasl_username
            kw["sasl_plain_password"] = (
                self.kafka_sasl_password.reveal() if self.kafka_sasl_password else None
            )
        return kw

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        required: Collection[str] = REQUIRED_FOR_ALL,
        **overrides: Any,
    ) -> Config:
        """Build from ``PIPELINE_*`` variables; flags given as ``overrides`` win.

        Every problem is collected and reported at once, so an operator fixes a broken
        deployment in one round trip.
        """
        problems: list[str] = []
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f"PIPELINE_{f.name.upper()}"
            raw = overrides.get(f.name)
            if raw is None:
                raw = env.get(name)
            if raw is None or raw == "":
                if f.name in required:
                    problems.append(f"{name} is required (or --{f.name.replace('_', '-')})")
                continue
            try:
                values[f.name] = _coerce(f.name, raw)
            except ValueError as exc:
                problems.append(f"{name}={_shown(f.name, raw)!s}: {exc}")
        if problems:
            raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        problems: list[str] = []
        if not 0 < self.backoff_scale <= 1000:
            problems.append("PIPELINE_BACKOFF_SCALE must be in (0, 1000]")
        if not 1 <= self.max_attempts <= 100:
            problems.append("PIPELINE_MAX_ATTEMPTS must be between 1 and 100")
        if not 0 <= self.metrics_port <= 65535:
            problems.append("PIPELINE_METRICS_PORT must be a port number (0 = any free port)")
        if not 1 <= self.partitions <= 1000:
            problems.append("PIPELINE_PARTITIONS must be between 1 and 1000")
        if not 1 <= self.relay_batch_size <= 10_000:
            problems.append("PIPELINE_RELAY_BATCH_SIZE must be between 1 and 10000")
        if not 1 <= self.worker_concurrency <= 4096:
            problems.append("PIPELINE_WORKER_CONCURRENCY must be between 1 and 4096")
        if not 0 <= self.provisioner_batch <= 1000:
            problems.append("PIPELINE_PROVISIONER_BATCH must be between 0 and 1000 (0 = off)")
        if not 0 <= self.replication_factor <= 32:
            problems.append("PIPELINE_REPLICATION_FACTOR must be between 1 and 32 (0 = cluster's)")
        if not 0 <= self.min_insync_replicas <= 32:
            problems.append("PIPELINE_MIN_INSYNC_REPLICAS must be between 1 and 32 (0 = auto)")
        elif self.replication_factor and self.min_insync_replicas > self.replication_factor:
            problems.append("PIPELINE_MIN_INSYNC_REPLICAS must not exceed the replication factor")
        for name, ms in (("OUTCOME", self.outcome_retention), ("COMMAND", self.command_retention)):
            if ms != -1 and ms < 60_000:
                problems.append(f"PIPELINE_{name}_RETENTION must be at least 1m, or 'forever'")
        if not 0 <= self.ui_port <= 65535:
            problems.append("PIPELINE_UI_PORT must be a port number (0 = any free port)")
        if self.ui_token is not None and len(self.ui_token) < 16:
            problems.append("PIPELINE_UI_TOKEN must be at least 16 characters (value not shown)")
        if self.kafka_security_protocol not in SECURITY_PROTOCOLS:
            problems.append(f"PIPELINE_KAFKA_SECURITY_PROTOCOL must be one of {SECURITY_PROTOCOLS}")
        if self.kafka_security_protocol.startswith("SASL"):
            if self.kafka_sasl_mechanism not in SASL_MECHANISMS:
                problems.append(f"PIPELINE_KAFKA_SASL_MECHANISM must be one of {SASL_MECHANISMS}")
            if not self.kafka_sasl_username or not self.kafka_sasl_password:
                problems.append("SASL needs PIPELINE_KAFKA_SASL_USERNAME and _PASSWORD")
        if self.database_url and not self.database_url.startswith(
            ("postgresql://", "postgres://", "host=", "dbname=")
        ):
            problems.append(
                "PIPELINE_DATABASE_URL must be a postgresql:// URL or a conninfo string"
            )
        elif self.database_url and not _conninfo_parses(self.database_url):
            problems.append(
                "PIPELINE_DATABASE_URL cannot be parsed as a Postgres URL or conninfo string "
                "(value not shown: it may hold a password)"
            )
        if self.provisioner_addr and ":" not in self.provisioner_addr:
            problems.append("PIPELINE_PROVISIONER_ADDR must be host:port")
        if problems:
            raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


_INTS = {
    "max_attempts",
    "metrics_port",
    "partitions",
    "relay_batch_size",
    "worker_concurrency",
    "provisioner_batch",
    "ui_port",
    "replication_factor",
    "min_insync_replicas",
}
_FLOATS = {"backoff_scale", "relay_poll_interval"}
_SECRETS = {"kafka_sasl_password", "ui_token"}
_DURATIONS = {"outcome_retention", "command_retention"}
_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def _coerce(name: str, raw: Any) -> Any:
    if name in _INTS:
        return int(raw)
    if name in _FLOATS:
        return float(raw)
    if name in _SECRETS:
        return Secret(raw)
    if name in _DURATIONS:
        return duration_ms(str(raw))
    return str(raw)


def duration_ms(text: str) -> int:
    """``forever`` (or -1) is -1; otherwise a number with a unit: 90d, 12h, 30m, 45s, 500ms."""
    value = text.strip().lower()
    if value in ("forever", "-1"):
        return -1
    unit = next((u for u in ("ms", "s", "m", "h", "d") if value.endswith(u)), "")
    number = value[: len(value) - len(unit)]
    if not unit or not number.isdigit():
        raise ValueError("expected 'forever' or a whole number with a unit: ms, s, m, h, d")
    return int(number) * _UNITS_MS[unit]


def _conninfo_parses(url: str) -> bool:
    # Checked at start-up because libpq's parse errors quote the whole URL, password included,
    # and every component would otherwise repeat that message in its logs on each retry.
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(url)
    except ProgrammingError:
        return False
    return True


def _shown(name: str, raw: Any) -> str:
    return "***" if name in _SECRETS else repr(raw)


# --- the process environment: every read of os.environ in the package -------------------


def load(required: Collection[str] = REQUIRED_FOR_ALL, **overrides: Any) -> Config:
    """This process's Config: its ``PIPELINE_*`` variables, with flags (``overrides``) winning."""
    return Config.from_env(os.environ, required, **overrides)


def setting_variable(name: str) -> str | None:
    """The raw ``PIPELINE_<NAME>`` variable of setting ``name``, unparsed and unvalidated
    (``pipeline dev up`` only asks whether PIPELINE_DATABASE_URL is set)."""
    if name not in {f.name for f in dataclasses.fields(Config)}:
        raise KeyError(name)
    return os.environ.get(f"PIPELINE_{name.upper()}")


def stack_cache() -> Path | None:
    """PIPELINE_STACK_CACHE: where the local stack keeps Kafka's jars and its runs, if set."""
    value = os.environ.get("PIPELINE_STACK_CACHE")
    return Path(value).expanduser() if value else None


def passwords(variables: Iterable[str]) -> dict[str, str]:
    """The non-empty ones of ``variables``: passwords come only from the environment, as a
    flag would show in ``ps`` and the shell history."""
    return {v: os.environ[v] for v in variables if os.environ.get(v)}


def child_env(*, with_settings: bool = True) -> dict[str, str]:
    """A copy of this process's environment for a child process; ``with_settings=False``
    drops every ``PIPELINE_*`` variable, for a child that gets its settings from its parent
    alone (the demo's and the bench's components)."""
    return {k: v for k, v in os.environ.items() if with_settings or not k.startswith("PIPELINE_")}
