"""The Payloads and codecs page: a msgspec Struct payload, a MessagePack
consumer, and a codec of the app's own (CSV rows).

    taskflow run examples.payloads:app
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from typing import Any

import msgspec

from taskflow import App, Context, MsgpackCodec


# --8<-- [start:codec]
class CsvCodec:
    """One CSV row per record, read as the list of its fields."""

    content_type = "text/csv"

    def decoder(self, annotation: Any) -> Callable[[bytes], list[str]]:
        if annotation is not list and annotation != list[str]:
            raise TypeError("a CSV record is read as list[str]")
        return self.decode

    def decode(self, value: bytes) -> list[str]:
        rows = list(csv.reader(io.StringIO(value.decode())))
        if len(rows) != 1:
            raise ValueError(f"expected one CSV row, got {len(rows)}")
        return rows[0]

    def encode(self, value: Any) -> bytes:
        out = io.StringIO()
        csv.writer(out, lineterminator="").writerow(value)
        return out.getvalue().encode()


# the app reads text/csv records wherever they arrive
app = App("shipping", codecs=[CsvCodec()])
# --8<-- [end:codec]


shipped: list[Shipment] = []
labels: list[str] = []
rows: list[list[str]] = []


# --8<-- [start:struct]
class Parcel(msgspec.Struct):
    sku: str
    grams: int


class Shipment(msgspec.Struct):
    id: int
    parcels: list[Parcel]
    express: bool = False


@app.consume("shipments", dead_letter="shipments.DLQ")
async def on_shipment(shipment: Shipment, ctx: Context) -> None:
    # decoded and validated in one step: a parcel without grams never gets here
    shipped.append(shipment)
    await ctx.publish(
        "labels", shipment, codec=MsgpackCodec()
    )  # content-type: application/msgpack


# --8<-- [end:struct]


# --8<-- [start:msgpack]
@app.consume("labels", codec=MsgpackCodec())
async def print_label(shipment: Shipment) -> None:
    labels.append(f"{shipment.id}: {len(shipment.parcels)} parcel(s)")


# --8<-- [end:msgpack]


# --8<-- [start:csv]
@app.consume("manifests", codec=CsvCodec())
async def on_manifest(row: list[str]) -> None:
    rows.append(row)


# --8<-- [end:csv]
