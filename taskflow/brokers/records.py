"""Kafka's record format, as far as taskflow needs it: how large a record counts.

A Kafka producer refuses a record larger than its ``max_request_size`` before it sends it, using an
upper-bound estimate of the record's size in a v2 record batch. The memory broker enforces the
same limit and the dead-letter path sizes what it sends, so both count exactly as the producer
does, without importing the Kafka client.

A fetched record is counted differently, by what it holds in memory (`message_bytes`): the memory
budget of a process (`taskflow.workers.budget`) and the memory broker's fetch size use that.
"""

from __future__ import annotations

from typing import Final

from taskflow.message import Headers, Message

__all__ = ["DEFAULT_MAX_REQUEST_SIZE", "message_bytes", "record_size"]

DEFAULT_MAX_REQUEST_SIZE: Final = 1_048_576
"""The producer's default ``max_request_size`` (1 MiB)."""

_BATCH_HEADER: Final = 61  # a v2 record batch's fixed header
_RECORD_OVERHEAD: Final = (
    21  # the most a record adds around its fields (length, deltas, attributes)
)


def record_size(value: bytes | None, key: bytes | None, headers: Headers) -> int:
    """The size a Kafka producer counts for one record against ``max_request_size``.

    Value, key and headers, each with its varint length, plus the batch header and the record's
    largest overhead: the producer's own upper-bound estimate for a batch of one.
    """
    size = _BATCH_HEADER + _RECORD_OVERHEAD + _field(key) + _field(value)
    size += _varint_size(len(headers))
    for name, header in headers:
        size += _field(name.encode("utf-8")) + _field(header)
    return size


def _field(data: bytes | None) -> int:
    return 1 if data is None else _varint_size(len(data)) + len(data)


def _varint_size(number: int) -> int:
    """Bytes in the zig-zag varint of `number` (Kafka's encoding of lengths in records)."""
    zigzag = (number << 1) ^ (number >> 63)
    size = 1
    while zigzag >= 0x80:
        zigzag >>= 7
        size += 1
    return size


def message_bytes(message: Message) -> int:
    """The bytes a fetched record holds: its value, key, and header names and values.

    A missing value or key (a tombstone's value, say) counts 0. Python's own overhead per object
    (some 50 bytes per ``bytes``) is left out: it matters only for tiny records, which a memory
    budget is not about.
    """
    value, key, headers = message.value, message.key, message.headers
    size = 0 if value is None else len(value)
    if key is not None:
        size += len(key)
    for name, header in headers:
        size += len(name) + (0 if header is None else len(header))
    return size
