"""One error root for everything the pipeline raises on purpose.

Driver errors (psycopg, aiokafka, grpc) are translated into these at the boundary of the
module that talks to the driver, so callers never need to import a driver to catch them.
"""

from __future__ import annotations

from typing import Any


class PipelineError(Exception):
    """Root of every error the pipeline raises deliberately."""


class ConfigError(PipelineError):
    """The configuration is missing or invalid; the message lists every problem."""


class StoreError(PipelineError):
    """Postgres refused or failed an operation."""


class InvalidPropagation(PipelineError):
    """An enqueue was asked for something the contract does not allow."""


class BrokerError(PipelineError):
    """Kafka refused or failed an operation."""


class StackError(PipelineError):
    """The local stack (Kafka, Postgres, provisioner) could not be started or reached."""


class ProvisionerError(PipelineError):
    """The provisioner adapter could not be set up."""


def login_hint(client_kwargs: dict[str, Any]) -> str:
    # aiokafka reports a refused SASL login as "Unable to bootstrap"; the broker's reason is on
    # aiokafka's own log line just before.
    if client_kwargs.get("sasl_mechanism"):
        return (
            " (if the broker refused the login: check PIPELINE_KAFKA_SASL_USERNAME, _PASSWORD"
            " and _MECHANISM)"
        )
    return ""
