"""Publishes ``NOWAIT_COUNT`` records with ``wait=False`` to ``NOWAIT_TOPIC`` as it starts.

A worker publishes them (keys ``k0``, ``k1``, …; values their index), logs ``queued <n> records``
once all are queued, and waits for shutdown. With ``NOWAIT_BAD_TOPIC`` it first publishes one
record there too, with the key ``bad``: a topic the broker refuses.
"""

from __future__ import annotations

import os

from taskflow import App, Context

app = App("nowait")


@app.worker
async def publish_many(ctx: Context) -> None:
    topic, count = os.environ["NOWAIT_TOPIC"], int(os.environ["NOWAIT_COUNT"])
    bad = os.environ.get("NOWAIT_BAD_TOPIC")
    if bad:
        await ctx.publish(bad, {"n": -1}, key="bad", wait=False)
    for n in range(count):
        await ctx.publish(topic, {"n": n}, key=f"k{n}", wait=False)
    ctx.logger.info("queued %d records", count)
    await ctx.stopping.wait()
