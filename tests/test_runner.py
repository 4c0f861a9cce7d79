"""The runner: what it opens before workers start, and what it refuses."""

from __future__ import annotations

import socket

import pytest

from taskflow import App, ConfigurationError, StoreError
from taskflow.runner import consumer_options, group_instance_id, running
from tests._redis import REDIS_URL


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_an_unreachable_redis_is_refused_before_any_worker_starts() -> None:
    app = App("needs-redis", redis_url=f"redis://:s3cret@127.0.0.1:{closed_port()}/0")
    started = []

    @app.on_startup
    async def note() -> None:
        started.append(True)

    with pytest.raises(StoreError, match=r"cannot reach Redis at redis://:\*\*\*@127\.0\.0\.1"):
        async with running(app):
            pass
    assert started == []  # not even the startup hooks ran


async def test_a_malformed_redis_url_is_a_configuration_error() -> None:
    app = App("bad-redis", redis_url="http://127.0.0.1:6379")
    with pytest.raises(ConfigurationError, match="redis_url must be a redis://"):
        async with running(app):
            pass


@pytest.mark.redis
async def test_a_configured_redis_is_open_while_the_app_runs() -> None:
    app = App("with-redis", redis_url=REDIS_URL)
    async with running(app) as runtime:
        assert runtime.redis is not None
        assert await runtime.redis.ping()


async def test_no_redis_url_means_no_redis() -> None:
    async with running(App("no-redis", redis_url="")) as runtime:
        assert runtime.redis is None


# -- what each consumer asks of the broker ----------------------------------------------------


async def on_order(order: dict) -> None: ...


def test_each_consumer_of_a_replica_is_a_static_member_of_its_own() -> None:
    app = App("billing", instance_id="pod-a")
    app.add_consumer(on_order, "orders", start="latest", consumer_options={"client_id": "x"})
    app.add_consumer(on_order, "orders", name="audit", group="audit")

    first, second = (consumer_options(spec, app.instance_id) for spec in app.consumers)

    assert (first.auto_offset_reset, dict(first.extra)) == ("latest", {"client_id": "x"})
    assert (second.auto_offset_reset, dict(second.extra)) == (None, {})
    assert (first.group_instance_id, second.group_instance_id) == ("pod-a.on_order", "pod-a.audit")
    assert consumer_options(app.consumers[0], None).group_instance_id is None


def test_a_worker_name_kafka_would_not_take_in_an_id_is_written_with_a_hash_of_it() -> None:
    odd = group_instance_id("pod-a", "orders → billing")
    other = group_instance_id("pod-a", "orders → billing!")

    assert odd.startswith("pod-a.orders___billing-")
    assert odd == group_instance_id("pod-a", "orders → billing")  # the same on every restart
    assert odd != other
    assert len(group_instance_id("p" * 100, "w" * 300)) <= 249


async def test_a_registrations_options_that_clash_with_the_brokers_are_refused_before_start() -> (
    None
):
    app = App(
        "billing",
        broker="kafka://127.0.0.1:9",
        broker_options={"session_timeout_ms": 30000, "heartbeat_interval_ms": 5000},
    )
    app.add_consumer(on_order, "orders", consumer_options={"session_timeout_ms": 3000})

    with pytest.raises(ConfigurationError) as caught:
        async with running(app):
            pass

    assert str(caught.value) == (
        "consumer on_order: Kafka option 'heartbeat_interval_ms' (5000) must be lower than "
        "'session_timeout_ms' (3000), typically a third of it"
    )
