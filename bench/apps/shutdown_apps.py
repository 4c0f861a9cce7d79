"""Apps for the shutdown figures, run with ``taskflow run shutdown_apps:… --app-dir bench/apps``.

``idle``: one consumer of an empty topic and one periodic task, on the broker given with
``--broker`` (the memory broker by default). Nothing is in flight when SIGTERM comes.

``inflight`` (a function returning the App): one consumer of ``$BENCH_TOPIC`` in
``$BENCH_GROUP`` with ``ordering="key"`` and ``concurrency=$BENCH_CONCURRENCY`` (default 250 per
partition: 1,000 on 4 partitions). Each
handler sleeps ``$BENCH_SLEEP`` seconds (default 1). When ``$BENCH_INFLIGHT`` handlers (default
1,000) are asleep at once it writes ``BENCH in-flight N <monotonic>`` to stderr, the cue for
SIGTERM; each handler that finishes after that is counted, and at shutdown it writes
``BENCH finished N <monotonic of the last>``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from taskflow import App, Message

idle = App("idle")


@idle.consume("bench-idle")
async def on_event(msg: Message) -> None:
    pass


@idle.every(minutes=1)
async def housekeeping() -> None:
    pass


def inflight() -> App:
    """The in-flight app, configured from the environment."""
    app = App("inflight")
    target = int(os.environ.get("BENCH_INFLIGHT", "1000"))
    sleep = float(os.environ.get("BENCH_SLEEP", "1"))
    state = {"running": 0, "finished": 0, "last": 0.0}

    async def handle(msg: Message) -> None:
        state["running"] += 1
        if state["running"] == target:
            print(f"BENCH in-flight {target} {time.monotonic():.6f}", file=sys.stderr, flush=True)
        await asyncio.sleep(sleep)
        state["running"] -= 1
        state["finished"] += 1
        state["last"] = time.monotonic()

    async def report() -> None:
        print(
            f"BENCH finished {state['finished']} {state['last']:.6f}", file=sys.stderr, flush=True
        )

    app.add_consumer(
        handle,
        os.environ.get("BENCH_TOPIC", "bench-inflight"),
        group=os.environ.get("BENCH_GROUP", "inflight"),
        ordering="key",
        concurrency=int(os.environ.get("BENCH_CONCURRENCY", "250")),
    )
    app.on_shutdown(report)
    return app
