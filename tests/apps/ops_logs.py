"""One message, failed once and then handled, for the JSON log fields (tests/test_cli.py).

A startup hook publishes one message to ``jobs`` with a W3C ``traceparent`` header (trace id
``TRACE_ID``). The handler fails its first attempt (the framework's warning line is about the
message) and logs ``handled job`` on the second, through ``ctx.logger``.
"""

from __future__ import annotations

from taskflow import App, Backoff, Context

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"

app = App("logs")
_attempts = 0


@app.on_startup
async def publish_one() -> None:
    await app.publish("jobs", {"id": 1}, key="k", headers={"traceparent": TRACEPARENT})


@app.consume("jobs", retry=Backoff(initial=0.01, maximum=0.01))
async def on_job(job: dict, ctx: Context) -> None:
    global _attempts
    _attempts += 1
    if _attempts == 1:
        raise RuntimeError("first attempt fails")
    ctx.logger.info("handled job %s", job["id"])
