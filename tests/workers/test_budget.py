"""The memory budget: one bound on the fetched records of a process, over every consumer."""

from __future__ import annotations

import asyncio

import pytest

from taskflow import App, Message, TopicPartition
from taskflow.brokers.base import ConsumerOptions
from taskflow.brokers.kafka import KafkaBroker
from taskflow.runner import build_workers
from taskflow.testing import TestClient
from taskflow.workers import ConsumerWorker
from taskflow.workers.budget import BufferBudget

MiB = 2**20
RECORD = 100_000  # bytes of each record's value


def consumer_worker(client: TestClient, name: str) -> ConsumerWorker:
    found = client.runtime.worker(name)
    assert isinstance(found, ConsumerWorker)
    return found


async def settle() -> None:
    """Give every ready task its turns (to show that something did *not* happen)."""
    for _ in range(20):
        await asyncio.sleep(0)


class Gate:
    """Holds every handler until opened; counts those that started."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.started = 0
        self.handled: list[tuple[int, int]] = []

    async def __call__(self, message: Message) -> None:
        self.started += 1
        await self.open.wait()
        self.handled.append((message.partition, message.offset))


def test_a_budget_splits_between_taskflow_and_the_kafka_clients() -> None:
    one = BufferBudget(64 * MiB)
    three = BufferBudget(64 * MiB, consumers=3)

    assert (one.pause_at, one.resume_below, one.fetch_bytes) == (32 * MiB, 16 * MiB, 4 * MiB)
    assert three.fetch_bytes == 64 * MiB // 48
    assert BufferBudget(MiB, consumers=100).fetch_bytes == 64 * 1024  # never below a floor


def test_kafka_fetch_sizes_come_from_the_budget_unless_the_app_set_them() -> None:
    options = ConsumerOptions(fetch_bytes=16 * MiB)
    derived = KafkaBroker(["k:9092"]).consumer(["t"], group="g", listener=None, options=options)  # type: ignore[arg-type]
    chosen = KafkaBroker(["k:9092"], {"fetch_max_bytes": 4 * MiB}).consumer(
        ["t"],
        group="g",
        listener=None,
        options=options,  # type: ignore[arg-type]
    )
    small = KafkaBroker(["k:9092"]).consumer(
        ["t"],
        group="g",
        listener=None,
        options=ConsumerOptions(fetch_bytes=256 * 1024),  # type: ignore[arg-type]
    )

    assert derived.settings["fetch_max_bytes"] == 16 * MiB
    assert derived.settings["max_partition_fetch_bytes"] == MiB  # aiokafka's default
    assert chosen.settings["fetch_max_bytes"] == 4 * MiB
    assert small.settings["max_partition_fetch_bytes"] == 256 * 1024


def test_each_consumer_built_for_a_run_fetches_within_the_budget_with_its_own_options() -> None:
    app = App("shop", broker="kafka://k:9092", buffer_bytes="64MiB", instance_id="pod-1")
    app.add_consumer(Gate(), "orders", consumer_options={"isolation_level": "read_committed"})
    broker = KafkaBroker(["k:9092"])

    [worker] = build_workers(app, broker, asyncio.Event())

    assert isinstance(worker, ConsumerWorker)
    settings = broker.consumer_settings("shop", worker.options)
    assert settings["fetch_max_bytes"] == BufferBudget(64 * MiB).fetch_bytes
    assert settings["isolation_level"] == "read_committed"
    assert settings["group_instance_id"] == "pod-1.Gate"


async def test_a_spent_budget_pauses_every_partition_until_records_finish() -> None:
    # Pauses at 512 KiB held, resumes below 256 KiB; fetches of 64 KiB.
    app = App("shop", buffer_bytes="1MiB")
    gate = Gate()
    app.add_consumer(gate, "events", name="on_event")

    async with TestClient(app, partitions=4) as client:
        worker = consumer_worker(client, "on_event")
        for i in range(40):
            await client.publish("events", bytes(RECORD), key=f"k{i}")
        await settle()

        status = worker.status()
        assert status.paused == status.assigned  # every partition, not only the full ones
        assert 512 * 1024 <= status.buffered_bytes <= 512 * 1024 + 64 * 1024 + RECORD
        assert status.in_flight < 40
        assert (status.buffer_budget, status.as_json()["buffered_bytes"]) == (
            MiB,
            status.buffered_bytes,
        )

        gate.open.set()
        await client.drain()
        status = worker.status()
        assert (status.paused, status.buffered_bytes) == (frozenset(), 0)
        committed = [client.committed("shop", "events", p) or 0 for p in range(4)]
    assert len(set(gate.handled)) == len(gate.handled) == sum(committed) == 40


async def test_every_consumer_of_the_process_shares_one_budget() -> None:
    app = App("shop", buffer_bytes="1MiB")
    busy, idle = Gate(), Gate()
    idle.open.set()
    app.add_consumer(busy, "big", name="on_big")
    app.add_consumer(idle, "small", name="on_small")

    async with TestClient(app, partitions=2) as client:
        for _ in range(20):
            await client.publish("big", bytes(RECORD))
        await settle()
        small = consumer_worker(client, "on_small")
        assert small.status().paused == small.status().assigned != frozenset()

        await client.publish("small", b"x")
        await settle()
        assert idle.handled == []  # the other consumer's records hold the budget

        busy.open.set()
        await client.drain()
        assert len(idle.handled) == 1
        assert len(busy.handled) == 20


async def test_a_record_larger_than_the_whole_budget_is_still_handled() -> None:
    app = App("shop", buffer_bytes="1MiB")
    handled: list[int] = []

    @app.consume("events")
    async def on_event(message: Message) -> None:
        handled.append(len(message.value))

    async with TestClient(app, partitions=1) as client:
        client.broker.max_request_size = 3 * MiB
        await client.publish("events", bytes(2 * MiB))
        await client.publish("events", b"after")
        await client.drain()
        assert consumer_worker(client, "on_event").status().paused == frozenset()
    assert handled == [2 * MiB, 5]


@pytest.mark.parametrize("ordering", ["key", "none"])
async def test_records_released_out_of_order_bring_the_budget_back(ordering: str) -> None:
    app = App("shop", buffer_bytes="1MiB")
    handled: list[int] = []

    @app.consume("events", ordering=ordering, concurrency=8)  # type: ignore[call-overload]
    async def on_event(message: Message) -> None:
        await asyncio.sleep(0.001 * (message.offset % 3))
        handled.append(message.offset)

    async with TestClient(app, partitions=2) as client:
        for i in range(60):
            await client.publish("events", bytes(RECORD), key=f"k{i % 7}")
        await client.drain()
        worker = consumer_worker(client, "on_event")
        assert worker.budget.used == 0
        assert not worker.budget.spent
    assert len(handled) == 60


class Bystander:
    """A second member of a group, outside the app: joining it moves partitions."""

    async def on_partitions_revoked(self, revoked: frozenset[TopicPartition]) -> None:
        pass

    async def on_partitions_assigned(self, assigned: frozenset[TopicPartition]) -> None:
        pass


async def test_a_revoked_partition_gives_back_what_its_records_held() -> None:
    app = App("shop", buffer_bytes="1MiB")
    gate = Gate()
    app.add_consumer(gate, "events", name="on_event")

    async with TestClient(app, partitions=2) as client:
        worker = consumer_worker(client, "on_event")
        for i in range(20):
            await client.publish("events", bytes(RECORD), key=f"k{i}")
        await settle()
        assert worker.budget.spent  # the first records wait for the gate; the rest are buffered

        other = client.broker.consumer(
            ["events"], group="shop", listener=Bystander(), options=ConsumerOptions()
        )
        joining = asyncio.create_task(other.start())  # revokes both partitions, gives one back
        await settle()
        gate.open.set()  # the running handlers finish; what was buffered is dropped
        await joining
        kept = worker.status().assigned
        try:
            (tp,) = kept
            end, group = client.broker.end_offset(tp), client.broker.group("shop")
            async with asyncio.timeout(10):
                while group.committed.get(tp) != end:  # what it kept is all handled
                    await group.wait_for_commit()
            assert worker.status().in_flight == 0
            assert (worker.budget.used, worker.budget.spent) == (0, False)
        finally:
            await other.stop()


def test_a_record_counts_its_value_key_and_headers_and_a_missing_value_counts_nothing() -> None:
    budget = BufferBudget(MiB)
    account = budget.account()
    full = Message("t", 0, 0, b"key", b"value", (("trace", b"abc"), ("empty", b"")), 0)
    tombstone = Message("t", 0, 1, b"key", None, (), 0)  # type: ignore[arg-type]

    account.take([full, tombstone])
    assert budget.used == account.held == (3 + 5 + 5 + 3 + 5) + 3

    account.finished(tombstone)
    assert budget.used == 21
    account.close()
    account.finished(full)  # after its partition left: already given back
    assert (budget.used, account.held) == (0, 0)


@pytest.mark.parametrize("ordering", ["partition", "none"])
async def test_a_batch_consumer_holds_the_budget_until_its_batches_finish(ordering: str) -> None:
    app = App("shop", buffer_bytes="1MiB")
    gate = asyncio.Event()
    batches: list[int] = []

    @app.consume("events", batch=4, ordering=ordering)  # type: ignore[call-overload]
    async def on_events(events: list[bytes]) -> None:
        await gate.wait()
        batches.append(len(events))

    async with TestClient(app, partitions=2) as client:
        worker = consumer_worker(client, "on_events")
        for i in range(40):
            await client.publish("events", bytes(RECORD), key=f"k{i}")
        await settle()
        status = worker.status()
        assert status.paused == status.assigned  # the waiting batches hold the budget
        assert status.buffered_bytes >= 512 * 1024

        gate.set()
        await client.drain()
        status = worker.status()
        assert (status.paused, status.buffered_bytes) == (frozenset(), 0)
    assert sum(batches) == 40
