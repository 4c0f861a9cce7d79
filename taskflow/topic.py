"""Published topics: a topic the app writes to, declared with its payload type.

``orders = app.topic("orders", Order, key=str)`` declares the topic and returns a `Topic[Order]`:
``await orders.publish(order, key=...)`` (or ``ctx.publish(orders, order)``) then type-checks
the payload under mypy, and is refused at run time when the value is not an `Order`. The app's
AsyncAPI document lists each declared topic as a ``send`` operation with its payload's schema.
Plain string topics keep working everywhere a `Topic` does.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from taskflow import validation as check
from taskflow.exceptions import ConfigurationError, PublishError
from taskflow.formats import name_of

if TYPE_CHECKING:
    from taskflow.app import App
    from taskflow.types import Codec

__all__ = ["Topic", "topic_name"]

T = TypeVar("T")

KEY_TYPES: tuple[type, ...] = (str, bytes)


@dataclass(frozen=True, slots=True, eq=False)
class Topic(Generic[T]):
    """A topic the app publishes to, and the type of what it carries: made by `App.topic`.

    Attributes:
        name: The topic.
        payload: The payload type (an annotation such as ``Order`` or ``dict[str, int]``);
            ``Any`` when not declared.
        key: The key type, ``str`` or ``bytes``; None when not declared.
        description: What the topic carries, for the AsyncAPI document.
        codec: How its values are encoded; None: the App's codec.
        app: The app it was declared on, which publishes it.

    Example:
        ```python
        invoices = app.topic("invoices", Invoice, key=str, description="One per order.")

        @app.consume("orders")
        async def on_order(order: Order) -> None:
            await invoices.publish(Invoice(order.id, order.amount), key=order.customer)
        ```
    """

    name: str
    payload: Any
    key: type | None = None
    description: str | None = None
    codec: Codec | None = None
    app: App | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check.topic(self.name)
        payload = self.payload
        if not (payload is Any or isinstance(payload, type) or typing.get_origin(payload)):
            raise ConfigurationError(
                f"topic {self.name!r}: the payload is a type (a dataclass, Struct or pydantic "
                f"model, dict, list, bytes or str), got {payload!r}"
            )
        if self.key is not None and self.key not in KEY_TYPES:
            raise ConfigurationError(
                f"topic {self.name!r}: key= is str or bytes (the type of the message keys), "
                f"got {self.key!r}"
            )
        if self.description is not None and not isinstance(self.description, str):
            raise ConfigurationError(
                f"topic {self.name!r}: description= is text, got {self.description!r}"
            )

    def __str__(self) -> str:
        return self.name

    async def publish(
        self,
        value: T | None,
        *,
        key: bytes | str | None = None,
        headers: Mapping[str, str | bytes] | Sequence[tuple[str, bytes]] | None = None,
        wait: bool = True,
    ) -> None:
        """Publish `value` (None: a tombstone) to this topic through its app; see
        `App.publish`.

        Raises:
            StateError: when the app is not running.
            PublishError: when the value is not of the topic's payload type, the key not of its
                key type, or the value cannot be encoded; with `wait=True`, also when the broker
                refuses it.
        """
        if self.app is None:
            raise PublishError(
                f"topic {self.name!r} belongs to no app: declare it with app.topic(...)"
            )
        await self.app.publish(self, value, key=key, headers=headers, wait=wait)

    def checked(self, value: Any, key: bytes | str | None) -> None:
        """Refuse a value that is not of the payload type, or a key not of the key type.

        Raises:
            PublishError: naming the topic, what it carries and what was given.
        """
        if value is not None and not _is_instance(value, self.payload):
            raise PublishError(
                f"topic {self.name!r} carries {name_of(self.payload)}, got a {type(value).__name__}"
            )
        if key is not None and self.key is not None and not isinstance(key, self.key):
            raise PublishError(
                f"topic {self.name!r} has {self.key.__name__} keys, got a {type(key).__name__}"
            )


def _is_instance(value: Any, payload: Any) -> bool:
    """Whether `value` is of the payload type, as far as a class check can tell: a generic
    alias is checked by its origin (``dict[str, int]`` as a dict), anything else passes."""
    if payload is Any:
        return True
    if payload is bytes:
        return isinstance(value, bytes | bytearray | memoryview)
    origin = typing.get_origin(payload)
    if origin in (typing.Union, types.UnionType):
        return any(_is_instance(value, arg) for arg in typing.get_args(payload))
    target = origin if origin is not None else payload
    return not isinstance(target, type) or isinstance(value, target)


def topic_name(topic: str | Topic[Any]) -> str:
    """The name of a topic given by name or as a `Topic`."""
    return topic.name if isinstance(topic, Topic) else topic
