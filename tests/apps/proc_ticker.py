"""A periodic task every second, for the test of fleet scheduling across supervised processes.

Each run appends ``<scheduled_at> <process index> <pid>`` to the file ``PROC_TICKS`` (one
``os.write`` on an ``O_APPEND`` descriptor, so processes can share the file). The app is named
``PROC_APP`` (default ``proc-ticker``), so that test runs at the same time do not share claims.
"""

from __future__ import annotations

import os

from taskflow import App, Context

app = App(os.environ.get("PROC_APP", "proc-ticker"))
_index = os.environ.get("TASKFLOW_PROCESS_INDEX", "-")
_out = os.open(os.environ["PROC_TICKS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


@app.every(seconds=1)
async def tick(ctx: Context) -> None:
    assert ctx.scheduled_at is not None
    os.write(_out, f"{ctx.scheduled_at.isoformat()} {_index} {os.getpid()}\n".encode())
