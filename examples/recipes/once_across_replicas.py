"""A job every 5 minutes, run once per tick however many replicas run it.

Start Redis (either line), then as many replicas as you like:

    docker run -d --name redis -p 6379:6379 redis:7
    redis-server                      # or one installed on this machine
    taskflow run examples.recipes.once_across_replicas:app

`TASKFLOW_REDIS_URL` (or `--redis`) points it at another Redis.
"""

# --8<-- [start:app]
from __future__ import annotations

from datetime import timedelta

from taskflow import App, Context


def create_app(every: timedelta = timedelta(minutes=5)) -> App:
    """The app; its test runs the job every second."""
    app = App("reports", redis_url="redis://localhost:6379/0")

    @app.every(every)
    async def send_report(ctx: Context) -> None:
        assert ctx.scheduled_at is not None
        ctx.logger.info("report for %s", ctx.scheduled_at.isoformat())

    return app


app = create_app()
# --8<-- [end:app]
