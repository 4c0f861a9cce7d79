"""Codecs through an app on the memory broker: what is published, what handlers receive, and
what is dead-lettered."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
import pytest

from taskflow import App, Context, JsonCodec, MsgpackCodec
from taskflow.codec import MSGPACK
from taskflow.exceptions import ConfigurationError, HandlerSignatureError
from taskflow.testing import TestClient


class Line(msgspec.Struct):
    sku: str
    quantity: int


@dataclasses.dataclass
class Order:
    id: int
    lines: list[dict[str, Any]]


class Csv:
    """Comma-separated text, read as a list of str."""

    content_type = "text/csv"

    def decoder(self, annotation: Any) -> Any:
        if annotation is not list:
            raise TypeError("CSV is read as a list")
        return lambda value: value.decode().split(",")

    def encode(self, value: Any) -> bytes:
        return ",".join(value).encode()


CODECS = [JsonCodec(), MsgpackCodec(), Csv()]
F = TypeVar("F", bound=Callable[..., Any])


def sample(codec: Any) -> tuple[Any, type]:
    """A value the codec writes, and the payload type a handler reads it as."""
    if isinstance(codec, Csv):
        return ["a", "2"], list
    return Line("a", 2), Line


def reading(handler: F, payload_type: type) -> F:
    """`handler` with its payload parameter, `line`, annotated `payload_type`."""
    handler.__annotations__["line"] = payload_type
    return handler


@pytest.mark.parametrize("codec", CODECS, ids=repr)
async def test_a_value_published_with_the_apps_codec_reaches_a_consumer_as_sent(codec: Any) -> None:
    app = App("shop", codec=codec)
    value, payload_type = sample(codec)
    received: list[Any] = []

    async def relay(line: Any, ctx: Context) -> None:
        await ctx.publish("lines.out", line)

    async def sink(line: Any) -> None:
        received.append(line)

    app.add_consumer(reading(relay, payload_type), "lines")
    app.add_consumer(reading(sink, payload_type), "lines.out")
    async with TestClient(app, partitions=1) as client:
        await client.publish("lines", value)
        await client.drain()
        (out,) = client.published("lines.out")

    assert received == [value]
    assert out.headers == {"content-type": codec.content_type}
    assert out.value == codec.encode(value)


@pytest.mark.parametrize("codec", CODECS, ids=repr)
async def test_a_registrations_codec_reads_and_a_publish_codec_writes(codec: Any) -> None:
    app = App("shop")
    value, payload_type = sample(codec)
    received: list[Any] = []

    async def sink(line: Any) -> None:
        received.append(line)

    app.add_consumer(reading(sink, payload_type), "lines", codec=codec)
    async with TestClient(app, partitions=1) as client:
        await client.app.publish("lines", value, codec=codec)
        await client.publish(
            "lines", codec.encode(value)
        )  # no header: read with the consumer's codec
        await client.drain()
        first, second = client.published("lines")

    assert received == [value, value]
    assert (first.headers, second.headers) == ({"content-type": codec.content_type}, {})


async def test_a_consumer_reads_a_record_of_another_codec_by_its_content_type() -> None:
    app = App("shop")  # JSON
    received: list[Line] = []

    @app.consume("lines")
    async def on_line(line: Line) -> None:
        received.append(line)

    async with TestClient(app, partitions=1) as client:
        await client.publish("lines", Line("a", 1))
        await client.publish("lines", Line("b", 2), codec=MSGPACK)
        await client.drain()
        records = client.published("lines")

    assert received == [Line("a", 1), Line("b", 2)]
    assert [r.headers["content-type"] for r in records] == [
        "application/json",
        "application/msgpack",
    ]


@pytest.mark.parametrize("name", ["Content-Type", "CONTENT-TYPE"])
async def test_a_content_type_header_is_read_whatever_the_case_of_its_name(name: str) -> None:
    app = App("shop")  # JSON
    received: list[Line] = []

    @app.consume("lines")
    async def on_line(line: Line) -> None:
        received.append(line)

    packed = MSGPACK.encode(Line("b", 2))
    async with TestClient(app, partitions=1) as client:
        await client.publish("lines", packed, headers={name: "application/msgpack"})
        await client.publish(
            "lines", packed, headers=[(name, b"application/msgpack"), ("traceparent", b"00-x")]
        )
        await client.drain()

    assert received == [Line("b", 2), Line("b", 2)]


async def test_a_content_type_the_caller_gave_in_another_case_gives_way_to_the_codecs() -> None:
    app = App("shop")
    async with TestClient(app, partitions=1) as client:
        await client.publish(
            "lines", Line("a", 1), headers={"Content-Type": "text/plain", "source": "shop"}
        )
        (record,) = client.published("lines")

    assert record.headers == {"source": "shop", "content-type": "application/json"}


async def test_a_record_of_a_content_type_the_app_cannot_read_is_dead_lettered_naming_it() -> None:
    app = App("shop")
    received: list[dict[str, Any]] = []

    @app.consume("orders", dead_letter="orders.DLQ")
    async def on_order(order: dict[str, Any]) -> None:
        received.append(order)

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", b"\x00\x01", headers={"content-type": "application/avro"})
        await client.publish("orders", {"id": 2})
        await client.drain()
        (letter,) = client.dead_letters("orders.DLQ")

    assert received == [{"id": 2}]
    assert letter.reason == "rejected"
    assert letter.exception_type == "taskflow.exceptions.DecodeError"
    assert "has content-type 'application/avro', which this app has no codec for" in (
        letter.exception_message
    )
    assert (letter.value, letter.headers) == (b"\x00\x01", {"content-type": "application/avro"})


async def test_a_codec_the_app_was_given_reads_the_records_that_name_it() -> None:
    app = App("shop", codecs=[Csv()])
    received: list[list[str]] = []

    @app.consume("rows")
    async def on_row(row: list) -> None:  # type: ignore[type-arg]
        received.append(row)

    async with TestClient(app, partitions=1) as client:
        await client.publish("rows", ["a", "b"], codec=Csv())
        await client.publish("rows", ["c"])  # JSON
        await client.drain()

    assert received == [["a", "b"], ["c"]]


async def test_a_struct_that_does_not_validate_is_dead_lettered_naming_the_field() -> None:
    app = App("shop")

    @app.consume("lines", dead_letter="lines.DLQ")
    async def on_line(line: Line) -> None: ...

    async with TestClient(app, partitions=1) as client:
        await client.publish("lines", {"sku": "a", "quantity": "two"})
        await client.drain()
        (letter,) = client.dead_letters("lines.DLQ")

    assert letter.exception_type == "taskflow.exceptions.DecodeError"
    assert letter.exception_message == (
        "payload of lines[0]@0 is not a valid Line: Expected `int`, got `str` - at `$.quantity`"
    )


@pytest.mark.parametrize("codec", [JsonCodec(), MsgpackCodec()], ids=repr)
async def test_a_batch_handler_gets_its_structs_and_a_bad_record_is_dead_lettered(
    codec: Any,
) -> None:
    app = App("shop", codec=codec)
    batches: list[list[Line]] = []

    @app.consume("lines", batch=10, batch_wait=0.05, dead_letter="lines.DLQ")
    async def on_lines(lines: list[Line]) -> None:
        batches.append(lines)

    async with TestClient(app, partitions=1) as client:
        for n in range(3):
            await client.publish("lines", Line(f"s{n}", n))
        await client.publish("lines", {"sku": 7, "quantity": 1})
        await client.drain()
        (letter,) = client.dead_letters("lines.DLQ")

    assert [line for batch in batches for line in batch] == [Line(f"s{n}", n) for n in range(3)]
    assert "not a valid Line: Expected `str`, got `int` - at `$.sku`" in letter.exception_message


async def test_a_dataclass_published_as_msgpack_is_read_back() -> None:
    app = App("shop", codec=MSGPACK)
    received: list[Order] = []

    @app.consume("orders")
    async def on_order(order: Order) -> None:
        received.append(order)

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", Order(1, [{"sku": "a"}]))
        await client.drain()

    assert received == [Order(1, [{"sku": "a"}])]


def test_a_payload_type_the_registrations_codec_cannot_read_fails_the_registration() -> None:
    app = App("shop")

    async def on_row(row: dict) -> None:  # type: ignore[type-arg]
        ...

    with pytest.raises(HandlerSignatureError, match=r"on_row: payload type dict is not read by"):
        app.add_consumer(on_row, "rows", codec=Csv())


def test_a_codec_class_given_for_a_codec_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match=r"pass an instance, MsgpackCodec\(\)"):
        App("shop", codec=MsgpackCodec)  # type: ignore[arg-type]


def test_two_different_codecs_of_one_content_type_are_a_configuration_error() -> None:
    class OtherCsv(Csv):
        pass

    app = App("shop", codecs=[OtherCsv()])

    async def on_row(row: list) -> None:  # type: ignore[type-arg]
        ...

    with pytest.raises(ConfigurationError, match="two codecs for text/csv"):
        app.add_consumer(on_row, "rows", codec=Csv())
