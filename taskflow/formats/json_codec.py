"""JSON, the default payload format: read by msgspec, written compact.

JSON is UTF-8 (RFC 8259), for every payload type: a payload in another encoding (UTF-16 or
UTF-32, which `json.loads` would otherwise guess from the bytes) or with invalid UTF-8 is a
`DecodeError`. A UTF-8 byte order mark before the JSON is ignored, as RFC 8259 allows.

The fast part of each payload type is msgspec's decoder for that type, a single call from the
bytes; when it refuses a payload, the payload is read again as `json.loads` reads it (so what
the standard library takes, such as ``NaN``, is still taken) or the error says why not. A
msgspec Struct is msgspec's all the way: decoded and validated in one step.
"""

from __future__ import annotations

import codecs
import dataclasses
import functools
import json
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

__all__ = ["JsonCodec"]

CONTENT_TYPE = "application/json"


@dataclass(frozen=True, slots=True)
class JsonCodec:
    """JSON (``application/json``), the default codec.

    Reads dict and list (any JSON object or array), a dataclass (built from the object's fields),
    a msgspec Struct (decoded and validated by msgspec) and a pydantic model (validated by
    pydantic). Writes compact JSON; NaN and infinities are refused, as JSON has no such numbers.
    """

    content_type: ClassVar[str] = CONTENT_TYPE

    def decoder(self, annotation: Any) -> Any:
        """The function from a value to `annotation`; see `taskflow.Codec`."""
        return loose(self.parts(annotation))

    def parts(self, annotation: Any) -> Parts:
        """The fast and slow readers of `annotation` (see `taskflow.formats`).

        Raises:
            HandlerSignatureError: when the annotation is not a payload type JSON reads.
        """
        return _parts(annotation)

    def encode(self, value: Any) -> bytes:
        """`value` as compact JSON: a Struct, a pydantic model or a dataclass as its object.

        Raises:
            PublishError: when the value is not JSON-serialisable.
        """
        if isinstance(value, msgspec.Struct):
            return _encode_struct(value)
        dump = None if isinstance(value, type) else getattr(value, "model_dump_json", None)
        if callable(dump):
            return str(dump()).encode("utf-8")
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            value = dataclasses.asdict(value)
        try:
            return _dumps(value).encode("utf-8")
        except (TypeError, ValueError, RecursionError) as exc:
            raise PublishError(
                f"cannot publish a {type(value).__name__}: values are bytes, str, or "
                f"JSON-serialisable ({exc})"
            ) from exc


def _builtins(value: Any) -> Any:
    """A Struct inside a published value, as the plain values of its JSON."""
    if isinstance(value, msgspec.Struct):
        return msgspec.to_builtins(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# One encoder for every value (json.dumps with options makes one per call). allow_nan=False: NaN
# and Infinity are not JSON, and other consumers would refuse them.
_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=_builtins).encode


def _encode_struct(value: msgspec.Struct) -> bytes:
    try:
        return _struct_encoder(value)
    except (TypeError, ValueError, msgspec.EncodeError) as exc:
        raise PublishError(f"cannot publish a {type(value).__name__} as JSON: {exc}") from exc


_struct_encoder = msgspec.json.Encoder().encode


def _parts(annotation: Any) -> Parts:
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


# -- dict and list -------------------------------------------------------------------------


@functools.cache
def _kind_parts(kind: type) -> Parts:
    def slow(message: Message) -> Any:
        value = json_exact(message)
        if not isinstance(value, kind):
            raise DecodeError(
                f"payload of {message} is a JSON {type(value).__name__}, expected {kind.__name__}"
            )
        return value

    return msgspec.json.Decoder(kind).decode, slow


def json_exact(message: Message) -> Any:
    """The payload's JSON value as `json.loads` reads it, or a DecodeError saying why not."""
    value = _value(message)
    try:
        return json.loads(value.decode())
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        failure: Exception = exc
    if value.startswith(codecs.BOM_UTF8):
        try:
            return json.loads(value[len(codecs.BOM_UTF8) :].decode())
        except (ValueError, RecursionError) as again:
            failure = again
    raise _not_utf8(message) or DecodeError(
        f"payload of {message} is not valid JSON: {failure}"
    ) from failure


def _value(message: Message) -> bytes:
    """The value of a message known not to be a tombstone."""
    value = message.value
    assert value is not None
    return value


def _not_utf8(message: Message) -> DecodeError | None:
    """The DecodeError of a payload that is not UTF-8, or None if it is."""
    value = _value(message)
    encoding = json.detect_encoding(value)  # UTF-16 and UTF-32 by their BOM or zero bytes
    if not encoding.startswith("utf-8"):
        return DecodeError(
            f"payload of {message} is {encoding.upper()} text; JSON payloads must be UTF-8"
        )
    try:
        value.decode()
    except UnicodeDecodeError as exc:
        return DecodeError(f"payload of {message} is not UTF-8, as JSON payloads must be: {exc}")
    return None


# -- dataclasses ---------------------------------------------------------------------------


def _dataclass_parts(cls: type) -> Parts:
    fields_of = msgspec.json.Decoder(dict).decode

    def fast(value: bytes) -> Any:
        return cls(**fields_of(value))

    def slow(message: Message) -> Any:
        fields = json_exact(message)
        if not isinstance(fields, dict):
            raise DecodeError(f"payload of {message} is not a JSON object for {cls.__name__}")
        try:
            return cls(**fields)
        except (TypeError, ValueError) as exc:  # a field mismatch, or __post_init__ refusing it
            raise does_not_fit(message, cls, exc) from exc

    return fast, slow


# -- msgspec Structs -----------------------------------------------------------------------


def _struct_parts(struct: type) -> Parts:
    decode: Fast = msgspec.json.Decoder(struct).decode

    def slow(message: Message) -> Any:
        value = _value(message)
        try:
            return decode(value)
        except (msgspec.DecodeError, RecursionError) as exc:
            failure: Exception = exc
        if value.startswith(codecs.BOM_UTF8):
            try:
                return decode(value[len(codecs.BOM_UTF8) :])
            except (msgspec.DecodeError, RecursionError) as exc:
                failure = exc
        not_utf8 = _not_utf8(message)
        if not_utf8 is not None:
            raise not_utf8 from failure
        if isinstance(failure, msgspec.ValidationError):
            raise DecodeError(
                f"payload of {message} is not a valid {name_of(struct)}: {failure}"
            ) from failure
        raise DecodeError(f"payload of {message} is not valid JSON: {failure}") from failure

    return decode, slow


# -- pydantic models -----------------------------------------------------------------------


def _pydantic_parts(model: Any) -> Parts:
    from pydantic import ValidationError

    def slow(message: Message) -> Any:
        value = _value(message)
        try:
            return model.model_validate_json(value)
        except ValidationError as exc:
            failure = exc
        if value.startswith(codecs.BOM_UTF8):
            try:
                return model.model_validate_json(value[len(codecs.BOM_UTF8) :])
            except ValidationError as exc:
                failure = exc
        not_utf8 = _not_utf8(message)
        if not_utf8 is not None:
            raise not_utf8
        raise DecodeError(
            f"payload of {message} is not a valid {model.__name__}: {pydantic_summary(failure)}"
        )

    return model.model_validate_json, slow
