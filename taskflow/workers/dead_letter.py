"""A dead letter: the record written to a dead-letter topic for a message the consumer gave up on.

It keeps the original key, value and headers and adds `taskflow-` headers that say where the
message came from and why it was given up. What taskflow adds is bounded (the exception message to
`MESSAGE_LIMIT` bytes, the traceback to `TRACEBACK_LIMIT`), so it stays a few KiB.

A dead letter must fit the producer's `max_request_size` like any record, and a message that was
rejected may be as large as the broker allows. So when the whole dead letter is too large, the
next smaller one leaves the value out and carries its size and SHA-256 instead
(`taskflow-value-omitted` says why); the smallest also leaves out the key and the original headers.
Each keeps where the original is (`taskflow-original-topic`, `-partition`, `-offset`), which is
where its value can be read while the topic's retention keeps it.

Two readers read a dead letter back, through one parsing of its `taskflow-` headers
(`_read_headers`, the one place on the reading side that knows their names): the strict
`DeadLetterRecord.from_message`, for a record that must be a dead letter taskflow wrote, and the
forgiving `read_dead_letter`, for any record on a dead-letter topic.
"""

from __future__ import annotations

import functools
import hashlib
import json
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from taskflow.brokers.base import record_size
from taskflow.codec import decode_headers

if TYPE_CHECKING:
    from taskflow.message import Headers, Message

__all__ = [
    "DEAD_LETTER_HEADERS",
    "MESSAGE_LIMIT",
    "TRACEBACK_LIMIT",
    "WHOLE",
    "DeadLetter",
    "DeadLetterHeaders",
    "DeadLetterRecord",
    "dead_letter",
    "dead_letter_headers",
    "fitting",
    "read_dead_letter",
    "retry_headers",
]

HEADER_PREFIX = "taskflow-"
MESSAGE_LIMIT: Final = 1024
"""Bytes of the exception message kept in `taskflow-exception-message` (its start)."""
TRACEBACK_LIMIT: Final = 4096
"""Bytes of the traceback kept in `taskflow-traceback` (its end, which names the exception)."""
_ELLIPSIS = "…".encode()

# How much of the original a dead letter leaves out, from nothing to all that can be.
WHOLE: Final = 0
WITHOUT_VALUE: Final = 1
BARE: Final = 2  # without the value, the key and the original headers


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-letter record, ready to publish."""

    value: bytes | None
    """The original's value (None for a tombstone), or ``b""`` when it is left out."""
    key: bytes | None
    headers: Headers
    omits: int
    """`WHOLE`, or how much of the original it leaves out (`WITHOUT_VALUE`, then `BARE`)."""

    def record(self) -> tuple[bytes | None, bytes | None, Headers]:
        """Its value, key and headers, as they are published."""
        return self.value, self.key, self.headers

    @property
    def size(self) -> int:
        """Its size as the producer counts it against `max_request_size`."""
        return record_size(self.value, self.key, self.headers)

    @property
    def smallest(self) -> bool:
        """True when no smaller dead letter of the same message can be made."""
        return self.omits == BARE


def dead_letter(message: Message, ours: Headers, omits: int = WHOLE, why: str = "") -> DeadLetter:
    """The dead letter of `message` with the `taskflow-` headers `ours`, leaving out `omits`.

    `why` says, in the `taskflow-…-omitted` headers, why the original was not kept whole.
    """
    if omits == WHOLE:
        return DeadLetter(message.value, message.key, message.headers + ours, WHOLE)
    value = message.value
    facts: Headers = (*ours, (HEADER_PREFIX + "value-omitted", why.encode()))
    if value is not None:  # a tombstone has no value to leave out, nor a size or digest
        facts += (
            (HEADER_PREFIX + "original-size", str(len(value)).encode()),
            (HEADER_PREFIX + "original-sha256", hashlib.sha256(value).hexdigest().encode()),
        )
    if omits == WITHOUT_VALUE:
        return DeadLetter(b"", message.key, message.headers + facts, WITHOUT_VALUE)
    if message.key is not None:
        facts += ((HEADER_PREFIX + "key-omitted", why.encode()),)
    if message.headers:
        facts += ((HEADER_PREFIX + "headers-omitted", why.encode()),)
    return DeadLetter(b"", None, facts, BARE)


def fitting(message: Message, ours: Headers, limit: int) -> DeadLetter:
    """The first dead letter of `message` that is at most `limit` bytes (else the smallest)."""
    letter = dead_letter(message, ours)
    size = letter.size
    if size <= limit:
        return letter
    why = f"the whole dead letter is {size} bytes, over the producer's max_request_size {limit}"
    letter = dead_letter(message, ours, WITHOUT_VALUE, why)
    if letter.size <= limit:
        return letter
    return dead_letter(message, ours, BARE, why)


def dead_letter_headers(
    message: Message, group: str, exc: BaseException, attempts: int, reason: str
) -> Headers:
    """The `taskflow-` headers that say where a dead letter came from and why."""
    fields = {
        "original-topic": message.topic.encode(),
        "original-partition": str(message.partition).encode(),
        "original-offset": str(message.offset).encode(),
        "original-timestamp": str(message.timestamp_ms).encode(),
        "consumer-group": group.encode(),
        "attempts": str(attempts).encode(),
        "reason": reason.encode(),
        "exception-type": f"{type(exc).__module__}.{type(exc).__qualname__}".encode(),
        "exception-message": _head(str(exc), MESSAGE_LIMIT),
        "traceback": _tail("".join(traceback.format_exception(exc, limit=-5)), TRACEBACK_LIMIT),
    }
    return tuple((HEADER_PREFIX + name, value) for name, value in fields.items())


def retry_headers(
    message: Message, group: str, exc: BaseException, attempts: int, due_ms: int
) -> Headers:
    """The `taskflow-` headers of the record that takes the original `message` to a retry topic
    (read back by `taskflow.retry_topics`): where it came from, what failed, when it is due."""
    fields = {
        "original-topic": message.topic.encode(),
        "original-partition": str(message.partition).encode(),
        "original-offset": str(message.offset).encode(),
        "original-timestamp": str(message.timestamp_ms).encode(),
        "consumer-group": group.encode(),
        "attempts": str(attempts).encode(),
        "exception-type": f"{type(exc).__module__}.{type(exc).__qualname__}".encode(),
        "exception-message": _head(str(exc), MESSAGE_LIMIT),
        "due": str(due_ms).encode(),
    }
    return tuple((HEADER_PREFIX + name, value) for name, value in fields.items())


@dataclass(frozen=True, slots=True)
class DeadLetterHeaders:
    """What the `taskflow-` headers of any record on a dead-letter topic say, as far as it has
    them: the forgiving reading `taskflow dlq show` lists a topic with. Tests and code that
    expect a dead letter taskflow wrote read it with `DeadLetterRecord.from_message`.

    Every field is None when the record does not carry its header (`taskflow` is False when it
    carries none: the record was not written by taskflow).
    """

    topic: str
    """The dead-letter topic, and where the record is on it:"""
    partition: int
    offset: int
    timestamp_ms: int
    """When the dead letter was written, as the broker stamped it."""
    taskflow: bool
    """True when the record carries taskflow's headers."""
    original_topic: str | None
    original_partition: int | None
    original_offset: int | None
    original_timestamp_ms: int | None
    consumer_group: str | None
    attempts: int | None
    reason: str | None
    exception_type: str | None
    exception_message: str | None
    traceback: str | None
    value_omitted: str | None
    """Why the original value was left out, when it was (the dead letter was too large)."""


def read_dead_letter(message: Message) -> DeadLetterHeaders:
    """The dead letter `message` is, read from its `taskflow-` headers (see `dead_letter_headers`).

    Never raises: a header that is missing, or a number that does not parse, is None.
    """
    read = _read_headers(message, "replace")
    return DeadLetterHeaders(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp_ms=message.timestamp_ms,
        taskflow="original_topic" in read.texts or "reason" in read.texts,
        original_topic=read.texts.get("original_topic"),
        original_partition=read.numbers.get("original_partition"),
        original_offset=read.numbers.get("original_offset"),
        original_timestamp_ms=read.numbers.get("original_timestamp_ms"),
        consumer_group=read.texts.get("consumer_group"),
        attempts=read.numbers.get("attempts"),
        reason=read.texts.get("reason"),
        exception_type=read.texts.get("exception_type"),
        exception_message=read.texts.get("exception_message"),
        traceback=read.texts.get("traceback"),
        value_omitted=read.texts.get("value_omitted"),
    )


# Every `taskflow-` header a dead letter is read from: (field, header name after the prefix, a
# number?). `DeadLetterHeaders` and `DeadLetterRecord` both read through `_read_headers`.
_HEADERS: Final = (
    ("original_topic", "original-topic", False),
    ("original_partition", "original-partition", True),
    ("original_offset", "original-offset", True),
    ("original_timestamp_ms", "original-timestamp", True),
    ("consumer_group", "consumer-group", False),
    ("attempts", "attempts", True),
    ("reason", "reason", False),
    ("exception_type", "exception-type", False),
    ("exception_message", "exception-message", False),
    ("traceback", "traceback", False),
    ("value_omitted", "value-omitted", False),
    ("key_omitted", "key-omitted", False),
    ("headers_omitted", "headers-omitted", False),
    ("original_size", "original-size", True),
    ("original_sha256", "original-sha256", False),
)
_HEADER_OF: Final = {field: HEADER_PREFIX + name for field, name, _ in _HEADERS}
DEAD_LETTER_HEADERS: Final = tuple((HEADER_PREFIX + name, number) for _, name, number in _HEADERS)
"""Every `taskflow-` header a dead letter may carry, and whether it holds a decimal number."""
# What `DeadLetterRecord.from_message` requires of a dead letter taskflow wrote.
_REQUIRED: Final = (
    "original_topic",
    "original_partition",
    "original_offset",
    "original_timestamp_ms",
    "consumer_group",
    "attempts",
    "reason",
    "exception_type",
    "exception_message",
)


@dataclass(frozen=True, slots=True)
class _Read:
    """A record's `taskflow-` headers by field: the text of each one it carries, and the
    numbers among them (None for one that does not parse)."""

    texts: dict[str, str]
    numbers: dict[str, int | None]
    own: Headers
    """The record's other headers, in order: the original's own."""


def _read_headers(message: Message, errors: str) -> _Read:
    """Read `message`'s headers, decoding taskflow's as UTF-8 with `errors` for bad bytes."""
    by_name = {
        name: value.decode(errors=errors)
        for name, value in message.headers
        if name.startswith(HEADER_PREFIX)
    }
    texts = {
        field: by_name[_HEADER_OF[field]] for field in _HEADER_OF if _HEADER_OF[field] in by_name
    }
    numbers = {
        field: _maybe_number(texts[field])
        for field, _, number in _HEADERS
        if number and field in texts
    }
    own = tuple((n, v) for n, v in message.headers if not n.startswith(HEADER_PREFIX))
    return _Read(texts, numbers, own)


def _maybe_number(text: str | None) -> int | None:
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


def _head(text: str, limit: int) -> bytes:
    """`text` as UTF-8, cut to its first `limit` bytes (on a character boundary, marked `…`)."""
    data = text.encode(errors="replace")
    if len(data) <= limit:
        return data
    return data[: limit - len(_ELLIPSIS)].decode(errors="ignore").encode() + _ELLIPSIS


def _tail(text: str, limit: int) -> bytes:
    """`text` as UTF-8, cut to its last `limit` bytes (on a character boundary, marked `…`)."""
    data = text.encode(errors="replace")
    if len(data) <= limit:
        return data
    return _ELLIPSIS + data[len(data) - limit + len(_ELLIPSIS) :].decode(errors="ignore").encode()


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """A dead letter read back from a dead-letter topic: the original and why it was given up.

    Built by [from_message][taskflow.workers.dead_letter.DeadLetterRecord.from_message] from a
    record taskflow wrote. Header values are decoded as UTF-8; bytes that are not UTF-8 read as
    ``\\xNN`` escapes (``raw_headers`` keeps the bytes).
    """

    topic: str
    """The dead-letter topic."""
    partition: int
    """The dead letter's partition in `topic`."""
    offset: int
    """The dead letter's offset in its partition."""
    original_topic: str
    original_partition: int
    original_offset: int
    original_timestamp_ms: int
    """The original's broker timestamp, in milliseconds since the Unix epoch."""
    group: str
    """The consumer group that gave the message up."""
    reason: str
    """``"rejected"`` (the handler raised `Reject`, or the payload did not decode) or
    ``"exhausted"`` (every attempt failed)."""
    attempts: int
    """How many times the handler was called for the message."""
    exception_type: str
    """The qualified name of the last exception, e.g. ``"taskflow.exceptions.Reject"``."""
    exception_message: str
    """Its message (the first `MESSAGE_LIMIT` bytes)."""
    traceback: str
    """The end of its traceback (the last `TRACEBACK_LIMIT` bytes)."""
    value: bytes | None
    """The original's value (None for a tombstone); ``b""`` when `value_omitted` says why."""
    key: bytes | None
    headers: dict[str, str]
    """The original's own headers (not taskflow's) as text; a repeated name keeps its last."""
    raw_headers: Headers
    """The original's own headers as they were, in order."""
    value_omitted: str | None = None
    """Why the value was left out (the dead letter would have been too large), or None."""
    key_omitted: bool = False
    headers_omitted: bool = False
    original_size: int | None = None
    """The left-out value's size in bytes, or None."""
    original_sha256: str | None = None
    """The left-out value's SHA-256 (hex), or None."""

    @property
    def original_timestamp(self) -> datetime:
        """The original's broker timestamp as an aware UTC datetime."""
        return datetime.fromtimestamp(self.original_timestamp_ms / 1000, tz=UTC)

    def json(self) -> Any:
        """The original value decoded as JSON (None for a tombstone)."""
        return None if self.value is None else json.loads(self.value)

    @classmethod
    def from_message(cls, message: Message) -> DeadLetterRecord:
        """Read the dead letter `message`, as taskflow wrote it to a dead-letter topic.

        Raises:
            ValueError: when `message` lacks the `taskflow-` headers of a dead letter.
        """
        read = _read_headers(message, "backslashreplace")
        missing = [_HEADER_OF[field] for field in _REQUIRED if field not in read.texts]
        if missing:
            raise ValueError(
                f"{message} is not a taskflow dead letter: it has no {', '.join(missing)} header"
            )
        number = functools.partial(_number, message, read)
        texts = read.texts
        return cls(
            topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            original_topic=texts["original_topic"],
            original_partition=number("original_partition"),
            original_offset=number("original_offset"),
            original_timestamp_ms=number("original_timestamp_ms"),
            group=texts["consumer_group"],
            reason=texts["reason"],
            attempts=number("attempts"),
            exception_type=texts["exception_type"],
            exception_message=texts["exception_message"],
            traceback=texts.get("traceback", ""),
            value=message.value,
            key=message.key,
            headers=decode_headers(read.own),
            raw_headers=read.own,
            value_omitted=texts.get("value_omitted"),
            key_omitted="key_omitted" in texts,
            headers_omitted="headers_omitted" in texts,
            original_size=number("original_size") if "original_size" in texts else None,
            original_sha256=texts.get("original_sha256"),
        )


def _number(message: Message, read: _Read, field: str) -> int:
    value = read.numbers[field]
    if value is None:
        raise ValueError(
            f"{message} is not a taskflow dead letter: its {_HEADER_OF[field]} header is "
            f"{read.texts[field]!r}, not a number"
        )
    return value
