"""`taskflow dlq show` against a real Kafka-protocol broker: it shows what a real app dead-lettered.

A `taskflow run` app (tests/apps/dead_letters.py) rejects some records and exhausts others into a
dead-letter topic that also holds one record that taskflow did not write; then `dlq show` reads it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from tests._process import AppProcess
from tests._tansu import committed_offsets, create_topic
from tests.kafka.test_dlq_replay import run_replay

ROOT = Path(__file__).resolve().parent.parent.parent
APP = "tests.apps.dead_letters:app"


async def dlq_show(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """Run ``taskflow dlq show APP ARGS``; its exit code, stdout and stderr."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TASKFLOW_")}
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "taskflow", "dlq", "show", APP, *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        encoding="utf-8",
        timeout=60,
        check=False,
    )
    return result.returncode, result.stdout, result.stderr


async def groups(bootstrap: str) -> list[str]:
    """Every consumer group the broker knows."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return sorted(group for group, _protocol in await admin.list_consumer_groups())
    finally:
        await admin.close()


async def test_dlq_show_lists_the_dead_letters_newest_first_with_their_origins_and_counts(
    app_env: dict[str, str],
    bootstrap: str,
    topic: str,
    unique: str,
    producer: AIOKafkaProducer,
) -> None:
    dlq, group = f"{unique}-dead", f"{unique}-group"
    await create_topic(bootstrap, dlq, 2)
    plain = await producer.send_and_wait(dlq, b"written by hand", partition=1)
    origins: dict[str, tuple[int, int]] = {}
    for value in ["ok 1", "reject 1", "fail 1", "reject 2", "ok 2", "reject 3", "fail 2"]:
        meta = await producer.send_and_wait(topic, value.encode(), partition=len(origins) % 4)
        origins[value] = (meta.partition, meta.offset)
    env = {
        **app_env,
        "DEAD_LETTERS_TOPIC": topic,
        "DEAD_LETTERS_DLQ": dlq,
        "DEAD_LETTERS_GROUP": group,
    }
    with AppProcess(APP, env=env) as app:
        app.wait_for(f"sent to {dlq}", count=5)
        assert app.stop(signal.SIGTERM) == 0
    committed = await committed_offsets(bootstrap, group, topic, 4)
    known = await groups(bootstrap)

    code, out, err = await dlq_show(app_env, dlq)

    assert code == 0, err
    *letters, summary, reasons, exceptions = out.splitlines()
    assert len(letters) == 6
    assert letters[-1] == f"{dlq}[1]@{plain.offset}  " + letters[-1].split("  ")[1] + (
        "  (no taskflow headers)"
    )
    shown = {line.split(" from ")[1].split("  ")[0]: line for line in letters[:-1]}
    failed = {v: p for v, p in origins.items() if not v.startswith("ok")}
    assert set(shown) == {f"{topic}[{p}]@{o}" for p, o in failed.values()}
    for value, (partition, offset) in failed.items():
        line = shown[f"{topic}[{partition}]@{offset}"]
        assert f"group {group}" in line
        if value.startswith("reject"):
            assert line.endswith(
                f"rejected after 1 attempt(s)  taskflow.exceptions.Reject: "
                f"not a valid order: {value}"
            )
        else:
            assert line.endswith(
                f"exhausted after 2 attempt(s)  builtins.ValueError: cannot price {value}…"
            )
    assert summary == "6 of 6 record(s) shown, newest first; counted over all of them:"
    assert reasons == "  by reason     rejected 3, exhausted 2, (no taskflow headers) 1"
    assert exceptions == (
        "  by exception  taskflow.exceptions.Reject 3, builtins.ValueError 2, "
        "(no taskflow headers) 1"
    )

    code, out, err = await dlq_show(app_env, dlq, "--limit", "1")

    assert code == 0, err
    assert out.splitlines() == [
        letters[0],
        "1 of 6 record(s) shown, newest first; counted over all of them:",
        reasons,
        exceptions,
    ]

    code, out, err = await dlq_show(app_env, dlq, "--json", "--limit", "2")

    assert code == 0, err
    *rows, last = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 2
    assert all(row["taskflow"] and row["topic"] == dlq for row in rows)
    assert rows[0]["timestamp_ms"] >= rows[1]["timestamp_ms"]
    newest_of_all = letters[0].split("  ")[0]
    assert f"{rows[0]['topic']}[{rows[0]['partition']}]@{rows[0]['offset']}" == newest_of_all
    assert last == {
        "summary": {
            "shown": 2,
            "read": 6,
            "by_reason": {"rejected": 3, "exhausted": 2, "(no taskflow headers)": 1},
            "by_exception_type": {
                "taskflow.exceptions.Reject": 3,
                "builtins.ValueError": 2,
                "(no taskflow headers)": 1,
            },
        }
    }
    # Reading joined and committed nothing: no new group, and the app's is where the app left it.
    assert await groups(bootstrap) == known
    assert await committed_offsets(bootstrap, group, topic, 4) == committed


async def test_dlq_show_of_a_topic_that_does_not_exist_is_a_usage_error(
    app_env: dict[str, str], unique: str
) -> None:
    code, out, err = await dlq_show(app_env, f"{unique}-nothing")

    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"Error: topic '{unique}-nothing' does not exist on "
        f"{app_env['TASKFLOW_BROKER']}: check its name"
    ]


async def test_dlq_show_of_an_unreachable_broker_is_one_error_and_exit_code_1() -> None:
    code, out, err = await dlq_show({"TASKFLOW_BROKER": "kafka://127.0.0.1:1"}, "orders.dlq")

    assert (code, out) == (1, "")
    assert err.splitlines()[-1].startswith("Error: cannot reach Kafka at kafka://127.0.0.1:1")


async def test_dlq_show_escapes_control_characters_in_a_dead_letters_headers(
    app_env: dict[str, str], bootstrap: str, topic: str, unique: str, producer: AIOKafkaProducer
) -> None:
    # Anyone who can write to the topic chooses these bytes: an escape sequence that retitles
    # the terminal, one that clears it, and a newline that would forge a line of the listing.
    dlq = f"{unique}-dead"
    await create_topic(bootstrap, dlq, 1)
    headers = {
        "taskflow-original-topic": topic.encode(),
        "taskflow-original-partition": b"0",
        "taskflow-original-offset": b"3",
        "taskflow-consumer-group": b"billing\nforged line",
        "taskflow-attempts": b"1",
        "taskflow-reason": b"rejected",
        "taskflow-exception-type": b"myapp.Bad\x1b]0;owned\x07",
        "taskflow-exception-message": b"\x1b[2Jcleared",
    }
    await producer.send_and_wait(dlq, b"{}", headers=list(headers.items()))

    code, out, err = await dlq_show(app_env, dlq)

    assert code == 0, err
    letter, _, _, exceptions = out.splitlines()
    assert letter.endswith(
        f"from {topic}[0]@3  group billing\\nforged line  rejected after 1 attempt(s)  "
        "myapp.Bad\\x1b]0;owned\\x07: \\x1b[2Jcleared"
    )
    assert exceptions == "  by exception  myapp.Bad\\x1b]0;owned\\x07 1"
    assert "\x1b" not in out


async def test_dlq_show_lists_a_dead_letter_whose_timestamp_is_beyond_the_year_9999(
    app_env: dict[str, str], bootstrap: str, topic: str, unique: str, producer: AIOKafkaProducer
) -> None:
    # A record's timestamp is what its producer chose, and the broker keeps it as it is.
    dlq = f"{unique}-dead"
    await create_topic(bootstrap, dlq, 1)
    headers = [("taskflow-original-topic", topic.encode()), ("taskflow-reason", b"rejected")]
    await producer.send_and_wait(dlq, b"{}", headers=headers, timestamp_ms=2**62)
    await producer.send_and_wait(dlq, b"{}", headers=headers, timestamp_ms=1_764_367_397_204)

    code, out, err = await dlq_show(app_env, dlq)

    assert code == 0, err
    assert [line.split("  ")[:2] for line in out.splitlines()[:2]] == [
        [f"{dlq}[0]@0", f"(timestamp {2**62} ms)"],
        [f"{dlq}[0]@1", "2025-11-28T22:03:17.204+00:00"],
    ]

    code, out, err = await dlq_show(app_env, dlq, "--json")

    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()[:2]]
    assert [(row["timestamp_ms"], row["time"]) for row in rows] == [
        (2**62, None),
        (1_764_367_397_204, "2025-11-28T22:03:17.204+00:00"),
    ]


async def test_dlq_show_and_replay_name_what_a_record_with_some_taskflow_headers_lacks(
    app_env: dict[str, str], bootstrap: str, topic: str, unique: str, producer: AIOKafkaProducer
) -> None:
    # Written by hand, or cut short: taskflow headers, but not all of them.
    dlq = f"{unique}-dead"
    await create_topic(bootstrap, dlq, 1)
    origin = ("taskflow-original-topic", topic.encode())
    await producer.send_and_wait(
        dlq,
        b"{}",
        headers=[origin, ("taskflow-original-partition", b"two"), ("taskflow-reason", b"rejected")],
    )
    await producer.send_and_wait(dlq, b"{}", headers=[origin, ("taskflow-attempts", b"1")])

    code, out, err = await dlq_show(app_env, dlq)

    assert code == 0, err
    retry, by_hand, _, reasons, exceptions = out.splitlines()
    assert retry.endswith(f"from {topic}[?]@?  group ?  ? after 1 attempt(s)  ?: ")
    assert by_hand.endswith(f"from {topic}[?]@?  group ?  rejected after ? attempt(s)  ?: ")
    assert reasons == "  by reason     rejected 1, (no reason) 1"
    assert exceptions == "  by exception  (no exception type) 2"

    code, lines, err = await run_replay(app_env, dlq, "--dry-run")

    assert code == 0, err
    assert [line for line in lines if line.startswith("skipped ")] == [
        f"skipped {dlq}[0]@0: its taskflow headers do not say where it came from "
        "(taskflow-original-topic, and taskflow-original-partition as a whole number)",
        f"skipped {dlq}[0]@1: its taskflow headers do not say where it came from "
        "(taskflow-original-topic, and taskflow-original-partition as a whole number)",
    ]
