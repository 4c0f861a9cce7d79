"""Protocol Buffers (``application/x-protobuf``): messages of generated classes.

A handler's payload is annotated with a message class generated from a ``.proto`` file (by
``protoc --python_out`` or ``python -m grpc_tools.protoc``, its ``*_pb2`` module committed with
the application), and each record's value is that message's binary encoding. The ``protobuf``
package reads and writes it; it comes with taskflow's ``protobuf`` extra.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

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
