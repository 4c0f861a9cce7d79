"""taskflow counts a record's size exactly as aiokafka's producer does before it sends."""

from __future__ import annotations

from inspect import signature

from aiokafka import AIOKafkaProducer
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from hypothesis import given
from hypothesis import strategies as st

from taskflow.brokers.records import DEFAULT_MAX_REQUEST_SIZE, record_size

_bytes = st.binary(max_size=20_000)
_headers = st.lists(st.tuples(st.text(max_size=300), st.binary(max_size=3_000)), max_size=20)


@given(value=_bytes, key=st.none() | _bytes, headers=_headers)
def test_a_record_counts_as_the_producer_counts_it(
    value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]
) -> None:
    expected = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
    assert record_size(value, key, tuple(headers)) == expected


def test_a_large_record_counts_as_the_producer_counts_it() -> None:
    value = b"x" * 1_500_000
    expected = DefaultRecordBatchBuilder.estimate_size_in_bytes(b"k", value, [("h", b"v")])
    assert record_size(value, b"k", (("h", b"v"),)) == expected > DEFAULT_MAX_REQUEST_SIZE


def test_the_default_limit_is_the_producers() -> None:
    default = signature(AIOKafkaProducer).parameters["max_request_size"].default
    assert default == DEFAULT_MAX_REQUEST_SIZE
