"""JSON is UTF-8, whatever payload type a handler asks for; other encodings are rejected alike."""

from __future__ import annotations

import codecs
import dataclasses
import signal
from pathlib import Path
from typing import Any

import pydantic
import pytest
from aiokafka import AIOKafkaProducer

from taskflow import App, Backoff, Message
from taskflow.testing import TestClient
from tests._process import AppProcess, wait_until
from tests._tansu import create_topic
from tests.reliability._broker import WAIT, dead_letters, handled, wait_for_commit

FAST = Backoff(initial=0.001, maximum=0.001, jitter=0)


@dataclasses.dataclass
class Order:
    id: int


class Invoice(pydantic.BaseModel):
    id: int


def app_taking(payload_type: Any, handled: list[Any]) -> App:
    app = App("shop")

    async def on_order(payload: Any) -> None:
        handled.append(payload)

    on_order.__annotations__["payload"] = payload_type
    app.add_consumer(on_order, "orders", retry=FAST, dead_letter="orders.DLQ")
    return app


def letters_of(client: TestClient) -> list[dict[str, str]]:
    return [
        {name: value.decode() for name, value in letter.headers}
        for letter in client.broker.topic("orders.DLQ").logs[0]
    ]


@pytest.mark.parametrize(
    ("payload_type", "document"),
    [(dict, '{"id": 7}'), (list, "[7]"), (Order, '{"id": 7}'), (Invoice, '{"id": 7}')],
    ids=["dict", "list", "dataclass", "pydantic"],
)
async def test_every_json_payload_type_takes_utf8_only(payload_type: Any, document: str) -> None:
    handled: list[Any] = []
    sent = {
        "utf-8": document.encode(),
        "utf-8 with a byte order mark": codecs.BOM_UTF8 + document.encode(),
        "utf-16": document.encode("utf-16"),
        "utf-16-le": document.encode("utf-16-le"),
        "utf-32": document.encode("utf-32"),
        "latin-1": document.replace("7", '"é"').encode("latin-1"),
    }

    async with TestClient(app_taking(payload_type, handled), partitions=1) as client:
        for value in sent.values():
            await client.publish("orders", value)
        await client.drain()
        assert client.committed("shop", "orders", 0) == len(sent)
        letters = letters_of(client)

    assert len(handled) == 2  # UTF-8, with and without the byte order mark
    assert handled[0] == handled[1]
    assert [letter["taskflow-original-offset"] for letter in letters] == ["2", "3", "4", "5"]
    assert {letter["taskflow-exception-type"] for letter in letters} == {
        "taskflow.exceptions.DecodeError"
    }
    assert [letter["taskflow-exception-message"].split(" ", 3)[3] for letter in letters] == [
        "is UTF-16 text; JSON payloads must be UTF-8",
        "is UTF-16-LE text; JSON payloads must be UTF-8",
        "is UTF-32 text; JSON payloads must be UTF-8",
        "is not UTF-8, as JSON payloads must be: 'utf-8' codec can't decode byte 0xe9 in "
        f"position {document.index('7') + 1}: invalid continuation byte",
    ]


async def test_a_str_handler_takes_utf8_text_and_rejects_the_rest_the_same_way() -> None:
    handled: list[Any] = []

    async with TestClient(app_taking(str, handled), partitions=1) as client:
        await client.publish("orders", b"caf\xc3\xa9")
        await client.publish("orders", "café".encode("utf-16"))
        await client.drain()
        assert client.committed("shop", "orders", 0) == 2
        [letter] = letters_of(client)

    assert handled == ["café"]
    assert letter["taskflow-exception-type"] == "taskflow.exceptions.DecodeError"
    assert "is not UTF-8 text" in letter["taskflow-exception-message"]


async def test_a_message_handler_gets_any_bytes_undecoded() -> None:
    handled: list[Message] = []

    async with TestClient(app_taking(Message, handled), partitions=1) as client:
        await client.publish("orders", '{"id": 7}'.encode("utf-16"))
        await client.drain()

    assert [m.value for m in handled] == ['{"id": 7}'.encode("utf-16")]


@pytest.mark.kafka
async def test_json_that_is_not_utf8_is_dead_lettered_by_a_running_app(
    app_env: dict[str, str], bootstrap: str, unique: str, producer: AIOKafkaProducer, tmp_path: Path
) -> None:
    topic, dlq = f"{unique}-orders", f"{unique}-dead"
    await create_topic(bootstrap, topic, 1)
    await create_topic(bootstrap, dlq, 1)
    for value in (
        '{"n": 0}'.encode("utf-16"),
        codecs.BOM_UTF8 + b'{"n": 1}',
        b'{"n": 2}',
    ):
        await producer.send_and_wait(topic, value, key=b"k")
    out = tmp_path / "handled.txt"
    env = {**app_env, "RECORDER_TOPICS": topic, "RECORDER_OUT": str(out), "RECORDER_DLQ": dlq}

    with AppProcess("tests.apps.kafka_dict_recorder:app", env=env) as app:
        wait_until(lambda: len(handled(out)) >= 2, WAIT, "2 handled records")
        [letter] = await dead_letters(bootstrap, dlq)
        await wait_for_commit(bootstrap, topic, 3)
        assert app.stop(signal.SIGTERM) == 0

    assert handled(out) == [1, 2]
    assert letter.value == '{"n": 0}'.encode("utf-16")
    ours = dict(letter.headers)
    assert ours["taskflow-original-offset"] == b"0"
    assert ours["taskflow-exception-message"] == (
        f"payload of {topic}[0]@0 is UTF-16 text; JSON payloads must be UTF-8".encode()
    )
