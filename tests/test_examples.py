"""Every example program runs: the ones the docs include are exercised here."""

from __future__ import annotations

import logging

import pytest

from examples import custom_worker, quickstart
from taskflow.testing import TestClient


async def test_quickstart_places_and_handles_an_order(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with TestClient(quickstart.app) as client:
        await client.run_schedule("place_order")
        await client.drain()
    assert client.report is not None
    assert client.report.clean
    handled = [r.getMessage() for r in caplog.records if r.getMessage().startswith("order ")]
    assert len(handled) == 1
    assert handled[0].endswith("12.50 EUR")


async def test_custom_worker_beats_and_stops_at_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    heartbeat = custom_worker.app.workers[0]
    assert isinstance(heartbeat, custom_worker.Heartbeat)
    async with TestClient(custom_worker.app) as client:
        pass
    assert client.report is not None
    assert client.report.clean
    assert heartbeat.beats >= 1
    assert "heartbeat 1" in caplog.text
