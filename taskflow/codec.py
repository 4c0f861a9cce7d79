"""Payloads: bytes on the wire, Python values in handlers, and the codecs between them.

Decoders are chosen once, when a handler is registered, from its payload annotation and the
registration's codec (JSON unless the app or the registration names another); encoding is
chosen per published value. `Message`, `bytes` and `str` are no codec's business: a handler
taking one gets the record, its value, or its value as UTF-8 text, whatever the format.

A record names its format in its ``content-type`` header; taskflow writes it on every value a
codec encodes. A consumer reads a record whose header names another content type than its own
codec's with the app's codec of that type, and rejects one whose type the app has no codec for
(a `DecodeError`, so it is dead-lettered). A record without the header, or whose header names
no type (an empty value), is read with the registration's codec. Per record, the header is the
only thing looked at before the parse.
"""

from __future__ import annotations

import types
import typing
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from taskflow.exceptions import (
    ConfigurationError,
    DecodeError,
    HandlerSignatureError,
    PublishError,
    SkipTombstone,
)
from taskflow.formats import ALLOWED, Fast, Parts, Slow, name_of
from taskflow.formats.json_codec import JsonCodec
from taskflow.formats.msgpack_codec import MsgpackCodec
from taskflow.message import Headers, Message
from taskflow.types import Codec

__all__ = [
    "ALLOWED",
    "CONTENT_TYPE",
    "JSON",
    "MSGPACK",
    "Codecs",
    "Decoder",
    "codec_shown",
    "decode_headers",
    "decoder_for",
    "encode_headers",
    "encode_key",
    "encode_record",
    "encode_value",
    "feeding",
    "is_content_type",
    "takes_tombstones",
    "with_content_type",
]

Decoder = Callable[[Message], Any]

CONTENT_TYPE = "content-type"
"""The header that names a record's format, as in the CloudEvents Kafka binding."""

JSON = JsonCodec()
"""The built-in JSON codec (``application/json``), the default."""
MSGPACK = MsgpackCodec()
"""The built-in MessagePack codec (``application/msgpack``)."""


def is_content_type(name: str) -> bool:
    """True for a header named ``content-type`` in any case: Kafka header names are
    case-sensitive, but producers that follow HTTP write ``Content-Type``."""
    return len(name) == len(CONTENT_TYPE) and name.lower() == CONTENT_TYPE


def media_type(content_type: str | bytes) -> str:
    """The media type of a content type, for comparing: ``Application/JSON; charset=utf-8`` is
    ``application/json``."""
    if isinstance(content_type, bytes):
        content_type = content_type.decode("latin-1")
    return content_type.partition(";")[0].strip().lower()


class Codecs:
    """The codecs an app reads records with, by media type: the built-ins (JSON, MessagePack)
    and the codecs it was given, which replace a built-in of the same type.

    Codecs of one class are taken for one format: of several instances given for a content
    type, the first one given reads the records that name it.
    """

    def __init__(self, given: Iterable[Codec] = ()) -> None:
        self._builtin: dict[str, Codec] = {JSON.content_type: JSON, MSGPACK.content_type: MSGPACK}
        self._given: dict[str, Codec] = {}
        for codec in given:
            self.add(codec)

    def add(self, codec: Codec) -> Codec:
        """Read records of `codec`'s content type with it; returns it.

        Raises:
            ConfigurationError: when it is not a codec, or a codec of another class was given
                for its content type.
        """
        kind = media_type(checked_codec(codec).content_type)
        known = self._given.get(kind)
        if known is not None and type(known) is not type(codec):
            raise ConfigurationError(
                f"two codecs for {kind}: {known!r} and {codec!r}; an app reads each content "
                "type with one codec"
            )
        self._given.setdefault(kind, codec)  # of one class, the first one given reads
        return codec

    def get(self, content_type: str | bytes) -> Codec | None:
        """The codec of a content type (its parameters ignored), or None."""
        kind = media_type(content_type)
        return self._given.get(kind) or self._builtin.get(kind)

    def __iter__(self) -> Iterator[Codec]:
        return iter({**self._builtin, **self._given}.values())

    def content_types(self) -> list[str]:
        """The media types read, sorted."""
        return sorted({*self._builtin, *self._given})


def checked_codec(codec: Any) -> Codec:
    """`codec`, once it is seen to be one.

    Raises:
        ConfigurationError: naming what is missing.
    """
    if isinstance(codec, type):
        raise ConfigurationError(
            f"{codec.__qualname__} is not a codec but a class of them: pass an instance, "
            f"{codec.__qualname__}()"
        )
    content_type = getattr(codec, "content_type", None)
    if not isinstance(content_type, str) or "/" not in content_type:
        raise ConfigurationError(
            f"{codec!r} is not a codec: a codec has a `content_type` such as "
            "'application/json', a `decoder(annotation)` and an `encode(value)` method"
        )
    for method in ("decoder", "encode"):
        if not callable(getattr(codec, method, None)):
            raise ConfigurationError(f"codec {codec!r} has no `{method}` method")
    return typing.cast(Codec, codec)


BUILTIN = Codecs()


def codec_shown(codec: Codec) -> str | None:
    """How `taskflow info` names a consumer's codec: its content type, with its class when it is
    not a built-in; None for the default, JSON."""
    if codec == JSON:
        return None
    if isinstance(codec, JsonCodec | MsgpackCodec):
        return codec.content_type
    return f"{codec.content_type} ({type(codec).__qualname__})"


# -- decoding ------------------------------------------------------------------------------


def decoder_for(
    annotation: Any, codec: Codec | None = None, codecs: Codecs | None = None
) -> Decoder:
    """Return the function that turns a message into the value a handler's parameter asks for.

    `codec` reads the payload (default JSON), and `codecs` a record whose ``content-type``
    names another format (default the built-ins).

    A tombstone (a record whose value is None) decodes to None for an annotation that admits
    None (``dict | None``, ``Optional[Order]``), and to the message itself for `Message`; for
    any other annotation the decoder raises `SkipTombstone`.

    Raises:
        HandlerSignatureError: when the annotation is not a payload type the codec can decode.
    """
    codec, codecs = codec or JSON, codecs or BUILTIN
    inner = _without_none(annotation)
    decode = _decoder_of(inner, codec, codecs)
    return decode if inner is annotation else _or_none(decode)


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


def _decoder_of(annotation: Any, codec: Codec, codecs: Codecs) -> Decoder:
    if annotation is Message:
        return identity
    if annotation is bytes:
        return _raw
    if annotation is str:
        return _text
    fast, slow = parts_of(codec, annotation)
    own = codec.content_type.encode("latin-1")
    other = _others(annotation, codec, codecs)
    decode = _reading(fast, slow, own, other, None)
    _READINGS[decode] = fast, slow, own, other
    return decode


def identity(message: Message) -> Message:
    """The decoder of a `Message` parameter: the message itself."""
    return message


def _raw(message: Message) -> bytes:
    value = message.value
    if value is None:
        raise _tombstone(message)
    return value


def _text(message: Message) -> str:
    try:
        return message.value.decode("utf-8")  # type: ignore[union-attr]
    except UnicodeDecodeError as exc:
        raise DecodeError(f"payload of {message} is not UTF-8 text: {exc}") from exc
    except AttributeError:  # a tombstone: None has no decode
        raise _tombstone(message) from None


def parts_of(codec: Codec, annotation: Any) -> Parts:
    """The fast and slow readers of `annotation` by `codec` (see `taskflow.formats`).

    A built-in codec gives its own; any other codec's decoder is the fast part, and the slow part
    calls it again to turn its error into a `DecodeError` naming the record.

    Raises:
        HandlerSignatureError: when the codec does not read that payload type.
    """
    parts = getattr(codec, "parts", None)
    if isinstance(codec, JsonCodec | MsgpackCodec) and callable(parts):
        return typing.cast(Parts, parts(annotation))
    try:
        fast = codec.decoder(annotation)
    except HandlerSignatureError:
        raise
    except TypeError as exc:
        raise HandlerSignatureError(
            f"payload type {name_of(annotation)} is not read by the {codec.content_type} codec "
            f"{codec!r}: {exc}"
        ) from exc
    return fast, _naming_errors(fast, codec.content_type)


def _naming_errors(fast: Fast, content_type: str) -> Slow:
    def slow(message: Message) -> Any:
        try:
            return fast(message.value)  # type: ignore[arg-type]
        except (ValueError, TypeError, RecursionError) as exc:  # DecodeError is a ValueError
            raise DecodeError(f"payload of {message} is not valid {content_type}: {exc}") from exc

    return slow


Other = Callable[[Message, bytes], Any]  # reads a record by its content-type header's value


def _reading(
    fast: Fast, slow: Slow, own: bytes, other: Other, target: Callable[[Any], Any] | None
) -> Callable[..., Any]:
    """``(message, ctx=None)``: the payload, or `target(payload)` when there is a target.

    Per record: the ``content-type`` header, its name in any case, is looked for (when the
    record has headers); when it names the registration's own type, or is absent, `fast` reads
    the value in one call.
    """

    def call(message: Message, ctx: object = None) -> Any:
        headers = message.headers
        if headers:
            name, found = headers[-1]  # where taskflow writes it
            if name != "content-type":
                found = None  # type: ignore[assignment]
                for name, header in headers:
                    if is_content_type(name):
                        found = header  # the last one counts
            if found is not None and found != own:
                decoded = other(message, found)
                return decoded if target is None else target(decoded)
        value = message.value
        if value is None:
            raise _tombstone(message)
        try:
            decoded = fast(value)
        except (ValueError, TypeError, RecursionError):
            decoded = slow(message)
        return decoded if target is None else target(decoded)

    return call


# The parts of each decoder `_decoder_of` made, for `feeding`; kept while the decoder is.
_READINGS: weakref.WeakKeyDictionary[Decoder, tuple[Fast, Slow, bytes, Other]] = (
    weakref.WeakKeyDictionary()
)


HEADER_VALUES = 64
"""How many distinct ``content-type`` values a registration looks up as they are."""


def _others(annotation: Any, codec: Codec, codecs: Codecs) -> Other:
    """How a registration reads records whose content type is not its codec's: with the app's
    codec of that type, its decoder made at the first such record.

    The decoders are kept by media type, of which there are as many as the app has codecs: by
    the header's whole value, a producer varying its parameters would grow them without end.
    The first `HEADER_VALUES` values seen are looked up as they are, sparing each record of
    theirs the parse of its header.
    """
    by_type: dict[str, Parts] = {}
    by_value: dict[bytes, Parts] = {}

    def other(message: Message, found: bytes) -> Any:
        parts = by_value.get(found)
        if parts is None:
            kind = media_type(found)
            parts = by_type.get(kind)
            if parts is None:
                parts = by_type[kind] = _parts_by_type(message, found, annotation, codec, codecs)
            if len(by_value) < HEADER_VALUES:
                by_value[found] = parts
        value = message.value
        if value is None:
            raise _tombstone(message)
        fast, slow = parts
        try:
            return fast(value)
        except (ValueError, TypeError, RecursionError):
            return slow(message)

    return other


def _parts_by_type(
    message: Message, found: bytes, annotation: Any, own: Codec, codecs: Codecs
) -> Parts:
    shown = repr(found)[2:-1]  # the bytes escaped once, on one line: media types are ASCII
    # A header naming no type (empty: a null value arrives so from Kafka) is as if absent.
    codec = codecs.get(found) if media_type(found) else own
    if codec is None:
        raise DecodeError(
            f"payload of {message} has content-type '{shown}', which this app has no codec "
            f"for (it reads {', '.join(codecs.content_types())})"
        )
    if media_type(codec.content_type) == media_type(own.content_type):
        codec = own
    try:
        return parts_of(codec, annotation)
    except HandlerSignatureError as exc:
        raise DecodeError(
            f"payload of {message} has content-type '{shown}', which cannot be read as "
            f"{name_of(annotation)}: {exc}"
        ) from exc


def feeding(decode: Decoder, target: Callable[[Any], Any]) -> Callable[[Message, object], Any]:
    """``(message, ctx) -> target(decode(message))``, ctx ignored, in one call per message.

    The handler adapter of a function that takes a payload and no Context: for a payload a codec
    reads, the parse runs in the adapter itself rather than in a call of `decode`.
    """
    reading = _READINGS.get(decode)
    if reading is not None:
        return _reading(*reading, target)

    def call(message: Message, ctx: object) -> Any:
        return target(decode(message))

    return call


# -- encoding ------------------------------------------------------------------------------


def encode_value(value: Any, codec: Codec | None = None) -> bytes | None:
    """Encode a published value: bytes as they are, str as UTF-8, None as None (a tombstone),
    anything else by `codec` (default JSON).

    With JSON, dataclass instances, msgspec Structs and pydantic models are encoded as their
    JSON objects. To publish the JSON ``null``, publish ``b"null"``.

    Raises:
        PublishError: when the value cannot be encoded.
    """
    return encode_record(value, (), codec)[0]


def encode_record(
    value: Any, headers: Headers, codec: Codec | None = None
) -> tuple[bytes | None, Headers]:
    """A published value's bytes and its headers: for a value `codec` encodes, `headers` with
    the codec's ``content-type`` in place of any the caller gave; else `headers` as they are.

    Raises:
        PublishError: when the value cannot be encoded.
    """
    if value is None:
        return None, headers
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value), headers
    if isinstance(value, str):
        return value.encode("utf-8"), headers
    if isinstance(value, Message):
        raise PublishError(
            f"cannot publish a Message itself ({value}): publish its value, e.g. "
            "ctx.publish(topic, message.value, key=message.key, headers=message.headers)"
        )
    codec = codec or JSON
    payload = _encoded(value, codec)
    return payload, with_content_type(headers, codec)


def with_content_type(headers: Headers, codec: Codec) -> Headers:
    """`headers` without any content type (its name in any case), then `codec`'s."""
    kept = tuple(pair for pair in headers if not is_content_type(pair[0])) if headers else ()
    return (*kept, (CONTENT_TYPE, codec.content_type.encode("latin-1")))


def _encoded(value: Any, codec: Codec) -> bytes:
    try:
        payload = codec.encode(value)
    except PublishError:
        raise
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise PublishError(
            f"cannot publish a {type(value).__name__} as {codec.content_type}: {exc}"
        ) from exc
    if not isinstance(payload, bytes):
        raise PublishError(
            f"codec {codec!r} encoded a {type(value).__name__} as a "
            f"{type(payload).__name__}; a codec's encode returns bytes"
        )
    return payload


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
