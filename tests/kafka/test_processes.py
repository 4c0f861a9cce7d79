"""`taskflow run --processes 2` on the real broker: the processes share the group's partitions,
and SIGTERM to the supervisor drains both without losing a message."""

from __future__ import annotations

import asyncio
import re
import signal
from collections import Counter
from pathlib import Path

from aiokafka import AIOKafkaProducer

from tests._process import AppProcess
from tests._tansu import committed_offsets
from tests.kafka.test_delivery import (
    PARTITIONS,
    RECORDER,
    STREAM,
    all_handled,
    background,
    duplicates,
    high_watermarks,
    positions,
    produce,
    read_handled,
    until,
    wait_committed,
)


async def test_two_processes_share_the_partitions_and_drain_on_sigterm(
    env: dict[str, str], bootstrap: str, topic: str, producer: AIOKafkaProducer, out: Path
) -> None:
    group = env["RECORDER_GROUP"]
    with AppProcess(RECORDER, "--processes", "2", env=env) as supervisor:
        # Both children have joined once each has been assigned partitions of its own.
        await asyncio.to_thread(supervisor.wait_for, r"#0 .*assigned \S+\[\d\]", 30)
        await asyncio.to_thread(supervisor.wait_for, r"#1 .*assigned \S+\[\d\]", 30)
        async with background(produce(producer, topic, STREAM)) as producing:
            await wait_committed(bootstrap, group, topic, at_least=1000)
            produced = set(await producing)
            await until(all_handled(out, produced), 60, "every message handled")
        supervisor.send(signal.SIGTERM)
        code = await asyncio.to_thread(supervisor.wait, 60)

    assert code == 0, supervisor.log
    handled = read_handled(out)
    assert positions(handled) == produced
    assert duplicates(handled) == {}
    assert await committed_offsets(bootstrap, group, topic, PARTITIONS) == high_watermarks(produced)
    by_pid = Counter(h.pid for h in handled)
    assert len(by_pid) == 2, f"one process handled everything: {by_pid}"
    drained = re.findall(r"#(\d) .*stopped cleanly", supervisor.log)
    assert sorted(drained) == ["0", "1"], supervisor.log[-3000:]
    print(f"\n--processes 2: handled per process {sorted(by_pid.values())}")
