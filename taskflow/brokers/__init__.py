"""Brokers: the embedded `memory://` broker and Kafka (`kafka://host:port,…`), behind one seam."""

from __future__ import annotations

from urllib.parse import urlsplit

from taskflow.brokers.base import Broker, Consumer, ConsumerOptions, RebalanceListener
from taskflow.brokers.memory import MemoryBroker
from taskflow.exceptions import ConfigurationError

__all__ = [
    "Broker",
    "Consumer",
    "ConsumerOptions",
    "MemoryBroker",
    "RebalanceListener",
    "broker_from_url",
]

SCHEMES = ("memory", "kafka")


def broker_from_url(url: str) -> Broker:
    """Build the broker a URL names: ``memory://[?partitions=N]`` or ``kafka://host:port[,…]``.

    Raises:
        ConfigurationError: for an unknown scheme or a malformed URL.
    """
    scheme = urlsplit(url).scheme if "://" in url else ""
    if scheme == "memory":
        return MemoryBroker.from_url(url)
    if scheme == "kafka":
        from taskflow.brokers.kafka import KafkaBroker

        return KafkaBroker.from_url(url)
    raise ConfigurationError(
        f"unsupported broker URL {url!r}: use memory:// or kafka://host:port[,host:port…]"
    )
