"""The codecs of formats with a schema, Avro and Protocol Buffers, through an app on the memory
broker: what is published, what handlers receive, what is dead-lettered, and what a missing
extra or a bad schema says."""

from __future__ import annotations

import dataclasses
import datetime
import re
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from examples.proto.readings_pb2 import Reading
from taskflow import App, AvroCodec, Context, ProtobufCodec
from taskflow.exceptions import ConfigurationError, HandlerSignatureError, PublishError
from taskflow.testing import TestClient
from tests._process import ROOT

LINE = {
    "type": "record",
    "name": "Line",
    "fields": [
        {"name": "sku", "type": "string"},
        {"name": "quantity", "type": "int"},
        {"name": "gift", "type": "boolean", "default": False},
    ],
}


class Line(msgspec.Struct):
    sku: str
    quantity: int
    gift: bool = False


@dataclasses.dataclass
class LineData:
    sku: str
    quantity: int
    gift: bool


@pytest.mark.parametrize("payload_type", [dict, dict[str, Any], Line, LineData])
async def test_an_avro_record_round_trips_through_publish_and_a_consumer(payload_type: Any) -> None:
    avro = AvroCodec(LINE)
    app = App("shop", codec=avro)
    received: list[Any] = []

    async def on_line(line: Any) -> None:
        received.append(line)

    on_line.__annotations__["line"] = payload_type
    app.add_consumer(on_line, "lines")
    async with TestClient(app, partitions=1) as client:
        await client.publish("lines", {"sku": "a", "quantity": 2})
        await client.publish("lines", Line("b", 3, gift=True))
        await client.drain()
        published = client.published("lines")

    as_dicts = [
        {"sku": "a", "quantity": 2, "gift": False},
        {"sku": "b", "quantity": 3, "gift": True},
    ]
    if payload_type is Line:
        assert received == [Line("a", 2), Line("b", 3, True)]
    elif payload_type is LineData:
        assert received == [LineData("a", 2, False), LineData("b", 3, True)]
    else:
        assert received == as_dicts
    assert [m.headers for m in published] == [{"content-type": "application/avro"}] * 2
    assert published[0].value == b"\x02a\x04\x00"  # schemaless binary: no header, no schema id


async def test_an_avro_record_that_does_not_fit_the_schema_is_dead_lettered_naming_why() -> None:
    app = App("shop", codec=AvroCodec(LINE))
    received: list[Line] = []

    @app.consume("lines", dead_letter="lines.DLQ")
    async def on_line(line: Line) -> None:
        received.append(line)

    async with TestClient(app, partitions=1) as client:
        await client.publish("lines", b"\x02a", headers={"content-type": "application/avro"})
        await client.publish("lines", b"\x02a\x04\x00\xff\xff")  # no header: the app's codec
        await client.publish("lines", Line("c", 1))
        await client.drain()
        short, long = client.dead_letters("lines.DLQ")

    assert received == [Line("c", 1)]
    assert short.exception_type == "taskflow.exceptions.DecodeError"
    assert short.exception_message == (
        "payload of lines[0]@0 is not valid application/avro: "
        "the value ends before a whole Line record"
    )
    assert long.exception_message == (
        "payload of lines[0]@1 is not valid application/avro: "
        "2 byte(s) left over after a Line record"
    )


async def test_a_value_that_does_not_fit_the_avro_schema_is_not_published() -> None:
    app = App("shop", codec=AvroCodec(LINE))
    async with TestClient(app, partitions=1) as client:
        with pytest.raises(PublishError, match=r"cannot publish a dict as Avro Line: .*quantity"):
            await client.publish("lines", {"sku": "a"})
        with pytest.raises(
            PublishError, match="cannot publish a Event as Avro Line: record contains more fields"
        ):
            await client.publish("lines", Event(datetime.datetime.now(datetime.UTC), b"", "A"))
        with pytest.raises(PublishError, match="more fields than the schema specifies: colour"):
            await client.publish("lines", {"sku": "a", "quantity": 1, "colour": "red"})
        assert client.published("lines") == []


def test_an_avro_codec_reads_dict_dataclasses_and_structs_only() -> None:
    app = App("shop", codec=AvroCodec(LINE))

    async def on_line(line: list[Any]) -> None: ...

    with pytest.raises(HandlerSignatureError, match="Avro records are read as dict, a dataclass"):
        app.add_consumer(on_line, "lines")


def test_an_invalid_avro_schema_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"not a valid Avro schema: .*name"):
        AvroCodec({"type": "record", "fields": []})


async def test_a_protobuf_message_round_trips_and_a_corrupt_one_is_dead_lettered() -> None:
    protobuf = ProtobufCodec()
    app = App("meters")
    received: list[Reading] = []

    @app.consume("readings", codec=protobuf, dead_letter="readings.DLQ")
    async def on_reading(reading: Reading, ctx: Context) -> None:
        received.append(reading)

    sent = Reading(sensor="s1", celsius=21.5, taken_at=1_700_000_000_000)
    async with TestClient(app, partitions=1) as client:
        await client.publish("readings", sent, codec=protobuf)
        await client.publish("readings", b"\x0a\xff")  # a string field longer than the value
        await client.drain()
        (published, _) = client.published("readings")
        (letter,) = client.dead_letters("readings.DLQ")

    assert received == [sent]
    assert published.headers == {"content-type": "application/x-protobuf"}
    assert published.value == sent.SerializeToString()
    assert letter.exception_type == "taskflow.exceptions.DecodeError"
    assert letter.exception_message.startswith(
        "payload of readings[0]@1 is not valid application/x-protobuf: "
        "Error parsing message with type 'taskflow.examples.Reading'"
    )


def test_a_protobuf_codec_reads_generated_message_classes_only() -> None:
    app = App("meters", codec=ProtobufCodec())

    async def on_reading(reading: dict[str, Any]) -> None: ...

    with pytest.raises(HandlerSignatureError, match="read as a generated message class"):
        app.add_consumer(on_reading, "readings")


async def test_publishing_a_value_that_is_not_a_protobuf_message_is_refused() -> None:
    app = App("meters", codec=ProtobufCodec())
    async with TestClient(app, partitions=1) as client:
        with pytest.raises(PublishError, match="publish an instance of a generated message"):
            await client.publish("readings", {"sensor": "s1"})


@pytest.mark.parametrize(
    ("module", "make", "extra"),
    [
        ("fastavro", lambda: AvroCodec(LINE), "avro"),
        ("google.protobuf", ProtobufCodec, "protobuf"),
    ],
)
def test_a_codec_whose_library_is_missing_names_the_extra(
    module: str, make: Any, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # an import of it raises ImportError
    with pytest.raises(
        ConfigurationError,
        match=rf"with its {extra} extra \(pip install 'path/to/taskflow\[{extra}\]'\)",
    ):
        make()


def test_the_committed_generated_module_is_that_of_the_proto_file(tmp_path: Path) -> None:
    protoc = pytest.importorskip(
        "grpc_tools.protoc", reason="grpcio-tools (the test extra) is not installed"
    )
    proto = ROOT / "examples/proto"
    code = protoc.main(["protoc", f"-I{proto}", f"--python_out={tmp_path}", "readings.proto"])
    assert code == 0

    def descriptor(path: Path) -> str:  # the compiled .proto, whatever protoc's version
        found = re.search(r"AddSerializedFile\((b'.*?')\)", path.read_text())
        assert found is not None, path
        return found.group(1)

    assert descriptor(tmp_path / "readings_pb2.py") == descriptor(proto / "readings_pb2.py")


class Event(msgspec.Struct):
    at: datetime.datetime
    blob: bytes
    kind: str
    note: str | None = None


def test_a_struct_keeps_avros_timestamps_bytes_enums_and_unions() -> None:
    codec = AvroCodec(
        {
            "type": "record",
            "name": "Event",
            "fields": [
                {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
                {"name": "blob", "type": "bytes"},
                {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["A", "B"]}},
                {"name": "note", "type": ["null", "string"], "default": None},
            ],
        }
    )
    sent = Event(datetime.datetime(2026, 12, 4, 9, 30, tzinfo=datetime.UTC), b"\x00\xff", "B")

    assert codec.decoder(Event)(codec.encode(sent)) == sent
    assert codec.decoder(Event)(codec.encode(msgspec.structs.replace(sent, note="n"))).note == "n"
