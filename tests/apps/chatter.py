"""A worker that logs one line at each level once, then waits for shutdown."""

from __future__ import annotations

from taskflow import App, Context

app = App("chatter")


@app.worker
async def chatter(ctx: Context) -> None:
    ctx.logger.debug("chatter debug line")
    ctx.logger.info("chatter info line")
    ctx.logger.warning("chatter warning line")
    await ctx.stopping.wait()
