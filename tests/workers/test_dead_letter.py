"""Reading a dead letter back: `read_dead_letter` of what `dead_letter_headers` wrote."""

from __future__ import annotations

import hashlib

import pytest

from taskflow.message import Message
from taskflow.workers.dead_letter import (
    WITHOUT_VALUE,
    DeadLetterHeaders,
    DeadLetterRecord,
    dead_letter,
    dead_letter_headers,
    read_dead_letter,
)


def _failed() -> ValueError:
    try:
        raise ValueError("no price for sku-9")
    except ValueError as exc:
        return exc


ORIGINAL = Message("orders", 3, 1207, b"k", b'{"sku": 9}', (("trace", b"t-1"),), 1_700_000_000_000)


def _on_the_topic(headers: tuple[tuple[str, bytes], ...]) -> Message:
    return Message("orders.dlq", 1, 17, b"k", b"v", headers, 1_700_000_005_000)


def test_read_dead_letter_reads_back_every_header_taskflow_wrote() -> None:
    ours = dead_letter_headers(ORIGINAL, "billing", _failed(), 5, "exhausted")
    letter = dead_letter(ORIGINAL, ours)

    record = read_dead_letter(_on_the_topic(letter.headers))

    assert record == DeadLetterHeaders(
        topic="orders.dlq",
        partition=1,
        offset=17,
        timestamp_ms=1_700_000_005_000,
        taskflow=True,
        original_topic="orders",
        original_partition=3,
        original_offset=1207,
        original_timestamp_ms=1_700_000_000_000,
        consumer_group="billing",
        attempts=5,
        reason="exhausted",
        exception_type="builtins.ValueError",
        exception_message="no price for sku-9",
        traceback=record.traceback,
        value_omitted=None,
    )
    assert record.traceback is not None
    assert record.traceback.rstrip().endswith("ValueError: no price for sku-9")


def test_read_dead_letter_says_why_the_value_was_left_out() -> None:
    ours = dead_letter_headers(ORIGINAL, "billing", _failed(), 1, "rejected")
    letter = dead_letter(ORIGINAL, ours, WITHOUT_VALUE, "too large")

    record = read_dead_letter(_on_the_topic(letter.headers))

    assert (record.reason, record.value_omitted) == ("rejected", "too large")


def test_a_record_without_taskflow_headers_reads_as_not_taskflow() -> None:
    record = read_dead_letter(_on_the_topic((("trace", b"t-1"),)))

    assert record.taskflow is False
    assert (record.reason, record.original_topic, record.attempts) == (None, None, None)
    assert (record.topic, record.partition, record.offset) == ("orders.dlq", 1, 17)


def test_unreadable_numbers_read_as_none_rather_than_failing() -> None:
    headers = (
        ("taskflow-original-topic", b"orders"),
        ("taskflow-original-offset", b"twelve"),
        ("taskflow-attempts", b"\xff"),
        ("taskflow-reason", b"exhausted"),
    )

    record = read_dead_letter(_on_the_topic(headers))

    assert record.taskflow is True
    assert (record.original_offset, record.attempts, record.original_partition) == (
        None,
        None,
        None,
    )
    assert record.reason == "exhausted"


def test_the_strict_and_the_forgiving_reader_read_a_dead_letter_alike() -> None:
    ours = dead_letter_headers(ORIGINAL, "billing", _failed(), 2, "exhausted")
    message = _on_the_topic(dead_letter(ORIGINAL, ours, WITHOUT_VALUE, "too large").headers)

    forgiving = read_dead_letter(message)
    strict = DeadLetterRecord.from_message(message)

    assert (
        forgiving.original_topic,
        forgiving.original_partition,
        forgiving.original_offset,
        forgiving.original_timestamp_ms,
        forgiving.consumer_group,
        forgiving.attempts,
        forgiving.reason,
        forgiving.exception_type,
        forgiving.exception_message,
        forgiving.traceback,
        forgiving.value_omitted,
    ) == (
        strict.original_topic,
        strict.original_partition,
        strict.original_offset,
        strict.original_timestamp_ms,
        strict.group,
        strict.attempts,
        strict.reason,
        strict.exception_type,
        strict.exception_message,
        strict.traceback,
        strict.value_omitted,
    )
    assert strict.raw_headers == ORIGINAL.headers
    assert (strict.original_size, strict.original_sha256) == (
        len(ORIGINAL.value or b""),
        hashlib.sha256(ORIGINAL.value or b"").hexdigest(),
    )


def test_the_strict_reader_names_what_is_missing_or_not_a_number() -> None:
    ours = dead_letter_headers(ORIGINAL, "billing", _failed(), 2, "exhausted")
    without = tuple((n, v) for n, v in ours if n != "taskflow-reason")
    garbled = tuple((n, b"two" if n == "taskflow-attempts" else v) for n, v in ours)

    with pytest.raises(ValueError, match=r"it has no taskflow-reason header$"):
        DeadLetterRecord.from_message(_on_the_topic(without))
    with pytest.raises(ValueError, match=r"its taskflow-attempts header is 'two', not a number$"):
        DeadLetterRecord.from_message(_on_the_topic(garbled))
