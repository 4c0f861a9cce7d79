"""The dashboard in a real browser: two ``taskflow run`` replicas of one app on the real broker and
Redis, a ``taskflow dashboard`` process, and Debian's Chromium driven by Playwright.

The page must list both replicas, each partition with its lag, and the periodic task's last and
next run, refreshing itself; 390 px wide, each partition's lag must be on screen, labelled, with
nothing to scroll sideways; a replica stopped with SIGTERM must show as gone within 15 s. A
screenshot goes to the test's folder.

With ``TASKFLOW_DASHBOARD_SCREENSHOTS=<dir>`` (see scripts/dashboard-screenshots) a second test
runs the app on a broker of its own, with plain names, a record holding up a partition and two
dead letters, and writes ``dashboard-1280.png`` and ``dashboard-390.png`` there, for the docs.
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
from tests._tansu import TansuBroker, create_topic
from tests.kafka.conftest import KAFKA_ENV

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
NARROW = 390
SCREENSHOTS = os.environ.get("TASKFLOW_DASHBOARD_SCREENSHOTS")

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
                narrow = await _narrow_page(browser, port, tmp_path)

                first.send(signal.SIGTERM)
                gone = f'tr.replica.gone[data-replica="{_name(first)}"]'
                await page.wait_for_selector(gone, timeout=GONE_WITHIN_MS)
                await page.screenshot(path=tmp_path / "dashboard-gone.png", full_page=True)
                live = await page.locator("tr.replica:not(.gone)").all_inner_texts()
            finally:
                await browser.close()
        assert await asyncio.to_thread(first.wait) == 0

    assert replay == f"taskflow dlq replay {APP} {dlq}"
    assert narrow["scroll_width"] <= NARROW
    assert len(narrow["lags"]) == 2
    for lag in narrow["lags"]:
        assert lag["visible"]
        assert lag["label"] == '"Lag"'
        assert lag["text"].isdigit()
        assert lag["left"] >= 0
        assert lag["right"] <= NARROW
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


async def _narrow_page(browser: object, port: int, folder: Path) -> dict[str, object]:
    """The page on a phone: how wide it scrolls, and where each partition's lag cell is, whether it
    shows and under which label."""
    page = await browser.new_page(viewport={"width": NARROW, "height": 844})  # type: ignore[attr-defined]
    try:
        await page.goto(f"http://127.0.0.1:{port}/")
        await page.screenshot(path=folder / f"dashboard-{NARROW}.png", full_page=True)
        lags = page.locator("tr.partition td.lag")
        cells = []
        for n in range(await lags.count()):
            cell = lags.nth(n)
            box = await cell.bounding_box()
            cells.append(
                {
                    "visible": await cell.is_visible(),
                    "text": (await cell.inner_text()).strip(),
                    "label": await cell.evaluate(
                        "(cell) => getComputedStyle(cell, '::before').content"
                    ),
                    "left": box["x"] if box else -1,
                    "right": box["x"] + box["width"] if box else NARROW + 1,
                }
            )
        scroll_width = await page.evaluate("document.scrollingElement.scrollWidth")
    finally:
        await page.close()
    return {"scroll_width": scroll_width, "lags": cells}


@pytest.mark.skipif(not SCREENSHOTS, reason="TASKFLOW_DASHBOARD_SCREENSHOTS is not set")
async def test_docs_screenshots(tmp_path: Path, redis: Redis) -> None:
    """The docs' pictures: the app as a reader would name it, on a broker of its own, with a slow
    record backing up one partition, two dead letters and the periodic task running."""
    if not HAS_CHROMIUM:
        pytest.skip(f"{CHROMIUM} is missing: scripts/test installs Debian's chromium package")
    playwright_api = pytest.importorskip("playwright.async_api")
    with TansuBroker() as broker:
        await _illustrative_records(broker.bootstrap)
        env = {
            "TASKFLOW_BROKER": f"kafka://{broker.bootstrap}",
            **KAFKA_ENV,
            "TASKFLOW_REDIS_URL": REDIS_URL,
            "DASHBOARD_TOPIC": "orders",
            "DASHBOARD_DLQ": "orders.DLQ",
            "DASHBOARD_GROUP": "pricing",
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
                    await _docs_screenshots(browser, port, Path(str(SCREENSHOTS)))
                finally:
                    await browser.close()


async def _illustrative_records(bootstrap: str) -> None:
    """orders[0] gets orders and two invalid ones; on orders[1] a slow record holds up the rest."""
    await create_topic(bootstrap, "orders", 2)
    await create_topic(bootstrap, "orders.DLQ", 1)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        first = [b"ok %d" % n for n in range(12)] + [b"reject 12", b"ok 13", b"reject 14"]
        second = [b"ok 100", b"ok 101", b"slow 102"] + [b"ok %d" % n for n in range(103, 140)]
        for partition, values in enumerate([first, second]):
            for value in values:
                await producer.send_and_wait("orders", value, partition=partition)
    finally:
        await producer.stop()


async def _docs_screenshots(browser: object, port: int, folder: Path) -> None:
    """The page at 1280 and 390 px wide, once it shows the backed-up partition, both dead letters
    and a tick; each cut to the height of its content."""
    for width in (1280, NARROW):
        page = await browser.new_page(viewport={"width": width, "height": 900})  # type: ignore[attr-defined]
        await page.goto(f"http://127.0.0.1:{port}/")
        await page.wait_for_function(
            """() => {
                const lags = [...document.querySelectorAll('tr.partition td.lag')]
                    .map((cell) => Number(cell.textContent.trim()));
                const dlq = document.querySelector('#dead-letters h3 small');
                const beat = document.querySelector('tr.schedule td.next');
                return document.querySelectorAll('tr.replica:not(.gone)').length === 2
                    && lags.length === 2 && lags.some((lag) => lag > 0)
                    && dlq !== null && dlq.textContent.includes('2 record')
                    && beat !== null && beat.textContent.trim() !== '\u2013';
            }""",
            timeout=WAIT_MS * 2,
        )
        height = await page.evaluate("Math.ceil(document.body.getBoundingClientRect().bottom)")
        clip = {"x": 0, "y": 0, "width": width, "height": height}
        await page.screenshot(path=folder / f"dashboard-{width}.png", full_page=True, clip=clip)
        await page.close()
