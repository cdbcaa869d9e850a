from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CheckLimitRequest(_message.Message):
    __slots__ = ("key", "cost", "limit")
    KEY_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    key: str
    cost: int
    limit: str
    def __init__(self, key: _Optional[str] = ..., cost: _Optional[int] = ..., limit: _Optional[str] = ...) -> None: ...

class CheckLimitResponse(_message.Message):
    __slots__ = ("allowed", "remaining", "retry_after", "reset_after", "limit")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_FIELD_NUMBER: _ClassVar[int]
    RESET_AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    remaining: int
    retry_after: float
    reset_after: float
    limit: int
    def __init__(self, allowed: _Optional[bool] = ..., remaining: _Optional[int] = ..., retry_after: _Optional[float] = ..., reset_after: _Optional[float] = ..., limit: _Optional[int] = ...) -> None: ...

class CheckLimitsRequest(_message.Message):
    __slots__ = ("checks",)
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    checks: _containers.RepeatedCompositeFieldContainer[CheckLimitRequest]
    def __init__(self, checks: _Optional[_Iterable[_Union[CheckLimitRequest, _Mapping]]] = ...) -> None: ...

class CheckLimitsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[CheckLimitResponse]
    def __init__(self, results: _Optional[_Iterable[_Union[CheckLimitResponse, _Mapping]]] = ...) -> None: ...

class GetUsageRequest(_message.Message):
    __slots__ = ("key", "limit")
    KEY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    key: str
    limit: str
    def __init__(self, key: _Optional[str] = ..., limit: _Optional[str] = ...) -> None: ...

class GetUsageResponse(_message.Message):
    __slots__ = ("used", "limit")
    USED_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    used: int
    limit: int
    def __init__(self, used: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class ResetLimitRequest(_message.Message):
    __slots__ = ("key", "limit")
    KEY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    key: str
    limit: str
    def __init__(self, key: _Optional[str] = ..., limit: _Optional[str] = ...) -> None: ...

class ResetLimitResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
