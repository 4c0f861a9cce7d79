"""Memory-broker throughput: publish N messages, then wait until each is handled and committed.

A no-op async handler in partition mode on the embedded broker, run through the public test kit,
so the figure covers the whole path: encode and publish, fetch, dispatch per partition, call the
handler, track the offset, commit. Several rounds; prints each and the median.

    .venv/bin/python bench/memory_throughput.py [--messages 200000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from taskflow import App
from taskflow.testing import TestClient


async def one_round(messages: int, partitions: int) -> tuple[float, float]:
    app = App("bench")
    handled = 0

    @app.consume("events")
    async def on_event(payload: bytes) -> None:
        nonlocal handled
        handled += 1

    async with TestClient(app, partitions=partitions) as client:
        started = time.perf_counter()
        for number in range(messages):
            await client.publish("events", b"x" * 200, key=str(number % 1000))
        published = time.perf_counter()
        await client.drain(timeout=600)
        finished = time.perf_counter()
    assert handled >= messages, (handled, messages)
    return messages / (finished - started), messages / (finished - published)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()
    totals = []
    for number in range(1, args.rounds + 1):
        total, consume_only = asyncio.run(one_round(args.messages, args.partitions))
        totals.append(total)
        print(
            f"round {number}: {total:>10,.0f} msg/s publish→handled→committed "
            f"({consume_only:,.0f} msg/s consuming alone)"
        )
    print(
        f"median: {statistics.median(totals):,.0f} msg/s over {args.rounds} rounds of "
        f"{args.messages:,} messages (target: at least 50,000 msg/s on one core)"
    )


if __name__ == "__main__":
    main()
