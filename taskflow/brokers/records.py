"""Kafka's record format, as far as taskflow needs it: how large a record counts.

A Kafka producer refuses a record larger than its ``max_request_size`` before it sends it, using an
upper-bound estimate of the record's size in a v2 record batch. The memory broker enforces the
same limit and the dead-letter path sizes what it sends, so both count exactly as the producer
does, without importing the Kafka client.
"""

from __future__ import annotations

from typing import Final

from taskflow.message import Headers

__all__ = ["DEFAULT_MAX_REQUEST_SIZE", "record_size"]

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
