"""The Payloads and codecs page: records with a schema, in Avro and in
Protocol Buffers.

    pip install 'path/to/taskflow[avro,protobuf]'
    taskflow run examples.schemas:app
"""

from __future__ import annotations

import msgspec

from examples.proto.readings_pb2 import Reading
from taskflow import App, AvroCodec, Context, ProtobufCodec

app = App("metering")

readings: list[Reading] = []
invoices: list[Invoice] = []


# --8<-- [start:avro]
INVOICE = {
    "type": "record",
    "name": "Invoice",
    "namespace": "billing",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "customer", "type": "string"},
        {"name": "cents", "type": "long"},
        {"name": "paid", "type": "boolean", "default": False},
    ],
}


class Invoice(msgspec.Struct):
    id: int
    customer: str
    cents: int
    paid: bool = False


avro = AvroCodec(INVOICE)


@app.consume("invoices", codec=avro, dead_letter="invoices.DLQ")
async def on_invoice(invoice: Invoice) -> None:
    # read as a dict by the schema, then converted and checked by msgspec
    invoices.append(invoice)


# --8<-- [end:avro]


# --8<-- [start:protobuf]
# Reading is generated from examples/proto/readings.proto by protoc;
# the generated module, readings_pb2.py, is committed with the app.
protobuf = ProtobufCodec()


@app.consume("readings", codec=protobuf, dead_letter="readings.DLQ")
async def on_reading(reading: Reading, ctx: Context) -> None:
    readings.append(reading)
    if reading.celsius > 30:  # content-type: application/x-protobuf
        await ctx.publish("readings.hot", reading, codec=protobuf)


# --8<-- [end:protobuf]
