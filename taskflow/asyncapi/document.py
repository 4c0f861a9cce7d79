"""The AsyncAPI 3.0 document of an App: what it consumes and what it declares it publishes.

- ``info``: the app's name, its `version` (``unversioned`` without one) and `description`;
- ``servers``: the Kafka bootstrap servers (never a credential: those live in the broker
  options, which the document leaves out); none for the memory broker;
- ``channels``: one per topic consumed or declared with `App.topic`, its address the topic;
- ``operations``: ``receive`` for each consumer and topic, with the Kafka binding's ``groupId``
  (and ``clientId`` when set) and taskflow's own ``x-taskflow-*`` fields (the consumer, its
  ordering, dead-letter topic, retry topics and the group that runs them); ``send`` for each
  declared topic;
- each message's ``payload``: the JSON Schema of the handler's payload annotation (of the
  declared payload type for a ``send``), its ``contentType`` the codec's; the codec's own
  schema when it gives one (`taskflow.types.DescribesPayload`: Avro's, Protocol Buffers');
- a consumer's retry topics and dead-letter topic: channels of their own, a ``send`` operation
  of the consumer to each (``<consumer>.send.<topic>``), and the retry stage's ``receive``; their
  messages are the original payload with the ``taskflow-`` headers as ``headers``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from taskflow.asyncapi.failures import DEAD_LETTER, RETRY, dead_letter_headers, retry_headers
from taskflow.asyncapi.schemas import REF_TEMPLATE, Schemas, type_name
from taskflow.config import mask_url
from taskflow.handler import payload_type
from taskflow.message import Message
from taskflow.retry_topics import label
from taskflow.specs import retry_stage_spec

if TYPE_CHECKING:
    from taskflow.app import App
    from taskflow.specs import ConsumerSpec
    from taskflow.topic import Topic
    from taskflow.types import Codec

__all__ = ["ASYNCAPI_VERSION", "KAFKA_BINDING_VERSION", "UNVERSIONED", "document"]

ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING_VERSION = "0.5.0"
UNVERSIONED = "unversioned"
"""``info.version`` of an app that has no `version`."""

_SECURE = {"SSL", "SASL_SSL"}
_KINDS = {DEAD_LETTER: "Dead letter", RETRY: "Retry"}
_ABOUT = {
    DEAD_LETTER: "The original record, its key, value and own headers, with taskflow's headers "
    "added. A dead letter too large to write leaves the value out (then "
    "`taskflow-value-omitted` says why), and at most the key and the original headers too.",
    RETRY: "The original record, its key, value and own headers, with taskflow's headers added.",
}
_UNSAFE = re.compile(r"[^\w.-]+")


def document(app: App) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of `app`, as JSON values."""
    return _Builder(app).build()


class _Builder:
    """One document, built a registration at a time."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.schemas = Schemas()
        self.channels: dict[str, dict[str, Any]] = {}
        self.operations: dict[str, dict[str, Any]] = {}

    def build(self) -> dict[str, Any]:
        for topic in self.app.topics:  # first: a consumer of one reads the message declared
            self._published(topic)
        for spec in self.app.consumers:
            self._consumer(spec)
            self._failures(spec)
        built: dict[str, Any] = {
            "asyncapi": ASYNCAPI_VERSION,
            "info": self._info(),
            "defaultContentType": self.app.codec.content_type,
        }
        servers = _servers(self.app)
        if servers:
            built["servers"] = servers
        built["channels"] = self.channels
        built["operations"] = self.operations
        if self.schemas.components:
            built["components"] = {"schemas": dict(sorted(self.schemas.components.items()))}
        built["x-taskflow-broker"] = mask_url(self.app.broker_url)
        return built

    def _info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"title": self.app.name, "version": self.app.version or UNVERSIONED}
        if self.app.description:
            info["description"] = self.app.description
        return info

    # -- receive -----------------------------------------------------------------------

    def _consumer(self, spec: ConsumerSpec, *, headers: str | None = None) -> None:
        annotation = payload_type(spec.func, batch=spec.batch is not None)
        codec = spec.codec or self.app.codec
        for topic in spec.topics:
            message = self._message(topic, annotation, codec, headers=headers)
            operation: dict[str, Any] = {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{topic}"},
                "messages": [{"$ref": f"#/channels/{topic}/messages/{message}"}],
                "title": spec.name,
            }
            summary = _first_line(spec.func.__doc__)
            if summary:
                operation["summary"] = summary
            operation["bindings"] = {"kafka": self._group_binding(spec)}
            operation.update(_taskflow_fields(spec))
            name = spec.name if len(spec.topics) == 1 else f"{spec.name}.{topic}"
            self._add_operation(name, operation)

    def _group_binding(self, spec: ConsumerSpec) -> dict[str, Any]:
        group = spec.consumer_group
        binding: dict[str, Any] = {"groupId": {"type": "string", "enum": [group]}}
        client_id = {**self.app.broker_options, **spec.consumer_options}.get("client_id")
        if isinstance(client_id, str):
            binding["clientId"] = {"type": "string", "enum": [client_id]}
        binding["bindingVersion"] = KAFKA_BINDING_VERSION
        return binding

    # -- failures ----------------------------------------------------------------------

    def _failures(self, spec: ConsumerSpec) -> None:
        """The retry topics and dead-letter topic `spec` sends to, and its retry stage."""
        if spec.retry_topics is not None:
            stage = retry_stage_spec(spec)
            self._consumer(stage, headers=RETRY)
            for number, delay in enumerate(spec.retry_topics.delays, start=1):
                for topic in spec.topics:
                    retry_topic = spec.retry_topics.topic(topic, number)
                    after = "the consumer" if number == 1 else f"stage {number - 1}"
                    summary = (
                        f"Records of {topic} that {after} failed, run again after "
                        f"{label(delay)} by {stage.name}."
                    )
                    fields = {"x-taskflow-retry-stage": number, "x-taskflow-delay": label(delay)}
                    self._sent_on_failure(spec, (topic,), retry_topic, RETRY, summary, fields)
        if spec.dead_letter is not None:
            summary = f"The records {spec.name} gave up on, and where they came from and why."
            self._sent_on_failure(spec, spec.topics, spec.dead_letter, DEAD_LETTER, summary, {})

    def _sent_on_failure(
        self,
        spec: ConsumerSpec,
        originals: tuple[str, ...],
        topic: str,
        headers: str,
        summary: str,
        fields: dict[str, Any],
    ) -> None:
        """The send operation of `spec`'s failed records of `originals` to `topic`."""
        annotation = payload_type(spec.func, batch=spec.batch is not None)
        message = self._message(topic, annotation, spec.codec or self.app.codec, headers=headers)
        self.channels[topic].setdefault("description", summary)
        operation: dict[str, Any] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{topic}"},
            "messages": [{"$ref": f"#/channels/{topic}/messages/{message}"}],
            "title": f"{spec.name} sends failed records to {topic}",
            "summary": summary,
            "x-taskflow-consumer": spec.name,
            "x-taskflow-original-topics": list(originals),
            **fields,
        }
        self._add_operation(f"{spec.name}.send.{topic}", operation)

    # -- send --------------------------------------------------------------------------

    def _published(self, topic: Topic[Any]) -> None:
        message = self._message(
            topic.name, topic.payload, topic.codec or self.app.codec, key=topic.key
        )
        channel = self.channels[topic.name]
        if topic.description:
            channel["description"] = topic.description
        operation: dict[str, Any] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{topic.name}"},
            "messages": [{"$ref": f"#/channels/{topic.name}/messages/{message}"}],
            "title": f"publish {topic.name}",
        }
        if topic.description:
            operation["summary"] = topic.description
        self._add_operation(f"{topic.name}.send", operation)

    # -- shared ------------------------------------------------------------------------

    def _message(
        self,
        topic: str,
        annotation: Any,
        codec: Codec,
        *,
        key: type | None = None,
        headers: str | None = None,
    ) -> str:
        """Put the message of `annotation` on `topic`'s channel, with the `taskflow-` headers
        of a dead letter or a retry when `headers` names them; returns its id there."""
        channel = self.channels.setdefault(topic, {"address": topic, "messages": {}})
        shown = type_name(annotation)
        message: dict[str, Any] = {"name": shown, "title": shown}
        content_type = _content_type(annotation, codec)
        if content_type is not None:
            message["contentType"] = content_type
        if headers is not None:
            message["title"] = f"{_KINDS[headers]} of {shown}"
            message["description"] = _ABOUT[headers]
            message["headers"] = self._headers(headers)
        schema = (
            self.schemas.of(annotation)
            if content_type is None or content_type != codec.content_type
            else self.schemas.of_codec(annotation, codec)
        )
        if schema is not None:
            message["payload"] = schema
        elif annotation is Message:
            message["summary"] = "Any record: the handler reads the record itself."
        elif annotation is not None and shown != "any":
            message["summary"] = f"A {shown}, whose schema taskflow cannot write."
        if key is not None:
            message["bindings"] = {
                "kafka": {
                    "key": self.schemas.of(key),
                    "bindingVersion": KAFKA_BINDING_VERSION,
                }
            }
        known: dict[str, Any] = channel["messages"]
        for ident, other in known.items():
            if _same(other, message):  # the declared topic's message, its key included
                return ident
        ident = _UNSAFE.sub("_", shown).strip("_") or "message"
        while ident in known:
            ident += "_"
        known[ident] = message
        return ident

    def _headers(self, name: str) -> dict[str, Any]:
        """A reference to the headers schema `name`, put in the components once."""
        if name not in self.schemas.components:
            made = dead_letter_headers() if name == DEAD_LETTER else retry_headers()
            self.schemas.components[name] = made
        return {"$ref": REF_TEMPLATE.format(name=name)}

    def _add_operation(self, name: str, operation: dict[str, Any]) -> None:
        while name in self.operations:
            name += "_"
        self.operations[name] = operation


def _same(known: dict[str, Any], message: dict[str, Any]) -> bool:
    """Whether two messages of a channel are one: alike but for the key a declared topic adds."""
    return {**known, "bindings": None} == {**message, "bindings": None}


def _content_type(annotation: Any, codec: Codec) -> str | None:
    """The content type of a payload: bytes and str are carried as they are, a `Message`
    (any record) has none of its own, anything else is the codec's."""
    if annotation is bytes:
        return "application/octet-stream"
    if annotation is str:
        return "text/plain; charset=utf-8"
    if annotation is Message:
        return None
    return codec.content_type


def _taskflow_fields(spec: ConsumerSpec) -> dict[str, Any]:
    """What taskflow adds to a receive operation: the consumer and where its failures go."""
    fields: dict[str, Any] = {
        "x-taskflow-consumer": spec.name,
        "x-taskflow-group": spec.consumer_group,
        "x-taskflow-ordering": spec.ordering,
    }
    if spec.retrying:  # the retry stage: it runs the failures of the consumer's group only
        fields["x-taskflow-retries-of-group"] = spec.group
    if spec.batch is not None:
        fields["x-taskflow-batch"] = spec.batch
    if spec.max_attempts is not None:
        fields["x-taskflow-max-attempts"] = spec.max_attempts
    if spec.retry_topics is not None and not spec.retrying:
        stage = retry_stage_spec(spec)
        fields["x-taskflow-retry-topics"] = list(stage.topics)
        fields["x-taskflow-retry-group"] = stage.consumer_group
    if spec.dead_letter is not None:
        fields["x-taskflow-dead-letter"] = spec.dead_letter
    return fields


def _servers(app: App) -> dict[str, Any]:
    """The Kafka bootstrap servers, by name; none for another broker."""
    url = mask_url(app.broker_url)
    if not url.startswith("kafka://"):
        return {}
    from taskflow.brokers.kafka import parse_bootstrap

    security = str(app.broker_options.get("security_protocol", "PLAINTEXT")).upper()
    protocol = "kafka-secure" if security in _SECURE else "kafka"
    hosts = parse_bootstrap(url)
    servers: dict[str, Any] = {}
    for index, host in enumerate(hosts, start=1):
        name = "kafka" if len(hosts) == 1 else f"kafka-{index}"
        servers[name] = {
            "host": host,
            "protocol": protocol,
            "description": "A Kafka bootstrap server.",
            "x-taskflow-security-protocol": security,
        }
    return servers


def _first_line(text: str | None) -> str | None:
    if not text:
        return None
    line = text.strip().splitlines()[0].strip()
    return line or None
