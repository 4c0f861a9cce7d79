"""A registration's own Kafka settings on a real broker, with the app running as `taskflow run`:

- a tombstone reaches a `Message` and a `dict | None` handler, and a `dict` handler skips it,
  committed and never dead-lettered;
- ``start="latest"`` leaves out what was written before the group first joined, the default
  ``"earliest"`` does not;
- with ``--instance-id`` each consumer is a static member of its group, and a replica restarted
  within the session timeout gets its partitions back (with no rebalance of the others, where
  the broker implements static membership).
"""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from tests._process import AppProcess
from tests._tansu import TansuBroker, committed_offsets, create_topic
from tests.kafka.test_delivery import RECORDER, read_handled, until

TOMBSTONES = "tests.apps.tombstones:app"


def handled_by(path: Path) -> dict[str, list[tuple[int, str]]]:
    """The tombstone app's output: each handler's (offset, value) lines, in offset order."""
    lines: dict[str, list[tuple[int, str]]] = {"raw": [], "optional": [], "strict": []}
    if path.exists():
        for line in path.read_text().splitlines():
            handler, _partition, offset, value = line.split(" ", 3)
            lines[handler].append((int(offset), value))
    return {handler: sorted(found) for handler, found in lines.items()}


async def test_a_tombstone_reaches_message_and_optional_handlers_and_a_dict_handler_skips_it(
    app_env: dict[str, str],
    bootstrap: str,
    unique: str,
    producer: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    topic, out = f"{unique}-orders", tmp_path / "handled.txt"
    await create_topic(bootstrap, topic, 1)
    env = {**app_env, "TOMBSTONES_TOPIC": topic, "TOMBSTONES_OUT": str(out)}
    with AppProcess(TOMBSTONES, "--log-level", "DEBUG", env=env) as app:
        await asyncio.to_thread(app.wait_for, r"assigned \S+\[0\]", 30, count=3)
        for value in (b'{"id":1}', None, b"", None, b'{"id":2}'):  # b"" is not a tombstone
            await producer.send_and_wait(topic, value, key=b"customer-1")
        await until(lambda: len(handled_by(out)["raw"]) == 5, 30, "the raw handler saw all")
        await until(lambda: len(handled_by(out)["strict"]) == 2, 30, "strict handled two")
        for name in ("raw", "optional", "strict"):
            group = f"{topic}-{name}"
            await until_committed(bootstrap, group, topic, 5)
        app.send(signal.SIGTERM)
        code = await asyncio.to_thread(app.wait, 30)

    assert code == 0, app.log
    seen = handled_by(out)
    assert seen["raw"] == [
        (0, """b'{"id":1}'"""),
        (1, "None"),
        (2, "b''"),
        (3, "None"),
        (4, """b'{"id":2}'"""),
    ]
    assert seen["optional"] == [(0, '{"id":1}'), (1, "None"), (3, "None"), (4, '{"id":2}')]
    assert seen["strict"] == [(0, '{"id":1}'), (4, '{"id":2}')]
    skipped = re.findall(rf"tombstones of {re.escape(topic)}\[0\] are skipped", app.log)
    assert len(skipped) == 1, app.log  # once per partition, at DEBUG
    # The empty value is no JSON: rejected and dead-lettered. The tombstones never are.
    assert re.search(rf"☠ {re.escape(topic)}\[0\]@2 rejected", app.log), app.log
    assert not re.search(rf"☠ {re.escape(topic)}\[0\]@[13] ", app.log), app.log


async def until_committed(bootstrap: str, group: str, topic: str, offset: int) -> None:
    """Wait until `group` has committed `offset` on partition 0 of `topic`."""
    committed: int | None = None
    async with asyncio.timeout(30):
        while committed != offset:
            await asyncio.sleep(0.2)
            committed = (await committed_offsets(bootstrap, group, topic, 1))[0]


def offsets_by(path: Path) -> dict[str, set[int]]:
    """The start app's output: the offsets each handler handled."""
    found: dict[str, set[int]] = {"replay": set(), "live": set()}
    if path.exists():
        for line in path.read_text().splitlines():
            handler, _partition, offset = line.split()
            found[handler].add(int(offset))
    return found


async def test_start_latest_leaves_out_what_was_written_before_the_group_first_joined(
    app_env: dict[str, str],
    bootstrap: str,
    unique: str,
    producer: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    topic, out = f"{unique}-prices", tmp_path / "handled.txt"
    await create_topic(bootstrap, topic, 1)
    for number in range(20):  # before any group of the app exists; a batch each
        await producer.send_and_wait(topic, str(number).encode())
    env = {**app_env, "STARTS_TOPIC": topic, "STARTS_OUT": str(out)}
    with AppProcess("tests.apps.starts:app", env=env) as app:
        await asyncio.to_thread(app.wait_for, r"assigned \S+\[0\]", 30, count=2)
        for number in range(20, 30):
            await producer.send_and_wait(topic, str(number).encode())
        await until(lambda: len(offsets_by(out)["replay"]) == 30, 30, "replay handled all")
        await until(lambda: 29 in offsets_by(out)["live"], 30, "live handled the last")
        await until_committed(bootstrap, f"{topic}-live", topic, 30)
        app.send(signal.SIGTERM)
        code = await asyncio.to_thread(app.wait, 30)

    assert code == 0, app.log
    handled = offsets_by(out)
    assert handled["replay"] == set(range(30))
    # Tansu's "latest" is the base offset of the last batch, so it may hand over offset 19, the
    # last record written before; a Kafka broker starts at 20.
    assert set(range(20, 30)) <= handled["live"] <= set(range(19, 30))


STATIC_ENV = {  # a window long enough to restart a replica in
    "TASKFLOW_KAFKA_SESSION_TIMEOUT_MS": "8000",
    "TASKFLOW_KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
}
ASSIGNED = re.compile(r"assigned ((?:\S+\[\d\](?:, )?)+)")
REBALANCE = re.compile(r"(revoked|assigned) \S+\[\d\]")


def last_assignment(app: AppProcess) -> set[str]:
    """The partitions the last "assigned" line of `app`'s log names."""
    found = [m.group(1) for line in app.log.splitlines() if (m := ASSIGNED.search(line))]
    assert found, app.log
    return set(found[-1].split(", "))


async def test_a_replica_restarted_within_the_session_timeout_gets_its_partitions_back(
    env: dict[str, str], tansu: TansuBroker | None, topic: str, out: Path
) -> None:
    env = {**env, **STATIC_ENV}
    with AppProcess(RECORDER, "--instance-id", "replica-a", env=env) as first:
        await asyncio.to_thread(first.wait_for, r"static member replica-a\.on_event", 30)
        await asyncio.to_thread(first.wait_for, ASSIGNED.pattern, 30)
        with AppProcess(RECORDER, "--instance-id", "replica-b", env=env) as second:
            await asyncio.to_thread(second.wait_for, ASSIGNED.pattern, 30)
            await asyncio.to_thread(first.wait_for, ASSIGNED.pattern, 30, count=2)
            held = last_assignment(second)
            second.send(signal.SIGTERM)
            assert await asyncio.to_thread(second.wait, 30) == 0, second.log
        mark = len(first.lines)
        with AppProcess(RECORDER, "--instance-id", "replica-b", env=env) as again:
            await asyncio.to_thread(again.wait_for, ASSIGNED.pattern, 30)
            back = last_assignment(again)
            # A rebalance that the old member's expiry might start comes within its session.
            await asyncio.sleep(10)
            first_after = first.lines[mark:]
            again.send(signal.SIGTERM)
            assert await asyncio.to_thread(again.wait, 30) == 0, again.log
        first.send(signal.SIGTERM)
        assert await asyncio.to_thread(first.wait, 30) == 0, first.log

    assert "static member replica-b.on_event" in again.log
    assert held
    assert back == held, f"held {held}, got back {back}"
    assert read_handled(out) == []  # nothing was produced: only the group moved
    rebalanced = [line for line in first_after if REBALANCE.search(line)]
    if rebalanced and tansu is not None:
        pytest.xfail(
            "Tansu does not implement static membership (KIP-345): a member that rejoins under "
            "its group.instance.id starts a rebalance of the whole group, so the replica that "
            f"stayed up gave up and got back its partitions: {rebalanced}"
        )
    assert rebalanced == [], "\n".join(first_after)


async def test_each_process_is_a_static_member_of_its_own(env: dict[str, str]) -> None:
    with AppProcess(RECORDER, "--processes", "2", "--instance-id", "pod", env=env) as supervisor:
        for index in (0, 1):
            pattern = rf"#{index} .*static member pod-{index}\.on_event"
            await asyncio.to_thread(supervisor.wait_for, pattern, 30)
        supervisor.send(signal.SIGTERM)
        code = await asyncio.to_thread(supervisor.wait, 60)

    assert code == 0, supervisor.log
