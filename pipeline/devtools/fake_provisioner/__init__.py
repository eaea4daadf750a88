"""A real gRPC provisioner with scripted failures, for tests, the demo and the benchmark.

It speaks ``schemas/provisioner.proto`` over grpc.aio like any other implementation, keeps the
idempotency contract (a key is applied at most once), and records every call and effect so a
test can prove that no regrade was lost or applied twice. Failures are injected by
:class:`Rule` values; an HTTP admin endpoint lets a test drive one running in another process.

Modules: ``rules`` (Rule and the pure ``choose_rule``), ``records`` (Call, Effect), ``server``
(FakeProvisioner), ``admin`` (the HTTP endpoint), ``cli`` (``pipeline fake-provisioner``).
"""

from importlib import import_module
from typing import TYPE_CHECKING

from pipeline.devtools.fake_provisioner.cli import add_parser

if TYPE_CHECKING:
    from pipeline.devtools.fake_provisioner.records import Call, Effect
    from pipeline.devtools.fake_provisioner.rules import (
        ACTIONS,
        METHODS,
        Rule,
        choose_rule,
        load_rules,
        rules_from_json,
    )
    from pipeline.devtools.fake_provisioner.server import FakeProvisioner

# The names below load on first use (PEP 562), from the module that defines them: `pipeline
# --help` imports this package for the fake-provisioner parser and must load no grpc.
_DEFINED_IN = {
    name: "rules"
    for name in ("ACTIONS", "METHODS", "Rule", "choose_rule", "load_rules", "rules_from_json")
} | {"Call": "records", "Effect": "records", "FakeProvisioner": "server"}


def __getattr__(name: str) -> object:
    if name not in _DEFINED_IN:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_DEFINED_IN[name]}"), name)


__all__ = [
    "ACTIONS",
    "METHODS",
    "Call",
    "Effect",
    "FakeProvisioner",
    "Rule",
    "add_parser",
    "choose_rule",
    "load_rules",
    "rules_from_json",
]
