"""The real broker's fixtures, for the reliability cases that need Kafka.

Every test here that uses the broker (the `bootstrap` fixture, also through `app_env` or
`producer`) is marked ``kafka``.
"""

import pytest

from tests.kafka.conftest import app_env, bootstrap, producer, tansu, topic, unique

__all__ = ["app_env", "bootstrap", "producer", "tansu", "topic", "unique"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        uses_broker = "bootstrap" in getattr(item, "fixturenames", ())
        if "tests/reliability/" in item.nodeid and uses_broker:
            item.add_marker(pytest.mark.kafka)
