"""A consumer fed at a steady rate, for measuring what serving operations costs it.

A worker publishes a job every ``STEADY_INTERVAL_MS`` (default 5) to the process's own memory
broker; the handler does ``STEADY_WORK_MS`` (default 1) of CPU work and appends its number to
``STEADY_OUT``, one line per job, so a test can count the rate from outside.
"""

from __future__ import annotations

import asyncio
import os
import time

from taskflow import App, Context

app = App("steady")
_interval = int(os.environ.get("STEADY_INTERVAL_MS", "5")) / 1000
_work = int(os.environ.get("STEADY_WORK_MS", "1")) / 1000
_out = os.open(os.environ["STEADY_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


@app.worker
async def feed(ctx: Context) -> None:
    number = 0
    while not ctx.stopping.is_set():
        await app.publish("jobs", {"n": number})
        number += 1
        await asyncio.sleep(_interval)


@app.consume("jobs")
async def on_job(job: dict[str, int]) -> None:
    until = time.perf_counter() + _work
    while time.perf_counter() < until:  # the work a handler does on the loop
        pass
    os.write(_out, f"{job['n']}\n".encode())
