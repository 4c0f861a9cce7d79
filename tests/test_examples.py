"""Every example program runs: the ones the docs include are exercised here."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from unittest.mock import AsyncMock

import httpx
import pytest
import yaml
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redis.asyncio import Redis

from examples import (
    batches,
    billing,
    compacted,
    consuming,
    custom_worker,
    failures,
    fastapi_service,
    idempotency,
    middleware,
    payloads,
    quickstart,
    rate_limits,
    reports,
    scheduling,
    schemas,
    telemetry,
    topics_and_groups,
)
from examples.proto.readings_pb2 import Reading
from taskflow import Context
from taskflow.brokers.memory import MemoryBroker
from taskflow.config import size_text
from taskflow.http import SERVER_CLOSE_TIMEOUT
from taskflow.manager import CANCEL_GRACE
from taskflow.message import TopicPartition
from taskflow.runner import BROKER_CLOSE_TIMEOUT
from taskflow.testing import ManualClock, TestClient
from taskflow.workers import ConsumerWorker
from tests._process import ROOT
from tests._redis import REDIS_URL


async def test_quickstart_places_and_handles_an_order(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    # a clock that stands still: place_order runs only when asked, never on a tick of its own
    async with TestClient(quickstart.app, clock=ManualClock()) as client:
        await client.run_schedule("place_order")
        await client.drain()
    assert client.report is not None
    assert client.report.clean
    handled = [r.getMessage() for r in caplog.records if r.getMessage().startswith("order ")]
    assert len(handled) == 1
    assert handled[0].endswith("12.50 EUR")


# --8<-- [start:billing]
async def test_an_order_is_invoiced_and_a_bad_one_dead_lettered() -> None:
    async with TestClient(billing.app) as client:
        await client.publish("orders", {"id": 7, "customer": "c1"}, key="c1")
        await client.publish("orders", b"not json", key="c2")
        await client.drain()  # all handled (or dead-lettered) and committed
        await client.run_schedule("cleanup")  # a periodic task, run now
    (invoice,) = client.published("invoices")
    assert (invoice.key, invoice.json()) == (b"c1", {"order": 7})
    (letter,) = client.dead_letters("orders.DLQ")
    assert (letter.reason, letter.key) == ("rejected", b"c2")
    assert letter.value == b"not json"
    assert letter.exception_type == "taskflow.exceptions.DecodeError"
    assert client.report is not None
    assert client.report.clean  # the shutdown cancelled nothing


# --8<-- [end:billing]


# --8<-- [start:direct]
async def test_an_invoice_is_published_for_an_order() -> None:
    ctx = AsyncMock(spec=Context)
    await billing.on_order({"id": 7, "customer": "c1"}, ctx)
    ctx.publish.assert_awaited_once_with("invoices", {"order": 7}, key="c1")


# --8<-- [end:direct]


async def test_custom_worker_beats_and_stops_at_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    heartbeat = custom_worker.app.workers[0]
    assert isinstance(heartbeat, custom_worker.Heartbeat)
    async with TestClient(custom_worker.app) as client:
        pass
    assert client.report is not None
    assert client.report.clean
    assert heartbeat.beats >= 1
    assert "heartbeat 1" in caplog.text
    status = heartbeat.status()
    assert (status.kind, status.activity) == ("heartbeat", "stopping")
    assert status.details == {"beats": heartbeat.beats, "every": 1.0}


async def test_middleware_example_times_handlers_and_rejects_a_message_without_tenant(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with TestClient(middleware.app) as client:
        await client.run_schedule("place_order")
        await client.drain()
        dead = client.broker.topic("orders.dlq").logs
    assert client.report is not None
    assert client.report.clean
    assert "order 1 for tenant acme" in caplog.text
    assert "order 2" not in caplog.text
    letters = [m for log in dead for m in log]
    placed = caplog.text.count("order 1 for tenant acme")  # at start, and once more here
    assert placed >= 2
    assert len(letters) == placed
    assert {m.header("taskflow-reason") for m in letters} == {b"rejected"}
    assert {m.header("taskflow-exception-message") for m in letters} == {b"no tenant header"}


# --8<-- [start:compacted]
async def test_a_tombstone_deletes_from_the_table_and_is_not_a_change() -> None:
    app = compacted.app
    async with TestClient(app) as client:
        await client.publish("customer-profiles", {"name": "Ada"}, key="c-1")
        await client.publish("customer-profiles", {"name": "Grace"}, key="c-2")
        await compacted.forget("c-1")
        await client.drain()  # both groups committed all, the tombstone too
        assert app.state.profiles == {"c-2": {"name": "Grace"}}
        assert sorted(app.state.changes) == ["Ada", "Grace"]
        changes = client.runtime.worker("on_change")
        assert isinstance(changes, ConsumerWorker)
        assert changes.status().count("skip_tombstone") == 1
    assert client.report is not None
    assert client.report.clean


# --8<-- [end:compacted]


# --8<-- [start:groups]
async def test_two_groups_on_one_topic_each_get_every_message() -> None:
    # its simulated traffic may add events for user-0 and user-1
    app = topics_and_groups.app
    async with TestClient(app) as client:
        for n in (101, 102, 103):
            order = {"id": n, "user": "ada"}
            await client.publish("order-events", order, key="ada")
        await client.publish("refund-events", {"order": 102}, key="ada")
        login = {"user": "ada", "action": "login"}
        await client.publish("user-events", login, key="ada")
        await client.drain()  # every group has handled and committed everything
        # one key, so in order
        assert [n for n in app.state.orders if n > 100] == [101, 102, 103]
        assert ("refund-events", b'{"order":102}') in app.state.ledger
        assert app.state.actions["ada"] == ["login"]
        logs = client.broker.topic("order-events").logs
        published = sum(len(log) for log in logs)
        for group in ("order-event-consumer-group", "ledger"):
            committed = client.committed
            offsets = [committed(group, "order-events", p) for p in range(4)]
            assert sum(o or 0 for o in offsets) == published >= 3
    assert client.report is not None
    assert client.report.clean


# --8<-- [end:groups]


# --8<-- [start:clock]
async def test_reports_run_on_their_ticks_when_the_clock_moves() -> None:
    # a Monday, 07:30 in Berlin
    clock = ManualClock(datetime(2026, 3, 2, 6, 30, tzinfo=UTC))
    app = reports.create_app(clock)
    async with TestClient(app):
        await clock.wait_for_sleepers(2)  # both tasks wait for their next tick
        # to 09:30 UTC: each tick runs, in order
        await clock.advance(timedelta(hours=3))
        runs = sorted(app.state.runs, key=lambda run: (run[1], run[0]))
    assert runs == [
        ("hourly", datetime(2026, 3, 2, 7, tzinfo=UTC)),
        ("hourly", datetime(2026, 3, 2, 8, tzinfo=UTC)),
        ("morning", datetime(2026, 3, 2, 8, tzinfo=UTC)),  # 09:00 in Berlin
        ("hourly", datetime(2026, 3, 2, 9, tzinfo=UTC)),
    ]


# --8<-- [end:clock]


# --8<-- [start:client-clock]
async def test_cleanup_runs_every_five_minutes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    clock = ManualClock(datetime(2026, 3, 2, 6, 0, tzinfo=UTC))
    # billing.app runs on this clock for the length of the block
    async with TestClient(billing.app, clock=clock):
        await clock.wait_for_sleepers()
        await clock.advance(timedelta(minutes=11))
    logged = [record.getMessage() for record in caplog.records]
    runs = [line for line in logged if line.startswith("cleaning")]
    assert runs == [
        "cleaning up the run of 2026-03-02 06:05:00+00:00",
        "cleaning up the run of 2026-03-02 06:10:00+00:00",
    ]
    assert billing.app.clock is not clock  # the app has its own clock back


# --8<-- [end:client-clock]


# --8<-- [start:failures]
async def test_a_parcel_goes_through_both_stages_to_the_dead_letters() -> None:
    clock = ManualClock()
    parcel = {"id": "P-7", "country": "NL", "grams": 2400}
    async with TestClient(failures.app, clock=clock) as client:
        await client.publish("parcels", parcel, key="P-7")
        await client.drain()  # attempt 1 failed: it waits on the first stage
        (waiting,) = client.published("parcels.retry.2s")
        assert waiting.headers["taskflow-attempts"] == "1"
        await clock.advance(2)  # due: attempt 2 fails, on to the second stage
        await client.drain()
        assert len(client.published("parcels.retry.5s")) == 1
        assert client.published("parcels.DLQ") == []
        await clock.advance(5)  # due: attempt 3, the last, fails
        await client.drain()
    (letter,) = client.dead_letters("parcels.DLQ")
    assert (letter.reason, letter.attempts) == ("exhausted", 3)
    assert letter.exception_type == "builtins.KeyError"
    assert letter.exception_message == "'NL'"
    assert (letter.original_topic, letter.original_offset) == ("parcels", 0)
    assert letter.json() == parcel


# --8<-- [end:failures]


async def test_a_parcel_too_heavy_is_dead_lettered_at_once() -> None:
    async with TestClient(failures.app, clock=ManualClock()) as client:
        await client.publish("parcels", {"id": "P-8", "country": "DE", "grams": 40000})
        await client.drain()
        assert client.published("parcels.retry.2s") == []
    (letter,) = client.dead_letters("parcels.DLQ")
    assert (letter.reason, letter.attempts) == ("rejected", 1)
    assert letter.exception_type == "examples.failures.TooHeavy"


async def test_the_fixed_parcel_service_prices_the_netherlands(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PARCELS_FIXED", "1")
    caplog.set_level(logging.INFO)
    async with TestClient(failures.app, clock=ManualClock()) as client:
        await client.publish("parcels", {"id": "P-7", "country": "NL", "grams": 2400})
        await client.drain()
        assert client.published("parcels.retry.2s") == []
    logged = [record.getMessage() for record in caplog.records]
    assert "label for parcel P-7 to NL: 2.64 EUR (attempt 1)" in logged


async def test_fastapi_service_publishes_from_the_api_and_welcomes_in_the_worker() -> None:
    api = fastapi_service.api
    transport = httpx.ASGITransport(app=api)
    async with (
        api.router.lifespan_context(api),
        httpx.AsyncClient(transport=transport, base_url="http://test") as http,
    ):
        runtime = api.state.tasks
        async with asyncio.timeout(5):  # as a readiness probe would: ask until it says yes
            while True:
                if (await http.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.01)
        response = await http.post("/signups", json={"email": "ada@example.com"})
        assert response.status_code == 202
        broker = runtime.broker
        assert isinstance(broker, MemoryBroker)
        signups = [TopicPartition("signups", p) for p in range(broker.partitions)]
        async with asyncio.timeout(10):
            while any(
                (broker.committed("signups", tp) or 0) < broker.end_offset(tp) for tp in signups
            ):
                await broker.group("signups").wait_for_commit()
        assert (await http.get("/welcomed")).json() == ["ada@example.com"]
    assert runtime.manager.stop_requested
    assert {s.state.value for s in runtime.manager.statuses.values()} == {"stopped"}


def test_fastapi_service_under_uvicorn_drains_its_workers_on_sigterm() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "examples.fastapi_service"]
    env = {
        k: v for k, v in os.environ.items() if k not in ("TASKFLOW_BROKER", "PYTHONASYNCIODEBUG")
    }
    env["PORT"] = str(port)
    server = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=2) as http:
            deadline = time.monotonic() + 20
            while True:  # another process: poll until it answers
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "uvicorn did not become ready"
                time.sleep(0.1)
            assert http.post("/signups", json={"email": "bob@example.com"}).status_code == 202
            deadline = time.monotonic() + 10
            while http.get("/welcomed").json() != ["bob@example.com"]:
                assert time.monotonic() < deadline, "the signup was not handled"
                time.sleep(0.05)
        server.send_signal(signal.SIGTERM)
        _, log = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    assert "welcomed bob@example.com" in log
    assert "app signups stopped cleanly" in log
    assert log.index("Waiting for application shutdown") < log.index("stopped cleanly")


@pytest.mark.parametrize(
    ("folder", "app_ref"),
    [
        ("examples/deploy", "examples.orders:app"),
        ("examples/recipes/service", "shop.app:app"),
    ],
)
def test_kubernetes_manifest_gives_the_drain_time_to_finish(folder: str, app_ref: str) -> None:
    documents = yaml.safe_load_all((ROOT / folder / "kubernetes.yaml").read_text())
    (manifest,) = [document for document in documents if document["kind"] == "Deployment"]
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    shutdown_timeout = float(env["TASKFLOW_SHUTDOWN_TIMEOUT"])
    # What follows the deadline: cancelled work commits and leaves, the producer flushes, the
    # operations endpoint closes (the shutdown hooks come on top).
    after_deadline = CANCEL_GRACE + BROKER_CLOSE_TIMEOUT + SERVER_CLOSE_TIMEOUT
    assert pod["terminationGracePeriodSeconds"] >= shutdown_timeout + after_deadline + 10
    port = int(env["TASKFLOW_HTTP_PORT"])
    assert container["ports"] == [{"name": "ops", "containerPort": port}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "ops"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ops"}
    assert container["args"][:3] == ["taskflow", "run", app_ref]
    if "TASKFLOW_BUFFER_BYTES" in env:  # the records held fit well within the pod's memory
        budget = size_text(env["TASKFLOW_BUFFER_BYTES"])
        limit = size_text(container["resources"]["limits"]["memory"] + "B")
        assert budget is not None
        assert limit is not None
        assert budget <= limit / 4
    dockerfile = (ROOT / folder / "Dockerfile").read_text()
    cmd = next(line for line in dockerfile.splitlines() if line.startswith("CMD "))
    assert json.loads(cmd.removeprefix("CMD ")) == container["args"]  # exec form: PID 1 is taskflow


async def test_consuming_guide_handlers_retry_reject_and_publish() -> None:
    async with TestClient(consuming.app) as client:
        await client.publish("labels", {"id": "l1", "carrier": "down"})
        await client.publish("labels", {"id": "l2"})
        await client.publish("shipments", {"id": "s1"})
        await client.publish("audit", b"logged in")
        good = {"id": "r1", "order": 7, "customer": "c1", "amount": 5}
        await client.publish("returns", good, key="c1")
        await client.publish("returns", {**good, "id": "r2", "amount": -1})
        await client.publish("returns", {"id": "r3", "customer": "c1", "amount": 1})
        await client.publish("orders", {"id": "o1", "lines": ["a", "b", "c"]})
        await client.drain()
        topic = client.broker.topic
        refunds = [m for log in topic("refunds").logs for m in log]
        dead = [m for log in topic("returns.DLQ").logs for m in log]
        lines = [m for log in topic("order-lines").logs for m in log]
    assert [(m.key, m.value, m.header("return-id")) for m in refunds] == [
        (b"c1", b'{"order":7,"amount":5}', b"r1")
    ]
    exceptions = {m.header("taskflow-exception-type") for m in dead}
    assert exceptions == {b"taskflow.exceptions.Reject", b"examples.consuming.InvalidReturn"}
    assert {m.header("taskflow-reason") for m in dead} == {b"rejected"}
    assert [(m.key, m.value) for m in lines] == [(b"o1", b"a"), (b"o1", b"b"), (b"o1", b"c")]
    (waiting,) = client.published("labels.retry.10s")  # l1 waits out its first delay
    assert (waiting.json(), waiting.headers["taskflow-attempts"]) == (
        {"id": "l1", "carrier": "down"},
        "1",
    )
    assert client.report is not None
    assert client.report.clean


async def test_batches_guide_stores_events_in_batches_and_dead_letters_a_refused_row() -> None:
    batches.store.rows.clear()
    async with TestClient(batches.app, partitions=1) as client:
        for number in range(3):
            await client.publish("events", {"id": f"e{number}"})
        await client.publish("events", {"kind": "no id"})
        await client.publish("events", {"id": "e4"})
        await client.drain()
        dead = [m for log in client.broker.topic("events.DLQ").logs for m in log]
    assert sorted(batches.store.rows) == ["e0", "e1", "e2", "e4"]
    assert [m.value for m in dead] == [b'{"kind":"no id"}']
    assert dead[0].header("taskflow-reason") == b"rejected"


async def test_scheduling_guide_tasks_run_on_their_ticks(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with TestClient(scheduling.app) as client:
        for task in ("cleanup", "report", "morning_digest", "nightly_export"):
            await client.run_schedule(task)
    assert client.report is not None
    assert client.report.clean
    for line in ("run for", "report for", "digest for", "export for"):
        assert line in caplog.text


@pytest.mark.redis
async def test_scheduling_guide_reads_the_last_run_from_redis(
    monkeypatch: pytest.MonkeyPatch, redis: Redis
) -> None:
    assert await scheduling.runs(REDIS_URL) == (None, None)  # never started
    monkeypatch.setattr(scheduling.app, "redis_url", REDIS_URL)
    async with TestClient(scheduling.app):
        pass
    last, upcoming = await scheduling.runs(REDIS_URL)
    assert last is None  # no tick came yet
    assert upcoming is not None
    assert (upcoming.hour, upcoming.minute) in ((0, 0), (1, 0))  # 02:00 in Berlin


@pytest.mark.redis
async def test_rate_limits_guide_consumers_handle_their_topics(
    monkeypatch: pytest.MonkeyPatch, redis: Redis
) -> None:
    monkeypatch.setattr(rate_limits.app, "redis_url", REDIS_URL)
    async with TestClient(rate_limits.app) as client:
        for topic in ("invoices", "sms", "events"):
            for n in range(3):
                await client.publish(topic, {"n": n})
        await client.drain()  # handled and committed, within each limit
        for topic, group in (("invoices", "billing"), ("sms", "billing")):
            done = sum(client.committed(group, topic, p) or 0 for p in range(4))
            assert done == 3
    assert client.report is not None
    assert client.report.clean


@pytest.mark.redis
async def test_idempotency_guide_applies_a_payment_once(
    monkeypatch: pytest.MonkeyPatch, redis: Redis
) -> None:
    monkeypatch.setattr(idempotency.app, "redis_url", REDIS_URL)
    payment = {"id": "p1", "account": "a1", "amount": 500}
    async with TestClient(idempotency.app) as client:
        for _ in range(2):
            await client.publish("payments", payment, headers={"payment-id": b"p1"})
        await client.drain()
        await client.run_schedule("hourly_report")
    assert await redis.hgetall("balances") == {b"a1": b"500"}
    assert await redis.lrange("history:a1", 0, -1) == [b"p1"]


async def test_telemetry_guide_puts_the_own_span_under_taskflows() -> None:
    spans = InMemorySpanExporter()  # beside the example's own exporter
    telemetry.tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    try:
        async with TestClient(telemetry.app) as client:
            await client.publish("invoices", {"id": "i1"})
            await client.drain()
    finally:
        # Export what the console exporter holds while the stream it writes to is open, and
        # take the Prometheus reader off the default registry other tests read.
        telemetry.tracer_provider.shutdown()
        telemetry.meter_provider.shutdown()
    finished = spans.get_finished_spans()
    by_id = {span.context.span_id: span for span in finished}
    (own,) = [span for span in finished if span.name == "render pdf"]
    assert own.parent is not None
    assert by_id[own.parent.span_id].name == "process invoices"


async def test_payloads_guide_reads_structs_msgpack_and_csv_and_rejects_a_bad_parcel() -> None:
    for found in (payloads.shipped, payloads.labels, payloads.rows):
        found.clear()
    async with TestClient(payloads.app, partitions=1) as client:
        await client.publish("shipments", {"id": 1, "parcels": [{"sku": "a", "grams": 900}]})
        await client.publish("shipments", {"id": 2, "parcels": [{"sku": "b"}]})
        await client.publish("manifests", ["truck 7", "Lyon, FR"], codec=payloads.CsvCodec())
        await client.publish("manifests", b"truck 8,Turin")  # no header: the consumer's codec
        await client.drain()
        (letter,) = client.dead_letters("shipments.DLQ")
        (label,) = client.published("labels")

    assert payloads.shipped == [payloads.Shipment(1, [payloads.Parcel("a", 900)])]
    assert payloads.labels == ["1: 1 parcel(s)"]
    assert label.headers["content-type"] == "application/msgpack"
    assert letter.exception_message == (
        "payload of shipments[0]@1 is not a valid Shipment: "
        "Object missing required field `grams` - at `$.parcels[0]`"
    )
    assert payloads.rows == [["truck 7", "Lyon, FR"], ["truck 8", "Turin"]]


async def test_schemas_guide_reads_avro_and_protobuf_and_rejects_what_does_not_fit() -> None:
    for found in (schemas.invoices, schemas.readings):
        found.clear()
    hot = Reading(sensor="roof", celsius=31.5, taken_at=1_700_000_000_000)
    async with TestClient(schemas.app, partitions=1) as client:
        await client.publish(
            "invoices", {"id": 7, "customer": "c-1", "cents": 1250}, codec=schemas.avro
        )
        await client.publish("invoices", b"\x0e", headers={"content-type": "application/avro"})
        await client.publish("readings", hot, codec=schemas.protobuf)
        await client.publish(
            "readings", Reading(sensor="cellar", celsius=12.0), codec=schemas.protobuf
        )
        await client.drain()
        (letter,) = client.dead_letters("invoices.DLQ")
        (forwarded,) = client.published("readings.hot")

    assert schemas.invoices == [schemas.Invoice(7, "c-1", 1250)]
    assert [r.sensor for r in schemas.readings] == ["roof", "cellar"]
    assert (forwarded.headers, forwarded.value) == (
        {"content-type": "application/x-protobuf"},
        hot.SerializeToString(),
    )
    assert letter.exception_message == (
        "payload of invoices[0]@1 is not valid application/avro: "
        "the value ends before a whole Invoice record"
    )
