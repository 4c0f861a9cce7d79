"""SIGHUP (a closed terminal, a session ending) is a stop request like SIGTERM.

Before, it ended the process at once (exit 129) without a log line, leaving what was handled
uncommitted.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from aiokafka import AIOKafkaProducer

from tests._process import AppProcess, count_lines, wait_until
from tests._tansu import committed_offsets

RECORDER = "tests.apps.recorder:app"
PARTITIONS = 4
MESSAGES = 200


def handled_marks(out: Path) -> dict[int, int | None]:
    """What a group that committed everything the recorder handled has committed."""
    marks: dict[int, int | None] = dict.fromkeys(range(PARTITIONS))
    for line in out.read_text().splitlines():
        _pid, _topic, partition, offset, _rest = line.split(" ", 4)
        marks[int(partition)] = max(marks[int(partition)] or 0, int(offset) + 1)
    return marks


async def test_sighup_drains_commits_what_was_handled_and_exits_0(
    app_env: dict[str, str],
    bootstrap: str,
    topic: str,
    unique: str,
    producer: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    out, group = tmp_path / "handled.txt", f"{unique}-group"
    env = {**app_env, "RECORDER_TOPICS": topic, "RECORDER_GROUP": group, "RECORDER_OUT": str(out)}
    with AppProcess(RECORDER, env=env) as app:
        await asyncio.to_thread(app.wait_for, r"assigned \S+\[\d\]", 30)
        sent = [
            await producer.send(topic, str(n).encode(), key=f"k{n}".encode())
            for n in range(MESSAGES)
        ]
        await asyncio.gather(*sent)
        await asyncio.to_thread(
            wait_until, lambda: count_lines(out) >= MESSAGES, 60, "every message handled"
        )
        code = await asyncio.to_thread(app.stop, signal.SIGHUP, 30)

    assert code == 0, app.log
    assert "stop requested (SIGHUP): finishing in-flight work" in app.log
    assert "stopped cleanly" in app.log
    committed = await committed_offsets(bootstrap, group, topic, PARTITIONS)
    assert committed == handled_marks(out)
    assert sum(mark or 0 for mark in committed.values()) == MESSAGES


def test_the_supervisor_forwards_sighup_as_a_stop() -> None:
    with AppProcess("tests.apps.proc_drain:app", "--processes", "2") as app:
        app.wait_for(r"process 0 \(pid \d+\) holding job")
        app.wait_for(r"process 1 \(pid \d+\) holding job")
        code = app.stop(signal.SIGHUP, timeout=30)

    assert code == 0, app.log
    assert "stop requested (SIGHUP): forwarding it to 2 process(es)" in app.log
    assert app.log.count("stop requested (SIGHUP): finishing in-flight work") == 2
    assert app.log.count("finished job") == 2
    assert app.lines[-1].endswith("all 2 processes stopped cleanly")
