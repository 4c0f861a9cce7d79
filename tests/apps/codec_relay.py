"""A relay through codecs, for the real-broker codec tests.

Configured by environment variables:

- ``RELAY_CODEC``: ``json``, ``msgpack``, ``avro``, ``protobuf`` or ``csv`` (a codec of the
  app's own), the app's codec;
- ``RELAY_IN`` / ``RELAY_OUT``: the consumed topic and the topic each payload is published to
  again (with the app's codec); ``<RELAY_IN>.DLQ`` takes what cannot be decoded;
- ``RELAY_GROUP``: the consumer groups' prefix;
- ``RELAY_SEEN``: the file each payload read from ``RELAY_OUT`` is appended to, one `shown` a
  line.

The payload type is a msgspec Struct for JSON, MessagePack and Avro, the generated ``Reading``
message for Protocol Buffers, a list of str for CSV.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec

from examples.proto.readings_pb2 import Reading
from taskflow import App, AvroCodec, Context, JsonCodec, MsgpackCodec, ProtobufCodec


class Line(msgspec.Struct):
    sku: str
    quantity: int


class Csv:
    """Comma-separated text, read as a list of str."""

    content_type = "text/csv"

    def decoder(self, annotation: Any) -> Any:
        if annotation is not list:
            raise TypeError("CSV is read as a list")
        return lambda value: value.decode().split(",")

    def encode(self, value: Any) -> bytes:
        return ",".join(value).encode()


LINE = {
    "type": "record",
    "name": "Line",
    "fields": [{"name": "sku", "type": "string"}, {"name": "quantity", "type": "int"}],
}

CODECS: dict[str, Any] = {
    "json": JsonCodec(),
    "msgpack": MsgpackCodec(),
    "avro": AvroCodec(LINE),
    "protobuf": ProtobufCodec(),
    "csv": Csv(),
}
PAYLOADS: dict[str, Any] = {"csv": list, "protobuf": Reading}


def shown(payload: Any) -> str:
    """A payload on one line: its repr, runs of white space made one space."""
    return " ".join(repr(payload).split())


app = App("codec-relay", codec=CODECS[os.environ.get("RELAY_CODEC", "json")])
_in, _out = os.environ.get("RELAY_IN", "lines"), os.environ.get("RELAY_OUT", "lines.out")
_group = os.environ.get("RELAY_GROUP", "codec-relay")
_seen = os.environ.get("RELAY_SEEN", os.devnull)


async def relay(payload: Any, ctx: Context) -> None:
    await ctx.publish(_out, payload, key=ctx.message.key if ctx.message else None)


def seen(payload: Any) -> None:
    with open(_seen, "a") as seen_file:
        seen_file.write(f"{shown(payload)}\n")


_payload = PAYLOADS.get(os.environ.get("RELAY_CODEC", "json"), Line)
relay.__annotations__["payload"] = _payload
seen.__annotations__["payload"] = _payload
app.add_consumer(relay, _in, group=f"{_group}-relay", dead_letter=f"{_in}.DLQ")
app.add_consumer(seen, _out, group=f"{_group}-seen")
