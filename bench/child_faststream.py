"""A FastStream contender process (runs in bench/.venvs/faststream): one KafkaBroker subscriber.

``faststream``: the default subscriber. Its default ack policy, ``AckPolicy.ACK_FIRST``, turns on
aiokafka's auto-commit: a record's offset may be committed before its handler ran, so a crash can
lose it (at-most-once). ``faststream-ack``: ``ack_policy=AckPolicy.ACK``, one commit after each
handled record (at-least-once).

The handler takes ``body: dict``: FastStream decodes the JSON and validates it, as an app would get
it. FastStream's per-message log lines are switched off (``logger=None``): no contender logs per
record.
"""

from __future__ import annotations

import asyncio
import importlib.metadata

from _child import HEARTBEAT_INTERVAL_MS, SESSION_TIMEOUT_MS, Counter, arguments, report
from faststream import AckPolicy
from faststream.kafka import KafkaBroker

ACK_POLICIES = {"faststream": None, "faststream-ack": AckPolicy.ACK}


async def main() -> None:
    args = arguments(__doc__.splitlines()[0])
    counter = Counter(args.expected)
    broker = KafkaBroker(args.bootstrap, logger=None)
    policy = ACK_POLICIES[args.contender]
    options = {} if policy is None else {"ack_policy": policy}
    subscriber = broker.subscriber(
        args.topic,
        group_id=args.group,
        auto_offset_reset="earliest",
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
        **options,
    )

    @subscriber
    async def handle(body: dict) -> None:
        counter.hit()

    await broker.start()
    try:
        async with asyncio.timeout(args.timeout):
            await counter.done.wait()
    finally:
        await broker.stop()
    report(**counter.stamps(), version=f"faststream {importlib.metadata.version('faststream')}")


if __name__ == "__main__":
    asyncio.run(main())
