"""A replica's own dashboard names its app in the replay command as ``taskflow run`` was given it,
in each child of ``--processes`` too: a real ``taskflow run`` on the real broker, a dead letter,
and the page fetched from the operations endpoint. And a dead letter stamped past the year 9999 is
listed with its timestamp by the standalone dashboard."""

from __future__ import annotations

import asyncio
import re

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from tests._process import AppProcess
from tests._tansu import create_topic
from tests.kafka.test_dashboard_browser import free_port

APP = "tests.apps.dashboard_fleet:app"
ENDPOINT = r"operations endpoint on http://[^:]+:(\d+)"
WAIT = 60.0


async def _dead_lettered(bootstrap: str, unique: str) -> dict[str, str]:
    """A topic with one record the app rejects, its dead-letter topic, and the app's environment
    for them."""
    topic, dlq = f"{unique}-orders", f"{unique}-orders.dlq"
    await create_topic(bootstrap, topic, 1)
    await create_topic(bootstrap, dlq, 1)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"reject 1")
    finally:
        await producer.stop()
    return {"DASHBOARD_TOPIC": topic, "DASHBOARD_DLQ": dlq, "DASHBOARD_GROUP": f"{unique}-group"}


async def _replay_command(port: int) -> str:
    """The replay command the dashboard at `port` shows, once the dead letter is on it."""
    async with (
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=WAIT) as client,
        asyncio.timeout(WAIT),
    ):
        while True:
            page = (await client.get("/")).text
            if found := re.search(r"taskflow dlq replay [^<]*", page):
                return found.group(0)
            await asyncio.sleep(0.2)


@pytest.mark.parametrize("processes", [1, 2])
async def test_the_replay_command_on_a_replicas_page_names_the_app_it_runs(
    app_env: dict[str, str], bootstrap: str, unique: str, processes: int
) -> None:
    names = await _dead_lettered(bootstrap, unique)
    args = ("--http-port", "0", "--processes", str(processes))
    with AppProcess(APP, *args, env={**app_env, **names}) as run:
        await asyncio.to_thread(run.wait_for, ENDPOINT, WAIT, count=processes)
        ports = [int(port) for port in re.findall(ENDPOINT, "\n".join(run.lines))]
        assert len(ports) == processes, run.log
        commands = [await _replay_command(port) for port in ports]

    assert commands == [f"taskflow dlq replay {APP} {names['DASHBOARD_DLQ']}"] * processes


async def test_a_dead_letter_stamped_past_the_year_9999_is_listed_with_its_timestamp(
    app_env: dict[str, str], bootstrap: str, unique: str
) -> None:
    # A record's timestamp is whatever its producer chose, and the broker keeps it as it is.
    dlq = f"{unique}-orders.dlq"
    await create_topic(bootstrap, dlq, 1)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        headers = [("taskflow-original-topic", b"orders"), ("taskflow-reason", b"rejected")]
        await producer.send_and_wait(dlq, b"{}", headers=headers, timestamp_ms=2**62)
    finally:
        await producer.stop()
    env = {**app_env, "DASHBOARD_TOPIC": f"{unique}-orders", "DASHBOARD_DLQ": dlq}
    port = free_port()
    with AppProcess(APP, "--port", str(port), env=env, command="dashboard") as dashboard:
        await asyncio.to_thread(dashboard.wait_for, "dashboard of app dashboard-fleet on", WAIT)
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=WAIT) as client,
            asyncio.timeout(WAIT),
        ):
            while f"{dlq}[0]@0" not in (panels := await client.get("/dashboard/panels")).text:
                assert panels.status_code == 200, panels.text
                await asyncio.sleep(0.2)

    assert panels.status_code == 200
    assert f'data-label="Written">(timestamp {2**62} ms)</td>' in panels.text
