"""A consumer with retry topics that records every attempt.

Each value is ``{"id": n}``. Ids that are multiples of 10 fail their first two attempts and then
succeed; ids ending in 05 (5, 105, …) always fail. Every attempt appends one line to
``RETRY_STAGES_OUT``: ``<pid> <id> <attempt> <topic> <partition> <offset> <ok|fail> <epoch s>``.
``RETRY_STAGES_TOPIC``, ``RETRY_STAGES_GROUP`` and ``RETRY_STAGES_DLQ`` name the topic, the
group and the dead-letter topic; the stages are ``retry_topics=[1, 2]``.
"""

from __future__ import annotations

import os
import time

from taskflow import App, Context

app = App("retry-stages")
OUT = os.environ.get("RETRY_STAGES_OUT", "retry-stages.txt")


def fails(ident: int, attempt: int) -> bool:
    """Whether attempt `attempt` at the record with id `ident` fails."""
    return ident % 100 == 5 or (ident % 10 == 0 and attempt < 3)


@app.consume(
    os.environ.get("RETRY_STAGES_TOPIC", "orders"),
    group=os.environ.get("RETRY_STAGES_GROUP", "retry-stages"),
    dead_letter=os.environ.get("RETRY_STAGES_DLQ", "orders.DLQ"),
    retry_topics=[1, 2],
)
async def handle(order: dict[str, int], ctx: Context) -> None:
    started = time.time()
    message = ctx.message
    assert message is not None
    failed = fails(order["id"], ctx.attempt)
    line = (
        f"{os.getpid()} {order['id']} {ctx.attempt} {message.topic} {message.partition} "
        f"{message.offset} {'fail' if failed else 'ok'} {started:.3f}\n"
    )
    descriptor = os.open(OUT, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(descriptor, line.encode())
    finally:
        os.close(descriptor)
    if failed:
        raise ConnectionError(f"order {order['id']} failed attempt {ctx.attempt}")
