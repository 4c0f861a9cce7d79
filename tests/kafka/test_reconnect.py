"""The broker goes away under a running app: it reconnects, or it still stops when told to.

Each test runs its own Tansu broker, since stopping the session's would disturb the other tests; an
external cluster (TASKFLOW_TEST_KAFKA) cannot be stopped, so there these tests are skipped. A Tansu
restart wipes topics, groups and offsets: the test creates its topic again after one and refills it.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from taskflow.manager import CANCEL_GRACE
from taskflow.runner import BROKER_CLOSE_TIMEOUT, EXIT_CLEAN, EXIT_UNCLEAN
from taskflow.workers.consumer import CANCELLED_LEAVE_BUDGET
from tests._process import AppProcess, count_lines, wait_until
from tests._tansu import TansuBroker, committed_offsets, create_topic
from tests.kafka.conftest import KAFKA_ENV

WAIT = 30.0  # seconds: the bound of every wait
SHUTDOWN_TIMEOUT = 2.0
# Past the shutdown timeout, a worker may still spend a commit timeout on its last commit and a
# stop timeout on leaving its group; the rest is process start-up and teardown.
# Past the deadline a cancelled worker gets CANCEL_GRACE to commit and leave, then the producer
# gets BROKER_CLOSE_TIMEOUT to flush; 5 s spare for a slow machine.
SHUTDOWN_BOUND = SHUTDOWN_TIMEOUT + CANCEL_GRACE + BROKER_CLOSE_TIMEOUT + 5.0
# aiokafka's log line when a connection to the broker fails: the app has seen the broker go.
BROKER_GONE = r"Unable connect to node"


@pytest.fixture
def own_broker(tansu: TansuBroker | None) -> Iterator[TansuBroker]:
    """A broker of this test's own, which it may stop and start."""
    if tansu is None:
        pytest.skip("TASKFLOW_TEST_KAFKA names an external cluster, which a test cannot stop")
    with TansuBroker() as broker:
        yield broker


def env_for(broker: TansuBroker, **extra: str) -> dict[str, str]:
    return {"TASKFLOW_BROKER": f"kafka://{broker.bootstrap}", **KAFKA_ENV, **extra}


async def publish(bootstrap: str, topic: str, values: list[bytes]) -> dict[int, int]:
    """Publish `values` round-robin over 4 partitions; return the end offset of each partition."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        ends = {}
        for n, value in enumerate(values):
            meta = await producer.send_and_wait(topic, value, partition=n % 4)
            ends[meta.partition] = meta.offset + 1
        return ends
    finally:
        await producer.stop()


def handled_values(out: Path) -> list[tuple[int, str]]:
    """(pid, value) of each handled record."""
    if not out.exists():
        return []
    rows = [line.split(" ", 5) for line in out.read_text().splitlines()]
    return [(int(row[0]), row[5]) for row in rows]


def wait_handled(app: AppProcess, out: Path, values: list[bytes], what: str) -> None:
    wanted = {v.decode() for v in values}
    try:
        wait_until(lambda: wanted <= {v for _, v in handled_values(out)}, WAIT, what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the app's log:\n{quiet_log(app)}") from None


def quiet_log(app: AppProcess, lines: int = 60) -> str:
    """The app's log without aiokafka's connection errors, which repeat every 100 ms."""
    return "\n".join([line for line in app.lines if "ERROR aiokafka" not in line][-lines:])


async def wait_for_commits(bootstrap: str, group: str, topic: str, ends: dict[int, int]) -> None:
    committed: dict[int, int | None] = {}
    try:
        async with asyncio.timeout(WAIT):
            # Polled: only the broker knows what the other process committed.
            while (committed := await committed_offsets(bootstrap, group, topic, 4)) != ends:  # noqa: ASYNC110
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"committed {committed}, expected {ends}") from None


async def test_the_app_reconnects_after_the_broker_restarts(
    own_broker: TansuBroker, unique: str, tmp_path: Path
) -> None:
    topic, out = f"{unique}-events", tmp_path / "handled.txt"
    bootstrap = own_broker.bootstrap
    await create_topic(bootstrap, topic, 4)
    env = env_for(own_broker, RECORDER_TOPICS=topic, RECORDER_OUT=str(out))
    with AppProcess("tests.apps.recorder:app", env=env) as app:
        before = [b"before-%d" % n for n in range(8)]
        await publish(bootstrap, topic, before)
        wait_handled(app, out, before, "the records sent before the restart")

        own_broker.stop(graceful=False)  # a crash: no goodbye to the clients
        app.wait_for(BROKER_GONE, WAIT)
        own_broker.start()
        # The restart wiped the topic, which a real Kafka keeps: create it again, and refill each
        # partition up to where it ended. The app's last commit (offset 2 of each partition, from
        # its revoke as it rejoins) may land on the new broker, and must mean what it meant.
        await create_topic(bootstrap, topic, 4, exist_ok=True)
        await publish(bootstrap, topic, [b"refill"] * 8)

        after = [b"after-%d" % n for n in range(8)]
        ends = await publish(bootstrap, topic, after)
        wait_handled(app, out, after, "the records sent after the restart")
        await wait_for_commits(bootstrap, "recorder", topic, ends)
        assert app.proc.poll() is None
        assert app.stop(signal.SIGTERM) == EXIT_CLEAN
    assert {pid for pid, _ in handled_values(out)} == {app.pid}  # one process all along
    assert "crashed" not in app.log  # and one worker: it was not restarted either
    assert "stopped cleanly" in app.log


async def test_sigterm_with_the_broker_down_and_nothing_to_commit(
    own_broker: TansuBroker, unique: str, tmp_path: Path
) -> None:
    topic, out = f"{unique}-events", tmp_path / "handled.txt"
    await create_topic(own_broker.bootstrap, topic, 4)
    env = env_for(own_broker, RECORDER_TOPICS=topic, RECORDER_OUT=str(out))
    timeout = ["--shutdown-timeout", str(SHUTDOWN_TIMEOUT)]
    with AppProcess("tests.apps.recorder:app", *timeout, env=env) as app:
        values = [b"v-%d" % n for n in range(8)]
        ends = await publish(own_broker.bootstrap, topic, values)
        wait_handled(app, out, values, "the records")
        await wait_for_commits(own_broker.bootstrap, "recorder", topic, ends)

        own_broker.stop(graceful=False)
        app.wait_for(BROKER_GONE, WAIT)
        signalled = time.monotonic()
        code = app.stop(signal.SIGTERM, timeout=SHUTDOWN_BOUND)
    assert time.monotonic() - signalled < SHUTDOWN_BOUND
    assert code == EXIT_CLEAN
    port = own_broker.port
    app.wait_for(rf"leaving group recorder failed: Kafka at 127\.0\.0\.1:{port} is unreachable", 0)
    assert "stopped consuming" in app.log
    assert "stopped cleanly" in app.log


async def test_sigterm_with_the_broker_down_and_offsets_to_commit(
    own_broker: TansuBroker, unique: str, tmp_path: Path
) -> None:
    topic, started = f"{unique}-events", tmp_path / "started.txt"
    await create_topic(own_broker.bootstrap, topic, 4)
    env = env_for(own_broker, STOPPING_TOPIC=topic, STOPPING_STARTED=str(started))
    timeout = ["--shutdown-timeout", str(SHUTDOWN_TIMEOUT)]
    with AppProcess("tests.apps.kafka_stopping:app", *timeout, env=env) as app:
        await publish(own_broker.bootstrap, topic, [b"a", b"b", b"c", b"d"])
        wait_until(lambda: count_lines(started) == 4, WAIT, "a handler on every partition")

        own_broker.stop(graceful=False)
        app.wait_for(BROKER_GONE, WAIT)
        signalled = time.monotonic()
        # The handlers finish at once; their offsets cannot be committed.
        code = app.stop(signal.SIGTERM, timeout=SHUTDOWN_BOUND)
    assert time.monotonic() - signalled < SHUTDOWN_BOUND
    assert code == EXIT_UNCLEAN  # the worker was cancelled at the deadline, mid-commit
    offsets = ", ".join(f"{topic}[{p}]@1" for p in range(4))
    budget = CANCELLED_LEAVE_BUDGET / 2
    assert f"commit of {offsets} failed: no answer in {budget:g}s" in app.log
    port = own_broker.port
    assert f"leaving group stopping failed: Kafka at 127.0.0.1:{port} is unreachable" in app.log
    assert "stopped consuming" in app.log
