# ruff: noqa
# fmt: off
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class RegradeRequest(_message.Message):
    __slots__ = ("idempotency_key", "team_id", "resource_type", "resource_id", "target_tier")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    TARGET_TIER_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    team_id: str
    resource_type: str
    resource_id: str
    target_tier: str
    def __init__(self, idempotency_key: _Optional[str] = ..., team_id: _Optional[str] = ..., resource_type: _Optional[str] = ..., resource_id: _Optional[str] = ..., target_tier: _Optional[str] = ...) -> None: ...

class ResourceRequest(_message.Message):
    __slots__ = ("idempotency_key", "team_id", "resource_type", "resource_id")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    TEAM_ID_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    team_id: str
    resource_type: str
    resource_id: str
    def __init__(self, idempotency_key: _Optional[str] = ..., team_id: _Optional[str] = ..., resource_type: _Optional[str] = ..., resource_id: _Optional[str] = ...) -> None: ...

class ProvisionReply(_message.Message):
    __slots__ = ("applied", "skip_reason")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    SKIP_REASON_FIELD_NUMBER: _ClassVar[int]
    applied: bool
    skip_reason: str
    def __init__(self, applied: _Optional[bool] = ..., skip_reason: _Optional[str] = ...) -> None: ...
