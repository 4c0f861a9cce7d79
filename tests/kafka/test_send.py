"""`taskflow send` against a real Kafka-protocol broker: what lands is what was asked for."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

ROOT = Path(__file__).resolve().parent.parent.parent
APP = "tests.apps.idle:app"  # any app: `send` uses only its broker


async def taskflow_send(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> tuple[int, str, str]:
    """Run ``taskflow send APP ARGS`` with the broker of `env`; its exit code, stdout and stderr."""
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "taskflow", "send", APP, *args],
        cwd=ROOT,
        env={**_base_env(), **env},
        input=stdin,
        capture_output=True,
        encoding="utf-8",
        timeout=60,
        check=False,
    )
    return result.returncode, result.stdout, result.stderr


def _send_bytes(
    env: dict[str, str], args: list[str | bytes], stdin: bytes | None
) -> subprocess.CompletedProcess[bytes]:
    """``taskflow send APP ARGS`` with arguments and standard input that need not be UTF-8."""
    return subprocess.run(
        [sys.executable, "-m", "taskflow", "send", APP, *args],
        cwd=ROOT,
        env={**_base_env(), **env},
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TASKFLOW_")}


async def record_at(bootstrap: str, where: str) -> ConsumerRecord:
    """The record `send` reported as ``sent to topic[partition]@offset``."""
    place, offset = where.removeprefix("sent to ").rsplit("@", 1)
    topic, partition = place.removesuffix("]").rsplit("[", 1)
    tp = TopicPartition(topic, int(partition))
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, int(offset))
        return await asyncio.wait_for(consumer.getone(), 30)
    finally:
        await consumer.stop()


async def test_send_publishes_json_with_its_key_and_headers(
    app_env: dict[str, str], bootstrap: str, topic: str
) -> None:
    code, out, err = await taskflow_send(
        app_env,
        topic,
        '{"id": 7, "total": 12.5}',
        "--key",
        "customer-1",
        "--header",
        "source=cli",
        "--header",
        "note=a=b",
    )

    assert code == 0, err
    [line] = out.splitlines()
    assert line.startswith(f"sent to {topic}[")
    record = await record_at(bootstrap, line)
    assert record.value == b'{"id":7,"total":12.5}'
    assert record.key == b"customer-1"
    assert list(record.headers) == [
        ("source", b"cli"),
        ("note", b"a=b"),
        ("content-type", b"application/json"),
    ]


async def test_send_encodes_with_the_apps_codec_of_the_content_type_asked_for(
    app_env: dict[str, str], bootstrap: str, topic: str
) -> None:
    code, out, err = await taskflow_send(
        app_env, topic, '{"id": 7}', "--content-type", "application/msgpack"
    )

    assert code == 0, err
    record = await record_at(bootstrap, out.strip())
    assert record.value == b"\x81\xa2id\x07"
    assert list(record.headers) == [("content-type", b"application/msgpack")]


async def test_send_with_a_content_type_the_app_has_no_codec_for_is_a_usage_error() -> None:
    code, out, err = await taskflow_send(
        {"TASKFLOW_BROKER": "kafka://127.0.0.1:1"}, "orders", "{}", "--content-type", "text/csv"
    )

    assert code == 2
    assert out == ""
    assert err.splitlines()[-1] == (
        "Error: the app has no codec for 'text/csv': it writes application/json, "
        "application/msgpack"
    )


async def test_send_raw_with_a_content_type_labels_the_bytes_a_consumer_reads_with_it(
    app_env: dict[str, str], bootstrap: str, topic: str
) -> None:
    # Bytes already in a format JSON cannot spell (MessagePack here; Protocol Buffers, Avro).
    packed = b"\x81\xa2id\x07"
    args: list[str | bytes] = [topic, "-", "--raw", "--content-type", "application/msgpack"]
    result = await asyncio.to_thread(_send_bytes, app_env, args, packed)

    assert result.returncode == 0, result.stderr.decode(errors="replace")
    record = await record_at(bootstrap, result.stdout.decode().strip())
    assert record.value == packed
    assert list(record.headers) == [("content-type", b"application/msgpack")]


async def test_send_raw_from_standard_input_sends_the_bytes_as_given(
    app_env: dict[str, str], bootstrap: str, topic: str
) -> None:
    code, out, err = await taskflow_send(app_env, topic, "-", "--raw", stdin='{"id": 1}\n')

    assert code == 0, err
    record = await record_at(bootstrap, out.strip())
    assert record.value == b'{"id": 1}\n'
    assert record.key is None


async def test_send_raw_sends_bytes_that_are_not_utf8_as_given_in_value_key_and_headers(
    app_env: dict[str, str], bootstrap: str, topic: str
) -> None:
    args: list[str | bytes] = [topic, "-", "--raw", "--key", b"k\xff", "--header", b"trace=\xfe"]
    result = await asyncio.to_thread(_send_bytes, app_env, args, b"\x00\xff binary")

    assert result.returncode == 0, result.stderr.decode(errors="replace")
    record = await record_at(bootstrap, result.stdout.decode().strip())
    assert record.value == b"\x00\xff binary"
    assert record.key == b"k\xff"
    assert list(record.headers) == [("trace", b"\xfe")]


async def test_send_of_a_value_that_is_not_utf8_without_raw_is_a_usage_error() -> None:
    unreachable = {"TASKFLOW_BROKER": "kafka://127.0.0.1:1"}
    result = await asyncio.to_thread(_send_bytes, unreachable, ["orders", b"\xff"], None)

    assert result.returncode == 2
    assert result.stderr.decode().splitlines()[-1] == (
        "Error: VALUE is not UTF-8 text (from its character 0): send it with --raw to send its "
        "bytes as they are"
    )


async def test_send_to_an_unreachable_broker_is_one_error_and_exit_code_1() -> None:
    code, out, err = await taskflow_send({"TASKFLOW_BROKER": "kafka://127.0.0.1:1"}, "orders", "x")

    assert code == 1
    assert out == ""
    assert err.splitlines()[-1].startswith("Error: cannot reach Kafka at kafka://127.0.0.1:1")
