"""Read a dead-letter topic: where each message came from, why it is there,
and what the handler raised, from the `taskflow-` headers.

    python -m examples.recipes.read_dead_letters payments.DLQ \
        --bootstrap localhost:9092

It reads every partition from the start to its end as it is now, without a
consumer group (so it commits nothing and moves no one's offsets), prints one
line per dead letter and exits. Header values arrive as bytes.
"""

# --8<-- [start:reader]
from __future__ import annotations

import argparse
import asyncio

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord


def describe(record: ConsumerRecord) -> str:
    """One line: origin, key, reason, attempts, exception."""
    headers = {
        name.removeprefix("taskflow-"): value.decode("utf-8", "replace")
        for name, value in record.headers
        if name.startswith("taskflow-")
    }
    origin = "{}[{}]@{}".format(
        headers.get("original-topic"),
        headers.get("original-partition"),
        headers.get("original-offset"),
    )
    key = record.key.decode("utf-8", "replace") if record.key else "-"
    return (
        f"{origin} key={key} {headers.get('reason')}"
        f" after {headers.get('attempts')} attempt(s):"
        f" {headers.get('exception-type')}: {headers.get('exception-message')}"
    )


async def read(topic: str, bootstrap: str) -> int:
    """Print every dead letter now in `topic`; return how many there were."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False
    )
    await consumer.start()
    try:
        found = consumer.partitions_for_topic(topic) or set()
        partitions = [TopicPartition(topic, p) for p in sorted(found)]
        if not partitions:
            return 0
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)
        count = 0
        for tp in partitions:
            while await consumer.position(tp) < end[tp]:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                for record in batch.get(tp, []):
                    print(describe(record), flush=True)
                    count += 1
        return count
    finally:
        await consumer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("topic", help="the dead-letter topic, e.g. orders.DLQ")
    parser.add_argument("--bootstrap", default="localhost:9092")
    args = parser.parse_args()
    count = asyncio.run(read(args.topic, args.bootstrap))
    print(f"{count} dead letter(s) in {args.topic}")


if __name__ == "__main__":
    main()
# --8<-- [end:reader]
