"""Kafka through aiokafka: `kafka://host:port[,host:port…]`.

One shared producer publishes (acks=all, idempotent) for the whole app; each consumer registration
gets its own aiokafka consumer with auto-commit off, committing explicit per-partition offsets.

Connection options (security protocol, SASL, SSL, client id, or any other aiokafka consumer or
producer option) come from ``App(broker_options={...})`` and from ``TASKFLOW_KAFKA_<OPTION>``
environment variables; `taskflow.config` decides which wins, and this module only types the
variables' text (`kafka_options_from_env`) and takes the options in effect. Each option goes to
the client(s) whose constructor takes it; an option neither takes is refused with a clear error
before start, naming its variable when one gave it. A bad value is refused before start where
taskflow can tell, else when the client is built.

A record with a null value (a tombstone) reaches handlers with ``Message.value`` None, and
``app.publish(topic, None, key=...)`` writes one; a null header value reaches them as ``b""``.
A registration's own ``consumer_options`` (`check_consumer_options`) and ``start=`` win over the
options above for its consumer; an App's ``instance_id`` gives each consumer a static membership.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import inspect
import logging
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka import TopicPartition as KafkaTopicPartition
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    ConsumerStoppedError,
    CorruptRecordException,
    InvalidTopicError,
    KafkaConnectionError,
    KafkaError,
    MessageSizeTooLargeError,
    PolicyViolationError,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
    UnsupportedForMessageFormatError,
)
from aiokafka.helpers import create_ssl_context

from taskflow.brokers.base import (
    DEFAULT_MAX_REQUEST_SIZE,
    DEFAULT_START,
    ConsumerOptions,
    Delivery,
    FetchPosition,
    PartitionOffsets,
    RebalanceListener,
)
from taskflow.config import KAFKA_PREFIX, flag_text, quoted, shown_value, whole_number_text
from taskflow.exceptions import (
    BrokerError,
    CommitError,
    ConfigurationError,
    PublishError,
    RecordRefused,
    RecordTooLarge,
    StateError,
)
from taskflow.message import Headers, Message, TopicPartition

__all__ = [
    "GroupReader",
    "KafkaBroker",
    "KafkaConsumer",
    "check_consumer_options",
    "kafka_options_from_env",
    "kafka_variables",
]

logger = logging.getLogger(__name__)

FACTS_TIMEOUT = 5.0  # for committed offsets, which aiokafka waits for while the broker is down
STOP_TIMEOUT = 2.0  # for stopping a client whose start failed or was cancelled
_READ_WAIT_MS = 500  # how long one fetch of `KafkaBroker.read_topic` waits for records
_READ_STALLED = 60  # fetches in a row that bring nothing before `read_topic` gives up (~30 s)
# Set by taskflow itself: a user value would break its delivery guarantees or its decoding.
_RESERVED = {
    "bootstrap_servers": "give the servers in the URL: kafka://host:port,host:port",
    "group_id": "pass group= to @app.consume",
    "enable_auto_commit": "taskflow commits explicitly, after each message is finished",
    "key_deserializer": "taskflow decodes payloads from the handler's annotation",
    "value_deserializer": "taskflow decodes payloads from the handler's annotation",
    "key_serializer": "taskflow encodes values in app.publish",
    "value_serializer": "taskflow encodes values in app.publish",
    "loop": "aiokafka uses the running loop",
    "topics": "pass topics to @app.consume",
    "max_poll_records": (
        "bound what is fetched ahead with max_buffered= on @app.consume, or in bytes with "
        "App(buffer_bytes=...)"
    ),
    "group_instance_id": (
        "give the replica's identity with App(instance_id=...), TASKFLOW_INSTANCE_ID or "
        "--instance-id, and taskflow makes one per consumer"
    ),
}
# Set per registration by an argument of its own rather than through consumer_options.
_REGISTRATION_RESERVED = {
    "auto_offset_reset": "pass start='earliest' or 'latest' to @app.consume",
}
_SSL_FILES = ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password")
_CONSUMER_PARAMS = set(inspect.signature(AIOKafkaConsumer.__init__).parameters) - {"self"}
_PRODUCER_PARAMS = set(inspect.signature(AIOKafkaProducer.__init__).parameters) - {"self"}
_PRODUCER_DEFAULTS = {"acks": "all", "enable_idempotence": True}
# What a producer or broker says of a record it will never accept; anything else may pass.
_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError, RecordTooLargeError)
_REFUSED = (
    TopicAuthorizationFailedError,
    ClusterAuthorizationFailedError,
    InvalidTopicError,
    CorruptRecordException,
    UnsupportedForMessageFormatError,
    PolicyViolationError,
)
# Options whose aiokafka default (None) does not tell their type; `acks` has its own parser.
_ENV_TYPES: dict[str, Any] = {"rebalance_timeout_ms": 0}
# Values aiokafka checks only when a consumer starts (in each worker): checked here instead.
_CHOICES = {
    "auto_offset_reset": ("earliest", "latest", "none"),
    "isolation_level": ("read_uncommitted", "read_committed"),
}
_KINDS = {bool: "true or false", int: "an integer", float: "a number"}
# Every whole-number option (its aiokafka default is an int) runs from 0, or 1 when its default is
# positive, to the largest value Kafka's protocol carries; these are narrower, or start at 0.
_INT32_MAX = 2**31 - 1
_PARTITION_FETCH_BYTES = 1_048_576  # aiokafka's default max_partition_fetch_bytes
_RANGES: dict[str, tuple[int, int]] = {
    # Kafka brokers refuse sessions outside group.min/max.session.timeout.ms (6 s to 30 min by
    # default, often lowered for tests); under 1 s no heartbeat keeps a member in its group.
    "session_timeout_ms": (1000, 1_800_000),
    "rebalance_timeout_ms": (1, _INT32_MAX),  # its default, None, says "session_timeout_ms"
    "fetch_max_wait_ms": (0, _INT32_MAX),
    "fetch_min_bytes": (0, _INT32_MAX),
    "retry_backoff_ms": (0, _INT32_MAX),
}
# Objects, not text: they can only be given in code.
_NOT_FROM_ENV = (
    "ssl_context",
    "partitioner",
    "partition_assignment_strategy",
    "sasl_oauth_token_provider",
)


def parse_bootstrap(url: str) -> list[str]:
    """The ``host:port`` list of a ``kafka://`` URL.

    Raises:
        ConfigurationError: when the URL has no servers, a bad port, a path or a query.
    """
    usage = f"a Kafka broker URL is kafka://host:port[,host:port…], got {quoted(url)}"
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # urlsplit's own complaints, e.g. "Invalid IPv6 URL"
        raise ConfigurationError(f"{usage}: {exc}") from exc
    if parts.scheme != "kafka" or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigurationError(
            f"{usage}; pass options with App(broker_options=...) or TASKFLOW_KAFKA_* variables"
        )
    if "@" in parts.netloc:
        # Never echo the URL here: the part before "@" is most likely a password.
        raise ConfigurationError(
            "a Kafka broker URL takes no credentials: give them as broker_options "
            "(sasl_plain_username, sasl_plain_password) or TASKFLOW_KAFKA_SASL_PLAIN_* variables"
        )
    servers = [s.strip() for s in parts.netloc.split(",") if s.strip()]
    if not servers:
        raise ConfigurationError(f"no Kafka servers in {quoted(url)}: use kafka://host:port")
    for server in servers:
        host, sep, port = server.rpartition(":")
        bracketed = host.startswith("[") and host.endswith("]")  # an IPv6 address
        if (
            not sep
            or not host
            or (":" in host and not bracketed)
            or not (port.isascii() and port.isdigit())
            or not 0 < (whole_number_text(port) or 0) < 65536
        ):
            raise ConfigurationError(
                f"{quoted(server)} in {quoted(url)} is not host:port with a valid port"
            )
    return servers


def kafka_options_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """The ``TASKFLOW_KAFKA_<OPTION>`` variables of `environ` as aiokafka options, typed like
    aiokafka's defaults; `taskflow.config.Settings` calls it with the environment it read.

    An empty variable counts as unset, as for every ``TASKFLOW_*`` variable.

    Raises:
        ConfigurationError: for text that is not a value of its option, naming the variable.
    """
    options: dict[str, Any] = {}
    for name, raw in environ.items():
        if name.startswith(KAFKA_PREFIX) and len(name) > len(KAFKA_PREFIX) and raw.strip():
            option = name[len(KAFKA_PREFIX) :].lower()
            options[option] = _typed(option, raw, name)
    return options


def kafka_variables() -> list[str]:
    """The ``TASKFLOW_KAFKA_<OPTION>`` variable of every option aiokafka's clients take."""
    names = (_CONSUMER_PARAMS | _PRODUCER_PARAMS | set(_SSL_FILES)) - {"loop"}
    return sorted(KAFKA_PREFIX + name.upper() for name in names)


def _typed(option: str, raw: str, variable: str) -> Any:
    if option in _NOT_FROM_ENV:
        raise ConfigurationError(
            f"{variable}: {option} is an object, not text; pass it in App(broker_options=...)"
        )
    if option == "acks":
        return _acks(raw, variable)
    default = _ENV_TYPES.get(option, _default_of(option))
    if isinstance(default, bool):
        return flag_text(raw, variable)
    if isinstance(default, int):
        value = whole_number_text(raw)
        low, high = _range(option)
        if value is None or not low <= value <= high:
            raise ConfigurationError(f"{variable} must be {_kind(option)}, got {quoted(raw)}")
        return value
    return raw


def _acks(raw: str, variable: str) -> str | int:
    value = raw.strip().lower()
    if value == "all":
        return "all"
    if value not in ("0", "1", "-1"):
        raise ConfigurationError(f"{variable} must be all, 0, 1 or -1, got {quoted(raw)}")
    return int(value)


def _default_of(option: str) -> Any:
    for cls in (AIOKafkaConsumer, AIOKafkaProducer):
        param = inspect.signature(cls.__init__).parameters.get(option)
        if param is not None and param.default is not inspect.Parameter.empty:
            return param.default
    return None


def _range(option: str) -> tuple[int, int]:
    """The values a whole-number option may take; see `_RANGES`."""
    if option in _RANGES:
        return _RANGES[option]
    default = _ENV_TYPES.get(option, _default_of(option))
    return (1 if default > 0 else 0), _INT32_MAX


def _kind(option: str) -> str:
    low, high = _range(option)
    unit = " (milliseconds)" if option.endswith("_ms") else ""
    return f"an integer from {low} to {high}{unit}"


def _is_whole_number_option(option: str) -> bool:
    default = _ENV_TYPES.get(option, _default_of(option))
    return isinstance(default, int) and not isinstance(default, bool)


def _check_value(name: str, value: Any) -> None:
    """Refuse a value of the wrong type, or a number out of range, for the option `name`."""
    label = f"Kafka option {name!r}"
    if _is_whole_number_option(name):
        low, high = _range(name)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigurationError(f"{label} must be {_kind(name)}, got {shown_value(value)}")
    elif isinstance(_default_of(name), bool) and not isinstance(value, bool):
        raise ConfigurationError(f"{label} is True or False, got {shown_value(value)}")


def _check_heartbeat(consumer: Mapping[str, Any]) -> None:
    session = consumer.get("session_timeout_ms")
    heartbeat = consumer.get("heartbeat_interval_ms")
    if session is not None and heartbeat is not None and heartbeat >= session:
        raise ConfigurationError(
            f"Kafka option 'heartbeat_interval_ms' ({heartbeat}) must be lower than "
            f"'session_timeout_ms' ({session}), typically a third of it"
        )


def split_options(
    options: Mapping[str, Any], variables: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Route each option to the consumer, the producer or both; refuse the unknown and reserved.

    Args:
        options: The aiokafka options in effect.
        variables: The ``TASKFLOW_KAFKA_*`` variable of each option the environment gave.

    Raises:
        ConfigurationError: naming the option and, where one is close, the option meant; led by
            the variable that gave it, if one did.
    """
    variables = variables or {}
    consumer: dict[str, Any] = {}
    producer: dict[str, Any] = dict(_PRODUCER_DEFAULTS)
    options = dict(options)
    ssl_files = {k: options.pop(k) for k in _SSL_FILES if k in options}
    if ssl_files and "ssl_context" not in options:
        with _naming(variables, *ssl_files):
            options["ssl_context"] = _ssl_context(ssl_files)
    for name, value in options.items():
        with _naming(variables, name):
            in_consumer, in_producer = _route(name, value)
        if in_consumer:
            consumer[name] = value
        if in_producer:
            producer[name] = value
    with _naming(variables, "session_timeout_ms", "heartbeat_interval_ms"):
        _check_heartbeat(consumer)
    return consumer, producer


def _route(name: str, value: Any) -> tuple[bool, bool]:
    """Whether the consumer and the producer take the option `name`, its value checked."""
    if name in _RESERVED:
        raise ConfigurationError(f"Kafka option {name!r} is set by taskflow: {_RESERVED[name]}")
    in_consumer, in_producer = name in _CONSUMER_PARAMS, name in _PRODUCER_PARAMS
    if not (in_consumer or in_producer):
        raise ConfigurationError(f"unknown Kafka option {name!r}{_suggestion(name)}")
    if name in _CHOICES and value not in _CHOICES[name]:
        raise ConfigurationError(
            f"Kafka option {name!r} is one of {', '.join(_CHOICES[name])}, got {shown_value(value)}"
        )
    _check_value(name, value)
    return in_consumer, in_producer


@contextmanager
def _naming(variables: Mapping[str, str], *options: str) -> Iterator[None]:
    """Lead an error about `options` with the variables that gave them, if any did."""
    try:
        yield
    except ConfigurationError as exc:
        named = [variables[option] for option in options if option in variables]
        if not named:
            raise
        raise ConfigurationError(f"{', '.join(named)}: {exc}") from exc


def _suggestion(name: str) -> str:
    known = sorted((_CONSUMER_PARAMS | _PRODUCER_PARAMS | set(_SSL_FILES)) - set(_RESERVED))
    close = difflib.get_close_matches(name, known, n=1)
    return f"; did you mean {close[0]!r}?" if close else "; see the aiokafka client options"


def _ssl_context(files: Mapping[str, Any]) -> ssl.SSLContext:
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=files.get("ssl_cafile"),
            certfile=files.get("ssl_certfile"),
            keyfile=files.get("ssl_keyfile"),
            password=files.get("ssl_password"),
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"cannot build the Kafka SSL context: {exc}") from exc
    return context


def check_consumer_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """One registration's ``consumer_options``, checked: aiokafka consumer options that taskflow
    does not set itself, each value of its option's type and range.

    Raises:
        ConfigurationError: naming the option, and the option meant when one is close.
    """
    checked: dict[str, Any] = {}
    for name, value in options.items():
        if name in _RESERVED or name in _REGISTRATION_RESERVED:
            why = _RESERVED.get(name) or _REGISTRATION_RESERVED[name]
            raise ConfigurationError(f"consumer option {name!r} is set by taskflow: {why}")
        if name not in _CONSUMER_PARAMS:
            if name in _PRODUCER_PARAMS or name in _SSL_FILES:
                raise ConfigurationError(
                    f"{name!r} is not a Kafka consumer option: pass it in "
                    "App(broker_options=...), which gives it to the producer"
                )
            close = difflib.get_close_matches(name, sorted(_REGISTRATION_OPTIONS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else "; see AIOKafkaConsumer's options"
            raise ConfigurationError(f"unknown Kafka consumer option {name!r}{hint}")
        _route(name, value)
        checked[name] = value
    _check_heartbeat(checked)
    return checked


_REGISTRATION_OPTIONS = _CONSUMER_PARAMS - set(_RESERVED) - set(_REGISTRATION_RESERVED)


class KafkaBroker:
    """Kafka, through one shared aiokafka producer and an aiokafka consumer per registration.

    Args:
        bootstrap_servers: ``host:port`` strings.
        options: aiokafka options for the consumers and/or the producer (see module docs).
        variables: The ``TASKFLOW_KAFKA_*`` variable of each option the environment gave, named
            by any error about the option.

    Example:
        ```python
        app = App(
            "billing",
            broker="kafka://broker-1:9092,broker-2:9092",
            broker_options={"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                            "sasl_plain_username": "billing", "sasl_plain_password": secret},
        )
        ```
    """

    def __init__(
        self,
        bootstrap_servers: Sequence[str],
        options: Mapping[str, Any] | None = None,
        *,
        variables: Mapping[str, str] | None = None,
    ):
        self.bootstrap_servers = list(bootstrap_servers)
        self.consumer_options, self.producer_options = split_options(options or {}, variables)
        self._producer: AIOKafkaProducer | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        options: Mapping[str, Any] | None = None,
        *,
        variables: Mapping[str, str] | None = None,
    ) -> KafkaBroker:
        """Build from ``kafka://host:port[,…]`` and the options in effect, as given.

        The environment is not read here: `App.settings` already holds the
        ``TASKFLOW_KAFKA_*`` variables over the code's options, and `variables` says which
        variable gave which option, for error messages.
        """
        return cls(parse_bootstrap(url), options, variables=variables)

    @property
    def url(self) -> str:
        return "kafka://" + ",".join(self.bootstrap_servers)

    @property
    def max_request_size(self) -> int:
        """The producer's `max_request_size` option (aiokafka's default: 1048576)."""
        return int(self.producer_options.get("max_request_size", DEFAULT_MAX_REQUEST_SIZE))

    async def start(self) -> None:
        """Start the producer; once started, starting again does nothing."""
        if self._producer is not None:
            return
        producer = _build(AIOKafkaProducer, self.bootstrap_servers, self.producer_options)
        try:
            await producer.start()
        except asyncio.CancelledError:  # a stop during start-up: close what was opened
            await _quietly_stop(producer)
            raise
        except KafkaConnectionError as exc:
            await _quietly_stop(producer)
            raise BrokerError(f"cannot reach Kafka at {self.url}: {exc}") from exc
        except KafkaError as exc:
            await _quietly_stop(producer)
            hint = ""
            if self.producer_options.get("enable_idempotence"):
                hint = (
                    "; if this broker does not support idempotent producers, set "
                    "enable_idempotence=False (TASKFLOW_KAFKA_ENABLE_IDEMPOTENCE=false)"
                )
            raise BrokerError(
                f"Kafka at {self.url} refused to start the producer: "
                f"{type(exc).__name__}: {exc}{hint}"
            ) from exc
        self._producer = producer

    async def close(self) -> None:
        """Send every queued record, wait for the broker's answers, and disconnect."""
        producer, self._producer = self._producer, None
        if producer is not None:
            _end_lingering(producer)
            try:
                await producer.stop()  # flushes what is still being sent
            except KafkaError as exc:
                raise BrokerError(f"flushing the Kafka producer failed: {exc}") from exc

    async def publish(
        self,
        topic: str,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: Headers = (),
        partition: int | None = None,
    ) -> tuple[TopicPartition, int]:
        """Publish one record and wait for the broker's answer; `partition` None: the
        partitioner's choice (by key)."""
        producer = self._producer
        if producer is None:
            raise PublishError("the Kafka producer is not started")
        try:
            meta = await producer.send_and_wait(
                topic, value, key=key, headers=list(headers), partition=partition
            )
        except KafkaError as exc:
            raise _publish_error(topic, exc) from exc
        return TopicPartition(meta.topic, meta.partition), meta.offset

    async def enqueue(
        self, topic: str, value: bytes | None, *, key: bytes | None = None, headers: Headers = ()
    ) -> Delivery:
        """Queue the record in the producer, which sends it in a batch; see `Broker.enqueue`.

        Waits while the producer's buffer is full, and for the topic's metadata when it is not
        known yet.
        """
        producer = self._producer
        if producer is None:
            raise PublishError("the Kafka producer is not started")
        try:
            sent = await producer.send(topic, value, key=key, headers=list(headers))
        except KafkaError as exc:
            raise _publish_error(topic, exc) from exc
        delivery: Delivery = asyncio.get_running_loop().create_future()
        sent.add_done_callback(lambda done: _settle(delivery, topic, done))
        return delivery

    async def read_topic(self, topic: str) -> AsyncIterator[list[Message]]:
        """Every record of `topic`, each partition from its beginning to its end, in fetched runs.

        A partition's end is its high watermark as the first fetch of it reports it: what is
        written after that is not read, so the read ends. No consumer group is joined and nothing
        is committed (a plain consumer, assigned every partition), so reading changes nothing
        any group sees. The broker's options apply, as to the app's consumers (credentials, TLS).

        Raises:
            ConfigurationError: when the topic does not exist.
            BrokerError: when the broker cannot be reached, or stops answering for a partition.
        """
        settings = {**self.consumer_options, "group_id": None, "enable_auto_commit": False}
        settings.pop("group_instance_id", None)
        consumer = _build(AIOKafkaConsumer, self.bootstrap_servers, settings)
        try:
            await consumer.start()
        except KafkaError as exc:
            await _quietly_stop(consumer)
            raise BrokerError(f"cannot reach Kafka at {self.url}: {exc}") from exc
        try:
            partitions = await self._partitions(consumer, topic)
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            async for run in _read_to_ends(consumer, partitions):
                yield run
        finally:
            await consumer.stop()

    async def _partitions(
        self, consumer: AIOKafkaConsumer, topic: str
    ) -> list[KafkaTopicPartition]:
        return await _partitions_of(consumer, topic, self.url)

    def group_reader(self, topic: str, group: str) -> GroupReader:
        """A reader of `topic` from `group`'s committed offsets that commits in `group` without
        joining it; see `GroupReader`. The broker's options apply, as to the app's consumers."""
        settings = {
            "auto_offset_reset": "earliest",
            **self.consumer_options,
            "group_id": group,
            "enable_auto_commit": False,
        }
        settings.pop("group_instance_id", None)
        return GroupReader(self.bootstrap_servers, settings, topic)

    def consumer(
        self,
        topics: Sequence[str],
        *,
        group: str,
        listener: RebalanceListener,
        options: ConsumerOptions,
    ) -> KafkaConsumer:
        return KafkaConsumer(
            self.bootstrap_servers, topics, self.consumer_settings(group, options), listener
        )

    def consumer_settings(self, group: str, options: ConsumerOptions) -> dict[str, Any]:
        """The aiokafka options of one registration's consumer: taskflow's, over the
        registration's (`options.extra`, its ``start=``), over the broker's, over the fetch
        sizes derived from the memory budget.

        Raises:
            ConfigurationError: for a registration's option taskflow does not allow, or a
                heartbeat not below the session timeout once both levels are put together.
        """
        settings: dict[str, Any] = {
            "auto_offset_reset": DEFAULT_START,  # unless the broker's options say otherwise
            **fetch_sizes(options.fetch_bytes),  # unless the user chose them
            **self.consumer_options,
            **check_consumer_options(options.extra),
            "group_id": group,
            "enable_auto_commit": False,
            "max_poll_records": options.max_records,
        }
        if options.auto_offset_reset is not None:
            settings["auto_offset_reset"] = options.auto_offset_reset
        if options.group_instance_id is not None:
            settings["group_instance_id"] = options.group_instance_id
        _check_heartbeat(settings)
        return settings


def _publish_error(topic: str, exc: KafkaError) -> PublishError:
    """What taskflow raises for a record aiokafka could not publish."""
    if isinstance(exc, _TOO_LARGE):
        return RecordTooLarge(f"publishing to {topic!r} failed: {exc}")
    if isinstance(exc, _REFUSED):
        return RecordRefused(f"publishing to {topic!r} failed: {exc}")
    return PublishError(f"publishing to {topic!r} failed: {exc}")


def _settle(delivery: Delivery, topic: str, sent: asyncio.Future[Any]) -> None:
    """End `delivery` as aiokafka's future `sent` ended; its outcome is taken either way."""
    if sent.cancelled():
        delivery.cancel()
        return
    exc = sent.exception()
    if delivery.done():  # given up on by its owner (the broker closed too late)
        return
    if exc is None:
        meta = sent.result()
        delivery.set_result((TopicPartition(meta.topic, meta.partition), meta.offset))
    elif isinstance(exc, KafkaError):
        error = _publish_error(topic, exc)
        error.__cause__ = exc
        delivery.set_exception(error)
    else:
        delivery.set_exception(exc)


def _end_lingering(producer: AIOKafkaProducer) -> None:
    """Make every queued batch ready to send now, rather than after `linger_ms`.

    aiokafka's stop() flushes, but a batch that is not full still waits out its linger time
    first: with a long `linger_ms` the broker's close would run out of time with records queued.
    This closes the open batches and wakes the sender, as the accumulator's `flush_for_commit`
    does before it waits; these are aiokafka internals, so any that is missing is skipped.
    """
    accumulator = getattr(producer, "_message_accumulator", None)
    for batches in getattr(accumulator, "_batches", {}).values():
        for batch in batches:
            with contextlib.suppress(AttributeError):
                batch._builder.close()
    waiter = getattr(accumulator, "_waiter_future", None)
    if isinstance(waiter, asyncio.Future) and not waiter.done():
        waiter.set_result(None)


def fetch_sizes(fetch_bytes: int | None) -> dict[str, int]:
    """aiokafka's fetch sizes for fetches of at most `fetch_bytes` (from the memory budget).

    ``fetch_max_bytes`` bounds one fetch response; ``max_partition_fetch_bytes`` one partition's
    part of it, and stays at aiokafka's default (1 MiB) unless that is more than a fetch. (A
    record larger than either still comes, alone: brokers always return a partition's first
    batch.)
    """
    if fetch_bytes is None:
        return {}
    return {
        "fetch_max_bytes": fetch_bytes,
        "max_partition_fetch_bytes": min(fetch_bytes, _PARTITION_FETCH_BYTES),
    }


def _build(cls: Any, servers: list[str], settings: Mapping[str, Any]) -> Any:
    try:
        return cls(bootstrap_servers=servers, **settings)
    except (TypeError, ValueError, AssertionError, RuntimeError) as exc:
        # RuntimeError: a compression_type whose library is not installed.
        raise ConfigurationError(f"invalid Kafka option for {cls.__name__}: {exc}") from exc


async def _quietly_stop(client: Any) -> None:
    """Stop a client whose start failed or was cancelled, within STOP_TIMEOUT.

    aiokafka marks a client closed as stop() begins, so even a stop cut short by the timeout or
    a second cancellation leaves no "Unclosed" client behind.
    """
    try:
        async with asyncio.timeout(STOP_TIMEOUT):
            await client.stop()
    except Exception:  # already failing: the first error is the one worth reporting
        logger.debug("stopping a failed Kafka client raised", exc_info=True)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Translates aiokafka's rebalance callbacks to taskflow's listener."""

    def __init__(self, listener: RebalanceListener) -> None:
        self.listener = listener

    async def on_partitions_revoked(self, revoked: Collection[KafkaTopicPartition]) -> None:
        if revoked:
            await self.listener.on_partitions_revoked(_ours(revoked))

    async def on_partitions_assigned(self, assigned: Collection[KafkaTopicPartition]) -> None:
        if assigned:
            await self.listener.on_partitions_assigned(_ours(assigned))


class KafkaConsumer:
    """One aiokafka group consumer behind taskflow's Consumer protocol."""

    def __init__(
        self,
        servers: list[str],
        topics: Sequence[str],
        settings: Mapping[str, Any],
        listener: RebalanceListener,
    ) -> None:
        self.servers = servers
        self.topics = tuple(topics)
        self.settings = dict(settings)
        self.listener = _Listener(listener)
        self._consumer: AIOKafkaConsumer | None = None
        self._starting = False

    @property
    def _client(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise BrokerError("the Kafka consumer is not started")
        return self._consumer

    async def start(self) -> None:
        """Join the group; a member already started (or starting) refuses with `StateError`."""
        if self._consumer is not None or self._starting:
            group = self.settings.get("group_id")
            raise StateError(f"this member of group {group} is already started")
        self._starting = True
        try:
            self._consumer = await self._started()
        finally:
            self._starting = False

    async def _started(self) -> AIOKafkaConsumer:
        consumer = _build(AIOKafkaConsumer, self.servers, self.settings)
        consumer.subscribe(topics=list(self.topics), listener=self.listener)
        try:
            await consumer.start()
        except asyncio.CancelledError:  # a stop while it joins: close what was opened
            await _quietly_stop(consumer)
            raise
        except KafkaError as exc:
            await _quietly_stop(consumer)
            raise BrokerError(f"cannot reach Kafka at {','.join(self.servers)}: {exc}") from exc
        except (TypeError, ValueError, AssertionError) as exc:  # options aiokafka checks late
            await _quietly_stop(consumer)
            raise ConfigurationError(f"invalid Kafka consumer option: {exc}") from exc
        return consumer

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        task = asyncio.current_task()
        # Counted before: stop() also runs while this task is being cancelled (the worker leaves
        # the group on its way out), and that earlier cancellation is not one that hit stop().
        cancels = task.cancelling() if task is not None else 0
        try:
            await consumer.stop()
        except asyncio.CancelledError:
            # aiokafka's stop() raises a CancelledError of its own when the broker is gone (its
            # fetcher awaits the fetches it cancelled); only a new cancellation of this task may
            # travel on as one.
            await _close_client(consumer)
            if task is not None and task.cancelling() > cancels:
                raise
            raise BrokerError(f"Kafka at {','.join(self.servers)} is unreachable") from None
        except KafkaError as exc:
            await _close_client(consumer)
            raise BrokerError(f"{type(exc).__name__}: {exc}") from exc

    async def getmany(self, timeout: float) -> Mapping[TopicPartition, Sequence[Message]]:
        try:
            fetched = await self._client.getmany(timeout_ms=int(timeout * 1000))
        except ConsumerStoppedError:  # stopped meanwhile: nothing more comes, as from memory://
            return {}
        except KafkaConnectionError as exc:
            raise BrokerError(f"fetching failed: {exc}") from exc
        except KafkaError as exc:
            raise BrokerError(f"fetching failed: {type(exc).__name__}: {exc}") from exc
        return {
            TopicPartition(tp.topic, tp.partition): _messages(records)
            for tp, records in fetched.items()
        }

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        try:
            await self._client.commit({KafkaTopicPartition(*tp): o for tp, o in offsets.items()})
        except KafkaError as exc:
            raise CommitError(f"{type(exc).__name__}: {exc}") from exc

    def assignment(self) -> frozenset[TopicPartition]:
        if self._consumer is None:
            return frozenset()
        return _ours(self._consumer.assignment())

    def pause(self, partitions: Collection[TopicPartition]) -> None:
        """Pause the assigned ones of `partitions`; the others are no longer this member's."""
        client = self._client
        client.pause(*_assigned(client, partitions))

    def resume(self, partitions: Collection[TopicPartition]) -> None:
        """Resume the assigned ones of `partitions`; the others are no longer this member's."""
        client = self._client
        client.resume(*_assigned(client, partitions))

    async def offsets(self) -> dict[TopicPartition, PartitionOffsets]:
        """Committed offsets come from the broker: unknown (None) when it does not answer in time.

        Partitions revoked while the committed offsets are asked for are left out.
        """
        client = self._client
        assigned = client.assignment()
        committed = await asyncio.gather(*(self._committed(client, tp) for tp in assigned))
        still = client.assignment()
        return {
            TopicPartition(*tp): PartitionOffsets(offset, client.highwater(tp))
            for tp, offset in zip(assigned, committed, strict=True)
            if tp in still
        }

    def positions(self) -> dict[TopicPartition, FetchPosition]:
        """Read from the partition states aiokafka's fetcher keeps (what `highwater()` reads).

        Its public `position()` is a coroutine that may wait for the broker, so the states are
        read directly; a rebalance that replaces them meanwhile gives an empty answer.
        """
        try:
            assignment = self._client._subscription.subscription.assignment
            states = [(tp, assignment.state_value(tp)) for tp in assignment.tps]
        except (AttributeError, BrokerError):  # not started, or no assignment right now
            return {}
        return {
            TopicPartition(*tp): FetchPosition(_position(state), state.highwater)
            for tp, state in states
            if state is not None
        }

    @staticmethod
    async def _committed(client: AIOKafkaConsumer, tp: KafkaTopicPartition) -> int | None:
        # aiokafka's committed() retries for as long as the broker is unreachable.
        try:
            async with asyncio.timeout(FACTS_TIMEOUT):
                offset: int | None = await client.committed(tp)
        except (KafkaError, TimeoutError):
            return None
        return offset


async def _partitions_of(
    consumer: AIOKafkaConsumer, topic: str, url: str
) -> list[KafkaTopicPartition]:
    """Every partition of `topic`, refusing a topic that does not exist."""
    numbers = await _partition_numbers(consumer, topic)
    if not numbers:
        raise ConfigurationError(f"topic {topic!r} does not exist on {url}: check its name")
    return [KafkaTopicPartition(topic, number) for number in sorted(numbers)]


async def _partition_numbers(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    """The partition numbers of `topic` (none when it does not exist), from every topic's
    metadata: naming one topic could create it. Read from the answer itself, since a consumer
    with an assignment keeps only its assigned topics' metadata."""
    cluster = await consumer._client.fetch_all_metadata()
    numbers: set[int] | None = cluster.partitions_for_topic(topic)
    return numbers or set()


class GroupReader:
    """A topic read from a consumer group's committed offsets, committing in the group as it goes,
    without joining it (as a plain consumer, assigned every partition).

    The group is only a place to keep offsets: no member's partitions are taken, so two readers
    of one group at once would both read everything. Offsets may be committed for any partition
    (of the topic read, or of another topic) through `commit`. A second consumer, also of the
    group, answers questions about other topics (`partition_count`, `end_offset`, `scan`), so
    reading one topic and looking at another never disturb each other.
    """

    def __init__(self, servers: list[str], settings: Mapping[str, Any], topic: str) -> None:
        self.servers = servers
        self.topic = topic
        self._reader = _build(AIOKafkaConsumer, servers, settings)
        self._side = _build(AIOKafkaConsumer, servers, settings)
        self._partitions: list[KafkaTopicPartition] = []
        self._counts: dict[str, int | None] = {}

    @property
    def url(self) -> str:
        return "kafka://" + ",".join(self.servers)

    @property
    def partitions(self) -> list[int]:
        """The numbers of the topic's partitions."""
        return [tp.partition for tp in self._partitions]

    async def __aenter__(self) -> GroupReader:
        for consumer in (self._reader, self._side):
            try:
                await consumer.start()
            except KafkaError as exc:
                await self.aclose()
                raise BrokerError(f"cannot reach Kafka at {self.url}: {exc}") from exc
        try:
            self._partitions = await _partitions_of(self._side, self.topic, self.url)
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for consumer in (self._reader, self._side):
            await _quietly_stop(consumer)

    async def committed(self, topic: str, partition: int) -> int | None:
        """The group's committed offset on `topic` `partition`, or None when it has none."""
        try:
            offset: int | None = await self._side.committed(KafkaTopicPartition(topic, partition))
        except KafkaError as exc:
            raise BrokerError(f"reading the committed offsets failed: {exc}") from exc
        return offset if offset is not None and offset >= 0 else None

    async def commit(self, topic: str, partition: int, offset: int) -> None:
        """Commit `offset` on `topic` `partition` in the group."""
        tp = KafkaTopicPartition(topic, partition)
        consumer = self._reader if tp in self._partitions else self._side
        if tp not in consumer.assignment():
            consumer.assign([tp])
        try:
            await consumer.commit({tp: offset})
        except KafkaError as exc:
            raise CommitError(f"committing {topic}[{partition}]@{offset} failed: {exc}") from exc

    async def firsts(self) -> dict[int, Message]:
        """The record at each partition's committed offset, for the partitions that have one and a
        record there (none yet past the partition's end)."""
        starts = {}
        for tp in self._partitions:
            offset = await self.committed(tp.topic, tp.partition)
            if offset is not None:
                starts[tp] = offset
        if not starts:
            return {}
        self._side.assign(list(starts))
        for tp, offset in starts.items():
            self._side.seek(tp, offset)
        try:
            return await _firsts(self._side, starts)
        except KafkaError as exc:
            raise BrokerError(f"reading {self.topic!r} failed: {exc}") from exc

    async def records(self) -> AsyncGenerator[list[Message], None]:
        """The topic's records from the group's committed offsets (the beginning, where it has
        none) to each partition's end as of the read's start, in fetched runs."""
        self._reader.assign(self._partitions)
        try:
            async for run in _read_to_ends(self._reader, self._partitions):
                yield run
        except KafkaError as exc:
            raise BrokerError(f"reading {self.topic!r} failed: {exc}") from exc

    async def partition_count(self, topic: str) -> int | None:
        """How many partitions `topic` has, or None when it does not exist."""
        if topic not in self._counts:
            try:
                numbers = await _partition_numbers(self._side, topic)
            except KafkaError as exc:
                raise BrokerError(f"reading the topics' metadata failed: {exc}") from exc
            self._counts[topic] = len(numbers) if numbers else None
        return self._counts[topic]

    async def end_offset(self, topic: str, partition: int) -> int:
        """The offset the next record of `topic` `partition` will get, or an offset below it."""
        tp = KafkaTopicPartition(topic, partition)
        try:
            ends = await self._side.end_offsets([tp])
        except KafkaError as exc:
            raise BrokerError(f"reading the end of {topic}[{partition}] failed: {exc}") from exc
        return int(ends[tp])

    async def scan(
        self, topic: str, partition: int, start: int
    ) -> AsyncGenerator[list[Message], None]:
        """The records of `topic` `partition` from `start` to its end as of now, in runs."""
        tp = KafkaTopicPartition(topic, partition)
        self._side.assign([tp])
        self._side.seek(tp, start)
        try:
            async for run in _read_to_ends(self._side, [tp]):
                yield run
        except KafkaError as exc:
            raise BrokerError(f"reading {topic}[{partition}] failed: {exc}") from exc


async def _firsts(
    consumer: AIOKafkaConsumer, starts: Mapping[KafkaTopicPartition, int]
) -> dict[int, Message]:
    """The record at offset `starts[tp]` of each partition `tp` that has one (the consumer is
    positioned there); see `_read_to_ends` for when it gives up."""
    left = dict(starts)
    found: dict[int, Message] = {}
    stalled = 0
    while left:
        fetched = await consumer.getmany(*left, timeout_ms=_READ_WAIT_MS)
        before = len(left)
        for tp in sorted(left):
            records = fetched.get(tp)
            highwater = consumer.highwater(tp)
            if records:
                if records[0].offset == left[tp]:  # else it is gone (retention, compaction)
                    found[tp.partition] = _messages(records[:1])[0]
            elif highwater is None or left[tp] < highwater:
                continue
            del left[tp]
            consumer.pause(tp)
        stalled = 0 if len(left) < before else stalled + 1
        if stalled >= _READ_STALLED:
            waiting = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(left))
            raise BrokerError(f"reading stalled: no answer for {waiting} from the broker")
    return found


async def _read_to_ends(
    consumer: AIOKafkaConsumer, partitions: list[KafkaTopicPartition]
) -> AsyncIterator[list[Message]]:
    """The records of `partitions` up to the high watermark each one's first fetch reports.

    Raises:
        BrokerError: when `_READ_STALLED` fetches in a row bring neither a record nor a
            partition's high watermark (a partition without a leader, a broker gone).
    """
    ends: dict[KafkaTopicPartition, int] = {}
    left = set(partitions)
    stalled = 0
    while left:
        fetched = await consumer.getmany(*left, timeout_ms=_READ_WAIT_MS)
        known = len(ends)
        for tp in sorted(left):
            highwater = consumer.highwater(tp)
            if highwater is None:  # not fetched yet
                continue
            end = ends.setdefault(tp, highwater)
            records = [record for record in fetched.get(tp, ()) if record.offset < end]
            if records:
                yield _messages(records)
            if await consumer.position(tp) >= end:
                left.discard(tp)
                consumer.pause(tp)
        stalled = 0 if fetched or len(ends) > known else stalled + 1
        if stalled >= _READ_STALLED:
            waiting = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(left))
            raise BrokerError(f"reading stalled: no answer for {waiting} from the broker")


def _position(state: Any) -> int | None:
    try:
        return int(state.position) if state.has_valid_position else None
    except AssertionError:  # reset between the two reads
        return None


_new_tuple = tuple.__new__


def _messages(records: Sequence[Any]) -> list[Message]:
    """aiokafka records as taskflow Messages: the per-record cost of the Kafka broker.

    Built with ``tuple.__new__`` (a Message is a named tuple), which skips the generated
    ``__new__``; a null value (a tombstone) stays None, a null header value becomes ``b""``. (An
    ``attrgetter`` of the seven fields measured slower than the plain attribute reads.)
    """
    new = _new_tuple
    return [
        new(
            Message,
            (
                r.topic,
                r.partition,
                r.offset,
                r.key,
                r.value,
                _headers(r.headers) if r.headers else (),
                r.timestamp,
            ),
        )
        for r in records
    ]


def _headers(headers: Sequence[tuple[str, bytes | None]]) -> Headers:
    return tuple((name, b"" if value is None else value) for name, value in headers)


async def _close_client(consumer: AIOKafkaConsumer) -> None:
    """Close the connections of a consumer whose stop() failed half-way.

    aiokafka's stop() closes its client last, so a failure before that leaves the connections
    and the metadata task running (and logging) for as long as the process lives.
    """
    client = getattr(consumer, "_client", None)
    if client is not None:
        try:
            await client.close()
        except Exception:  # the failure of stop() is the one worth reporting
            logger.debug("closing a Kafka consumer's connections raised", exc_info=True)


def _assigned(
    client: AIOKafkaConsumer, partitions: Collection[TopicPartition]
) -> list[KafkaTopicPartition]:
    """The ones of `partitions` assigned to `client` now: aiokafka refuses to pause any other
    (`IllegalStateError`), and one revoked since the caller decided has nothing left to hold."""
    assigned = client.assignment()
    ours = (KafkaTopicPartition(*tp) for tp in partitions)
    return [tp for tp in ours if tp in assigned]


def _ours(partitions: Collection[KafkaTopicPartition]) -> frozenset[TopicPartition]:
    return frozenset(TopicPartition(tp.topic, tp.partition) for tp in partitions)
