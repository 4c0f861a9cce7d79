"""MessagePack (``application/msgpack``): a binary format, read and written by msgspec.

It holds what JSON holds, and bytes and timestamps besides, in fewer bytes and faster. The payload
types are JSON's: dict and list, a dataclass (built from the map's fields), a msgspec Struct
(decoded and validated by msgspec) and a pydantic model (validated by pydantic).
"""

from __future__ import annotations

import functools
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

import msgspec

from taskflow.exceptions import DecodeError, PublishError
from taskflow.formats import (
    Fast,
    Parts,
    does_not_fit,
    holds_structs,
    is_dataclass_type,
    is_pydantic_model,
    is_struct,
    loose,
    name_of,
    pydantic_summary,
    unsupported,
)
from taskflow.message import Message

__all__ = ["MsgpackCodec"]

CONTENT_TYPE = "application/msgpack"

_any = msgspec.msgpack.Decoder().decode
_encode = msgspec.msgpack.Encoder().encode


@dataclass(frozen=True, slots=True)
class MsgpackCodec:
    """MessagePack (``application/msgpack``), by msgspec."""

    content_type: ClassVar[str] = CONTENT_TYPE

    def decoder(self, annotation: Any) -> Any:
        """The function from a value to `annotation`; see `taskflow.Codec`."""
        return loose(self.parts(annotation))

    def parts(self, annotation: Any) -> Parts:
        """The fast and slow readers of `annotation` (see `taskflow.formats`).

        Raises:
            HandlerSignatureError: when the annotation is not a payload type MessagePack reads.
        """
        origin = typing.get_origin(annotation) or annotation
        if is_struct(annotation) or holds_structs(annotation):
            return _struct_parts(annotation)
        if origin is dict or origin is list:
            return _kind_parts(origin)
        if is_dataclass_type(annotation):
            return _dataclass_parts(annotation)
        if is_pydantic_model(annotation):
            return _pydantic_parts(annotation)
        raise unsupported(annotation)

    def encode(self, value: Any) -> bytes:
        """`value` as MessagePack: a Struct, a dataclass or a pydantic model as its map.

        Raises:
            PublishError: when MessagePack cannot hold the value.
        """
        dump = None if isinstance(value, type) else getattr(value, "model_dump", None)
        if callable(dump):
            value = dump(mode="json")
        try:
            return _encode(value)
        except (TypeError, ValueError, OverflowError, msgspec.EncodeError) as exc:
            raise PublishError(
                f"cannot publish a {type(value).__name__} as MessagePack: {exc}"
            ) from exc


def _read(message: Message) -> Any:
    """The payload's MessagePack value, or a DecodeError saying why not."""
    try:
        return _any(message.value)  # type: ignore[arg-type]
    except (msgspec.DecodeError, RecursionError) as exc:
        raise DecodeError(f"payload of {message} is not valid MessagePack: {exc}") from exc


@functools.cache
def _kind_parts(kind: type) -> Parts:
    def slow(message: Message) -> Any:
        value = _read(message)
        if not isinstance(value, kind):
            raise DecodeError(
                f"payload of {message} is a MessagePack {type(value).__name__}, "
                f"expected {kind.__name__}"
            )
        return value

    return msgspec.msgpack.Decoder(kind).decode, slow


def _dataclass_parts(cls: type) -> Parts:
    fields_of = msgspec.msgpack.Decoder(dict).decode

    def fast(value: bytes) -> Any:
        return cls(**fields_of(value))

    def slow(message: Message) -> Any:
        fields = _read(message)
        if not isinstance(fields, dict):
            raise DecodeError(f"payload of {message} is not a MessagePack map for {cls.__name__}")
        try:
            return cls(**fields)
        except (TypeError, ValueError) as exc:  # a field mismatch, or __post_init__ refusing it
            raise does_not_fit(message, cls, exc) from exc

    return fast, slow


def _struct_parts(struct: type) -> Parts:
    decode: Fast = msgspec.msgpack.Decoder(struct).decode

    def slow(message: Message) -> Any:
        try:
            return decode(message.value)  # type: ignore[arg-type]
        except msgspec.ValidationError as exc:
            raise DecodeError(
                f"payload of {message} is not a valid {name_of(struct)}: {exc}"
            ) from exc
        except (msgspec.DecodeError, RecursionError) as exc:
            raise DecodeError(f"payload of {message} is not valid MessagePack: {exc}") from exc

    return decode, slow


def _pydantic_parts(model: Any) -> Parts:
    from pydantic import ValidationError

    def fast(value: bytes) -> Any:
        return model.model_validate(_any(value))

    def slow(message: Message) -> Any:
        try:
            return model.model_validate(_read(message))
        except ValidationError as exc:
            raise DecodeError(
                f"payload of {message} is not a valid {model.__name__}: {pydantic_summary(exc)}"
            ) from exc

    return fast, slow
