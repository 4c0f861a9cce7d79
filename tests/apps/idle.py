"""An app with nothing to do: a consumer of a silent topic and an hourly task."""

from __future__ import annotations

from taskflow import App, Context

app = App("idle")


@app.consume("silence", group="listeners")
async def listen(payload: bytes) -> None:
    """Never called: nothing publishes to the topic."""


@app.every(hours=1)
async def hourly(ctx: Context) -> None:
    """Fires at most once an hour, so not during a test."""
