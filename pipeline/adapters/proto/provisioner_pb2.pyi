# ruff: noqa
# fmt: off
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

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

class BatchItem(_message.Message):
    __slots__ = ("regrade", "suspend", "resume")
    REGRADE_FIELD_NUMBER: _ClassVar[int]
    SUSPEND_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    regrade: RegradeRequest
    suspend: ResourceRequest
    resume: ResourceRequest
    def __init__(self, regrade: _Optional[_Union[RegradeRequest, _Mapping]] = ..., suspend: _Optional[_Union[ResourceRequest, _Mapping]] = ..., resume: _Optional[_Union[ResourceRequest, _Mapping]] = ...) -> None: ...

class BatchRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[BatchItem]
    def __init__(self, items: _Optional[_Iterable[_Union[BatchItem, _Mapping]]] = ...) -> None: ...

class BatchResult(_message.Message):
    __slots__ = ("index", "code", "details", "reply")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    index: int
    code: int
    details: str
    reply: ProvisionReply
    def __init__(self, index: _Optional[int] = ..., code: _Optional[int] = ..., details: _Optional[str] = ..., reply: _Optional[_Union[ProvisionReply, _Mapping]] = ...) -> None: ...

class BatchReply(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[BatchResult]
    def __init__(self, results: _Optional[_Iterable[_Union[BatchResult, _Mapping]]] = ...) -> None: ...
