"""The dashboard in a real browser: two ``taskflow run`` replicas of one app on the real broker and
Redis, a ``taskflow dashboard`` process, and Debian's Chromium driven by Playwright.

The page must list both replicas, each partition with its lag, and the periodic task's last and
next run, refreshing itself; a replica stopped with SIGTERM must show as gone within 15 s. A
screenshot goes to the test's folder. With ``TASKFLOW_DASHBOARD_SCREENSHOTS=<dir>`` (see
scripts/dashboard-screenshots) it also writes ``dashboard-1280.png`` and ``dashboard-390.png``
there, for the docs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from tests._process import AppProcess
from tests._redis import REDIS_URL
from tests._tansu import create_topic

APP = "tests.apps.dashboard_fleet:app"
CHROMIUM = Path("/usr/bin/chromium")
HAS_CHROMIUM = CHROMIUM.exists()
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
GONE_WITHIN_MS = 15_000
WAIT_MS = 60_000

pytestmark = pytest.mark.redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def started(process: AppProcess, pattern: str) -> None:
    await asyncio.to_thread(process.wait_for, pattern, 60)


async def test_the_page_shows_the_fleet_and_a_stopped_replica_as_gone(
    app_env: dict[str, str], bootstrap: str, unique: str, tmp_path: Path, redis: Redis
) -> None:
    if not HAS_CHROMIUM:
        pytest.skip(f"{CHROMIUM} is missing: scripts/test installs Debian's chromium package")
    playwright_api = pytest.importorskip("playwright.async_api")
    topic, dlq = f"{unique}-orders", f"{unique}-orders.dlq"
    await create_topic(bootstrap, topic, 2)
    await create_topic(bootstrap, dlq, 1)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        for n, value in enumerate([b"ok 1", b"ok 2", b"reject 1", b"ok 3"]):
            await producer.send_and_wait(topic, value, partition=n % 2)
    finally:
        await producer.stop()
    env = {
        **app_env,
        "TASKFLOW_REDIS_URL": REDIS_URL,
        "DASHBOARD_TOPIC": topic,
        "DASHBOARD_DLQ": dlq,
        "DASHBOARD_GROUP": f"{unique}-group",
    }
    port = free_port()
    with (
        AppProcess(APP, env=env) as first,
        AppProcess(APP, env=env) as second,
        AppProcess(APP, "--port", str(port), env=env, command="dashboard") as dashboard,
    ):
        for process in (first, second):
            await started(process, "running 2 worker")
        await started(dashboard, "dashboard of app dashboard-fleet on")
        async with playwright_api.async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
            )
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 900})
                await page.goto(f"http://127.0.0.1:{port}/")
                await _shows_the_fleet(page, [first, second])
                await page.screenshot(path=tmp_path / "dashboard.png", full_page=True)
                replay = await page.locator("#dead-letters .replay code").inner_text()
                await _docs_screenshots(browser, port)

                first.send(signal.SIGTERM)
                gone = f'tr.replica.gone[data-replica="{_name(first)}"]'
                await page.wait_for_selector(gone, timeout=GONE_WITHIN_MS)
                await page.screenshot(path=tmp_path / "dashboard-gone.png", full_page=True)
                live = await page.locator("tr.replica:not(.gone)").all_inner_texts()
            finally:
                await browser.close()
        assert await asyncio.to_thread(first.wait) == 0

    assert replay == f"taskflow dlq replay {APP} {dlq}"
    assert len(live) == 1
    assert str(second.pid) in live[0]
    assert (tmp_path / "dashboard.png").stat().st_size > 0


def _name(process: AppProcess) -> str:
    return f"{socket.gethostname()}:{process.pid}"


async def _shows_the_fleet(page: object, replicas: list[AppProcess]) -> None:
    """Wait (the page refreshes itself) until both replicas, both partitions with a lag, and the
    periodic task's last and next run are shown."""
    names = [_name(process) for process in replicas]
    await page.wait_for_function(  # type: ignore[attr-defined]
        """(names) => {
            const live = [...document.querySelectorAll('tr.replica:not(.gone)')]
                .map((row) => row.dataset.replica);
            const lags = [...document.querySelectorAll('tr.partition td.lag')]
                .map((cell) => cell.textContent.trim());
            const beat = document.querySelector('tr.schedule[data-task="refresh_rates"]');
            return names.every((name) => live.includes(name))
                && lags.length === 2 && lags.every((lag) => /^[0-9]+$/.test(lag))
                && beat !== null
                && beat.querySelector('td.last').textContent.trim() !== 'never'
                && beat.querySelector('td.next').textContent.trim() !== '\u2013';
        }""",
        arg=names,
        timeout=WAIT_MS,
    )


async def _docs_screenshots(browser: object, port: int) -> None:
    """With TASKFLOW_DASHBOARD_SCREENSHOTS set, the page at 1280 and 390 px wide, into it."""
    folder = os.environ.get("TASKFLOW_DASHBOARD_SCREENSHOTS")
    if not folder:
        return
    for width in (1280, 390):
        page = await browser.new_page(viewport={"width": width, "height": 900})  # type: ignore[attr-defined]
        await page.goto(f"http://127.0.0.1:{port}/")
        await page.screenshot(path=Path(folder) / f"dashboard-{width}.png", full_page=True)
        await page.close()
