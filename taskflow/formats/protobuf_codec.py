"""Protocol Buffers (``application/x-protobuf``): messages of generated classes.

A handler's payload is annotated with a message class generated from a ``.proto`` file (by
``protoc --python_out`` or ``python -m grpc_tools.protoc``, its ``*_pb2`` module committed with
the application), and each record's value is that message's binary encoding. The ``protobuf``
package reads and writes it; it comes with taskflow's ``protobuf`` extra.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, cast

from taskflow.exceptions import ConfigurationError, PublishError
from taskflow.formats import name_of

__all__ = ["ProtobufCodec"]

CONTENT_TYPE = "application/x-protobuf"


def _message_class() -> Any:
    """The base class of generated messages, or the ConfigurationError naming the extra."""
    try:
        from google.protobuf import message
    except ImportError as exc:
        raise ConfigurationError(
            "ProtobufCodec needs protobuf, which is not installed: install taskflow with its "
            "protobuf extra (pip install 'path/to/taskflow[protobuf]'), or protobuf itself"
        ) from exc
    return message.Message


@dataclass(frozen=True, slots=True)
class ProtobufCodec:
    """Protocol Buffers (``application/x-protobuf``): a payload annotated with a generated
    message class is parsed from the record's value, and a published message is written by
    ``SerializeToString()``.

    Raises:
        ConfigurationError: when protobuf is not installed (the ``protobuf`` extra).
    """

    content_type: ClassVar[str] = CONTENT_TYPE

    def __post_init__(self) -> None:
        _message_class()

    def decoder(self, annotation: Any) -> Callable[[bytes], Any]:
        """The function from a value to `annotation`, a generated message class; see
        `taskflow.Codec`.

        Raises:
            TypeError: for a payload type that is not a generated message class.
        """
        base = _message_class()
        if not (isinstance(annotation, type) and issubclass(annotation, base)):
            raise TypeError(
                "Protocol Buffers payloads are read as a generated message class "
                f"(from a *_pb2 module), not {name_of(annotation)}"
            )
        return _parser(annotation)

    def payload_schema(self, annotation: Any) -> dict[str, Any] | None:
        """The JSON Schema of a generated message class, from its descriptor: each field by its
        ``.proto`` name, with its type, repeated fields as arrays, maps as objects, enums by
        their value names and nested messages inline. It describes the message's fields; the
        bytes are the binary encoding (the ``contentType``). None for any other annotation.
        """
        if not (isinstance(annotation, type) and issubclass(annotation, _message_class())):
            return None
        return _message_schema(cast("Any", annotation).DESCRIPTOR, ())

    def encode(self, value: Any) -> bytes:
        """`value`, a protobuf message, in its binary encoding.

        Raises:
            PublishError: when the value is not a protobuf message, or lacks a required field.
        """
        if not isinstance(value, _message_class()):
            raise PublishError(
                f"cannot publish a {type(value).__name__} as Protocol Buffers: publish an "
                "instance of a generated message class"
            )
        try:
            return bytes(value.SerializeToString())
        except Exception as exc:  # EncodeError: a proto2 required field is missing
            raise PublishError(
                f"cannot publish a {type(value).__name__} as Protocol Buffers: {exc}"
            ) from exc


def _parser(cls: Any) -> Callable[[bytes], Any]:
    from google.protobuf.message import DecodeError as ProtobufDecodeError

    parse = cls.FromString

    def decode(value: bytes) -> Any:
        try:
            return parse(value)
        except ProtobufDecodeError as exc:
            raise ValueError(str(exc)) from exc  # taskflow dead-letters it, naming the record

    return decode


# The JSON Schema of each scalar field type, by the descriptor's type number (TYPE_DOUBLE is 1).
_SCALARS: dict[int, dict[str, Any]] = {
    1: {"type": "number", "format": "double"},
    2: {"type": "number", "format": "float"},
    3: {"type": "integer", "format": "int64"},
    4: {"type": "integer", "format": "uint64", "minimum": 0},
    5: {"type": "integer", "format": "int32"},
    6: {"type": "integer", "format": "fixed64", "minimum": 0},
    7: {"type": "integer", "format": "fixed32", "minimum": 0},
    8: {"type": "boolean"},
    9: {"type": "string"},
    12: {"type": "string", "format": "binary"},
    13: {"type": "integer", "format": "uint32", "minimum": 0},
    15: {"type": "integer", "format": "sfixed32"},
    16: {"type": "integer", "format": "sfixed64"},
    17: {"type": "integer", "format": "sint32"},
    18: {"type": "integer", "format": "sint64"},
}
_ENUM, _MESSAGE, _GROUP = 14, 11, 10


def _message_schema(descriptor: Any, seen: tuple[str, ...]) -> dict[str, Any]:
    """The JSON Schema of a message descriptor; a message inside itself is named, not repeated."""
    if descriptor.full_name in seen:
        return {"type": "object", "title": descriptor.full_name, "description": "recursive"}
    seen = (*seen, descriptor.full_name)
    properties = {field.name: _field_schema(field, seen) for field in descriptor.fields}
    schema: dict[str, Any] = {"type": "object", "title": descriptor.full_name}
    schema["properties"] = properties
    required = [field.name for field in descriptor.fields if field.is_required]
    if required:
        schema["required"] = required
    return schema


def _field_schema(field: Any, seen: tuple[str, ...]) -> dict[str, Any]:
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        value = _single_schema(entry.fields_by_name["value"], seen)
        return {"type": "object", "additionalProperties": value}
    single = _single_schema(field, seen)
    return {"type": "array", "items": single} if field.is_repeated else single


def _single_schema(field: Any, seen: tuple[str, ...]) -> dict[str, Any]:
    if field.type in (_MESSAGE, _GROUP):
        return _message_schema(field.message_type, seen)
    if field.type == _ENUM:
        names = [value.name for value in field.enum_type.values]
        return {"type": "string", "title": field.enum_type.full_name, "enum": names}
    return dict(_SCALARS[field.type])
