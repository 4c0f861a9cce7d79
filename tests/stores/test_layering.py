"""The stores layer is the only place taskflow touches redis, and only when Redis is used."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import taskflow

PACKAGE = Path(taskflow.__file__).parent
IMPORTS_REDIS = re.compile(r"^(import redis|from redis)\b", re.MULTILINE)


def test_only_the_stores_package_imports_redis() -> None:
    importers = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if IMPORTS_REDIS.search(path.read_text(encoding="utf-8"))
    )
    assert importers, "the Redis stores import redis"
    assert [path for path in importers if not path.startswith("stores/")] == []


def test_an_app_without_redis_never_loads_the_redis_client() -> None:
    script = """
import sys
import taskflow
from taskflow import App, Context
from taskflow.runner import build_workers
from taskflow.brokers.memory import MemoryBroker
import asyncio

loaded = ["redis" in sys.modules]
app = App("plain", broker="memory://")

@app.every(seconds=1)
async def beat(ctx: Context) -> None: ...

@app.consume("orders", rate_limit="10/s")
async def on_order(order: dict, ctx: Context) -> None: ...

build_workers(app, MemoryBroker(), asyncio.Event())
loaded.append("redis" in sys.modules)
print(loaded)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[False, False]", result.stderr
