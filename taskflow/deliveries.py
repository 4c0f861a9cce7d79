"""Deliveries: what an app published without waiting (`wait=False`), until the broker answers.

`App.publish(..., wait=False)` returns once the producer has queued the record. From then on the
record's delivery is owned here: a record the broker refuses, or that fails to be sent, is logged
(one ERROR line naming its topic, its key and the error) and counted per topic and error type
(`taskflow.publish.undelivered`, and `publishing` in the operations endpoint's /status); it never
raises in the code that published it. On the way out the runner closes the broker, which sends
what is queued, and waits for the answers; a record still unanswered when the broker's close
time is up is logged and counted as not delivered.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from taskflow.exceptions import PublishError
from taskflow.telemetry.tracing import error_type

if TYPE_CHECKING:
    from taskflow.brokers.base import Delivery

__all__ = ["Deliveries", "shown_key"]

logger = logging.getLogger(__name__)

LOGGED_WHEN_ABANDONED = 100  # records named one by one when the broker closes before answering


class Deliveries:
    """The records published without waiting that the broker has not answered yet, and the
    count of those it did not take.

    Attributes:
        pending: The deliveries not answered yet.
        undelivered: Records not delivered, by topic and error type (`error.type`).
    """

    def __init__(self) -> None:
        self.pending: dict[Delivery, tuple[str, bytes | None]] = {}  # with its topic and key
        self.undelivered: dict[tuple[str, str], int] = {}

    @property
    def failed(self) -> int:
        """How many records were not delivered, in all."""
        return sum(self.undelivered.values())

    def watch(self, delivery: Delivery, topic: str, key: bytes | None) -> None:
        """Own `delivery` until it ends; report it if it ends with an error."""
        self.pending[delivery] = topic, key
        delivery.add_done_callback(self._settled)

    def refused(self, topic: str, key: bytes | None, error: BaseException) -> None:
        """Report a record the producer would not even queue."""
        self._report(topic, key, error)

    async def settled(self) -> None:
        """Return once every pending delivery has its answer (the broker flushed them all)."""
        if self.pending:
            await asyncio.wait(tuple(self.pending))

    def abandon(self) -> int:
        """Give up on the deliveries still pending: each is reported as not delivered.

        Called once the broker is closed (or its close ran out of time); returns how many. Each
        record is logged, up to `LOGGED_WHEN_ABANDONED` of them, then one line counts them all.
        """
        left, self.pending = self.pending, {}
        error = PublishError("the broker closed before it acknowledged the record")
        for number, (delivery, (topic, key)) in enumerate(left.items()):
            delivery.cancel()
            self._report(topic, key, error, log=number < LOGGED_WHEN_ABANDONED)
        if left:
            logger.error(
                "%d record(s) published without waiting were not delivered before the broker "
                "closed",
                len(left),
            )
        return len(left)

    def _settled(self, delivery: Delivery) -> None:
        where = self.pending.pop(delivery, None)
        if where is None:  # abandoned, and reported then
            if not delivery.cancelled():
                delivery.exception()  # taken, so that it is never "never retrieved"
            return
        topic, key = where
        if delivery.cancelled():
            self._report(topic, key, PublishError("the delivery was cancelled"))
            return
        error = delivery.exception()
        if error is not None:
            self._report(topic, key, error)

    def _report(
        self, topic: str, key: bytes | None, error: BaseException, *, log: bool = True
    ) -> None:
        kind = error_type(error)
        self.undelivered[topic, kind] = self.undelivered.get((topic, kind), 0) + 1
        if not log:
            return
        logger.error(
            "record to %r (%s) published without waiting was not delivered: %s",
            topic,
            shown_key(key),
            error,
        )


def shown_key(key: bytes | None) -> str:
    """A record key as a log line shows it: ``key 'text'`` when UTF-8, else its bytes."""
    if key is None:
        return "no key"
    try:
        return f"key {key.decode('utf-8')!r}"
    except UnicodeDecodeError:
        return f"key {key!r}"
