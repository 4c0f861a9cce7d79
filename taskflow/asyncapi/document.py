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
  declared payload type for a ``send``), its ``contentType`` the codec's.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from taskflow.asyncapi.schemas import Schemas, type_name
from taskflow.config import mask_url
from taskflow.handler import payload_type
from taskflow.message import Message
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

    def _consumer(self, spec: ConsumerSpec) -> None:
        annotation = payload_type(spec.func, batch=spec.batch is not None)
        codec = spec.codec or self.app.codec
        for topic in spec.topics:
            message = self._message(topic, annotation, codec)
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
        binding: dict[str, Any] = {"groupId": {"type": "string", "enum": [spec.group]}}
        client_id = {**self.app.broker_options, **spec.consumer_options}.get("client_id")
        if isinstance(client_id, str):
            binding["clientId"] = {"type": "string", "enum": [client_id]}
        binding["bindingVersion"] = KAFKA_BINDING_VERSION
        return binding

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
        self, topic: str, annotation: Any, codec: Codec, *, key: type | None = None
    ) -> str:
        """Put the message of `annotation` on `topic`'s channel; returns its id there."""
        channel = self.channels.setdefault(topic, {"address": topic, "messages": {}})
        shown = type_name(annotation)
        message: dict[str, Any] = {"name": shown, "title": shown}
        content_type = _content_type(annotation, codec)
        if content_type is not None:
            message["contentType"] = content_type
        schema = self.schemas.of(annotation)
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
        "x-taskflow-group": spec.group,
        "x-taskflow-ordering": spec.ordering,
    }
    if spec.batch is not None:
        fields["x-taskflow-batch"] = spec.batch
    if spec.max_attempts is not None:
        fields["x-taskflow-max-attempts"] = spec.max_attempts
    if spec.retry_topics is not None:
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
