"""A consumer whose side effect is a counter per message id, for the idempotency crash tests.

The message's value is its id (and, with ``IDEM_IDEMPOTENT=1``, its idempotency key). For each
message the handler, on the Redis of ``TASKFLOW_REDIS_URL`` (any URL taskflow takes: one server,
``redis+cluster://``, ``redis+sentinel://``):

1. appends ``<pid> <id>`` to the list ``{prefix}started`` (so a test can count handlers running at
   a kill);
2. sleeps a random 0..``IDEM_DELAY_MS`` ms (at least ``IDEM_MIN_DELAY_MS``);
3. in one MULTI, increments the field ``<id>`` of the hash ``{prefix}counts`` (the side effect) and
   appends ``<pid> <id>`` to the list ``{prefix}finished``; with ``IDEM_TRANSACTION=1`` that MULTI
   is `Context.transaction`, which taskflow applies together with the message's done mark.

On a Redis Cluster a MULTI stays in one slot, so the prefix carries a hash tag (``{name}:``); with
``IDEM_TRANSACTION=1`` it must be the claim's, the consumer group's (``{group}:``).

With ``IDEM_OUT`` set, the marks go to that local file instead and Redis keeps only the claims:
``started <pid> <id>`` before the sleep and ``finished <pid> <id>`` after it, each one
``os.write`` on an ``O_APPEND`` descriptor. A test that takes Redis away reads what ran from there.

Configured by environment variables:

- ``IDEM_TOPIC``, ``IDEM_GROUP``: the topic and the consumer group;
- ``IDEM_PREFIX``: the prefix of the Redis keys above (default empty);
- ``IDEM_OUT``: the file of marks, instead of Redis (default none);
- ``IDEM_IDEMPOTENT``: ``1`` to switch idempotency on (default ``1``);
- ``IDEM_KEY``: ``value`` to key idempotency on the value (an explicit business key, the
  default), ``offset`` to leave the message known by its offset (the partition ledger);
- ``IDEM_LEASE``: the idempotency lease in seconds (default 30);
- ``IDEM_ORDERING`` / ``IDEM_CONCURRENCY``: the ordering mode and its concurrency;
- ``IDEM_DELAY_MS`` / ``IDEM_MIN_DELAY_MS``: the handler's random sleep (default 0);
- ``IDEM_TRANSACTION``: ``1`` to write the effects through ``ctx.transaction`` (default ``0``).
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from taskflow import App, Context, Message
from taskflow.stores.connect import redis_client

if TYPE_CHECKING:
    from taskflow.stores.connect import RedisClient

_prefix = os.environ.get("IDEM_PREFIX", "")
_delay_ms = int(os.environ.get("IDEM_DELAY_MS", "0"))
_min_delay_ms = int(os.environ.get("IDEM_MIN_DELAY_MS", "0"))
_idempotent = os.environ.get("IDEM_IDEMPOTENT", "1") == "1"
_transaction = os.environ.get("IDEM_TRANSACTION", "0") == "1"
_out = (
    os.open(os.environ["IDEM_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    if os.environ.get("IDEM_OUT")
    else None
)
_options: dict[str, Any] = {
    "group": os.environ["IDEM_GROUP"],
    "ordering": os.environ.get("IDEM_ORDERING", "partition"),
    "idempotent": _idempotent,
}
if _idempotent:
    if os.environ.get("IDEM_KEY", "value") == "value":
        _options["idempotency_key"] = lambda message: message.value
    _options["idempotency_lease"] = float(os.environ.get("IDEM_LEASE", "30"))
if "IDEM_CONCURRENCY" in os.environ:
    _options["concurrency"] = int(os.environ["IDEM_CONCURRENCY"])

_redis: RedisClient | None = None


@asynccontextmanager
async def own_client(app: App) -> AsyncIterator[None]:
    """The handler's own client of the app's Redis, opened as taskflow opens its own."""
    global _redis
    if _out is not None:
        yield
        return
    async with redis_client(os.environ["TASKFLOW_REDIS_URL"]) as client:
        _redis = client
        try:
            yield
        finally:
            _redis = None


app = App("idem-counter", lifespan=own_client)


async def count(message: Message, ctx: Context) -> None:
    ident = message.value.decode()
    mark = f"{os.getpid()} {ident}"
    if _out is not None:
        os.write(_out, f"started {mark}\n".encode())
        await pause()
        os.write(_out, f"finished {mark}\n".encode())
        return
    assert _redis is not None, "the lifespan opens the client"
    await _redis.rpush(f"{_prefix}started", mark)
    await pause()
    if _transaction:
        ctx.transaction.hincrby(f"{_prefix}counts", ident, 1)
        ctx.transaction.rpush(f"{_prefix}finished", mark)
        return
    async with _redis.pipeline(transaction=True) as pipe:
        pipe.hincrby(f"{_prefix}counts", ident, 1)
        pipe.rpush(f"{_prefix}finished", mark)
        await pipe.execute()


async def pause() -> None:
    if _delay_ms:
        await asyncio.sleep(random.uniform(_min_delay_ms, _delay_ms) / 1000)


app.add_consumer(count, os.environ["IDEM_TOPIC"], name="on_event", **_options)
