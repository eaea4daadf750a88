import pytest

from pipeline.domain.errors import ConfigError
from pipeline.runtime.config import RESCUE_STUCK_AFTER, Config, Secret

BASE = {
    "PIPELINE_DATABASE_URL": "postgresql://u@h/db",
    "PIPELINE_KAFKA_BOOTSTRAP": "127.0.0.1:9092",
    "PIPELINE_PROVISIONER_ADDR": "127.0.0.1:50051",
}


def test_defaults_and_topic_names() -> None:
    cfg = Config.from_env({**BASE, "PIPELINE_TOPIC_PREFIX": "staging."})
    assert cfg.commands_topic == "staging.propagations"
    assert cfg.outcomes_topic == "staging.propagation-outcomes"
    assert cfg.processor_group.startswith("staging.")
    assert cfg.projection_name.startswith("staging.")
    assert cfg.backoff_scale == 1.0 and cfg.max_attempts == 10


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        Config.from_env({"PIPELINE_BACKOFF_SCALE": "fast", "PIPELINE_METRICS_PORT": "x"})
    text = str(err.value)
    for needle in (
        "PIPELINE_DATABASE_URL is required",
        "PIPELINE_KAFKA_BOOTSTRAP is required",
        "PIPELINE_PROVISIONER_ADDR is required",
        "PIPELINE_BACKOFF_SCALE='fast'",
        "PIPELINE_METRICS_PORT='x'",
    ):
        assert needle in text


def test_flags_override_the_environment() -> None:
    cfg = Config.from_env(BASE, backoff_scale="0.001")
    assert cfg.backoff_scale == 0.001


def test_sasl_needs_credentials_and_the_password_never_shows() -> None:
    with pytest.raises(ConfigError, match="SASL needs"):
        Config.from_env(
            {
                **BASE,
                "PIPELINE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "PIPELINE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            }
        )
    cfg = Config.from_env(
        {
            **BASE,
            "PIPELINE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "PIPELINE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
            "PIPELINE_KAFKA_SASL_USERNAME": "relay",
            "PIPELINE_KAFKA_SASL_PASSWORD": "sentinel-hunter2",
        }
    )
    assert isinstance(cfg.kafka_sasl_password, Secret)
    assert "sentinel-hunter2" not in repr(cfg)
    assert cfg.kafka_client_kwargs()["sasl_plain_password"] == "sentinel-hunter2"


def test_rescue_pin_is_exactly_25_minutes_and_in_the_pinned_settings() -> None:
    from datetime import timedelta

    from pipeline.runtime.config import CALL_TRIES_PER_ATTEMPT, HANDLER_DEADLINE

    assert timedelta(minutes=25) == RESCUE_STUCK_AFTER
    # longer than one whole attempt (every call at its deadline, plus pauses) ...
    assert HANDLER_DEADLINE * CALL_TRIES_PER_ATTEMPT + timedelta(seconds=5) < RESCUE_STUCK_AFTER
    # ... and far below the 80 minutes a default job rescuer would allow
    assert timedelta(minutes=80) > RESCUE_STUCK_AFTER
    cfg = Config.from_env(BASE)
    assert cfg.pinned()["rescue_stuck_after_s"] == 1500.0
