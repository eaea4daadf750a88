"""Handlers decide; adapters do.

A handler knows which provisioner call its kind needs and how to judge the reply, and both
are pure functions: ``request`` returns the call as a value (``ProvisionCall``), and the
processor hands a whole batch of them to the injected ``ProvisionerPort`` at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol, TypedDict

from pipeline.domain.decide import RetryPolicy, decide_reply
from pipeline.domain.events import Command, Decision, ProvisionReply, idempotency_key
from pipeline.domain.payloads import payload_problem


class Resource(TypedDict):
    """What every provisioner call names: the resource, and the key that makes it idempotent."""

    idempotency_key: str
    team_id: str
    resource_type: str
    resource_id: str


def resource_of(cmd: Command) -> Resource:
    return Resource(
        idempotency_key=idempotency_key(cmd.propagation_id),
        team_id=cmd.team_id,
        resource_type=cmd.resource_type,
        resource_id=cmd.resource_id,
    )


@dataclass(frozen=True, slots=True)
class ProvisionCall:
    """One provisioner call, as a value: which method, and its request's fields."""

    method: Literal["regrade", "suspend", "resume"]
    resource: Resource
    target_tier: str | None = None  # regrade only


# Replies as they arrive: (index of the call in its batch, reply).
Answered = list[tuple[int, ProvisionReply]]


class ProvisionerPort(Protocol):
    """The provisioner as the processor sees it; never raises for a failed call.

    ``apply`` makes every call of a batch (each with its own retries) and yields the replies
    as they arrive, so one slow call does not hold back the others' outcomes. Implemented
    over gRPC by ``pipeline.adapters.provisioner.GrpcProvisioner``.
    """

    def apply(self, calls: Sequence[ProvisionCall]) -> AsyncIterator[Answered]: ...


class Handler(Protocol):
    @property
    def kind(self) -> str: ...

    def validate(self, payload: Any) -> str | None: ...

    def request(self, cmd: Command) -> ProvisionCall: ...

    def decide(
        self, cmd: Command, reply: ProvisionReply, now: datetime, policy: RetryPolicy
    ) -> Decision: ...


@dataclass(frozen=True, slots=True)
class _Base:
    kind: str

    def validate(self, payload: Any) -> str | None:
        return payload_problem(self.kind, payload)

    def decide(
        self, cmd: Command, reply: ProvisionReply, now: datetime, policy: RetryPolicy
    ) -> Decision:
        return decide_reply(cmd.budget_attempt, reply, now, policy)


@dataclass(frozen=True, slots=True)
class RegradeHandler(_Base):
    """tier_elevation and tier_demotion: RegradeResource to ``payload.target_tier``."""

    def request(self, cmd: Command) -> ProvisionCall:
        return ProvisionCall("regrade", resource_of(cmd), cmd.payload["target_tier"])


@dataclass(frozen=True, slots=True)
class SuspendHandler(_Base):
    def request(self, cmd: Command) -> ProvisionCall:
        return ProvisionCall("suspend", resource_of(cmd))


@dataclass(frozen=True, slots=True)
class ResumeHandler(_Base):
    def request(self, cmd: Command) -> ProvisionCall:
        return ProvisionCall("resume", resource_of(cmd))
