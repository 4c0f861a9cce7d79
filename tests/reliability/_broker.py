"""What a `taskflow run` child did on the real broker: what it handled, dead-lettered, committed."""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiokafka import AIOKafkaConsumer, ConsumerRecord

from tests._tansu import committed_offsets

GROUP = "recorder"  # the recorder app's name, so its group
WAIT = 30.0  # seconds: the bound of every wait


def handled(out: Path) -> list[int]:
    """The offsets the recorder app handled, in the order handled."""
    if not out.exists():
        return []
    return [int(line.split(" ")[3]) for line in out.read_text().splitlines()]


async def dead_letters(bootstrap: str, topic: str) -> list[ConsumerRecord]:
    """Every record of the one-partition `topic`, once at least one is there."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        records: list[ConsumerRecord] = []
        async with asyncio.timeout(WAIT):
            while not records:
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(batch)
        return records
    finally:
        await consumer.stop()


async def wait_for_commit(bootstrap: str, topic: str, expected: int) -> None:
    committed: dict[int, int | None] = {}
    try:
        async with asyncio.timeout(WAIT):
            # Polled: only the broker knows what the other process committed.
            while (committed := await committed_offsets(bootstrap, GROUP, topic, 1)) != {  # noqa: ASYNC110
                0: expected
            }:
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"committed {committed}, expected {{0: {expected}}}") from None
