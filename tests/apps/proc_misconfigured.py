"""An app that imports cleanly but is refused when it starts: idempotency with no Redis.

`taskflow run` exits 2 for it (a configuration error) once it builds its workers, which a
supervisor only learns from the exit code. With ``PROC_BAD_INDEX`` set, only the process with that
``TASKFLOW_PROCESS_INDEX`` is misconfigured; the others run an idle consumer.
"""

from __future__ import annotations

import os

from taskflow import App

app = App("misconfigured", redis_url="")
_bad = os.environ.get("PROC_BAD_INDEX")
_idempotent = _bad is None or _bad == os.environ.get("TASKFLOW_PROCESS_INDEX")


@app.consume("jobs", idempotent=_idempotent)
async def on_job(payload: bytes) -> None:
    """Never called: nothing publishes to the topic."""
