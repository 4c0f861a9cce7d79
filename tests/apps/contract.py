"""An app with every kind of payload, consumer option and declared topic, for its AsyncAPI
document: consumers of a pydantic model, a msgspec Struct, a dataclass, a dict, bytes, str, a
Message and a batch; dead letters, retry topics and key ordering; topics it publishes."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import pydantic

from taskflow import App, Context, Message, MsgpackCodec

app = App(
    "contract",
    broker="kafka://kafka-1.internal:9092,kafka-2.internal:9093",
    broker_options={
        "client_id": "contract-client",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "svc",
        "sasl_plain_password": "hunter2-secret",
    },
    version="2.1.0",
    description="Orders in, invoices and receipts out.",
)


class Customer(pydantic.BaseModel):
    id: str
    email: str


class Signup(pydantic.BaseModel):
    customer: Customer
    plan: str = "free"


class Line(msgspec.Struct):
    sku: str
    quantity: int


class Shipment(msgspec.Struct):
    id: int
    lines: list[Line]


@dataclass
class Refund:
    order: str
    cents: int


@dataclass
class Invoice:
    order: str
    amount_cents: int


invoices = app.topic(
    "invoices", Invoice, key=str, description="One invoice per order <b>handled</b>."
)
receipts = app.topic("receipts", bytes, key=bytes)
audit = app.topic("audit", dict[str, str], codec=MsgpackCodec())


@app.consume("signups", group="onboarding", ordering="key", dead_letter="signups.DLQ")
async def on_signup(signup: Signup, ctx: Context) -> None:
    """Welcomes a new customer."""


@app.consume("shipments", codec=MsgpackCodec(), retry_topics=[10, 60], dead_letter="shipments.DLQ")
async def on_shipment(shipment: Shipment) -> None: ...


@app.consume("refunds", "chargebacks", ordering="none", concurrency=4)
def on_refund(refund: Refund) -> None: ...


@app.consume("events")
async def on_event(event: dict[str, int]) -> None: ...


@app.consume("blobs")
async def on_blob(blob: bytes) -> None: ...


@app.consume("notes")
async def on_note(note: str) -> None: ...


@app.consume("anything")
async def on_record(message: Message) -> None: ...


@app.consume("lines", batch=50)
async def on_lines(lines: list[Line]) -> None: ...


@app.consume(invoices, group="bookkeeping")
async def book(invoice: Invoice) -> None: ...
