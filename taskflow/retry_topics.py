"""Retry topics: where a failed record waits out its delay without holding its partition.

Pure logic, no I/O: the names of a registration's retry topics, and what the `taskflow-` headers
of a record on one say. With ``retry_topics=[10, 60]`` a record of ``orders`` that fails is
published to ``orders.retry.10s``, then ``orders.retry.60s``, then the dead-letter topic. A delay
that is a whole number of seconds is named in seconds (``10s``), any other in milliseconds
(``1500ms``); delays are whole milliseconds.

A record on a retry topic is the original (key, value and its own headers) with these headers:

- ``taskflow-original-topic``, ``-original-partition``, ``-original-offset``,
  ``-original-timestamp``: where the original is (the same names as a dead letter's);
- ``taskflow-consumer-group``: the group whose handler failed (only that group runs it);
- ``taskflow-attempts``: the attempts made so far (the retry stage makes attempt number one more);
- ``taskflow-exception-type``, ``taskflow-exception-message``: the last failure;
- ``taskflow-due``: when it may run, in milliseconds since the Unix epoch.

`original` reads the original back from a retry record, so a dead letter, the next stage and the
idempotency key all name the original record, never its place on a retry topic.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from taskflow.message import Message

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "ATTEMPTS",
    "CONSUMER_GROUP",
    "DUE",
    "RETRY_HEADERS",
    "RetryTopics",
    "attempts_made",
    "due_ms",
    "failed_in",
    "label",
    "original",
]

ORIGINAL_TOPIC: Final = "taskflow-original-topic"
ORIGINAL_PARTITION: Final = "taskflow-original-partition"
ORIGINAL_OFFSET: Final = "taskflow-original-offset"
ORIGINAL_TIMESTAMP: Final = "taskflow-original-timestamp"
CONSUMER_GROUP: Final = "taskflow-consumer-group"
ATTEMPTS: Final = "taskflow-attempts"
EXCEPTION_TYPE: Final = "taskflow-exception-type"
EXCEPTION_MESSAGE: Final = "taskflow-exception-message"
DUE: Final = "taskflow-due"
RETRY_HEADERS: Final = frozenset(
    {
        ORIGINAL_TOPIC,
        ORIGINAL_PARTITION,
        ORIGINAL_OFFSET,
        ORIGINAL_TIMESTAMP,
        CONSUMER_GROUP,
        ATTEMPTS,
        EXCEPTION_TYPE,
        EXCEPTION_MESSAGE,
        DUE,
    }
)
"""The headers taskflow adds to a record on a retry topic (and takes off again)."""
LATEST_MS: Final = round(datetime.max.replace(tzinfo=UTC).timestamp() * 1000) - 1
"""The latest due time a clock can wait for (the last millisecond of the year 9999)."""


def label(delay: float) -> str:
    """A delay as a retry topic names it: ``10s``, or ``500ms`` when not whole seconds."""
    ms = round(delay * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


@dataclass(frozen=True, slots=True)
class RetryTopics:
    """The retry stages of a consumer registration: one delay (seconds) per stage, in order."""

    delays: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.delays)

    def topic(self, original: str, stage: int) -> str:
        """The topic of stage `stage` (1 for the first) for records of topic `original`."""
        return f"{original}.retry.{label(self.delays[stage - 1])}"

    def topics(self, originals: Iterable[str]) -> tuple[str, ...]:
        """Every retry topic of records of `originals`, stage by stage."""
        return tuple(
            self.topic(name, stage) for stage in range(1, len(self) + 1) for name in originals
        )

    def delay_of(self, topic: str) -> float:
        """The delay of the stage whose retry topic is `topic`.

        Raises:
            ValueError: when `topic` is not a retry topic of these stages.
        """
        for delay in self.delays:
            if topic.endswith(f".retry.{label(delay)}"):
                return delay
        raise ValueError(f"{topic!r} is not a retry topic of delays {list(self.delays)}")


def _text(message: Message, name: str) -> str | None:
    value = message.header(name)
    return None if value is None else value.decode(errors="replace")


def _number(message: Message, name: str) -> int | None:
    text = _text(message, name)
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


def attempts_made(message: Message) -> int:
    """The attempts made at the original of a retry record (0 when it does not say)."""
    return max(_number(message, ATTEMPTS) or 0, 0)


def failed_in(message: Message) -> str | None:
    """The consumer group whose handler failed the record, as its headers say."""
    return _text(message, CONSUMER_GROUP)


def due_ms(message: Message, delay: float) -> int:
    """When a retry record may run (epoch ms): its ``taskflow-due`` header, else (missing, or no
    time a clock can show) its timestamp plus its stage's `delay`."""
    due = _number(message, DUE)
    if due is None or due > LATEST_MS:
        due = message.timestamp_ms + round(delay * 1000)
    return min(due, LATEST_MS)


def original(message: Message) -> Message:
    """The record a retry record stands for: the original's coordinates and timestamp, its key,
    value and own headers. A record without the coordinates is its own original."""
    topic = _text(message, ORIGINAL_TOPIC)
    partition = _number(message, ORIGINAL_PARTITION)
    offset = _number(message, ORIGINAL_OFFSET)
    if topic is None or partition is None or offset is None:
        return message
    return Message(
        topic,
        partition,
        offset,
        message.key,
        message.value,
        tuple((name, value) for name, value in message.headers if name not in RETRY_HEADERS),
        _number(message, ORIGINAL_TIMESTAMP) or message.timestamp_ms,
    )
