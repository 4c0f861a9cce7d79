from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Reading(_message.Message):
    __slots__ = ("sensor", "celsius", "taken_at")
    SENSOR_FIELD_NUMBER: _ClassVar[int]
    CELSIUS_FIELD_NUMBER: _ClassVar[int]
    TAKEN_AT_FIELD_NUMBER: _ClassVar[int]
    sensor: str
    celsius: float
    taken_at: int
    def __init__(self, sensor: _Optional[str] = ..., celsius: _Optional[float] = ..., taken_at: _Optional[int] = ...) -> None: ...
