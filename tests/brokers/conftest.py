"""The real-broker fixtures of tests/kafka, for the ``kafka``-marked tests of the Kafka adapter."""

from __future__ import annotations

from tests.kafka.conftest import bootstrap, producer, tansu, topic, unique

__all__ = ["bootstrap", "producer", "tansu", "topic", "unique"]
