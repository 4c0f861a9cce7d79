"""Periodic reports, built by a function so that a test can pass a clock.

`taskflow run` calls a factory that takes no arguments:

    taskflow run examples.reports:create_app
"""

from __future__ import annotations

from taskflow import App, Clock, Context


# --8<-- [start:factory]
def create_app(clock: Clock | None = None) -> App:
    """The reports app; tests pass a `ManualClock`, production none."""
    app = App("reports", clock=clock)

    @app.on_startup
    async def prepare() -> None:
        app.state.runs = []

    @app.every(hours=1)
    async def hourly(ctx: Context) -> None:
        ctx.state.runs.append(("hourly", ctx.scheduled_at))

    @app.cron("0 9 * * mon-fri", tz="Europe/Berlin")
    async def morning(ctx: Context) -> None:
        ctx.state.runs.append(("morning", ctx.scheduled_at))

    return app


# --8<-- [end:factory]
