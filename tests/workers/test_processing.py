"""The Processor counts what the error policy decided, for the observable metrics."""

from __future__ import annotations

from typing import Any

import pytest

from taskflow import App, Backoff, Context, DecodeError, Defer, PublishError, Reject
from taskflow.policy import DEAD_LETTER_EXHAUSTED, DEAD_LETTER_REJECTED, RETRY, SKIP
from taskflow.testing import TestClient
from taskflow.workers import ConsumerWorker

FAST = Backoff(initial=0.001, maximum=0.001, jitter=0)


def consumer_worker(client: TestClient, name: str) -> ConsumerWorker:
    found = client.runtime.worker(name)
    assert isinstance(found, ConsumerWorker)
    return found


async def test_outcomes_are_counted_by_decision_topic_and_exception_type() -> None:
    app = App("shop")  # no telemetry: the counts are kept anyway, off the per-message path
    deferred: list[int] = []

    @app.consume("orders", "returns", retry=FAST, dead_letter="orders.DLQ", max_attempts=2)
    async def on_order(order: dict[str, str], ctx: Context) -> None:
        if order["fail"] == "crash":
            raise RuntimeError("warehouse down")
        if order["fail"] == "reject":
            raise Reject("customer is blocked")
        if order["fail"] == "defer" and not deferred:
            deferred.append(ctx.attempt)
            raise Defer("not yet", 0.001)

    @app.consume("payments", retry=FAST)
    async def on_payment(payment: dict[str, str]) -> None:
        raise Reject("duplicate")

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", {"fail": "crash"})
        await client.publish("returns", {"fail": "reject"})
        await client.publish("returns", b"not json")
        await client.publish("orders", {"fail": "defer"})
        await client.publish("payments", {"fail": ""})
        await client.drain()
        orders = consumer_worker(client, "on_order").processor.outcomes
        payments = consumer_worker(client, "on_payment").processor.outcomes

    assert orders == {
        (RETRY, "orders", RuntimeError, None): 1,
        (DEAD_LETTER_EXHAUSTED, "orders", RuntimeError, None): 1,
        (DEAD_LETTER_REJECTED, "returns", Reject, None): 1,
        (DEAD_LETTER_REJECTED, "returns", DecodeError, None): 1,
    }  # a Defer is no outcome: the message ran again and succeeded
    assert payments == {(SKIP, "payments", Reject, None): 1}


async def test_a_dead_letter_is_counted_once_the_broker_has_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = App("shop")

    @app.consume("orders", retry=FAST, dead_letter="orders.DLQ")
    async def on_order(order: dict[str, str]) -> None:
        raise Reject("customer is blocked")

    async with TestClient(app, partitions=1) as client:
        publish = client.broker.publish
        refusals = 2

        async def flaky(topic: str, value: bytes, **options: Any) -> Any:
            nonlocal refusals
            if topic == "orders.DLQ" and refusals:
                refusals -= 1
                raise PublishError("not now")
            return await publish(topic, value, **options)

        monkeypatch.setattr(client.broker, "publish", flaky)
        await client.publish("orders", {"id": 1})
        await client.drain()
        outcomes = consumer_worker(client, "on_order").processor.outcomes

    assert refusals == 0
    assert outcomes == {(DEAD_LETTER_REJECTED, "orders", Reject, None): 1}
