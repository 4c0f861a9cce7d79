"""Publishing figures: `app.publish` with `wait=True` (the default) against `wait=False`.

One process, on a Tansu broker of its own: an app run with `taskflow.running(app, workers=False)`
publishes N records (about 100-byte JSON values, keys spread over 100 keys) to a fresh 4-partition
topic, one `await` after the other as a handler would. Reported per mode: the rate of the calls
(how long the code that publishes is held) and the rate until the broker has acknowledged every
record (for `wait=False`, until its deliveries have all settled). The modes alternate, round after
round; the medians are printed.

    .venv/bin/python bench/publish.py [--records 5000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

import taskflow  # noqa: E402
from taskflow import App  # noqa: E402
from tests._tansu import TansuBroker, create_topic  # noqa: E402

PARTITIONS = 4
KEYS = 100


async def one_round(bootstrap: str, records: int, *, wait: bool) -> tuple[float, float]:
    """Seconds until the last call returned, and until every record was acknowledged."""
    topic = f"publish-{uuid.uuid4().hex[:8]}"
    await create_topic(bootstrap, topic, PARTITIONS)
    # Tansu refuses idempotent producers.
    app = App("bench", broker=f"kafka://{bootstrap}", broker_options={"enable_idempotence": False})
    async with taskflow.running(app, workers=False) as runtime:
        value = {"id": 0, "customer": "c-0000", "note": "x" * 60}
        start = time.perf_counter()
        for n in range(records):
            value["id"] = n
            await app.publish(topic, value, key=f"c-{n % KEYS:04d}", wait=wait)
        returned = time.perf_counter() - start
        await runtime.deliveries.settled()
        acknowledged = time.perf_counter() - start
        assert runtime.deliveries.failed == 0, runtime.deliveries.undelivered
    return returned, acknowledged


async def measure(bootstrap: str, records: int, rounds: int) -> dict[str, tuple[float, float]]:
    """Median records per second of the calls and of the acknowledgements, per mode."""
    times: dict[str, list[tuple[float, float]]] = {"wait=True": [], "wait=False": []}
    for _ in range(rounds):
        for wait in (True, False):
            times[f"wait={wait}"].append(await one_round(bootstrap, records, wait=wait))
    return {
        mode: (
            records / statistics.median(t[0] for t in runs),
            records / statistics.median(t[1] for t in runs),
        )
        for mode, runs in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with TansuBroker() as broker:
        rates = asyncio.run(measure(broker.bootstrap, args.records, args.rounds))
    print(f"| mode | calls/s | acknowledged/s |  ({args.records} records, {args.rounds} rounds)")
    print("| --- | --- | --- |")
    for mode, (calls, acknowledged) in rates.items():
        print(f"| `{mode}` | {calls:,.0f} | {acknowledged:,.0f} |")


if __name__ == "__main__":
    main()
