"""One of every kind of worker, for `taskflow info`."""

from __future__ import annotations

import asyncio

from taskflow import App, Context

app = App("kinds")


@app.consume("orders", "refunds", group="billing")
async def on_money(payload: bytes) -> None: ...


@app.every(minutes=15)
async def report(ctx: Context) -> None: ...


@app.worker
async def watcher(ctx: Context) -> None:
    await ctx.stopping.wait()


class Heartbeat:
    name = "heartbeat"

    def __init__(self) -> None:
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        await self._stopping.wait()

    async def stop(self) -> None:
        self._stopping.set()


app.add_worker(Heartbeat())
