"""One replica of a consumer under a global rate limit, for the shared-limit acceptance test.

Each replica runs on its own memory broker, so each has its own backlog; only the limit is shared,
through the Redis of ``--redis``. At start a replica publishes ``RL_COUNT`` messages to itself;
its handler appends ``<pid> <time.time()>`` to the file ``RL_OUT`` as it starts, one line per run.
``RL_APP`` names the app (so the limit's key), letting concurrent test runs keep apart.

Without Redis the app is refused before it starts: its consumer's limit is global.
"""

from __future__ import annotations

import os
import time

from taskflow import App, Message

RATE = 50

app = App(os.environ.get("RL_APP", "ratelimit-replicas"))


@app.consume("events", rate_limit=f"{RATE}/s", rate_limit_scope="global")
async def on_event(message: Message) -> None:
    os.write(_out(), f"{os.getpid()} {time.time():.6f}\n".encode())


@app.on_startup
async def publish_the_backlog() -> None:
    for i in range(int(os.environ["RL_COUNT"])):
        await app.publish("events", i)


_fd: int | None = None


def _out() -> int:
    """The output file, opened for appending on first use: one write per line, so the lines of
    two replicas never interleave."""
    global _fd
    if _fd is None:
        _fd = os.open(os.environ["RL_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    return _fd
