"""The app's AsyncAPI document: valid against the official AsyncAPI 3.0.0 schema for every
example, its channels, operations and payload schemas, its servers without secrets, declared
topics as typed handles, the CLI and the operations endpoint's /asyncapi.json and /asyncapi."""

from __future__ import annotations

import importlib
import importlib.util
import json
import pkgutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml

import examples
from examples import orders
from taskflow import App, ConfigurationError, PublishError, StateError
from taskflow.asyncapi import as_json, as_yaml, document, page
from taskflow.testing import TestClient
from tests.apps import contract
from tests.test_cli import taskflow

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "tests/asyncapi/asyncapi-3.0.0.schema.json").read_text())
VALIDATOR = jsonschema.Draft7Validator(SCHEMA)
DOCS_DOCUMENT = ROOT / "docs/_snippets/asyncapi-orders.yaml"


def _valid(built: dict[str, Any]) -> dict[str, Any]:
    """`built`, once the official schema says it is a valid AsyncAPI 3.0.0 document; and it
    is plain JSON (what the endpoint serves is what was validated)."""
    errors = [f"{e.json_path}: {e.message[:200]}" for e in VALIDATOR.iter_errors(built)]
    assert errors == []
    assert json.loads(as_json(built)) == built
    return built


def _example_apps() -> Iterator[tuple[str, App]]:
    """Every App the examples make: module attributes, factories, and the packaged service."""
    for found in pkgutil.walk_packages(examples.__path__, "examples."):
        module = importlib.import_module(found.name)
        for name, value in vars(module).items():
            if isinstance(value, App):
                yield f"{found.name}:{name}", value
        if callable(getattr(module, "create_app", None)):
            yield f"{found.name}:create_app", module.create_app()
    shop = ROOT / "examples/recipes/service/shop/app.py"
    spec = importlib.util.spec_from_file_location("asyncapi_shop_app", shop)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield "shop.app:app", module.app


EXAMPLES = dict(_example_apps())


def test_the_examples_are_all_found() -> None:
    assert len(EXAMPLES) >= 20
    assert {"examples.orders:app", "examples.reports:create_app", "shop.app:app"} <= set(EXAMPLES)


@pytest.mark.parametrize("reference", sorted(EXAMPLES))
def test_the_document_of_every_example_is_valid_asyncapi(reference: str) -> None:
    app = EXAMPLES[reference]
    built = _valid(document(app))
    consumed = {topic for spec in app.consumers for topic in spec.topics}
    failures = {spec.dead_letter for spec in app.consumers if spec.dead_letter}
    failures |= {topic for spec in app.consumers for topic in spec.stage_topics}
    assert set(built["channels"]) == consumed | failures | {topic.name for topic in app.topics}
    assert yaml.safe_load(as_yaml(built)) == built


def test_the_document_of_the_contract_app_is_valid_asyncapi() -> None:
    _valid(document(contract.app))


def test_info_names_the_app_its_version_and_description() -> None:
    built = document(contract.app)
    assert built["asyncapi"] == "3.0.0"
    assert built["info"] == {
        "title": "contract",
        "version": "2.1.0",
        "description": "Orders in, invoices and receipts out.",
    }
    assert document(App("plain"))["info"] == {"title": "plain", "version": "unversioned"}


def test_a_consumer_is_a_receive_operation_with_its_group_ordering_and_failure_topics() -> None:
    operations = document(contract.app)["operations"]
    signup = operations["on_signup"]
    assert signup["action"] == "receive"
    assert signup["channel"] == {"$ref": "#/channels/signups"}
    assert signup["messages"] == [{"$ref": "#/channels/signups/messages/Signup"}]
    assert signup["summary"] == "Welcomes a new customer."
    assert signup["bindings"]["kafka"] == {
        "groupId": {"type": "string", "enum": ["onboarding"]},
        "clientId": {"type": "string", "enum": ["contract-client"]},
        "bindingVersion": "0.5.0",
    }
    assert signup["x-taskflow-ordering"] == "key"
    assert signup["x-taskflow-dead-letter"] == "signups.DLQ"
    assert signup["x-taskflow-max-attempts"] == 5

    shipment = operations["on_shipment"]
    assert shipment["x-taskflow-retry-topics"] == ["shipments.retry.10s", "shipments.retry.60s"]
    assert shipment["x-taskflow-retry-group"] == "contract.retry"
    assert shipment["x-taskflow-dead-letter"] == "shipments.DLQ"
    assert "x-taskflow-max-attempts" not in shipment

    # one operation per topic of a consumer of several
    assert operations["on_refund.refunds"]["x-taskflow-ordering"] == "none"
    assert operations["on_refund.chargebacks"]["channel"] == {"$ref": "#/channels/chargebacks"}
    assert operations["on_lines"]["x-taskflow-batch"] == 50
    assert operations["book"]["bindings"]["kafka"]["groupId"]["enum"] == ["bookkeeping"]


def _message(built: dict[str, Any], operation: str) -> dict[str, Any]:
    """The message an operation references, looked up through its $ref."""
    (ref,) = built["operations"][operation]["messages"]
    _, channels, channel, messages, name = ref["$ref"].split("/")
    return built[channels][channel][messages][name]  # type: ignore[no-any-return]


def _resolved(built: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    assert ref.startswith("#/components/schemas/")
    return built["components"]["schemas"][ref.rpartition("/")[2]]  # type: ignore[no-any-return]


def test_payload_schemas_come_from_the_handlers_annotations() -> None:
    built = document(contract.app)

    signup = _message(built, "on_signup")  # pydantic
    assert signup["contentType"] == "application/json"
    model = _resolved(built, signup["payload"])
    assert model["required"] == ["customer"]
    assert _resolved(built, model["properties"]["customer"])["properties"]["email"] == {
        "title": "Email",
        "type": "string",
    }

    shipment = _message(built, "on_shipment")  # msgspec Struct, read as MessagePack
    assert shipment["contentType"] == "application/msgpack"
    struct = _resolved(built, shipment["payload"])
    assert struct["required"] == ["id", "lines"]
    assert struct["properties"]["lines"] == {
        "type": "array",
        "items": {"$ref": "#/components/schemas/Line"},
    }

    refund = _resolved(built, _message(built, "on_refund.refunds")["payload"])  # dataclass
    assert refund["properties"] == {"order": {"type": "string"}, "cents": {"type": "integer"}}

    assert _message(built, "on_event")["payload"] == {
        "type": "object",
        "additionalProperties": {"type": "integer"},
    }
    blob = _message(built, "on_blob")
    assert (blob["contentType"], blob["payload"]) == (
        "application/octet-stream",
        {"type": "string", "format": "binary"},
    )
    assert _message(built, "on_note")["payload"] == {"type": "string"}
    record = _message(built, "on_record")
    assert "payload" not in record
    assert "contentType" not in record
    lines = _message(built, "on_lines")  # a batch: each record is one Line
    assert lines["payload"] == {"$ref": "#/components/schemas/Line"}


def test_declared_topics_are_send_operations_with_their_payload_and_key() -> None:
    built = document(contract.app)
    operations = built["operations"]
    sends = {name for name, op in operations.items() if op["action"] == "send"}
    assert sends == {
        "invoices.send",
        "receipts.send",
        "audit.send",
        "on_signup.send.signups.DLQ",
        "on_shipment.send.shipments.retry.10s",
        "on_shipment.send.shipments.retry.60s",
        "on_shipment.send.shipments.DLQ",
    }

    invoice = operations["invoices.send"]
    assert invoice["channel"] == {"$ref": "#/channels/invoices"}
    assert invoice["summary"] == "One invoice per order <b>handled</b>."
    assert built["channels"]["invoices"]["description"] == "One invoice per order <b>handled</b>."
    message = _message(built, "invoices.send")
    assert message["payload"] == {"$ref": "#/components/schemas/Invoice"}
    assert message["bindings"]["kafka"]["key"] == {"type": "string"}
    # consumed by the app too: both operations name the channel's one Invoice message
    assert _message(built, "book") is message

    assert _message(built, "receipts.send")["bindings"]["kafka"]["key"] == {
        "type": "string",
        "format": "binary",
    }
    audit = _message(built, "audit.send")
    assert audit["contentType"] == "application/msgpack"
    assert audit["payload"] == {"type": "object", "additionalProperties": {"type": "string"}}


def test_servers_are_the_kafka_bootstrap_servers_and_no_secret_is_written() -> None:
    built = document(contract.app)
    assert built["servers"] == {
        "kafka-1": {
            "host": "kafka-1.internal:9092",
            "protocol": "kafka-secure",
            "description": "A Kafka bootstrap server.",
            "x-taskflow-security-protocol": "SASL_SSL",
        },
        "kafka-2": {
            "host": "kafka-2.internal:9093",
            "protocol": "kafka-secure",
            "description": "A Kafka bootstrap server.",
            "x-taskflow-security-protocol": "SASL_SSL",
        },
    }
    text = as_json(built) + as_yaml(built) + page(built)
    assert "hunter2" not in text
    assert "svc" not in text.replace("service", "")


def test_the_memory_broker_has_no_servers() -> None:
    built = _valid(document(App("local")))
    assert "servers" not in built
    assert built["x-taskflow-broker"] == "memory://"
    assert "None: the app runs on <code>memory://</code>" in page(built)


def test_the_page_shows_everything_escaped() -> None:
    html = page(document(contract.app))
    assert "One invoice per order &lt;b&gt;handled&lt;/b&gt;." in html
    assert "<b>" not in html
    assert "<script" not in html
    for shown in ("on_signup", "signups.DLQ", "shipments.retry.10s", "onboarding", "Invoice"):
        assert shown in html
    assert "application/msgpack" in html


def test_yaml_needs_pyyaml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'taskflow\[yaml\]'"):
        as_yaml(document(App("plain")))


# -- declared topics at run time ---------------------------------------------------------


async def test_a_declared_topic_publishes_its_payload_and_is_consumed_by_its_handle() -> None:
    app = App("shop")
    invoices = app.topic("invoices", contract.Invoice, key=str)
    seen: list[contract.Invoice] = []

    @app.consume("orders")
    async def on_order(order: dict[str, Any]) -> None:
        await invoices.publish(contract.Invoice(order["id"], 100), key="c1")

    @app.consume(invoices, group="books")
    async def book(invoice: contract.Invoice) -> None:
        seen.append(invoice)

    async with TestClient(app) as client:
        await client.publish("orders", {"id": "o1"})
        await client.drain()
    (record,) = client.published(invoices)
    assert (record.key, record.json()) == (b"c1", {"order": "o1", "amount_cents": 100})
    assert record.headers["content-type"] == "application/json"
    assert seen == [contract.Invoice("o1", 100)]


async def test_a_value_or_key_of_another_type_is_refused() -> None:
    app = App("shop")
    invoices = app.topic("invoices", contract.Invoice, key=str)
    counts = app.topic("counts", dict[str, int])
    async with TestClient(app):
        with pytest.raises(PublishError, match="topic 'invoices' carries Invoice, got a dict"):
            await invoices.publish({"order": "o1"})  # type: ignore[arg-type]
        with pytest.raises(PublishError, match="topic 'invoices' has str keys, got a bytes"):
            await invoices.publish(contract.Invoice("o1", 1), key=b"c1")
        with pytest.raises(PublishError, match="carries dict"):
            await app.publish(counts, [1])  # type: ignore[arg-type]
        await invoices.publish(None, key="c1")  # a tombstone is any topic's
        await counts.publish({"a": 1})


async def test_a_declared_topic_publishes_with_its_own_codec() -> None:
    app = App("shop")
    audit = contract.app.topics[2]
    ours = app.topic("audit", audit.payload, codec=audit.codec)
    async with TestClient(app) as client:
        await ours.publish({"who": "me"})
    (record,) = client.published("audit")
    assert record.headers["content-type"] == "application/msgpack"


async def test_a_topic_publishes_only_while_its_app_runs() -> None:
    invoices = App("shop").topic("invoices", contract.Invoice)
    with pytest.raises(StateError, match="not running"):
        await invoices.publish(contract.Invoice("o1", 1))


@pytest.mark.parametrize(
    ("declare", "error"),
    [
        (lambda app: app.topic("bad topic", dict), "a topic name uses letters"),
        (lambda app: app.topic("t", dict, key=int), "key= is str or bytes"),
        (lambda app: app.topic("t", "Invoice"), "the payload is a type"),
        (lambda app: app.topic("t", dict, description=""), "description is text"),
        (lambda app: (app.topic("t", dict), app.topic("t", dict)), "already declared"),
    ],
)
def test_a_bad_declaration_is_refused(declare: Any, error: str) -> None:
    with pytest.raises(ConfigurationError, match=error):
        declare(App("shop"))


def test_a_bad_version_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="version is text"):
        App("shop", version="  ")


# -- the CLI and the endpoint ------------------------------------------------------------


def test_the_cli_writes_the_document_as_json_and_yaml(tmp_path: Path) -> None:
    done = taskflow("asyncapi", "tests.apps.contract:app")
    assert (done.returncode, done.stderr) == (0, "")
    assert json.loads(done.stdout) == json.loads(as_json(document(contract.app)))
    target = tmp_path / "contract.yaml"
    done = taskflow("asyncapi", "tests.apps.contract:app", "--format", "yaml", "-o", str(target))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    _valid(yaml.safe_load(target.read_text()))


def test_info_lists_the_declared_topics() -> None:
    done = taskflow("info", "tests.apps.contract:app")
    assert done.returncode == 0
    declared = [line for line in done.stdout.splitlines() if line.startswith("  publishes")]
    assert declared == [
        "  publishes invoices  payload Invoice  key str",
        "  publishes receipts  payload bytes  key bytes",
        "  publishes audit  payload dict[str, str]  codec application/msgpack",
    ]


def test_the_cli_servers_follow_the_broker_flag() -> None:
    done = taskflow("asyncapi", "tests.apps.contract:app", "--broker", "kafka://elsewhere:9092")
    assert done.returncode == 0
    assert json.loads(done.stdout)["servers"]["kafka"]["host"] == "elsewhere:9092"


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["tests.apps.nosuch:app"], "cannot import module 'tests.apps.nosuch'"),
        (["tests.apps.notapp:app"], "not a taskflow App"),
        (["tests.apps.contract:app", "--format", "xml"], "'xml' is not one of"),
        (["tests.apps.contract:app", "--broker", "kafka://"], "no Kafka servers"),
        (["tests.apps.contract:app", "-o", "/nonexistent/dir/out.json"], "cannot write"),
    ],
)
def test_the_cli_refuses_bad_input_in_one_line(args: list[str], error: str) -> None:
    done = taskflow("asyncapi", *args)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1
    assert error in done.stderr


async def test_the_endpoint_serves_the_document_and_its_page() -> None:
    app = App("served", http_port=0, http_host="127.0.0.1", description="Served <here>.")
    invoices = app.topic("invoices", contract.Invoice, key=str)

    @app.consume("orders", dead_letter="orders.DLQ")
    async def on_order(order: contract.Refund) -> None:
        await invoices.publish(contract.Invoice(order.order, order.cents))

    async with TestClient(app) as client:
        assert client.runtime.http is not None
        base = f"http://127.0.0.1:{client.runtime.http.port}"
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:
            served = await http.get("/asyncapi.json")
            shown = await http.get("/asyncapi")
    assert served.status_code == 200
    assert served.headers["content-type"].startswith("application/json")
    assert _valid(served.json()) == document(app)
    assert shown.status_code == 200
    assert shown.headers["content-type"].startswith("text/html")
    assert "Served &lt;here&gt;." in shown.text
    assert "orders.DLQ" in shown.text
    assert "invoices.send" in shown.text


# -- the docs ----------------------------------------------------------------------------


def test_the_document_in_the_docs_is_up_to_date() -> None:
    """docs/asyncapi.md includes this file; regenerate it with
    ``taskflow asyncapi examples.orders:app --format yaml -o docs/_snippets/asyncapi-orders.yaml``.
    """
    assert DOCS_DOCUMENT.read_text() == as_yaml(document(orders.app))


WRONG_PAYLOADS = """
from taskflow import App, Context
from tests.apps.contract import Invoice

app = App("shop")
invoices = app.topic("invoices", Invoice, key=str)


@app.consume("orders")
async def on_order(order: dict[str, str], ctx: Context) -> None:
    await invoices.publish(Invoice(order["id"], 1), key="c1")
    await invoices.publish(order)
    await ctx.publish(invoices, Invoice(order["id"], 1))
    await ctx.publish(invoices, order)
"""


def test_mypy_refuses_a_payload_of_another_type(tmp_path: Path) -> None:
    """As a user's editor and CI see it (tests/typecheck_app.py holds every such case)."""
    source = tmp_path / "shop.py"
    source.write_text(WRONG_PAYLOADS)
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"), source],
        cwd=ROOT,
        capture_output=True,
        encoding="utf-8",
        timeout=300,
        check=False,
    )
    errors = [
        line.partition(": error: ")[::2] for line in done.stdout.splitlines() if ": error: " in line
    ]
    assert done.returncode == 1
    assert [(where.rpartition(":")[2], what.rpartition("  ")[2]) for where, what in errors] == [
        ("12", "[arg-type]"),
        ("14", "[misc]"),
    ]
    assert 'expected "Invoice | None"' in errors[0][1]


# -- codecs with a schema of their own, failures, names ----------------------------------


def test_an_avro_payload_is_described_by_its_avro_schema() -> None:
    from examples import schemas

    built = _valid(document(schemas.app))
    invoice = _message(built, "on_invoice")
    assert invoice["contentType"] == "application/avro"
    assert invoice["payload"] == {
        "schemaFormat": "application/vnd.apache.avro;version=1.9.0",
        "schema": schemas.INVOICE,
    }
    dead = built["channels"]["invoices.DLQ"]["messages"]["Invoice"]
    assert dead["payload"] == invoice["payload"]


def test_a_protobuf_payload_is_described_by_its_message_fields() -> None:
    from examples import schemas

    built = _valid(document(schemas.app))
    reading = _message(built, "on_reading")
    assert reading["contentType"] == "application/x-protobuf"
    assert reading["payload"] == {
        "type": "object",
        "title": "taskflow.examples.Reading",
        "properties": {
            "sensor": {"type": "string"},
            "celsius": {"type": "number", "format": "double"},
            "taken_at": {"type": "integer", "format": "int64"},
        },
    }


def test_a_protobuf_schema_has_repeated_fields_maps_enums_and_nested_messages() -> None:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    from taskflow import ProtobufCodec

    proto = descriptor_pb2.FileDescriptorProto(name="asyncapi_shop.proto", package="shop")
    proto.syntax = "proto3"
    kind = proto.enum_type.add(name="Kind")
    kind.value.add(name="KIND_UNSPECIFIED", number=0)
    kind.value.add(name="GIFT", number=1)
    node = proto.message_type.add(name="Node")
    field = descriptor_pb2.FieldDescriptorProto
    node.field.add(name="child", number=1, type=field.TYPE_MESSAGE, type_name=".shop.Node")
    order = proto.message_type.add(name="Order")
    order.field.add(name="tags", number=1, type=field.TYPE_STRING, label=field.LABEL_REPEATED)
    order.field.add(name="kind", number=2, type=field.TYPE_ENUM, type_name=".shop.Kind")
    order.field.add(name="tree", number=3, type=field.TYPE_MESSAGE, type_name=".shop.Node")
    entry = order.nested_type.add(name="CountsEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=field.TYPE_STRING)
    entry.field.add(name="value", number=2, type=field.TYPE_UINT32)
    order.field.add(
        name="counts",
        number=4,
        type=field.TYPE_MESSAGE,
        label=field.LABEL_REPEATED,
        type_name=".shop.Order.CountsEntry",
    )
    order.field.add(name="blob", number=5, type=field.TYPE_BYTES)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("shop.Order"))

    schema = ProtobufCodec().payload_schema(cls)
    assert schema is not None
    assert schema["properties"] == {
        "tags": {"type": "array", "items": {"type": "string"}},
        "kind": {"type": "string", "title": "shop.Kind", "enum": ["KIND_UNSPECIFIED", "GIFT"]},
        "tree": {
            "type": "object",
            "title": "shop.Node",
            "properties": {
                "child": {"type": "object", "title": "shop.Node", "description": "recursive"}
            },
        },
        "counts": {
            "type": "object",
            "additionalProperties": {"type": "integer", "format": "uint32", "minimum": 0},
        },
        "blob": {"type": "string", "format": "binary"},
    }
    assert ProtobufCodec().payload_schema(dict) is None


class _SchemaCodec:
    """A codec of its own whose payloads' schema it gives itself."""

    content_type = "application/x-shop"

    def __init__(self, schema: Any) -> None:
        self.schema = schema

    def decoder(self, annotation: Any) -> Any:
        return bytes

    def encode(self, value: Any) -> bytes:
        return bytes(value)

    def payload_schema(self, annotation: Any) -> Any:
        return self.schema


def test_a_codec_of_your_own_gives_its_schema_and_a_wrong_one_is_refused() -> None:
    app = App("shop")
    described = _SchemaCodec({"type": "object", "title": "Shop record"})
    app.topic("records", dict, codec=described)
    built = _valid(document(app))
    assert _message(built, "records.send")["payload"] == {"type": "object", "title": "Shop record"}
    # None: the annotation's own schema
    app = App("shop")
    app.topic("records", dict[str, int], codec=_SchemaCodec(None))
    assert _message(document(app), "records.send")["payload"] == {
        "type": "object",
        "additionalProperties": {"type": "integer"},
    }
    app = App("shop")
    app.topic("records", dict, codec=_SchemaCodec("a schema"))
    with pytest.raises(ConfigurationError, match=r"_SchemaCodec.payload_schema returned a str"):
        document(app)


def _two_orders() -> tuple[type, type]:
    from dataclasses import make_dataclass

    import msgspec

    first = make_dataclass("Order", [("id", int)])
    second = type("Order", (msgspec.Struct,), {"__annotations__": {"sku": str}})
    return first, second


def test_two_payload_types_of_one_name_each_keep_their_schema() -> None:
    first, second = _two_orders()
    app = App("shop")
    app.topic("orders", first)
    app.topic("stock", second)
    app.topic("boxes", list[second])  # type: ignore[valid-type]
    app.topic("again", first)
    built = _valid(document(app))
    assert _message(built, "orders.send")["payload"] == {"$ref": "#/components/schemas/Order"}
    assert _message(built, "stock.send")["payload"] == {"$ref": "#/components/schemas/Order_2"}
    assert _message(built, "boxes.send")["payload"]["items"] == {
        "$ref": "#/components/schemas/Order_2"
    }
    assert _message(built, "again.send")["payload"] == {"$ref": "#/components/schemas/Order"}
    schemas = built["components"]["schemas"]
    assert list(schemas["Order"]["properties"]) == ["id"]
    assert list(schemas["Order_2"]["properties"]) == ["sku"]


def test_a_type_holding_a_renamed_type_refers_to_it_by_its_new_name() -> None:
    import msgspec

    first, second = _two_orders()
    box = type("Box", (msgspec.Struct,), {"__annotations__": {"order": first}})
    other_box = type("Box", (msgspec.Struct,), {"__annotations__": {"order": second}})
    app = App("shop")
    app.topic("boxes", box)
    app.topic("crates", other_box)
    built = _valid(document(app))
    assert _message(built, "crates.send")["payload"] == {"$ref": "#/components/schemas/Box_2"}
    schemas = built["components"]["schemas"]
    assert schemas["Box"]["properties"]["order"] == {"$ref": "#/components/schemas/Order"}
    assert schemas["Box_2"]["properties"]["order"] == {"$ref": "#/components/schemas/Order_2"}
    assert list(schemas["Order_2"]["properties"]) == ["sku"]


def _failing_app(clock: Any) -> App:
    app = App("shop", clock=clock)

    @app.consume("orders", group="billing", dead_letter="orders.DLQ", retry_topics=[10, 60])
    async def on_order(order: contract.Refund) -> None:
        """Books a refund."""
        raise ConnectionError(f"order {order.order} failed")

    return app


def test_retry_and_dead_letter_topics_are_channels_the_consumer_sends_to() -> None:
    from taskflow.testing import ManualClock

    built = _valid(document(_failing_app(ManualClock())))
    operations = built["operations"]
    assert {name: op["action"] for name, op in operations.items()} == {
        "on_order": "receive",
        "on_order.retry.orders.retry.10s": "receive",
        "on_order.retry.orders.retry.60s": "receive",
        "on_order.send.orders.retry.10s": "send",
        "on_order.send.orders.retry.60s": "send",
        "on_order.send.orders.DLQ": "send",
    }
    stage = operations["on_order.retry.orders.retry.60s"]
    assert stage["channel"] == {"$ref": "#/channels/orders.retry.60s"}
    assert stage["bindings"]["kafka"]["groupId"] == {"type": "string", "enum": ["billing.retry"]}
    assert stage["x-taskflow-group"] == "billing.retry"
    assert stage["x-taskflow-retries-of-group"] == "billing"
    assert "x-taskflow-retry-topics" not in stage
    assert stage["x-taskflow-dead-letter"] == "orders.DLQ"
    assert operations["on_order.send.orders.retry.60s"]["x-taskflow-retry-stage"] == 2
    assert operations["on_order.send.orders.retry.60s"]["x-taskflow-delay"] == "60s"
    assert operations["on_order.send.orders.DLQ"]["x-taskflow-original-topics"] == ["orders"]
    # a stage receives what the consumer sends: one message, the original payload plus headers
    sent = _message(built, "on_order.send.orders.retry.10s")
    assert _message(built, "on_order.retry.orders.retry.10s") is sent
    assert sent["payload"] == {"$ref": "#/components/schemas/Refund"}
    assert sent["headers"] == {"$ref": "#/components/schemas/TaskflowRetryHeaders"}
    dead = _message(built, "on_order.send.orders.DLQ")
    assert dead["payload"] == {"$ref": "#/components/schemas/Refund"}
    assert dead["headers"] == {"$ref": "#/components/schemas/TaskflowDeadLetterHeaders"}
    assert dead["contentType"] == "application/json"


async def test_a_consumer_of_several_topics_sends_its_dead_letters_in_one_operation() -> None:
    app = App("shop")

    @app.consume("refunds", "chargebacks", dead_letter="money.DLQ", retry_topics=[5])
    async def on_money(refund: contract.Refund) -> None: ...

    built = _valid(document(app))
    sends = {name: op for name, op in built["operations"].items() if op["action"] == "send"}
    assert {name: op["x-taskflow-original-topics"] for name, op in sends.items()} == {
        "on_money.send.refunds.retry.5s": ["refunds"],
        "on_money.send.chargebacks.retry.5s": ["chargebacks"],
        "on_money.send.money.DLQ": ["refunds", "chargebacks"],
    }


async def test_the_headers_schemas_describe_the_records_taskflow_writes() -> None:
    """Each retry record and dead letter of a real run fits its headers schema, and each of
    their `taskflow-` headers is described."""
    from taskflow.testing import ManualClock

    clock = ManualClock()
    app = _failing_app(clock)
    built = document(app)
    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", {"order": "o1", "cents": 5}, headers={"trace": "t1"})
        await client.drain()
        for _ in range(2):
            await clock.advance(60)
            await client.drain()
    written = {
        name: client.published(name)
        for name in ("orders.retry.10s", "orders.retry.60s", "orders.DLQ")
    }
    assert [len(records) for records in written.values()] == [1, 1, 1]
    for name, records in written.items():
        message = _message(built, f"on_order.send.{name}")
        schema = _resolved(built, message["headers"])
        (record,) = records
        headers = dict(record.headers)
        assert list(jsonschema.Draft7Validator(schema).iter_errors(headers)) == []
        ours = {header for header in headers if header.startswith("taskflow-")}
        assert ours <= set(schema["properties"])
        assert headers["trace"] == "t1"  # the original's own headers, kept


def test_the_page_shows_avro_schemas_headers_and_failure_topics() -> None:
    from examples import schemas
    from taskflow.testing import ManualClock

    html = page(document(schemas.app))
    assert "schema format <code>application/vnd.apache.avro;version=1.9.0</code>" in html
    assert "&quot;namespace&quot;: &quot;billing&quot;" in html
    html = page(document(_failing_app(ManualClock())))
    assert '<a href="#schema-TaskflowDeadLetterHeaders">TaskflowDeadLetterHeaders</a>' in html
    assert "retry stage: <code>2</code>" in html
    assert "Dead letter of Refund" in html
