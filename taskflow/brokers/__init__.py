"""Brokers: the embedded `memory://` broker and Kafka (`kafka://host:port,…`), behind one seam."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from taskflow.brokers.base import Broker, Consumer, ConsumerOptions, RebalanceListener
from taskflow.brokers.memory import MemoryBroker
from taskflow.config import quoted
from taskflow.exceptions import ConfigurationError

__all__ = [
    "Broker",
    "Consumer",
    "ConsumerOptions",
    "MemoryBroker",
    "RebalanceListener",
    "broker_from_url",
]


def broker_from_url(url: str, options: Mapping[str, Any] | None = None) -> Broker:
    """Build the broker a URL names: ``memory://[?partitions=N]`` or ``kafka://host:port[,…]``.

    Args:
        url: The broker URL.
        options: Broker options (for Kafka, aiokafka client options); memory takes none.

    Raises:
        ConfigurationError: for an unknown scheme, a malformed URL or an invalid option.
    """
    if not isinstance(url, str):
        raise ConfigurationError(f"a broker URL is a string, got {type(url).__name__}")
    try:
        scheme = urlsplit(url).scheme if "://" in url else ""
    except ValueError as exc:
        raise ConfigurationError(f"malformed broker URL {quoted(url)}: {exc}") from None
    if scheme == "memory":
        if options:
            raise ConfigurationError(
                f"the memory broker takes no broker_options: {sorted(options)}"
            )
        return MemoryBroker.from_url(url)
    if scheme == "kafka":
        from taskflow.brokers.kafka import KafkaBroker  # imported here: only Kafka users pay for it

        return KafkaBroker.from_url(url, options)
    raise ConfigurationError(
        f"unsupported broker URL {quoted(url)}: use memory:// or kafka://host:port[,host:port…]"
    )
