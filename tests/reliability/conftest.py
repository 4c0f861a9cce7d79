"""The real broker's fixtures, for the reliability cases that need Kafka."""

from tests.kafka.conftest import app_env, bootstrap, producer, tansu, topic, unique

__all__ = ["app_env", "bootstrap", "producer", "tansu", "topic", "unique"]
