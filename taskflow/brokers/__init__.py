"""Brokers: the embedded `memory://` broker and Kafka (`kafka://host:port,…`), behind one seam."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from taskflow.brokers.base import Broker, Consumer, ConsumerOptions, RebalanceListener
from taskflow.brokers.memory import MemoryBroker
from taskflow.config import DEFAULT_BROKER, quoted
from taskflow.exceptions import ConfigurationError

if TYPE_CHECKING:
    from taskflow.config import Settings

__all__ = [
    "Broker",
    "Consumer",
    "ConsumerOptions",
    "MemoryBroker",
    "RebalanceListener",
    "broker_from_settings",
    "broker_from_url",
]


def broker_from_url(
    url: str,
    options: Mapping[str, Any] | None = None,
    *,
    variable: str | None = None,
    option_variables: Mapping[str, str] | None = None,
) -> Broker:
    """Build the broker a URL names: ``memory://[?partitions=N]`` or ``kafka://host:port[,…]``.

    Args:
        url: The broker URL.
        options: Broker options in effect (for Kafka, aiokafka client options); memory takes
            none. The environment is not read here: see `taskflow.config`.
        variable: The variable that gave the URL, if one did: an error about the URL names it.
        option_variables: The variable that gave each option, if one did: an error about the
            option names it.

    Raises:
        ConfigurationError: for an unknown scheme, a malformed URL or an invalid option.
    """
    if not isinstance(url, str):
        raise ConfigurationError(f"a broker URL is a string, got {type(url).__name__}")
    with _naming(variable, url):
        scheme = urlsplit(url).scheme if "://" in url else ""
        if scheme == "memory":
            if options:
                raise ConfigurationError(
                    f"the memory broker takes no broker_options: {sorted(options)}"
                )
            return MemoryBroker.from_url(url)
        if scheme != "kafka":
            raise ConfigurationError(
                f"unsupported broker URL {quoted(url)}: "
                "use memory:// or kafka://host:port[,host:port…]"
            )
        from taskflow.brokers.kafka import KafkaBroker, parse_bootstrap  # only Kafka users pay

        servers = parse_bootstrap(url)
    return KafkaBroker(servers, options, variables=option_variables)


def broker_from_settings(settings: Settings) -> Broker:
    """The broker `settings` name: the Broker object code gave, else one built from the URL in
    effect (``memory://`` by default) and the broker options, each error naming the
    ``TASKFLOW_*`` variable that gave what it is about.

    Raises:
        ConfigurationError: for an unknown scheme, a malformed URL or an invalid option.
    """
    broker = settings.broker
    if broker is not None and not isinstance(broker, str):
        return cast(Broker, broker)
    return broker_from_url(
        DEFAULT_BROKER if broker is None else broker,
        settings.broker_options,
        variable=settings.variable("broker"),
        option_variables=settings.option_variables,
    )


@contextmanager
def _naming(variable: str | None, url: str) -> Iterator[None]:
    """Lead an error about the URL with the variable that gave it; say what urlsplit refused."""
    try:
        try:
            yield
        except ValueError as exc:  # urlsplit's own complaints, e.g. "Invalid IPv6 URL"
            if isinstance(exc, ConfigurationError):
                raise
            raise ConfigurationError(f"malformed broker URL {quoted(url)}: {exc}") from None
    except ConfigurationError as exc:
        if variable is None:
            raise
        raise ConfigurationError(f"{variable}: {exc}") from exc
