"""What an app that does not use a client library never pays for: importing it.

Each check runs in a fresh interpreter, so what the test session itself imported does not count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests._process import ROOT

# Prints, for each step of a memory:// app's life, whether the module named by argv[1] is loaded.
PROBE = """
import asyncio, json, sys

watched = sys.argv[1]
loaded = {}

import taskflow

loaded["import taskflow"] = watched in sys.modules

from taskflow import App, Message

app = App("x")

@app.consume("orders")
async def on_order(message: Message) -> None:
    pass

@app.every(seconds=5)
async def tick() -> None:
    pass

loaded["an App with a consumer and a schedule"] = watched in sys.modules

from taskflow.testing import TestClient

async def run() -> None:
    async with TestClient(app) as client:
        await client.publish("orders", {"id": 1}, key="k")
        await client.drain()
        await client.run_schedule("tick")

asyncio.run(run())
loaded["a TestClient run"] = watched in sys.modules

import taskflow.cli

loaded["import taskflow.cli"] = watched in sys.modules
print(json.dumps(loaded))
"""

STEPS = [
    "import taskflow",
    "an App with a consumer and a schedule",
    "a TestClient run",
    "import taskflow.cli",
]


@pytest.mark.parametrize("module", ["aiokafka", "redis"])
def test_a_memory_app_does_not_import(module: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TASKFLOW_", "PYTHON"))}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, module],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == dict.fromkeys(STEPS, False)
