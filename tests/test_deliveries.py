"""Publishing without waiting (`wait=False`): what is delivered, what is reported, what is owned."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import pytest

from taskflow import App, Context, PublishError, TopicPartition
from taskflow.deliveries import LOGGED_WHEN_ABANDONED, Deliveries
from taskflow.testing import TestClient


async def test_a_handler_publishing_without_waiting_reaches_the_consumers_in_order() -> None:
    app = App("fanout")
    lines: list[int] = []

    @app.consume("orders")
    async def on_order(order: dict[str, Any], ctx: Context) -> None:
        for line in order["lines"]:
            await ctx.publish("order-lines", {"line": line}, key=order["id"], wait=False)

    @app.consume("order-lines", group="lines")
    async def on_line(line: dict[str, int]) -> None:
        lines.append(line["line"])

    async with TestClient(app) as client:
        await client.publish("orders", {"id": "o-1", "lines": [1, 2, 3, 4, 5]})
        await client.drain()
        assert client.runtime.deliveries.pending == {}

    assert lines == [1, 2, 3, 4, 5]  # one key, one partition: in order


async def test_a_record_the_broker_refuses_is_logged_and_counted_not_raised_in_the_handler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = App("fanout")
    finished: list[str] = []

    @app.consume("orders")
    async def on_order(order: dict[str, str], ctx: Context) -> None:
        await ctx.publish("receipts", "x" * 5000, key=order["id"], wait=False)
        finished.append(order["id"])

    client = TestClient(app, partitions=1)
    client.broker.max_request_size = 1000
    with caplog.at_level(logging.ERROR, logger="taskflow.deliveries"):
        async with client:
            await client.publish("orders", {"id": "o-1"})
            await client.drain()  # handled and committed: the handler did not fail
            counts = dict(client.runtime.deliveries.undelivered)

    assert finished == ["o-1"]
    assert client.broker.committed("fanout", TopicPartition("orders", 0)) == 1
    assert client.broker.end_offset(TopicPartition("receipts", 0)) == 0
    assert counts == {("receipts", "taskflow.exceptions.RecordTooLarge"): 1}
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("record to 'receipts' (key 'o-1') published without waiting was not")
    assert "over the max_request_size of 1000" in line


async def test_a_value_that_cannot_be_encoded_still_raises_at_the_call() -> None:
    app = App("fanout")
    async with TestClient(app):
        with pytest.raises(PublishError):
            await app.publish("receipts", object(), wait=False)
        assert app.running


async def test_publishing_without_waiting_when_not_running_raises() -> None:
    with pytest.raises(Exception, match="is not running"):
        await App("idle").publish("receipts", b"x", wait=False)


def _loop_errors() -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
    return errors


async def test_a_failed_delivery_is_reported_once_and_its_error_is_retrieved(
    caplog: pytest.LogCaptureFixture,
) -> None:
    errors = _loop_errors()
    deliveries = Deliveries()
    delivery: asyncio.Future[tuple[TopicPartition, int]] = asyncio.Future()
    deliveries.watch(delivery, "receipts", b"\xff")
    delivery.set_exception(PublishError("publishing to 'receipts' failed: refused"))
    await asyncio.sleep(0)  # the callbacks run

    assert deliveries.pending == {}
    assert deliveries.undelivered == {("receipts", "taskflow.exceptions.PublishError"): 1}
    assert "(key b'\\xff')" in caplog.text
    del delivery
    gc.collect()
    assert errors == []  # no "exception was never retrieved"


async def test_deliveries_still_pending_when_the_broker_closed_are_each_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    errors = _loop_errors()
    deliveries = Deliveries()
    pending = [asyncio.get_running_loop().create_future() for _ in range(LOGGED_WHEN_ABANDONED + 5)]
    for n, delivery in enumerate(pending):
        deliveries.watch(delivery, "receipts", f"k{n}".encode())

    assert deliveries.abandon() == LOGGED_WHEN_ABANDONED + 5
    await asyncio.sleep(0)  # the cancelled futures' callbacks run, and report nothing more

    assert deliveries.failed == LOGGED_WHEN_ABANDONED + 5
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == (
        "record to 'receipts' (key 'k0') published without waiting was not delivered: "
        "the broker closed before it acknowledged the record"
    )
    assert len(lines) == LOGGED_WHEN_ABANDONED + 1  # then one line counts them all
    assert lines[-1].startswith(f"{LOGGED_WHEN_ABANDONED + 5} record(s) published without waiting")
    del pending
    gc.collect()
    assert errors == []
