"""The examples that need a real broker and Redis, run as the docs say: by `taskflow run`."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord
from redis.asyncio import Redis

from tests._process import AppProcess, wait_until
from tests._redis import REDIS_URL
from tests._tansu import create_topic

pytestmark = pytest.mark.redis

TOPICS = ("orders", "orders.DLQ", "invoices")  # the names examples/orders.py uses


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def get(url: str) -> tuple[int, dict[str, object]]:
    """Status and JSON body of a GET, 503s included."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except OSError:
        return 0, {}


async def read_topic(
    bootstrap: str,
    topic: str,
    until: Callable[[list[ConsumerRecord]], bool],
    timeout: float = 30.0,
) -> list[ConsumerRecord]:
    """Every record of `topic` from the start, read (without a group) until `until` holds."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: list[ConsumerRecord] = []
        async with asyncio.timeout(timeout):
            while not until(records):
                batches = await consumer.getmany(timeout_ms=500)
                records += [record for batch in batches.values() for record in batch]
        return records
    finally:
        await consumer.stop()


async def test_orders_service_counts_each_order_once_and_dead_letters_an_invalid_one(
    app_env: dict[str, str],
    bootstrap: str,
    producer: AIOKafkaProducer,
    redis: Redis,
    tmp_path: Path,
) -> None:
    for name in TOPICS:
        await create_topic(bootstrap, name, 4, exist_ok=True)
    run = uuid.uuid4().hex[:8]
    customers = [f"{run}-alice", f"{run}-bob"]
    orders = [
        {"id": f"{run}-1", "customer": customers[0], "amount_cents": 1250},
        {"id": f"{run}-2", "customer": customers[1], "amount_cents": 500},
        {"id": f"{run}-3", "customer": customers[0], "amount_cents": 250},
    ]
    invalid = {"id": f"{run}-4", "customer": customers[1], "amount_cents": 0}
    port = free_port()
    env = {**app_env, "TASKFLOW_REDIS_URL": REDIS_URL}
    stdout = tmp_path / "stdout.txt"
    with AppProcess("examples.orders:app", "--http-port", str(port), env=env, stdout=stdout) as app:
        app.wait_for(r"\[revenue_report\] revenue: 0 cents from 0 customers")
        wait_until(lambda: get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 30, "/readyz 200")

        # The first order is delivered twice (a producer retry, say): it counts once.
        for order in [*orders, orders[0], invalid]:
            await producer.send(
                "orders",
                json.dumps(order).encode(),
                key=order["customer"].encode(),
                headers=[("order-id", order["id"].encode())],
            )
        await producer.flush()

        async def revenue() -> dict[bytes, bytes]:
            return await redis.hgetall("orders:revenue")

        expected = {customers[0].encode(): b"1500", customers[1].encode(): b"500"}
        async with asyncio.timeout(30):  # another process writes it: look until it is there
            while True:
                if await revenue() == expected:
                    break
                await asyncio.sleep(0.1)

        def ours(records: list[ConsumerRecord]) -> list[ConsumerRecord]:
            return [
                r for r in records if dict(r.headers).get("order-id", b"").startswith(run.encode())
            ]

        dead = ours(await read_topic(bootstrap, "orders.DLQ", lambda rs: len(ours(rs)) >= 1))
        invoices = ours(await read_topic(bootstrap, "invoices", lambda rs: len(ours(rs)) >= 3))
        status, health = get(f"http://127.0.0.1:{port}/healthz")
        assert (status, health["status"]) == (200, "ok")
        assert app.stop(signal.SIGTERM) == 0

    assert "stopped cleanly" in app.log
    assert app.log.count(f"order {run}-1: 1250 cents") == 1  # the second delivery was skipped
    assert await revenue() == expected
    assert len(dead) == 1
    headers = dict(dead[0].headers)
    assert json.loads(dead[0].value) == invalid
    assert headers["taskflow-reason"] == b"rejected"
    assert headers["taskflow-original-topic"] == b"orders"
    assert headers["taskflow-exception-type"] == b"examples.orders.InvalidOrder"
    assert headers["taskflow-attempts"] == b"1"
    assert sorted(dict(r.headers)["order-id"] for r in invoices) == [
        order["id"].encode() for order in orders
    ]
    spans = stdout.read_text()
    assert '"name": "process orders"' in spans
    assert '"service.name": "orders"' in spans
