"""Codecs on a real broker: a `taskflow run` child reads records by their content type, writes
its own, and dead-letters what it cannot read (tests/apps/codec_relay.py)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from examples.proto.readings_pb2 import Reading
from tests._process import AppProcess, count_lines, wait_until
from tests._tansu import create_topic
from tests.apps.codec_relay import CODECS, Line, shown

RELAY = "tests.apps.codec_relay:app"
WAIT = 60.0


async def read_all(bootstrap: str, topic: str, count: int) -> list[ConsumerRecord]:
    """The first `count` records of `topic`, from every partition (no group)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: list[ConsumerRecord] = []
        async with asyncio.timeout(WAIT):
            while len(records) < count:
                batches = await consumer.getmany(timeout_ms=500)
                records += [record for batch in batches.values() for record in batch]
        return records
    finally:
        await consumer.stop()


def sample(name: str, n: int) -> object:
    if name == "csv":
        return [f"s{n}", str(n)]
    if name == "protobuf":
        return Reading(sensor=f"s{n}", celsius=n + 0.5, taken_at=n)
    return Line(f"s{n}", n)


# Per codec: the record it cannot read, with its own content type, and the dead letter's reason.
UNREADABLE = {
    "json": (
        CODECS["json"].encode({"sku": "s", "quantity": "many"}),
        "is not a valid Line: Expected `int`, got `str` - at `$.quantity`",
    ),
    "msgpack": (
        CODECS["msgpack"].encode({"sku": "s", "quantity": "many"}),
        "is not a valid Line: Expected `int`, got `str` - at `$.quantity`",
    ),
    "avro": (b"\x02s", "is not valid application/avro: the value ends before a whole Line record"),
    "protobuf": (
        b"\x0a\xff",
        "is not valid application/x-protobuf: Error parsing message with type "
        "'taskflow.examples.Reading'",
    ),
}
# Per codec: the built-in format of another content type whose records it reads into its payload.
OTHER = {"json": "msgpack", "msgpack": "json", "avro": "json"}


@pytest.mark.parametrize("name", ["json", "msgpack", "avro", "protobuf", "csv"])
async def test_records_are_read_by_their_content_type_and_written_with_the_apps_codec(
    name: str,
    app_env: dict[str, str],
    bootstrap: str,
    unique: str,
    producer: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    codec, source, target = CODECS[name], f"{unique}-in", f"{unique}-out"
    for topic in (source, target, f"{source}.DLQ"):
        await create_topic(bootstrap, topic, 1)
    own = [("content-type", codec.content_type.encode())]
    await producer.send_and_wait(source, codec.encode(sample(name, 0)), key=b"a", headers=own)
    await producer.send_and_wait(source, codec.encode(sample(name, 1)), key=b"b")  # no header
    await producer.send_and_wait(
        source, b"\x00\x02", key=b"c", headers=[("content-type", b"application/cbor")]
    )
    good = 2
    if name in OTHER:  # a record of another built-in format, read by its header
        other = CODECS[OTHER[name]]
        await producer.send_and_wait(
            source,
            other.encode(sample(name, 2)),
            key=b"d",
            headers=[("content-type", other.content_type.encode())],
        )
        good = 3
    if name in UNREADABLE:
        await producer.send_and_wait(source, UNREADABLE[name][0], key=b"e", headers=own)
    seen = tmp_path / "seen.txt"
    env = {
        **app_env,
        "RELAY_CODEC": name,
        "RELAY_IN": source,
        "RELAY_OUT": target,
        "RELAY_GROUP": unique,
        "RELAY_SEEN": str(seen),
    }
    with AppProcess(RELAY, env=env) as app:
        await asyncio.to_thread(wait_until, lambda: count_lines(seen) >= good, WAIT, "relayed")
        letters = await read_all(bootstrap, f"{source}.DLQ", 2 if name in UNREADABLE else 1)
        assert app.stop(signal.SIGTERM) == 0, app.log

    assert seen.read_text().splitlines() == [shown(sample(name, n)) for n in range(good)]
    relayed = await read_all(bootstrap, target, good)
    assert {dict(r.headers)["content-type"] for r in relayed} == {codec.content_type.encode()}
    assert [r.value for r in relayed] == [codec.encode(sample(name, n)) for n in range(good)]
    reasons = {r.key: dict(r.headers)["taskflow-exception-message"].decode() for r in letters}
    assert "has content-type 'application/cbor', which this app has no codec for" in reasons[b"c"]
    if name in UNREADABLE:
        assert UNREADABLE[name][1] in reasons[b"e"]
