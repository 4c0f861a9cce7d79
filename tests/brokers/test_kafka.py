"""The Kafka adapter: URL parsing, option routing and typing, then the real broker behind the seam.

The first half needs no broker. The tests marked ``kafka`` talk to the session's Tansu broker (or
the cluster named by TASKFLOW_TEST_KAFKA) through `KafkaBroker` and `KafkaConsumer` directly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from taskflow import App
from taskflow.brokers import broker_from_url
from taskflow.brokers import kafka as kafka_module
from taskflow.brokers.base import ConsumerOptions
from taskflow.brokers.kafka import (
    KafkaBroker,
    KafkaConsumer,
    kafka_options_from_env,
    parse_bootstrap,
    split_options,
)
from taskflow.config import Settings
from taskflow.exceptions import BrokerError, CommitError, ConfigurationError
from taskflow.message import Message, TopicPartition
from taskflow.runner import resolve_broker
from tests._tansu import TansuBroker, _free_port, committed_offsets, create_topic

# Tansu refuses idempotent producers, and notices group changes only after the session timeout.
TEST_OPTIONS = {
    "enable_idempotence": False,
    "session_timeout_ms": 2000,
    "heartbeat_interval_ms": 300,
}
WAIT = 20.0  # seconds: the bound of every wait on the broker


# -- parse_bootstrap ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "servers"),
    [
        ("kafka://broker:9092", ["broker:9092"]),
        ("kafka://b1:9092,b2:9093", ["b1:9092", "b2:9093"]),
        ("kafka://b1:9092, b2:9093/", ["b1:9092", "b2:9093"]),
        ("KAFKA://10.0.0.1:1", ["10.0.0.1:1"]),
        ("kafka://[::1]:9092,[fe80::2]:65535", ["[::1]:9092", "[fe80::2]:65535"]),
    ],
)
def test_parse_bootstrap_accepts_host_port_lists(url: str, servers: list[str]) -> None:
    assert parse_bootstrap(url) == servers


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("kafka://", "no Kafka servers"),
        ("kafka://,", "no Kafka servers"),
        ("kafka://broker", "'broker' in 'kafka://broker' is not host:port"),
        ("kafka://broker:0", "is not host:port with a valid port"),
        ("kafka://broker:65536", "is not host:port with a valid port"),
        ("kafka://broker:http", "is not host:port with a valid port"),
        ("kafka://broker:١٢٣", "is not host:port with a valid port"),
        ("kafka://:9092", "is not host:port with a valid port"),
        ("kafka://broker:9092:9093", "is not host:port with a valid port"),
        ("kafka://b1:9092,b2", "'b2' in"),
        ("kafka://broker:9092/topic", "kafka://host:port[,host:port…]"),
        ("kafka://broker:9092?acks=all", "pass options with App(broker_options=...)"),
        ("kafka://broker:9092#x", "kafka://host:port[,host:port…]"),
        ("http://broker:9092", "kafka://host:port[,host:port…]"),
        ("kafka://[::1:9092", "Invalid IPv6 URL"),
    ],
)
def test_parse_bootstrap_refuses_what_is_not_a_server_list(url: str, complaint: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_bootstrap(url)
    assert complaint in str(caught.value)


def test_parse_bootstrap_refuses_credentials_without_echoing_them() -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_bootstrap("kafka://billing:s3cret@broker:9092")
    assert "sasl_plain_username" in str(caught.value)
    assert "s3cret" not in str(caught.value)


# -- options routing ------------------------------------------------------------------------


def test_a_consumer_only_option_goes_to_the_consumers_only() -> None:
    options = {"session_timeout_ms": 2000, "isolation_level": "read_committed"}
    consumer, producer = split_options(options)
    assert consumer == options
    assert "session_timeout_ms" not in producer
    assert "isolation_level" not in producer


def test_a_producer_only_option_goes_to_the_producer_only() -> None:
    consumer, producer = split_options({"linger_ms": 5, "compression_type": "gzip"})
    assert consumer == {}
    assert producer["linger_ms"] == 5
    assert producer["compression_type"] == "gzip"


def test_an_option_both_clients_take_goes_to_both() -> None:
    options = {"security_protocol": "SASL_SSL", "client_id": "billing", "request_timeout_ms": 9}
    consumer, producer = split_options(options)
    assert consumer == options
    assert {name: producer[name] for name in options} == options


def test_the_producer_is_idempotent_with_acks_all_unless_told_otherwise() -> None:
    _, producer = split_options({})
    assert producer == {"acks": "all", "enable_idempotence": True}
    _, producer = split_options({"enable_idempotence": False})
    assert producer == {"acks": "all", "enable_idempotence": False}


@pytest.mark.parametrize(
    ("option", "reason"),
    [
        ("group_id", "pass group= to @app.consume"),
        ("enable_auto_commit", "taskflow commits explicitly"),
        ("bootstrap_servers", "give the servers in the URL"),
        ("value_deserializer", "decodes payloads from the handler's annotation"),
        ("max_poll_records", "max_buffered= on @app.consume"),
    ],
)
def test_a_reserved_option_is_refused_with_the_reason(option: str, reason: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        split_options({option: "x"})
    assert f"Kafka option {option!r} is set by taskflow: " in str(caught.value)
    assert reason in str(caught.value)


@pytest.mark.parametrize(
    ("option", "hint"),
    [
        ("sesion_timeout_ms", "did you mean 'session_timeout_ms'?"),
        ("security_protocols", "did you mean 'security_protocol'?"),
        ("ssl_ca_file", "did you mean 'ssl_cafile'?"),
        ("bogus", "see the aiokafka client options"),
    ],
)
def test_an_unknown_option_is_refused_with_a_suggestion(option: str, hint: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        split_options({option: 1})
    assert str(caught.value) == f"unknown Kafka option {option!r}; {hint}"


@pytest.mark.parametrize(
    ("option", "value", "choices"),
    [
        ("isolation_level", "dirty", "read_uncommitted, read_committed"),
        ("auto_offset_reset", "smallest", "earliest, latest, none"),
    ],
)
def test_a_consumer_option_aiokafka_checks_late_is_checked_at_once(
    option: str, value: str, choices: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        App("billing", broker="kafka://broker:9092", broker_options={option: value})
    assert str(caught.value) == f"Kafka option {option!r} is one of {choices}, got {value!r}"


def test_ssl_files_become_an_ssl_context_for_both_clients() -> None:
    with pytest.raises(ConfigurationError) as caught:
        split_options({"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.pem"})
    assert "cannot build the Kafka SSL context" in str(caught.value)


def test_the_consumer_settings_are_taskflows_over_the_users() -> None:
    broker = KafkaBroker(["b:9092"], {"client_id": "svc", "session_timeout_ms": 2000})
    made = broker.consumer(
        ["orders"], group="billing", listener=Listener(), options=ConsumerOptions(max_records=7)
    )
    assert made.settings == {
        "client_id": "svc",
        "session_timeout_ms": 2000,
        "group_id": "billing",
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": 7,
    }


def test_auto_offset_reset_from_broker_options_is_kept() -> None:
    broker = KafkaBroker(["b:9092"], {"auto_offset_reset": "latest"})
    made = broker.consumer(["t"], group="g", listener=Listener(), options=ConsumerOptions())
    assert made.settings["auto_offset_reset"] == "latest"


def test_extra_consumer_options_are_checked() -> None:
    broker = KafkaBroker(["b:9092"])
    for extra, refusal in (
        ({"group_id": "x"}, "consumer option 'group_id' is set by taskflow"),
        ({"linger_ms": 5}, "'linger_ms' is not a Kafka consumer option"),
    ):
        with pytest.raises(ConfigurationError, match=refusal):
            broker.consumer(
                ["t"], group="g", listener=Listener(), options=ConsumerOptions(extra=extra)
            )


def test_a_registrations_options_win_over_the_brokers_for_its_consumer() -> None:
    broker = KafkaBroker(
        ["b:9092"], {"auto_offset_reset": "latest", "isolation_level": "read_uncommitted"}
    )
    options = ConsumerOptions(
        auto_offset_reset="earliest",
        extra={"isolation_level": "read_committed", "max_partition_fetch_bytes": 65536},
        group_instance_id="pod-a.on_order",
    )

    made = broker.consumer(["t"], group="g", listener=Listener(), options=options)
    plain = broker.consumer(["t"], group="g", listener=Listener(), options=ConsumerOptions())

    assert made.settings["auto_offset_reset"] == "earliest"
    assert made.settings["isolation_level"] == "read_committed"
    assert made.settings["max_partition_fetch_bytes"] == 65536
    assert made.settings["group_instance_id"] == "pod-a.on_order"
    assert plain.settings["auto_offset_reset"] == "latest"
    assert plain.settings["isolation_level"] == "read_uncommitted"
    assert "group_instance_id" not in plain.settings


def test_a_registrations_session_timeout_is_checked_against_the_brokers_heartbeat() -> None:
    broker = KafkaBroker(["b:9092"], {"heartbeat_interval_ms": 3000})
    options = ConsumerOptions(extra={"session_timeout_ms": 2000})

    with pytest.raises(ConfigurationError, match="must be lower than 'session_timeout_ms'"):
        broker.consumer(["t"], group="g", listener=Listener(), options=options)


def test_a_group_instance_id_in_the_broker_options_is_refused_with_the_way_to_set_it() -> None:
    with pytest.raises(ConfigurationError) as caught:
        split_options({"group_instance_id": "pod-a"})

    assert str(caught.value) == (
        "Kafka option 'group_instance_id' is set by taskflow: give the replica's identity with "
        "App(instance_id=...), TASKFLOW_INSTANCE_ID or --instance-id, and taskflow makes one "
        "per consumer"
    )


# -- options from the environment -----------------------------------------------------------


def test_environment_options_are_typed_like_the_aiokafka_defaults() -> None:
    options = kafka_options_from_env(
        {
            "TASKFLOW_KAFKA_SESSION_TIMEOUT_MS": "2000",
            "TASKFLOW_KAFKA_ENABLE_IDEMPOTENCE": "false",
            "TASKFLOW_KAFKA_CHECK_CRCS": "Yes",
            "TASKFLOW_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "TASKFLOW_KAFKA_SASL_PLAIN_USERNAME": "billing",
            "TASKFLOW_KAFKA_REBALANCE_TIMEOUT_MS": "5000",
            "TASKFLOW_KAFKA_ACKS": "1",
            "TASKFLOW_KAFKA_": "ignored",
            "TASKFLOW_BROKER": "ignored",
            "PATH": "/bin",
        }
    )
    assert options == {
        "session_timeout_ms": 2000,
        "enable_idempotence": False,
        "check_crcs": True,
        "security_protocol": "SASL_SSL",
        "sasl_plain_username": "billing",
        "rebalance_timeout_ms": 5000,
        "acks": 1,
    }
    assert kafka_options_from_env({"TASKFLOW_KAFKA_ACKS": "all"}) == {"acks": "all"}


@pytest.mark.parametrize(
    ("raw", "value"), [("on", True), ("OFF", False), (" yes ", True), ("0", False)]
)
def test_a_true_or_false_option_reads_as_taskflow_idempotent_does(raw: str, value: bool) -> None:
    from_kafka = kafka_options_from_env({"TASKFLOW_KAFKA_CHECK_CRCS": raw})["check_crcs"]
    from_idempotent = Settings.resolve({}, {"TASKFLOW_IDEMPOTENT": raw}).idempotent

    assert from_kafka is from_idempotent is value


@pytest.mark.parametrize(
    ("variable", "raw", "complaint"),
    [
        (
            "TASKFLOW_KAFKA_SESSION_TIMEOUT_MS",
            "2s",
            "must be an integer from 1000 to 1800000 (milliseconds), got '2s'",
        ),
        (
            "TASKFLOW_KAFKA_REBALANCE_TIMEOUT_MS",
            "soon",
            "must be an integer from 1 to 2147483647 (milliseconds), got 'soon'",
        ),
        ("TASKFLOW_KAFKA_ENABLE_IDEMPOTENCE", "maybe", "must be true or false, got 'maybe'"),
        ("TASKFLOW_KAFKA_ACKS", "most", "must be all, 0, 1 or -1, got 'most'"),
        ("TASKFLOW_KAFKA_SSL_CONTEXT", "/etc/ssl", "pass it in App(broker_options=...)"),
    ],
)
def test_a_badly_typed_environment_option_names_its_variable(
    variable: str, raw: str, complaint: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        kafka_options_from_env({variable: raw})
    assert str(caught.value).startswith(variable)
    assert complaint in str(caught.value)


def test_environment_options_win_over_the_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKFLOW_KAFKA_CLIENT_ID", "from-env")
    monkeypatch.setenv("TASKFLOW_KAFKA_LINGER_MS", "7")
    app = App("billing", broker="kafka://b:9092", broker_options={"client_id": "code", "acks": 1})

    broker = resolve_broker(app)

    assert isinstance(broker, KafkaBroker)
    assert broker.consumer_options == {"client_id": "from-env"}
    assert broker.producer_options["client_id"] == "from-env"
    assert broker.producer_options["linger_ms"] == 7
    assert broker.producer_options["acks"] == 1  # what the environment does not set stays


def test_from_url_takes_the_options_as_given_and_reads_no_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKFLOW_KAFKA_CLIENT_ID", "from-env")
    monkeypatch.setenv("TASKFLOW_KAFKA_LINGER", "5")  # no such option: would be refused if read

    broker = KafkaBroker.from_url("kafka://b:9092", {"client_id": "from-code"})

    assert broker.consumer_options == {"client_id": "from-code"}
    built = broker_from_url("kafka://b:9092")
    assert isinstance(built, KafkaBroker)
    assert built.consumer_options == {}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"TASKFLOW_KAFKA_LINGER": "5"},
            "TASKFLOW_KAFKA_LINGER: unknown Kafka option 'linger'; did you mean 'linger_ms'?",
        ),
        (
            {"TASKFLOW_KAFKA_GROUP_ID": "other"},
            "TASKFLOW_KAFKA_GROUP_ID: Kafka option 'group_id' is set by taskflow",
        ),
        (
            {"TASKFLOW_KAFKA_AUTO_OFFSET_RESET": "oldest"},
            "TASKFLOW_KAFKA_AUTO_OFFSET_RESET: Kafka option 'auto_offset_reset' is one of",
        ),
        (
            {"TASKFLOW_KAFKA_HEARTBEAT_INTERVAL_MS": "9000"},
            "TASKFLOW_KAFKA_HEARTBEAT_INTERVAL_MS: Kafka option 'heartbeat_interval_ms' (9000)",
        ),
        (
            {"TASKFLOW_KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"},
            "TASKFLOW_KAFKA_SSL_CAFILE: cannot build the Kafka SSL context",
        ),
    ],
)
@pytest.mark.parametrize("broker_from", ["code", "env"])
def test_a_bad_environment_option_names_its_variable_not_the_broker(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str, broker_from: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code: dict[str, Any] = {"broker_options": {"session_timeout_ms": 6000}}
    if broker_from == "env":
        monkeypatch.setenv("TASKFLOW_BROKER", "kafka://b:9092")
    else:
        code["broker"] = "kafka://b:9092"

    with pytest.raises(ConfigurationError) as caught:
        App("billing", **code)

    assert str(caught.value).startswith(message)


def test_a_bad_option_from_code_is_not_blamed_on_a_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TASKFLOW_BROKER", "kafka://b:9092")
    monkeypatch.setenv("TASKFLOW_KAFKA_CLIENT_ID", "ops")

    with pytest.raises(ConfigurationError) as caught:
        App("billing", broker_options={"linger": 5})

    assert str(caught.value).startswith("unknown Kafka option 'linger'")


def test_the_app_refuses_a_bad_broker_option_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="unknown Kafka option 'bogus'"):
        App("billing", broker="kafka://broker:9092", broker_options={"bogus": 1})
    with pytest.raises(ConfigurationError, match="'group_id' is set by taskflow"):
        App("billing", broker="kafka://broker:9092", broker_options={"group_id": "x"})
    with pytest.raises(ConfigurationError, match="no Kafka servers"):
        App("billing", broker="kafka://")


def test_the_url_names_the_servers() -> None:
    assert KafkaBroker.from_url("kafka://b1:9092,b2:9092").url == "kafka://b1:9092,b2:9092"


# -- against the real broker ----------------------------------------------------------------


class Listener:
    """A rebalance listener that records what it is told and lets a test wait for it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, frozenset[TopicPartition]]] = []
        self.changed = asyncio.Event()

    async def on_partitions_revoked(self, revoked: frozenset[TopicPartition]) -> None:
        self.events.append(("revoked", revoked))
        self.changed.set()

    async def on_partitions_assigned(self, assigned: frozenset[TopicPartition]) -> None:
        self.events.append(("assigned", assigned))
        self.changed.set()


@pytest.fixture
async def kafka(bootstrap: str) -> AsyncIterator[KafkaBroker]:
    broker = KafkaBroker([bootstrap], TEST_OPTIONS)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.close()


@pytest.fixture
def closed_port() -> str:
    """``host:port`` where nothing listens."""
    return f"127.0.0.1:{_free_port()}"


async def started_consumer(
    kafka: KafkaBroker, topic: str, group: str, listener: Listener
) -> KafkaConsumer:
    consumer = kafka.consumer([topic], group=group, listener=listener, options=ConsumerOptions())
    await consumer.start()
    return consumer


async def fetch(
    consumer: KafkaConsumer, count: int, timeout: float = WAIT
) -> dict[TopicPartition, list[Message]]:
    """Fetch until `count` records came (the group is joined by polling, so this also joins)."""
    got: dict[TopicPartition, list[Message]] = {}
    async with asyncio.timeout(timeout):
        while sum(map(len, got.values())) < count:
            for tp, records in (await consumer.getmany(0.2)).items():
                got.setdefault(tp, []).extend(records)
    return got


async def assigned(consumer: KafkaConsumer) -> frozenset[TopicPartition]:
    """Poll until the group has given this member its partitions."""
    async with asyncio.timeout(WAIT):
        while not consumer.assignment():
            await consumer.getmany(0.1)
    return consumer.assignment()


@pytest.mark.kafka
async def test_publish_returns_where_the_record_went(kafka: KafkaBroker, topic: str) -> None:
    first = await kafka.publish(topic, b"one", key=b"k")
    second = await kafka.publish(topic, b"two", key=b"k")
    assert first[0] == second[0]
    assert first[0].topic == topic
    assert second[1] == first[1] + 1


@pytest.mark.kafka
async def test_a_group_member_receives_taskflow_messages(
    kafka: KafkaBroker, topic: str, unique: str
) -> None:
    keys = {b"a": b"k1", b"b": b"k2", b"c": b"k1", b"d": b"k3", b"e": b"k4", b"f": b"k2"}
    before = int(time.time() * 1000)
    sent = {
        value: await kafka.publish(topic, value, key=key, headers=(("trace", value), ("n", b"")))
        for value, key in keys.items()
    }
    after = int(time.time() * 1000)
    listener = Listener()
    consumer = await started_consumer(kafka, topic, f"{unique}-g", listener)
    try:
        got = await fetch(consumer, len(sent))
        messages = [m for records in got.values() for m in records]
        assert sorted(m.value for m in messages) == sorted(sent)
        for message in messages:
            tp, offset = sent[message.value]
            assert isinstance(message, Message)
            assert (message.topic, message.partition, message.offset) == (*tp, offset)
            assert message.key == keys[message.value]
            assert message.headers == (("trace", message.value), ("n", b""))
            assert before - 1000 <= message.timestamp_ms <= after + 1000
        for tp, records in got.items():
            assert [m.offset for m in records] == sorted(m.offset for m in records)
            assert all(m.topic_partition == tp for m in records)
        assert listener.events == [("assigned", consumer.assignment())]
    finally:
        await consumer.stop()


@pytest.mark.kafka
async def test_a_tombstone_arrives_with_value_none_and_a_null_header_as_empty_bytes(
    kafka: KafkaBroker, topic: str, unique: str, producer: AIOKafkaProducer
) -> None:
    await producer.send_and_wait(topic, None, key=b"gone", partition=0, headers=[("h", None)])
    consumer = await started_consumer(kafka, topic, f"{unique}-g", Listener())
    try:
        [[message]] = (await fetch(consumer, 1)).values()
        assert (message.key, message.value, message.headers) == (b"gone", None, (("h", b""),))
    finally:
        await consumer.stop()


@pytest.mark.kafka
async def test_committed_offsets_are_seen_by_others_and_in_offsets(
    kafka: KafkaBroker, bootstrap: str, topic: str, unique: str, producer: AIOKafkaProducer
) -> None:
    for partition, count in enumerate([3, 1, 0, 2]):
        for n in range(count):
            await producer.send_and_wait(topic, b"%d" % n, partition=partition)
    group = f"{unique}-g"
    consumer = await started_consumer(kafka, topic, group, Listener())
    try:
        await fetch(consumer, 6)
        tp = [TopicPartition(topic, p) for p in range(4)]
        await consumer.commit({tp[0]: 3, tp[1]: 1, tp[3]: 1})
        assert await committed_offsets(bootstrap, group, topic, 4) == {0: 3, 1: 1, 2: None, 3: 1}
        offsets = await consumer.offsets()
        assert {t: (f.committed, f.high_watermark) for t, f in offsets.items()} == {
            tp[0]: (3, 3),
            tp[1]: (1, 1),
            tp[2]: (None, 0),
            tp[3]: (1, 2),
        }
    finally:
        await consumer.stop()


@pytest.mark.kafka
async def test_a_commit_for_a_partition_not_assigned_is_a_commit_error(
    kafka: KafkaBroker, topic: str, unique: str
) -> None:
    consumer = await started_consumer(kafka, topic, f"{unique}-g", Listener())
    try:
        await assigned(consumer)
        with pytest.raises(CommitError):
            await consumer.commit({TopicPartition(f"{topic}-other", 0): 1})
    finally:
        await consumer.stop()


@pytest.mark.kafka
async def test_pause_holds_a_partition_back_until_resume(
    kafka: KafkaBroker, topic: str, unique: str, producer: AIOKafkaProducer
) -> None:
    consumer = await started_consumer(kafka, topic, f"{unique}-g", Listener())
    try:
        await assigned(consumer)
        held, free = TopicPartition(topic, 1), TopicPartition(topic, 2)
        consumer.pause([held])
        await producer.send_and_wait(topic, b"held", partition=1)
        await producer.send_and_wait(topic, b"free", partition=2)
        got = await fetch(consumer, 1)
        assert {tp: [m.value for m in ms] for tp, ms in got.items()} == {free: [b"free"]}
        consumer.resume([held])
        got = await fetch(consumer, 1)
        assert {tp: [m.value for m in ms] for tp, ms in got.items()} == {held: [b"held"]}
    finally:
        await consumer.stop()


@pytest.mark.kafka
async def test_assignment_follows_the_group(kafka: KafkaBroker, topic: str, unique: str) -> None:
    listener = Listener()
    consumer = kafka.consumer(
        [topic], group=f"{unique}-g", listener=listener, options=ConsumerOptions()
    )
    assert consumer.assignment() == frozenset()
    await consumer.start()
    try:
        everything = frozenset(TopicPartition(topic, p) for p in range(4))
        assert await assigned(consumer) == everything
        assert listener.events == [("assigned", everything)]
        assert set(await consumer.offsets()) == everything
    finally:
        await consumer.stop()
    assert consumer.assignment() == frozenset()
    await consumer.stop()  # twice is fine


@pytest.mark.kafka
async def test_an_unreachable_broker_is_a_broker_error_at_start(closed_port: str) -> None:
    broker = KafkaBroker([closed_port], TEST_OPTIONS)
    with pytest.raises(BrokerError) as caught:
        await broker.start()
    assert str(caught.value).startswith(f"cannot reach Kafka at kafka://{closed_port}: ")
    consumer = broker.consumer(["t"], group="g", listener=Listener(), options=ConsumerOptions())
    with pytest.raises(BrokerError) as caught:
        await consumer.start()
    assert str(caught.value).startswith(f"cannot reach Kafka at {closed_port}: ")
    with pytest.raises(BrokerError, match="not started"):
        await consumer.getmany(0)


@pytest.mark.kafka
@pytest.mark.parametrize(
    ("option", "value", "complaint"),
    [
        ("security_protocol", "BOGUS", "security_protocol"),
        ("acks", 2, "ACKS"),
        ("compression_type", "brotli", "compression type"),
    ],
)
async def test_a_bad_option_value_is_refused_at_start(
    bootstrap: str, option: str, value: object, complaint: str
) -> None:
    broker = KafkaBroker([bootstrap], {**TEST_OPTIONS, option: value})
    try:
        with pytest.raises(ConfigurationError) as caught:
            await broker.start()
    finally:
        await broker.close()  # only does something when start wrongly succeeded
    assert str(caught.value).startswith("invalid Kafka option for AIOKafka")
    assert complaint in str(caught.value)


@pytest.mark.kafka
async def test_a_broker_refusing_idempotence_says_what_to_set(
    tansu: TansuBroker | None, bootstrap: str
) -> None:
    if tansu is None:
        pytest.skip("a real Kafka cluster accepts idempotent producers")
    broker = KafkaBroker([bootstrap], {})
    with pytest.raises(BrokerError) as caught:
        await broker.start()
    assert "refused to start the producer" in str(caught.value)
    assert "enable_idempotence=False" in str(caught.value)


@pytest.mark.kafka
async def test_with_the_broker_gone_offsets_answer_and_stop_lets_go(
    tansu: TansuBroker | None, unique: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if tansu is None:
        pytest.skip("TASKFLOW_TEST_KAFKA names an external cluster, which a test cannot stop")
    monkeypatch.setattr(kafka_module, "FACTS_TIMEOUT", 0.5)
    with TansuBroker() as own:
        await create_topic(own.bootstrap, f"{unique}-events", 2)
        broker = KafkaBroker([own.bootstrap], TEST_OPTIONS)
        consumer = await started_consumer(broker, f"{unique}-events", f"{unique}-g", Listener())
        try:
            partitions = await assigned(consumer)
            await consumer.getmany(1.0)  # the fetcher is now long-polling the broker
        finally:
            own.stop(graceful=False)
        async with asyncio.timeout(WAIT):
            offsets = await consumer.offsets()  # aiokafka alone would wait for the broker forever
        assert {tp: f.committed for tp, f in offsets.items()} == dict.fromkeys(partitions)
        with pytest.raises(BrokerError) as caught:  # aiokafka's stop() trips over its fetches
            async with asyncio.timeout(WAIT):
                await consumer.stop()
        assert str(caught.value) == f"Kafka at {own.bootstrap} is unreachable"
    # Its connections are closed even so: nothing of aiokafka's keeps running (and logging).
    left = [t for t in asyncio.all_tasks() if "aiokafka" in repr(t.get_coro())]
    assert left == []
