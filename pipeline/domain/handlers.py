"""Handlers decide; adapters do.

A handler knows which provisioner call its kind needs and how to judge the reply. The call
itself goes through the injected ``ProvisionerPort``; the judgement is a pure function.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypedDict, Unpack

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


class ProvisionerPort(Protocol):
    """The provisioner as the handlers see it; never raises for a failed call.

    Implemented over gRPC by ``pipeline.adapters.provisioner.GrpcProvisioner``.
    """

    async def regrade(
        self, *, target_tier: str, **resource: Unpack[Resource]
    ) -> ProvisionReply: ...

    async def suspend(self, **resource: Unpack[Resource]) -> ProvisionReply: ...

    async def resume(self, **resource: Unpack[Resource]) -> ProvisionReply: ...


class Handler(Protocol):
    @property
    def kind(self) -> str: ...

    def validate(self, payload: Any) -> str | None: ...

    async def call(self, port: ProvisionerPort, cmd: Command) -> ProvisionReply: ...

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

    async def call(self, port: ProvisionerPort, cmd: Command) -> ProvisionReply:
        return await port.regrade(target_tier=cmd.payload["target_tier"], **resource_of(cmd))


@dataclass(frozen=True, slots=True)
class SuspendHandler(_Base):
    async def call(self, port: ProvisionerPort, cmd: Command) -> ProvisionReply:
        return await port.suspend(**resource_of(cmd))


@dataclass(frozen=True, slots=True)
class ResumeHandler(_Base):
    async def call(self, port: ProvisionerPort, cmd: Command) -> ProvisionReply:
        return await port.resume(**resource_of(cmd))
