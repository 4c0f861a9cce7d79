"""Payload encoding and decoding: bytes on the wire, Python values in handlers.

Decoders are chosen once, when a handler is registered, from its payload annotation; encoding is
chosen per published value. JSON is the format for everything that is not bytes or text.

JSON is UTF-8 (RFC 8259), for every payload type that is JSON: a payload in another encoding
(UTF-16 or UTF-32, which `json.loads` would otherwise guess from the bytes) or with invalid UTF-8 is
a `DecodeError`. A UTF-8 byte order mark before the JSON is ignored, as RFC 8259 allows. The
success path decodes UTF-8 and parses, nothing more; what went wrong is worked out only on failure.
"""

from __future__ import annotations

import codecs
import dataclasses
import functools
import json
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from taskflow.exceptions import DecodeError, HandlerSignatureError, PublishError, SkipTombstone
from taskflow.message import Headers, Message

__all__ = [
    "Decoder",
    "decode_headers",
    "decoder_for",
    "encode_headers",
    "encode_key",
    "encode_value",
    "feeding",
    "takes_tombstones",
]

Decoder = Callable[[Message], Any]

ALLOWED = (
    "Message, bytes, str, dict or list (JSON), a dataclass, or a pydantic model "
    "(when pydantic is installed)"
)


def decoder_for(annotation: Any) -> Decoder:
    """Return the function that turns a message into the value a handler's parameter asks for.

    A tombstone (a record whose value is None) decodes to None for an annotation that admits
    None (``dict | None``, ``Optional[Order]``), and to the message itself for `Message`; for
    any other annotation the decoder raises `SkipTombstone`.

    Raises:
        HandlerSignatureError: when the annotation is not a payload type taskflow can decode.
    """
    inner = _without_none(annotation)
    if inner is not annotation:
        return _or_none(_decoder_of(inner))
    return _decoder_of(annotation)


def takes_tombstones(annotation: Any) -> bool:
    """True when a handler whose payload is annotated `annotation` is given tombstones: it takes
    the `Message`, or its type admits None. Any other skips them (`SkipTombstone`)."""
    return annotation is Message or _without_none(annotation) is not annotation


def _without_none(annotation: Any) -> Any:
    """``X`` for ``X | None`` or ``Optional[X]``; any other annotation as it is."""
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return annotation
    args = typing.get_args(annotation)
    rest = tuple(arg for arg in args if arg is not type(None))
    if len(rest) == len(args):
        return annotation
    return rest[0] if len(rest) == 1 else typing.Union[rest]  # noqa: UP007 - built from parts


def _or_none(decode: Decoder) -> Decoder:
    def decode_or_none(message: Message) -> Any:
        return None if message.value is None else decode(message)

    return decode_or_none


def _tombstone(message: Message) -> SkipTombstone:
    return SkipTombstone(
        f"{message} is a tombstone; the handler's payload type does not admit None"
    )


def _decoder_of(annotation: Any) -> Decoder:
    if annotation is Message:
        return identity
    if annotation is bytes:
        return _raw
    if annotation is str:
        return _text
    origin = typing.get_origin(annotation) or annotation
    if origin is dict or origin is list:
        return _json_of(origin)
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return _dataclass_of(annotation)
    if _is_pydantic_model(annotation):
        return _pydantic_of(annotation)
    raise HandlerSignatureError(f"payload type {_name(annotation)} is not supported; use {ALLOWED}")


def identity(message: Message) -> Message:
    """The decoder of a `Message` parameter: the message itself."""
    return message


def _raw(message: Message) -> bytes:
    value = message.value
    if value is None:
        raise _tombstone(message)
    return value


# The decoders below read ``message.value.decode()`` at once: for a tombstone (None) that raises
# AttributeError, which costs the other messages nothing.


def _text(message: Message) -> str:
    try:
        return message.value.decode("utf-8")  # type: ignore[union-attr]
    except UnicodeDecodeError as exc:
        raise DecodeError(f"payload of {message} is not UTF-8 text: {exc}") from exc
    except AttributeError:
        raise _tombstone(message) from None


# Per message: `raw_decode` is json's scanner with one Python call around it, where
# `json.loads` adds three calls and two regular-expression matches (about 1 µs a payload).
_raw_decode = json.JSONDecoder().raw_decode


def _json(message: Message) -> Any:
    """The payload's JSON value. The fast path takes a payload that is one JSON value from its
    first byte to its last; anything else (whitespace around it, a BOM, an error) is parsed
    again by `_json_exact`."""
    try:
        text = message.value.decode()  # type: ignore[union-attr]
        value, end = _raw_decode(text)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return _json_exact(message)
    except AttributeError:
        raise _tombstone(message) from None
    return value if end == len(text) else _json_exact(message)


def _json_exact(message: Message) -> Any:
    """The payload's JSON value as `json.loads` reads it, or a DecodeError saying why not."""
    try:
        return json.loads(message.value.decode())  # type: ignore[union-attr]
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        return _json_after(message, exc)
    except AttributeError:
        raise _tombstone(message) from None


def _json_after(message: Message, exc: Exception) -> Any:
    """Parse a payload whose first reading failed with `exc`: without its BOM, or a DecodeError."""
    value = _value(message)
    if not value.startswith(codecs.BOM_UTF8):
        raise _not_json(message, exc) from exc
    try:
        return json.loads(value[len(codecs.BOM_UTF8) :].decode())
    except (ValueError, RecursionError) as again:
        raise _not_json(message, again) from again


def _value(message: Message) -> bytes:
    """The value of a message known not to be a tombstone."""
    value = message.value
    assert value is not None
    return value


def _not_json(message: Message, exc: Exception) -> DecodeError:
    return _not_utf8(message) or DecodeError(f"payload of {message} is not valid JSON: {exc}")


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


@functools.cache
def _json_of(kind: type) -> Decoder:
    decode = _json_feeding(kind, None)
    _JSON_KINDS[decode] = kind
    return decode


def _json_feeding(kind: type, target: Callable[[Any], Any] | None) -> Callable[..., Any]:
    """``(message, ctx=None)``: the payload's JSON value of type `kind`, or `target(value)``.

    Per message: `_json` inlined, and the handler's own call too when there is a `target`.
    """

    def call(message: Message, ctx: object = None) -> Any:
        try:
            text = message.value.decode()  # type: ignore[union-attr]
            value, end = _raw_decode(text)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            value = _json_exact(message)
        except AttributeError:
            raise _tombstone(message) from None
        else:
            if end != len(text):
                value = _json_exact(message)
        if not isinstance(value, kind):
            raise DecodeError(
                f"payload of {message} is a JSON {type(value).__name__}, expected {kind.__name__}"
            )
        return value if target is None else target(value)

    return call


_JSON_KINDS: dict[Decoder, type] = {}  # the decoder of each JSON payload type: dict, list


def feeding(decode: Decoder, target: Callable[[Any], Any]) -> Callable[[Message, object], Any]:
    """``(message, ctx) -> target(decode(message))``, ctx ignored, in one call per message.

    The handler adapter of a function that takes a payload and no Context: for a JSON payload
    the parse runs in the adapter itself rather than in a call of `decode`.
    """
    kind = _JSON_KINDS.get(decode)
    if kind is not None:
        return _json_feeding(kind, target)

    def call(message: Message, ctx: object) -> Any:
        return target(decode(message))

    return call


def _dataclass_of(cls: type) -> Decoder:
    def decode(message: Message) -> Any:
        fields = _json(message)
        if not isinstance(fields, dict):
            raise DecodeError(f"payload of {message} is not a JSON object for {cls.__name__}")
        try:
            return cls(**fields)
        except (TypeError, ValueError) as exc:  # a field mismatch, or __post_init__ refusing it
            raise DecodeError(f"payload of {message} does not fit {cls.__name__}: {exc}") from exc

    return decode


def _is_pydantic_model(annotation: Any) -> bool:
    try:
        from pydantic import BaseModel
    except ImportError:
        return False
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _pydantic_of(model: Any) -> Decoder:
    from pydantic import ValidationError

    def decode(message: Message) -> Any:
        value = message.value
        if value is None:
            raise _tombstone(message)
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
        summary = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or '<root>'}: {err['msg']}"
            for err in failure.errors()
        )
        raise DecodeError(f"payload of {message} is not a valid {model.__name__}: {summary}")

    return decode


def _name(annotation: Any) -> str:
    if isinstance(annotation, type) and not isinstance(annotation, types.GenericAlias):
        return annotation.__qualname__
    return repr(annotation)


def encode_value(value: Any) -> bytes | None:
    """Encode a published value: bytes as they are, str as UTF-8, None as None (a tombstone),
    anything else as JSON.

    Dataclass instances and pydantic models are encoded as their JSON objects. To publish the
    JSON ``null``, publish ``b"null"``.

    Raises:
        PublishError: when the value cannot be encoded.
    """
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, Message):
        raise PublishError(
            f"cannot publish a Message itself ({value}): publish its value, e.g. "
            "ctx.publish(topic, message.value, key=message.key, headers=message.headers)"
        )
    dump = None if isinstance(value, type) else getattr(value, "model_dump_json", None)
    if callable(dump):
        return str(dump()).encode("utf-8")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    try:
        # allow_nan=False: NaN and Infinity are not JSON, and other consumers would refuse them
        return json.dumps(value, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise PublishError(
            f"cannot publish a {type(value).__name__}: values are bytes, str, or "
            f"JSON-serialisable ({exc})"
        ) from exc


def encode_key(key: bytes | str | None) -> bytes | None:
    """Encode a message key (str as UTF-8)."""
    if key is None or isinstance(key, bytes):
        return key
    if isinstance(key, bytearray | memoryview):
        return bytes(key)
    if isinstance(key, str):
        return key.encode("utf-8")
    raise PublishError(f"a message key is bytes, str or None, got {type(key).__name__}")


def encode_headers(
    headers: Mapping[str, str | bytes] | Sequence[tuple[str, str | bytes]] | None,
) -> Headers:
    """Normalise headers to a tuple of (name, bytes) pairs.

    Raises:
        PublishError: when the headers are not a mapping or pairs of a str name and a str or
            bytes value.
    """
    if not headers:
        return ()
    if isinstance(headers, str | bytes) or not isinstance(headers, Iterable):
        raise PublishError(f"headers are a mapping or (name, value) pairs, got {headers!r}")
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    out: list[tuple[str, bytes]] = []
    for pair in pairs:
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise PublishError(f"a header is a (name, value) pair, got {pair!r}")
        name, value = pair
        if not isinstance(name, str):
            raise PublishError(f"header names are str, got {type(name).__name__}")
        if isinstance(value, str):
            value = value.encode("utf-8")
        elif not isinstance(value, bytes):
            raise PublishError(f"header {name!r} must be str or bytes, got {type(value).__name__}")
        out.append((name, value))
    return tuple(out)


def decode_headers(headers: Headers) -> dict[str, str]:
    """Headers as a dict of text, for reading and comparing.

    Values are decoded as UTF-8; bytes that are not UTF-8 read as ``\\xNN`` escapes. A name that
    repeats keeps its last value, as `Message.header` reads it.
    """
    return {name: value.decode(errors="backslashreplace") for name, value in headers}
